"""Checkpoints: the trainable slice plus the run's state in one safetensors file.

A checkpoint is written to a temporary file, fsynced and renamed, so a kill or a full disk during a
save leaves the previous checkpoint intact. The file carries a format name and version in its
safetensors metadata so that other files are rejected with a clear message.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from safetensors import safe_open

from edgetune.errors import EdgetuneError
from edgetune.artifacts.finite import loads_finite, require_finite_tensors
from edgetune.artifacts.io import atomic_writer

FORMAT = "edgetune.artifacts.checkpoint"
VERSION = 1
_SAFETENSORS_DTYPES = {np.dtype(t): code for t, code in (
    (np.float32, "F32"), (np.float16, "F16"), (np.float64, "F64"), (np.int64, "I64"), (np.int32, "I32"),
    (np.int16, "I16"), (np.int8, "I8"), (np.uint8, "U8"), (np.uint16, "U16"), (np.uint32, "U32"),
    (np.uint64, "U64"), (np.bool_, "BOOL"))}


def save_checkpoint(path: str | Path, tensors: dict[str, np.ndarray], state: dict[str, Any]) -> None:
    metadata = {"format": FORMAT, "version": str(VERSION), "state": json.dumps(state, sort_keys=True)}
    previous = Path(path).is_file()  # the claim below must be true: a first save has nothing to keep
    try:
        with atomic_writer(path) as handle:
            write_safetensors(handle, tensors, metadata)
    except OSError as exc:
        kept = "the previous one is kept" if previous else "no checkpoint was saved"
        raise EdgetuneError(f"{path}: could not write checkpoint ({exc.strerror}); {kept}") from None


def write_safetensors(handle: BinaryIO, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
    """The safetensors layout (u64 header size, JSON header, the tensors' bytes back to back), written
    tensor by tensor: ``safetensors.numpy.save`` builds the file in memory, two copies of a slice that
    can be the whole model."""
    arrays = {name: np.ascontiguousarray(t) for name, t in tensors.items()}  # the arena's views are not copied
    header: dict[str, Any] = {}
    offset = 0
    for name, array in arrays.items():
        if array.dtype not in _SAFETENSORS_DTYPES:
            raise EdgetuneError(f"tensor '{name}': dtype {array.dtype} cannot be stored in a checkpoint")
        header[name] = {"dtype": _SAFETENSORS_DTYPES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    header["__metadata__"] = dict(metadata)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header so that the data starts 8-aligned
    handle.write(len(text).to_bytes(8, "little") + text)
    for array in arrays.values():
        handle.write(memoryview(array.reshape(-1).view(np.uint8)))


def load_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise EdgetuneError(f"{path}: no checkpoint to resume from")
    with _opened(path) as handle:
        metadata = handle.metadata() or {}
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    _check_format(metadata, path)
    # resuming from (or merging) NaN weights or state would carry them into every later step
    require_finite_tensors(tensors, str(path))
    return tensors, _state(metadata, path)


def read_checkpoint_state(path: str | Path) -> dict[str, Any]:
    """The run's state in a checkpoint (step, history, ...) without reading its tensors."""
    with _opened(path) as handle:
        metadata = handle.metadata() or {}
    _check_format(metadata, path)
    return _state(metadata, path)


@contextlib.contextmanager
def _opened(path: str | Path) -> Iterator[Any]:
    """``safe_open`` on ``path``; whatever the safetensors reader raises is one line naming the file."""
    try:
        with safe_open(str(path), framework="numpy") as handle:
            yield handle
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EdgetuneError(f"{path}: not a readable checkpoint ({reason})") from None


def _check_format(metadata: dict[str, str], path: str | Path) -> None:
    if metadata.get("format") != FORMAT:
        raise EdgetuneError(f"{path}: not an edgetune checkpoint")
    if metadata.get("version") != str(VERSION):
        raise EdgetuneError(f"{path}: checkpoint version {metadata.get('version')} is not supported (expected {VERSION})")


def _state(metadata: dict[str, str], path: str | Path) -> dict[str, Any]:
    try:
        state = loads_finite(metadata["state"])
    except (KeyError, ValueError) as exc:
        raise EdgetuneError(f"{path}: checkpoint state is not readable ({exc})") from None
    if not isinstance(state, dict):
        raise EdgetuneError(f"{path}: checkpoint state is not readable (not a JSON object)")
    return state


def file_digest(path: str | Path) -> str:
    """sha256 of a file, to tell whether a resumed run uses the same model and data."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
