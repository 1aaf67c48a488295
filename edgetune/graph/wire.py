"""Reading ONNX files at the protobuf wire level, without parsing (or holding) their weights.

Two readers share it: :func:`read_skeleton` (the model with every initializer's bytes left out: what
``edgetune plan`` and the streamed save read) and :func:`tensor_locations` (where each initializer's
bytes lie: the streamed save copies them, a with-past graph references them). Both walk the file
through :class:`FileView`, a small window, so a 500 MB model is scanned in a few MB.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import onnx

from edgetune.errors import ModelError
from edgetune.graph.model import check_model_file, check_parsed

Location = tuple[str, int, int]  # file (relative to the model's folder), offset, length

# Field numbers from onnx.proto: ModelProto.graph, GraphProto.initializer, TensorProto.{dims, data_type, name,
# raw_data, external_data}, StringStringEntryProto.{key, value}.
MODEL_GRAPH, GRAPH_INITIALIZER = 7, 5
_TENSOR_NAME, _TENSOR_RAW, _TENSOR_EXTERNAL, _ENTRY_KEY, _ENTRY_VALUE = 8, 9, 13, 1, 2
_KEEP_TENSOR_FIELDS = (1, 2, 8)  # TensorProto dims, data_type, name: everything the planner reads
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def fields(buf, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each field of one protobuf message; the span is the
    payload (a varint's own bytes, a fixed value, or a length-delimited field's contents)."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == _VARINT:
            _, after = _varint(buf, pos)
        elif wire in (_FIXED64, _FIXED32):
            after = pos + (8 if wire == _FIXED64 else 4)
        elif wire == _LENGTH:
            length, pos = _varint(buf, pos)
            after = pos + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} at byte {pos}")
        if after > end:
            raise ValueError(f"a field runs past its message's end at byte {pos}")
        yield key >> 3, wire, pos, after
        pos = after


class FileView:
    """Indexing and slicing of an open file through a small window, for :func:`fields`.

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


# -- the skeleton -----------------------------------------------------------------------------


def _skim(buf, start: int, end: int, inner: dict, keep: tuple[int, ...] | None = None) -> bytes:
    """Re-encode the message in ``buf[start:end]``: fields in ``inner`` recursively, others not in ``keep`` left out."""
    out = bytearray()
    for number, wire, f_start, f_end in fields(buf, start, end):
        if keep is not None and number not in keep:
            continue
        if wire == _LENGTH:
            body = _skim(buf, f_start, f_end, *inner[number]) if number in inner else bytes(buf[f_start:f_end])
            out += encode_varint(number << 3 | wire) + encode_varint(len(body)) + body
        else:
            out += encode_varint(number << 3 | wire) + bytes(buf[f_start:f_end])
    return bytes(out)


def read_skeleton(path: str | Path, tensor_fields: tuple[int, ...] = _KEEP_TENSOR_FIELDS) -> onnx.ModelProto:
    """The model with every initializer's bytes left out (of its TensorProto fields, ``tensor_fields``
    are kept: by default name, type and shape)."""
    path = Path(path)
    check_model_file(path)
    tensor = ({}, tensor_fields)
    graph = ({GRAPH_INITIALIZER: tensor}, None)
    try:
        with open(path, "rb") as handle:
            buf = FileView(handle, path.stat().st_size)
            data = _skim(buf, 0, len(buf), {MODEL_GRAPH: graph})
        model = onnx.ModelProto.FromString(data)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{path}: not a valid ONNX model ({reason})") from None
    return check_parsed(model, path)


# -- where the bytes lie ----------------------------------------------------------------------


def tensor_locations(path: str | Path) -> dict[str, Location]:
    """Where each initializer's bytes lie: in ``path`` itself (``raw_data``) or in its external file.

    Tensors stored in typed fields (``float_data``...) have no contiguous bytes and are left out.
    """
    path = Path(path)
    found: dict[str, Location] = {}
    with open(path, "rb") as handle:
        buf = FileView(handle, path.stat().st_size)
        try:
            for number, _, g_start, g_end in fields(buf, 0, len(buf)):
                if number != MODEL_GRAPH:
                    continue
                for g_number, wire, t_start, t_end in fields(buf, g_start, g_end):
                    if g_number == GRAPH_INITIALIZER and wire == _LENGTH:
                        name, location = _tensor_location(buf, t_start, t_end, path.name)
                        if location is not None:
                            found[name] = location
        except (ValueError, IndexError) as exc:
            raise ModelError(f"{path}: not a readable ONNX model ({exc})") from None
    return found


def _tensor_location(buf, start: int, end: int, own_name: str) -> tuple[str, Location | None]:
    name, raw, external = "", None, {}
    for number, wire, f_start, f_end in fields(buf, start, end):
        if wire != _LENGTH:
            continue
        if number == _TENSOR_NAME:
            name = bytes(buf[f_start:f_end]).decode()
        elif number == _TENSOR_RAW:
            raw = (own_name, f_start, f_end - f_start)
        elif number == _TENSOR_EXTERNAL:
            entry = {k: bytes(buf[s:e]).decode() for k, w, s, e in fields(buf, f_start, f_end) if w == _LENGTH}
            external[entry.get(_ENTRY_KEY, "")] = entry.get(_ENTRY_VALUE, "")
    if "location" in external:
        return name, (external["location"], int(external.get("offset", 0)), int(external["length"]))
    return name, raw
