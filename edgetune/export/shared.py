"""One copy of the weights on disk for the training graph and the with-past (KV cache) graph.

``model.onnx`` (no KV cache, what edgetune tunes) keeps its weights inline, so every tool reads it
as a plain single file. ``model_with_past.onnx`` holds only its graph: each weight it shares with
``model.onnx`` is an ONNX *external data* reference (location, offset, length) to the bytes that
already sit inside ``model.onnx`` (a tensor's ``raw_data`` is stored contiguously in the protobuf
file), or inside ``model.onnx``'s own external-data file for models too large to be inline.
Weights are matched by their bytes, not their names: the exporter names the same weight differently
in the two graphs (``onnx::MatMul_727`` vs ``onnx::MatMul_715``).

Metadata ``edgetune.weights_digest`` records the sha256 of ``model.onnx`` that the references were
made against; a reader must check it (:func:`linked_to`), because rewriting ``model.onnx`` moves
the bytes. :class:`Relink` moves the references to a tuned copy of ``model.onnx``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import onnx

from edgetune.artifacts.checkpoint import file_digest
from edgetune.errors import ModelError
from edgetune.artifacts.io import atomic_write_bytes

__all__ = ["WITH_PAST", "DIGEST_KEY", "Relink", "link_weights", "linked_to", "tensor_locations"]

WITH_PAST = "model_with_past.onnx"
DIGEST_KEY = "edgetune.weights_digest"
BASE_KEY = "edgetune.weights_file"

Location = tuple[str, int, int]  # file (relative to the model's folder), offset, length


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field of one protobuf message."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            yield key >> 3, pos, pos + length
            pos += length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} at byte {pos}")


# Field numbers from onnx.proto: ModelProto.graph, GraphProto.initializer, TensorProto.{name, raw_data,
# external_data}, StringStringEntryProto.{key, value}.
_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_NAME, _TENSOR_RAW, _TENSOR_EXTERNAL, _ENTRY_KEY, _ENTRY_VALUE = 7, 5, 8, 9, 13, 1, 2


def tensor_locations(path: str | Path) -> dict[str, Location]:
    """Where each initializer's bytes lie: in ``path`` itself (``raw_data``) or in its external file.

    Reads the protobuf wire format directly, so a 500 MB model is scanned without being parsed.
    Tensors stored in typed fields (``float_data``...) have no contiguous bytes and are left out.
    """
    path = Path(path)
    found: dict[str, Location] = {}
    with open(path, "rb") as handle:
        buf = _FileView(handle, path.stat().st_size)
        try:
            for field, g_start, g_end in _fields(buf, 0, len(buf)):
                if field != _MODEL_GRAPH:
                    continue
                for gfield, t_start, t_end in _fields(buf, g_start, g_end):
                    if gfield == _GRAPH_INITIALIZER:
                        name, location = _tensor_location(buf, t_start, t_end, path.name)
                        if location is not None:
                            found[name] = location
        except (ValueError, IndexError) as exc:
            raise ModelError(f"{path}: not a readable ONNX model ({exc})") from None
    return found


class _FileView:
    """Indexing and slicing of an open file through a small window, for :func:`_fields`.

    Not ``mmap``: every page a scan touches would count as resident (the kernel maps 64 KB around
    each fault), 20 MB for SmolLM2's headers, and the scan runs while the tuning sessions are loaded.
    """

    _WINDOW = 1 << 16

    def __init__(self, handle: BinaryIO, size: int):
        self._handle, self._size, self._at, self._buf = handle, size, 0, b""

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, key: int | slice):
        if isinstance(key, slice):
            start, stop = key.start, min(key.stop, self._size)
            if stop - start > self._WINDOW:
                self._handle.seek(start)
                return self._handle.read(stop - start)
            self._cover(start, stop)
            return self._buf[start - self._at:stop - self._at]
        if not 0 <= key < self._size:
            raise IndexError(f"byte {key} is past the end of the file")
        self._cover(key, key + 1)
        return self._buf[key - self._at]

    def _cover(self, start: int, stop: int) -> None:
        if not (self._at <= start and stop <= self._at + len(self._buf)):
            self._handle.seek(start)
            self._buf, self._at = self._handle.read(self._WINDOW), start


def _tensor_location(buf, start: int, end: int, own_name: str) -> tuple[str, Location | None]:
    name, raw, external = "", None, {}
    for field, f_start, f_end in _fields(buf, start, end):
        if field == _TENSOR_NAME:
            name = bytes(buf[f_start:f_end]).decode()
        elif field == _TENSOR_RAW:
            raw = (own_name, f_start, f_end - f_start)
        elif field == _TENSOR_EXTERNAL:
            entry = {k: bytes(buf[s:e]).decode() for k, s, e in _fields(buf, f_start, f_end)}
            external[entry.get(_ENTRY_KEY, "")] = entry.get(_ENTRY_VALUE, "")
    if "location" in external:
        return name, (external["location"], int(external.get("offset", 0)), int(external["length"]))
    return name, raw


def _read(folder: Path, location: Location) -> bytes:
    file, offset, length = location
    with open(folder / file, "rb") as handle:
        handle.seek(offset)
        return handle.read(length)


def link_weights(with_past: onnx.ModelProto, base: str | Path) -> int:
    """Turn ``with_past``'s weights that equal one of ``base``'s into references to those bytes.

    Equal means same element type, shape and bytes. Every such weight is shared, however small: a
    norm left as a private copy would keep its old value after tuning. ``with_past`` is modified in
    place and must be saved in ``base``'s folder. Returns the bytes still inline (weights ``base``
    lacks).
    """
    base = Path(base)
    locations = tensor_locations(base)
    by_content: dict[tuple, Location] = {}
    for tensor in onnx.load(str(base), load_external_data=False).graph.initializer:
        if tensor.name in locations:
            data = _read(base.parent, locations[tensor.name])
            by_content[(tensor.data_type, tuple(tensor.dims), hashlib.blake2b(data).digest())] = locations[tensor.name]
    inline = 0
    for tensor in with_past.graph.initializer:
        key = (tensor.data_type, tuple(tensor.dims), hashlib.blake2b(tensor.raw_data).digest())
        location = by_content.get(key) if tensor.HasField("raw_data") else None
        if location is None:
            inline += tensor.ByteSize()
            continue
        _point(tensor, location)
    _set_metadata(with_past, {BASE_KEY: base.name, DIGEST_KEY: file_digest(base)})
    return inline


def _point(tensor: onnx.TensorProto, location: Location) -> None:
    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in zip(("location", "offset", "length"), location):
        tensor.external_data.add(key=key, value=str(value))


def _set_metadata(model: onnx.ModelProto, items: dict[str, str]) -> None:
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in items]
    del model.metadata_props[:]
    for key, value in [*keep, *items.items()]:
        model.metadata_props.add(key=key, value=value)


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
            _point(tensor, location)
        _set_metadata(self._model, {BASE_KEY: new_base.name, DIGEST_KEY: file_digest(new_base)})
        target = new_base.with_name(WITH_PAST)
        atomic_write_bytes(target, self._model.SerializeToString())
        return target
