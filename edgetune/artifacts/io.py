"""Crash-safe file writes: a reader sees the old file or the new one, never a torn one.

A write goes to ``.NAME.tmp-PID`` first; a process killed mid-write leaves that file behind, and
:func:`remove_stale_temporaries` is how the next run in the folder cleans it up.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# ``.NAME.tmp-PID`` (files written here) and ``NAME.tmp-PID`` (staging folders, e.g. the graph cache's)
_TEMPORARY = re.compile(r"^\.?.+\.tmp-(\d+)$")
STALE_AFTER_S = 24 * 3600  # a temporary this old is stale even when its PID was reused by a live process


def temporary_path(path: Path) -> Path:
    """Where this process writes ``path`` before renaming it into place."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """A handle on a temporary file in ``path``'s directory; when the block ends it is fsynced and
    renamed over ``path`` (then the directory fsynced). An exception in the block removes it instead,
    so ``path`` keeps its old contents. For files written piece by piece, never held whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync it, rename over ``path``, fsync the dir."""
    with atomic_writer(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is named as a write in progress (``.NAME.tmp-PID``, ``NAME.tmp-PID``)."""
    return _TEMPORARY.match(path.name) is not None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one owned by another user counts)."""
    if pid <= 0:  # 0 and negatives name process groups for kill(), never one writer
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | Path, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Delete the temporaries in ``folder`` whose writer is gone (its PID is not alive) or that are older
    than ``max_age_s``; returns what was removed. A live writer's temporary is left alone."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed, now = [], time.time()
    for path in folder.iterdir():
        match = _TEMPORARY.match(path.name)
        if not match or path.is_symlink():
            continue
        try:
            stale = not pid_alive(int(match.group(1))) or now - path.lstat().st_mtime > max_age_s
            if not stale:
                continue
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:  # its writer finished or cleaned it meanwhile
            continue
        removed.append(path)
    return removed
