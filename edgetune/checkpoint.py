"""Checkpoints: the trainable slice plus the run's state in one safetensors file.

A checkpoint is written to a temporary file, fsynced and renamed, so a kill or a full disk during a
save leaves the previous checkpoint intact. The file carries a format name and version in its
safetensors metadata so that other files are rejected with a clear message.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as safetensors_bytes

from edgetune.errors import EdgetuneError
from edgetune.finite import loads_finite, require_finite_tensors
from edgetune.io import atomic_write_bytes

FORMAT = "edgetune.checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, tensors: dict[str, np.ndarray], state: dict[str, Any]) -> None:
    metadata = {"format": FORMAT, "version": str(VERSION), "state": json.dumps(state, sort_keys=True)}
    data = safetensors_bytes({name: np.ascontiguousarray(t) for name, t in tensors.items()}, metadata=metadata)
    previous = Path(path).is_file()  # the claim below must be true: a first save has nothing to keep
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        kept = "the previous one is kept" if previous else "no checkpoint was saved"
        raise EdgetuneError(f"{path}: could not write checkpoint ({exc.strerror}); {kept}") from None


def load_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise EdgetuneError(f"{path}: no checkpoint to resume from")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EdgetuneError(f"{path}: not a readable checkpoint ({reason})") from None
    if metadata.get("format") != FORMAT:
        raise EdgetuneError(f"{path}: not an edgetune checkpoint")
    if metadata.get("version") != str(VERSION):
        raise EdgetuneError(f"{path}: checkpoint version {metadata.get('version')} is not supported (expected {VERSION})")
    # resuming from (or merging) NaN weights or state would carry them into every later step
    require_finite_tensors(tensors, str(path))
    try:
        state = loads_finite(metadata["state"])
    except (KeyError, ValueError) as exc:
        raise EdgetuneError(f"{path}: checkpoint state is not readable ({exc})") from None
    if not isinstance(state, dict):
        raise EdgetuneError(f"{path}: checkpoint state is not readable (not a JSON object)")
    return tensors, state


def file_digest(path: str | Path) -> str:
    """sha256 of a file, to tell whether a resumed run uses the same model and data."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
