"""The frozen prefix's output per training example, so that after the first epoch a step runs only the suffix.

While the prefix is frozen (``last:K``, LoRA on late layers) its output for an example never changes. The
cache keeps, for each example, the rows of the boundary tensors that a layer computes (the hidden states:
``graph/split.cache_cut``) at the example's own length, ``[tokens, width]``; a batch whose examples are all
cached is assembled from them (padded positions zero) and the prefix does not run. The batch-dependent rest
of the boundary (the attention mask, shapes) is recomputed by a small graph, and so is a boundary pooled to
one vector per example (a classifier head's input, ``head``): the cache keeps the token rows the pooling
reads, since a pooled vector's bits depend on the batch's shape (a masked mean's sum order), and pooling the
cached rows in the batch's own shape is the arithmetic of the run without the cache.

Exact: a row at its real positions is the same bits whichever batch and padding computed it, and the
suffix's loss does not read the padded positions; :meth:`LossEngine.check_cache` verifies both on the first
batch and turns the cache off (with a warning) where they do not hold. fp16 storage halves the memory and is
not exact.

Memory: in RAM up to a budget the user gives, else (``auto``) in a temporary file that is unlinked as it is created (so it is gone
whatever ends the process) and read with ``pread``: its pages sit in the page cache, not in this process's
RSS. The cache lives for one run; a resumed run fills it again as it goes.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edgetune.errors import EdgetuneError
from edgetune.graph.units import parse_size_mb

logger = logging.getLogger(__name__)

DTYPES = {"fp32": np.float32, "fp16": np.float16}
# auto keeps the cache in its file: a step from the file's page cache was 0.75x a forward against 0.65-0.70x
# from RAM (MiniLM last:2, bench_activation_cache.py), and RAM would raise the run's peak RSS above
# inference's, the figure an on-device tuner is held to; a RAM budget is the user's explicit choice.
AUTO_RAM_BYTES = 0


class CacheLayoutError(EdgetuneError):
    """A boundary tensor is not laid out [batch, sequence, ...]: it cannot be kept per example."""


class CacheFileError(EdgetuneError):
    """The cache's file cannot take a write (a full disk, a file-size limit): the run goes on without it."""


def budget_bytes(setting: str) -> int | None:
    """RAM the cache may take for ``--activation-cache`` ``setting``: None when it is off."""
    if setting == "off":
        return None
    if setting == "auto":
        return AUTO_RAM_BYTES
    return int(parse_size_mb(setting, "--activation-cache") * 2**20)


