"""Preparing a model in a child process and caching the result on disk.

Graph surgery holds the model as Python protobuf objects, several copies of the weights at once.
Doing it in the tuning process would raise that process's *peak* memory far above inference, which is
the one number an on-device tuner must not exceed. So a short-lived child prepares the graphs and
writes them to a cache directory keyed by the model's digest and the options; the tuning process
only loads the finished graphs into ONNX Runtime, exactly as inference would, and the next run with
the same model and slice starts at once.

The cache is capped (:func:`cache_limit`, ``EDGETUNE_CACHE_MAX``, default 2 GB): after each use the
least recently used entries (an entry's use touches its ``manifest.json``) are evicted until it fits,
and half-written entries of killed preparations are removed. ``edgetune cache`` lists and clears it.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from edgetune import errors
from edgetune.process.child import child_main, run_child
from edgetune.graph.blocks import Param
from edgetune.graph.head_grad import LinearHead
from edgetune.graph.lift import save_model
from edgetune.graph.model import ModelInfo
from edgetune.graph.prepare import PreparedModel, prepare
from edgetune.graph.trainable import TrainableSpec
from edgetune.graph.units import parse_size_mb
from edgetune.artifacts.io import is_temporary, remove_stale_temporaries

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_MAX = "2GB"
DAMAGED = "a damaged prepared-graph cache entry (EDGETUNE_CACHE): run edgetune cache --clear and retry"


def default_cache_root() -> Path:
    base = os.environ.get("EDGETUNE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgetune"
    return Path(base) / "prepared"


def _code_digest() -> str:
    """The graph-surgery code itself: an upgraded edgetune must not reuse graphs an older one prepared."""
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()


def prepare_cached(path: str | Path, trainable: TrainableSpec, model_digest: str, task: str | None = None,
                   split: bool = True, cache_root: str | Path | None = None, head_grad: bool = False) -> PreparedModel:
    """Like :func:`prepare`, with the graphs as files in the cache (prefix/suffix are paths)."""
    spec = str(trainable)  # canonical: two spellings of one slice share an entry, and the child reads it back
    # head_grad changes the graph: an entry with the head's gradient outputs is another entry
    key = hashlib.sha256(json.dumps([FORMAT_VERSION, _code_digest(), model_digest, spec, task, split, head_grad])
                         .encode())
    key = key.hexdigest()[:24]
    root = Path(cache_root or default_cache_root())
    directory = root / key
    if (directory / MANIFEST).is_file():
        _touch(directory)
    else:
        remove_stale_temporaries(root)  # what a preparation killed mid-write left
        run_child("edgetune.graph.cache", [str(path), spec, task, split, str(directory), head_grad],
                  f"preparing {path}")
    evict(root, cache_limit(), keep=directory)
    try:
        return _load(directory, Path(path))
    except (OSError, ValueError, KeyError, TypeError):  # a manifest cut short or edited by hand
        raise errors.ModelError(f"{directory}: {DAMAGED}") from None


def cache_limit() -> int:
    """The cache's size cap in bytes: ``EDGETUNE_CACHE_MAX`` (``500MB``, ``2GB``, a number of MB)."""
    return int(parse_size_mb(os.environ.get("EDGETUNE_CACHE_MAX") or DEFAULT_MAX, "EDGETUNE_CACHE_MAX") * 2**20)


@dataclass
class CacheEntry:
    path: Path
    bytes: int
    last_used: float  # the manifest's mtime: touched on every use
    model: str  # the model it was prepared from, as given then
    trainable: str


def cache_entries(root: str | Path | None = None) -> list[CacheEntry]:
    """The complete entries under ``root``, least recently used first."""
    root = Path(root or default_cache_root())
    entries = []
    for directory in sorted(root.iterdir()) if root.is_dir() else []:
        manifest = directory / MANIFEST
        try:
            described = json.loads(manifest.read_text())
            size = _size(directory)
            last_used = manifest.stat().st_mtime
        except (OSError, ValueError):  # not an entry, or one being evicted by another process
            continue
        entries.append(CacheEntry(directory, size, last_used, str(described.get("info", {}).get("path", "?")),
                                  str(described.get("trainable", "?"))))
    return sorted(entries, key=lambda e: e.last_used)


def evict(root: str | Path, limit: int, keep: Path | None = None) -> list[CacheEntry]:
    """Remove least recently used entries (never ``keep``, the one in use) until the cache fits ``limit``."""
    entries = cache_entries(root)
    total, evicted = sum(e.bytes for e in entries), []
    for entry in entries:
        if total <= limit:
            break
        if keep is not None and entry.path == keep:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        total -= entry.bytes
        evicted.append(entry)
    return evicted


