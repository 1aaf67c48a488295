"""One copy of the weights on disk for the training graph and the with-past (KV cache) graph.

``model.onnx`` (no KV cache, what edgetune tunes) keeps its weights inline, so every tool reads it
as a plain single file. ``model_with_past.onnx`` holds only its graph: each weight it shares with
``model.onnx`` is an ONNX *external data* reference (location, offset, length) to the bytes that
already sit inside ``model.onnx`` (a tensor's ``raw_data`` is stored contiguously in the protobuf
file), or inside ``model.onnx``'s own external-data file for models too large to be inline. The
exporter makes the references (``edgetune.export.shared.link_weights``); this module is what tune
time needs of them, so that tuning never imports the export package.

Metadata ``edgetune.weights_digest`` records the sha256 of ``model.onnx`` that the references were
made against; a reader must check it (:func:`linked_to`), because rewriting ``model.onnx`` moves
the bytes. :class:`Relink` moves the references to a tuned copy of ``model.onnx``.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from edgetune.artifacts.checkpoint import file_digest
from edgetune.artifacts.io import atomic_write_bytes
from edgetune.graph.wire import Location, tensor_locations

WITH_PAST = "model_with_past.onnx"
DIGEST_KEY = "edgetune.weights_digest"
BASE_KEY = "edgetune.weights_file"


def point(tensor: onnx.TensorProto, location: Location) -> None:
    """Make ``tensor`` an external-data reference to ``location``."""
    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in zip(("location", "offset", "length"), location):
        tensor.external_data.add(key=key, value=str(value))


def mark_linked(with_past: onnx.ModelProto, base: Path) -> None:
    """Record in ``with_past``'s metadata which file, at which digest, its references point into."""
    items = {BASE_KEY: base.name, DIGEST_KEY: file_digest(base)}
    keep = [(p.key, p.value) for p in with_past.metadata_props if p.key not in items]
    del with_past.metadata_props[:]
    for key, value in [*keep, *items.items()]:
        with_past.metadata_props.add(key=key, value=value)


def linked_to(with_past: str | Path, base: str | Path) -> bool:
    """Whether ``with_past`` references the weights of ``base`` exactly as it is now on disk."""
    with_past, base = Path(with_past), Path(base)
    if with_past.parent.resolve() != base.parent.resolve() or not with_past.is_file() or not base.is_file():
        return False
    meta = _metadata(with_past)
    return meta.get(BASE_KEY) == base.name and meta.get(DIGEST_KEY) == file_digest(base)


def _metadata(path: Path) -> dict[str, str]:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # an unreadable file is simply not a usable link
        return {}
    return {p.key: p.value for p in model.metadata_props}


class Relink:
    """Carry a with-past graph over to a rewritten ``model.onnx`` (a tuned copy, same initializer names).

    Read the old references while the old ``model.onnx`` is intact (:meth:`read`), write the new
    with-past graph once the new one is saved (:meth:`write`). Each reference goes old bytes →
    the old initializer's name → that name's bytes in the new file, so tuned values are picked up.
    """

    def __init__(self, model: onnx.ModelProto, names: dict[Location, str]):
        self._model, self._names = model, names

    @classmethod
    def read(cls, base: str | Path) -> Relink | None:
        """The with-past graph beside ``base``, or None when there is none linked to it."""
        base = Path(base)
        with_past = base.with_name(WITH_PAST)
        if not linked_to(with_past, base):
            return None
        names = {location: name for name, location in tensor_locations(base).items()}
        return cls(onnx.load(str(with_past), load_external_data=False), names)

    def write(self, new_base: str | Path) -> Path | None:
        """Write ``model_with_past.onnx`` beside ``new_base``; None (nothing written) when ``new_base``
        lacks one of the shared weights, e.g. a graph whose weights were renamed or merged away."""
        new_base = Path(new_base)
        locations = tensor_locations(new_base)
        moves = []
        for tensor in self._model.graph.initializer:
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            entry = {e.key: e.value for e in tensor.external_data}
            old = (entry["location"], int(entry.get("offset", 0)), int(entry["length"]))
            name = self._names.get(old)
            if name is None or name not in locations or locations[name][2] != old[2]:
                return None
            moves.append((tensor, locations[name]))
        for tensor, location in moves:
            point(tensor, location)
        mark_linked(self._model, new_base)
        target = new_base.with_name(WITH_PAST)
        atomic_write_bytes(target, self._model.SerializeToString())
        return target