class ActivationCache:
    """Per-example rows of the tensors ``names`` for a data set whose examples have ``lengths`` tokens.

    The store is laid out at the first :meth:`put` (the width of a token's row is known then): one record of
    ``[length, width]`` per example at a fixed offset, in RAM if all of them fit ``budget`` bytes, else in a
    temporary file under ``spill_dir``.
    """

    def __init__(self, names: Sequence[str], lengths: Sequence[int], budget: int, dtype: str = "fp32",
                 spill_dir: str | Path | None = None):
        self.names = list(names)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])  # in tokens
        self.present = np.zeros(len(self.lengths), dtype=bool)
        self.budget, self.dtype = budget, np.dtype(DTYPES[dtype])
        self.spill_dir = Path(spill_dir) if spill_dir else None
        self.tails: list[tuple[int, ...]] = []  # each tensor's shape past [batch, sequence]
        self.width = 0  # values per token, all tensors together
        self._ram: np.ndarray | None = None
        self._file = None

    @property
    def exact(self) -> bool:
        return self.dtype == np.float32

    @property
    def bytes_per_token(self) -> int:
        return self.width * self.dtype.itemsize

    @property
    def total_bytes(self) -> int:
        """What the cache takes once every example is in it."""
        return int(self.offsets[-1]) * self.bytes_per_token

    @property
    def in_ram(self) -> bool:
        return self._ram is not None

    def has_all(self, examples: np.ndarray) -> bool:
        return bool(self.present[examples].all())

    def put(self, examples: np.ndarray, arrays: Mapping[str, np.ndarray], length: int) -> None:
        """Keep the rows of ``arrays`` (the prefix's outputs for the batch of ``examples`` padded to ``length``
        tokens) not kept yet."""
        for name in self.names:
            shape = arrays[name].shape
            if arrays[name].ndim < 2 or shape[:2] != (len(examples), length):
                raise CacheLayoutError(f"'{name}' has shape {list(shape)} for {len(examples)} examples of up to "
                                       f"{length} tokens, not [batch, sequence, ...]")
        if not self.tails:
            self._lay_out([arrays[name].shape[2:] for name in self.names])
        for r, i in enumerate(examples):
            if self.present[i]:
                continue
            n = int(self.lengths[i])
            record = np.concatenate([arrays[name][r, :n].reshape(n, -1) for name in self.names], axis=1)
            self._write(int(i), record.astype(self.dtype, copy=False))
            self.present[i] = True

    def get(self, examples: np.ndarray, length: int) -> dict[str, np.ndarray]:
        """The tensors for the batch of ``examples`` (all cached), padded with zeros to ``length`` tokens."""
        record = np.zeros((len(examples), length, self.width), dtype=np.float32)
        for r, i in enumerate(examples):
            n = int(self.lengths[i])
            record[r, :n] = self._read(int(i))
        out, start = {}, 0
        for name, tail in zip(self.names, self.tails):
            size = int(np.prod(tail, dtype=np.int64))
            out[name] = np.ascontiguousarray(record[:, :, start:start + size]).reshape(len(examples), length, *tail)
            start += size
        return out

    def close(self) -> None:
        """Free the memory; the file (already unlinked) goes with its descriptor."""
        self._ram = None
        if self._file is not None:
            self._file.close()
            self._file = None
        self.present[:] = False

    def describe(self) -> dict[str, object]:
        where = "ram" if self.in_ram else "file" if self._file is not None else "empty"
        return {"where": where, "dtype": self.dtype.name, "bytes_per_token": self.bytes_per_token,
                "bytes_per_example": self.total_bytes / max(len(self.lengths), 1), "total_bytes": self.total_bytes,
                "examples_cached": int(self.present.sum())}

    def _lay_out(self, tails: list[tuple[int, ...]]) -> None:
        self.tails = [tuple(int(d) for d in tail) for tail in tails]
        self.width = sum(int(np.prod(tail, dtype=np.int64)) for tail in self.tails)
        if self.total_bytes <= self.budget:
            # np.empty maps fresh pages: untouched examples take no memory until they are written
            self._ram = np.empty((int(self.offsets[-1]), self.width), dtype=self.dtype)
            return
        where = self.spill_dir if self.spill_dir and self.spill_dir.is_dir() else None
        self._file = tempfile.TemporaryFile(dir=where, prefix="edgetune-activations-")
        logger.info("activation cache: %.1f MB over the %.1f MB budget, kept in a temporary file in %s",
                    self.total_bytes / 2**20, self.budget / 2**20, where or tempfile.gettempdir())

    def _write(self, i: int, record: np.ndarray) -> None:
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        if self._ram is not None:
            self._ram[start:end] = record
            return
        data = memoryview(np.ascontiguousarray(record).view(np.uint8).reshape(-1))
        offset = start * self.bytes_per_token
        try:
            while data:  # a regular file takes it in one write; a short one only where the disk is full
                written = os.pwrite(self._file.fileno(), data, offset)
                if written <= 0:
                    raise OSError("no room")
                data, offset = data[written:], offset + written
        except OSError as exc:
            raise CacheFileError(f"cannot write its file ({exc.strerror or exc})") from None

    def _read(self, i: int) -> np.ndarray:
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        if self._ram is not None:
            return self._ram[start:end]
        out = np.empty((end - start, self.width), dtype=self.dtype)
        got = os.preadv(self._file.fileno(), [out.view(np.uint8).reshape(-1)], start * self.bytes_per_token)
        if got != out.nbytes:
            raise EdgetuneError(f"activation cache file: short read ({got} of {out.nbytes} bytes)")
        return out