def clear_cache(root: str | Path | None = None) -> tuple[int, int]:
    """Empty the cache: every entry, damaged ones included, and what killed preparations left (a live
    preparation's staging folder is left to it); returns the folders and bytes removed."""
    root = Path(root or default_cache_root())
    stale = remove_stale_temporaries(root)
    entries = [p for p in root.iterdir() if p.is_dir() and not is_temporary(p)] if root.is_dir() else []
    total = sum(_size(p) for p in entries)
    for directory in entries:
        shutil.rmtree(directory, ignore_errors=True)
    return len(entries) + len(stale), total


def _size(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.iterdir() if f.is_file())


def _touch(directory: Path) -> None:
    try:
        os.utime(directory / MANIFEST)
    except OSError:  # a read-only cache still serves its entries; they just age by their creation
        pass


def _cache_error(root: Path, exc: OSError) -> errors.EdgetuneError:
    return errors.ModelError(f"prepared-graph cache {root} (EDGETUNE_CACHE): cannot write there "
                             f"({exc.strerror or exc}); free some space or set EDGETUNE_CACHE to another folder")


def _prepare_into(path: str, trainable: str, task: str | None, split: bool, directory: str,
                  head_grad: bool = False) -> None:
    target = Path(directory)
    staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    try:
        _write_entry(path, trainable, task, split, staging, head_grad)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise _cache_error(target.parent, exc) from None
    except BaseException:  # a failed preparation (a bad spec, Ctrl-C) leaves no half-written entry
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        staging.rename(target)
    except OSError:  # another process prepared the same thing first; theirs is as good as ours
        shutil.rmtree(staging, ignore_errors=True)


def _write_entry(path: str, trainable: str, task: str | None, split: bool, staging: Path,
                 head_grad: bool = False) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # the child's edge: text in
    prepared = prepare(path, TrainableSpec.parse(trainable), task=task, split=split, head_grad=head_grad)
    if prepared.prefix is not None:
        save_model(prepared.prefix, staging / "prefix.onnx")
    save_model(prepared.suffix, staging / "suffix.onnx")
    if prepared.rest is not None:
        save_model(prepared.rest, staging / "rest.onnx")
    save_file(prepared.initial, str(staging / "initial.safetensors"))
    info = asdict(prepared.info)
    info["path"] = str(info["path"])
    manifest = {
        "info": info,
        "params": [asdict(p) for p in prepared.params],
        "boundary": prepared.boundary,
        "cached": prepared.cached,
        "has_rest": prepared.rest is not None,
        "total_params": prepared.total_params,
        "has_prefix": prepared.prefix is not None,
        # the head as found in the whole graph: the tuner need not load the suffix to name it again
        "head": asdict(prepared.head) if prepared.head is not None else None,
        "trainable": trainable,  # for edgetune cache's listing
    }
    (staging / MANIFEST).write_text(json.dumps(manifest))


def _load(directory: Path, model_path: Path) -> PreparedModel:
    manifest = json.loads((directory / MANIFEST).read_text())
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
        cached=manifest["cached"],
        rest=str(directory / "rest.onnx") if manifest["has_rest"] else None,
        head=_linear_head(manifest.get("head")),
    )


def _linear_head(described: dict | None) -> LinearHead | None:
    """The manifest's head (JSON lists back to the shapes' tuples)."""
    if described is None:
        return None
    shapes = {k: tuple(described[k]) if described[k] is not None else None for k in ("weight_shape", "bias_shape")}
    return LinearHead(**{**described, **shapes})


class _SafetensorsFile(Mapping):
    """Tensors of a safetensors file, each read only when asked for.

    The tuner reads them straight into the arena with :meth:`copy_into`. Reading the file through
    ``safetensors`` would first map or copy it whole, holding the trainable slice twice at start-up,
    and that transient would be the tuning process's peak memory. The format is a little-endian
    u64 header length, a JSON header of ``{name: {dtype, shape, data_offsets}}``, then raw bytes.
    """

    def __init__(self, path: Path, entries: dict | None = None):
        """``entries`` (``{name: {dtype, shape, data_offsets}}``) describes a file of raw tensors with no
        header, such as a bundle's ``arena.bin``; without them the file's safetensors header is read."""
        self._path = path
        if entries is not None:
            self._entries, self._data_start = entries, 0
            return
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
            raise errors.ModelError(f"{self._path}: tensor '{name}' does not match its arena view; {DAMAGED}")
        with open(self._path, "rb") as f:
            f.seek(self._data_start + start)
            if f.readinto(memoryview(out).cast("B")) != end - start:
                raise errors.ModelError(f"{self._path}: truncated; {DAMAGED}")

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
                                        f"truncated; {DAMAGED}")
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
