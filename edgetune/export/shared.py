"""Linking an exported with-past (KV cache) graph's weights to the bytes inside ``model.onnx``.

Weights are matched by their bytes, not their names: the exporter names the same weight differently
in the two graphs (``onnx::MatMul_727`` vs ``onnx::MatMul_715``). How the link is stored, checked
and carried over to a tuned model is ``edgetune.graph.relink``'s (tune time needs it, never torch).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx

from edgetune.graph.relink import mark_linked, point
from edgetune.graph.wire import Location, tensor_locations

__all__ = ["link_weights"]


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
        point(tensor, location)
    mark_linked(with_past, base)
    return inline
