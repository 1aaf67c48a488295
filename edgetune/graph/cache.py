"""Preparing a model in a child process and caching the result on disk.

Graph surgery holds the model as Python protobuf objects, several copies of the weights at once.
Doing it in the tuning process would raise that process's *peak* memory far above inference, which is
the one number an on-device tuner must not exceed. So a short-lived child prepares the graphs and
writes them to a cache directory keyed by the model's digest and the options; the tuning process
only loads the finished graphs into ONNX Runtime, exactly as inference would, and the next run with
the same model and slice starts at once.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from edgetune import errors
from edgetune.child import child_main, run_child
from edgetune.graph.blocks import Param
from edgetune.graph.lift import save_model
from edgetune.graph.model import ModelInfo
from edgetune.graph.prepare import PreparedModel, prepare

FORMAT_VERSION = 1


def default_cache_root() -> Path:
    base = os.environ.get("EDGETUNE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgetune"
    return Path(base) / "prepared"


def _code_digest() -> str:
    """The graph-surgery code itself: an upgraded edgetune must not reuse graphs an older one prepared."""
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()


def prepare_cached(path: str | Path, trainable: str, model_digest: str, task: str | None = None,
                   split: bool = True, cache_root: str | Path | None = None) -> PreparedModel:
    """Like :func:`prepare`, with the graphs as files in the cache (prefix/suffix are paths)."""
    key = hashlib.sha256(json.dumps([FORMAT_VERSION, _code_digest(), model_digest, trainable, task, split]).encode())
    key = key.hexdigest()[:24]
    directory = Path(cache_root or default_cache_root()) / key
    if not (directory / "manifest.json").is_file():
        run_child("edgetune.graph.cache", [str(path), trainable, task, split, str(directory)], f"preparing {path}")
    return _load(directory, Path(path))


def _prepare_into(path: str, trainable: str, task: str | None, split: bool, directory: str) -> None:
    target = Path(directory)
    staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    prepared = prepare(path, trainable, task=task, split=split)
    if prepared.prefix is not None:
        save_model(prepared.prefix, staging / "prefix.onnx")
    save_model(prepared.suffix, staging / "suffix.onnx")
    save_file(prepared.initial, str(staging / "initial.safetensors"))
    info = asdict(prepared.info)
    info["path"] = str(info["path"])
    manifest = {
        "info": info,
        "params": [asdict(p) for p in prepared.params],
        "boundary": prepared.boundary,
        "total_params": prepared.total_params,
        "has_prefix": prepared.prefix is not None,
    }
    (staging / "manifest.json").write_text(json.dumps(manifest))
    try:
        staging.rename(target)
    except OSError:  # another process prepared the same thing first; theirs is as good as ours
        shutil.rmtree(staging, ignore_errors=True)


def _load(directory: Path, model_path: Path) -> PreparedModel:
    manifest = json.loads((directory / "manifest.json").read_text())
    info = ModelInfo(**{**manifest["info"], "path": model_path})
    params = [Param(**{**p, "shape": tuple(p["shape"])}) for p in manifest["params"]]
    return PreparedModel(
        info=info,
        params=params,
        initial=_SafetensorsFile(directory / "initial.safetensors"),
        prefix=str(directory / "prefix.onnx") if manifest["has_prefix"] else None,
        suffix=str(directory / "suffix.onnx"),
        boundary=manifest["boundary"],
        total_params=manifest["total_params"],
    )


class _SafetensorsFile(Mapping):
    """Tensors of a safetensors file, each read only when asked for.

    The tuner reads them straight into the arena with :meth:`copy_into`. Reading the file through
    ``safetensors`` would first map or copy it whole, holding the trainable slice twice at start-up,
    and that transient would be the tuning process's peak memory. The format is a little-endian
    u64 header length, a JSON header of ``{name: {dtype, shape, data_offsets}}``, then raw bytes.
    """

    def __init__(self, path: Path):
        self._path = path
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
        header.pop("__metadata__", None)
        self._entries = header
        self._data_start = 8 + header_len

    def copy_into(self, name: str, out: np.ndarray) -> None:
        entry = self._entries[name]
        start, end = entry["data_offsets"]
        if entry["dtype"] != "F32" or tuple(entry["shape"]) != out.shape or not out.flags.c_contiguous:
            raise errors.ModelError(f"{self._path}: tensor '{name}' does not match its arena view; "
                                    "delete the cache directory and retry")
        with open(self._path, "rb") as f:
            f.seek(self._data_start + start)
            if f.readinto(memoryview(out).cast("B")) != end - start:
                raise errors.ModelError(f"{self._path}: truncated; delete the cache directory and retry")

    def __getitem__(self, name: str) -> np.ndarray:
        out = np.empty(self._entries[name]["shape"], np.float32)
        self.copy_into(name, out)
        return out

    def map_readonly(self) -> MappedTensors:
        """Every tensor as a read-only view of the file's pages, never read into RAM as a whole."""
        return MappedTensors(self._path, self._entries, self._data_start)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class MappedTensors(Mapping):
    """The tensors of a safetensors file as read-only arrays over one memory map of it.

    Reading a page maps it from the page cache: shared with other processes, dropped by the kernel
    under memory pressure, never anonymous memory. It does count in RSS while mapped, so a reader
    that streams through the tensors calls :meth:`evict` on what it has read, keeping the resident
    part at one chunk (DiZO's anchors θ0: a second copy of the trainable slice otherwise).
    """

    def __init__(self, path: Path, entries: dict, data_start: int):
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._bytes = np.frombuffer(self._map, np.uint8)
        self._tensors: dict[str, np.ndarray] = {}
        for name, entry in entries.items():
            start, end = entry["data_offsets"]
            if entry["dtype"] != "F32" or data_start + end > len(self._map):
                raise errors.ModelError(f"{path}: tensor '{name}' is not stored as float32 or the file is "
                                        "truncated; delete the cache directory and retry")
            flat = np.frombuffer(self._map, np.float32, count=(end - start) // 4, offset=data_start + start)
            self._tensors[name] = flat.reshape(entry["shape"])

    def evict(self, view: np.ndarray) -> None:
        """Drop the pages under ``view`` (a slice of one of these tensors) from this process's RSS.
        A no-op without ``madvise`` (Windows): the kernel then reclaims the clean pages when it must."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        base = self._bytes.ctypes.data
        first = (view.ctypes.data - base) // mmap.PAGESIZE * mmap.PAGESIZE
        last = view.ctypes.data - base + view.nbytes
        self._map.madvise(mmap.MADV_DONTNEED, first, min(last, len(self._map)) - first)

    def __getitem__(self, name: str) -> np.ndarray:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


if __name__ == "__main__":
    child_main(_prepare_into)
