"""Tokenised data sets and the deterministic order in which batches are drawn.

The batch for step ``t`` is a pure function of (seed, t): an infinite stream of epochs, each a
seeded permutation, cut into consecutive batches. Resuming at step ``t`` therefore needs no saved
sampler state and continues bit-identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from edgetune.data.jsonl import TASK_LM, Example, LabelSet
from edgetune.data.tokenizer import pad_id

IGNORE_INDEX = -100  # label value that the causal-LM loss skips, as in PyTorch and HF


@dataclass
class Batch:
    """Model inputs (by ONNX input name) and ``labels`` for one batch."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    size: int


class TokenizedSet:
    """Examples tokenised once, padded per batch to the longest member."""

    def __init__(
        self,
        examples: Sequence[Example],
        tokenizer: Tokenizer,
        max_length: int,
        task: str,
        labels: LabelSet | None = None,
    ):
        self.task = task
        self.pad_id = pad_id(tokenizer)
        self.where = [ex.where for ex in examples]
        tokenizer.enable_truncation(max_length)
        try:
            encodings = tokenizer.encode_batch([ex.text for ex in examples])
        finally:
            tokenizer.no_truncation()
        self.ids = [np.asarray(enc.ids, dtype=np.int64) for enc in encodings]
        self.type_ids = [np.asarray(enc.type_ids, dtype=np.int64) for enc in encodings]
        if task == TASK_LM:
            self.targets = None
        else:
            assert labels is not None
            self.targets = np.asarray([labels.index(ex) for ex in examples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, indices: Sequence[int] | np.ndarray, input_names: Sequence[str]) -> Batch:
        rows = [int(i) for i in indices]
        length = max(len(self.ids[i]) for i in rows)
        ids = np.full((len(rows), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=np.int64)
        type_ids = np.zeros((len(rows), length), dtype=np.int64)
        for r, i in enumerate(rows):
            n = len(self.ids[i])
            ids[r, :n] = self.ids[i]
            mask[r, :n] = 1
            type_ids[r, :n] = self.type_ids[i]
        available = {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": type_ids,
            "position_ids": np.maximum(np.cumsum(mask, axis=1) - 1, 0),
        }
        inputs = {name: available[name] for name in input_names}
        if self.targets is None:
            labels = np.where(mask == 1, ids, IGNORE_INDEX)
        else:
            labels = self.targets[rows]
        return Batch(inputs=inputs, labels=labels, size=len(rows))

    def batches(self, batch_size: int, input_names: Sequence[str]):
        """Every example once, in file order (for evaluation)."""
        for start in range(0, len(self), batch_size):
            yield self.batch(range(start, min(start + batch_size, len(self))), input_names)


class BatchStream:
    """Indices of the batch for any step, reproducible from (seed, step) alone."""

    def __init__(self, n_examples: int, batch_size: int, seed: int):
        self.n = n_examples
        self.batch_size = batch_size
        self.seed = seed
        self._epoch_cache: dict[int, np.ndarray] = {}

    def _epoch(self, epoch: int) -> np.ndarray:
        if epoch not in self._epoch_cache:
            if len(self._epoch_cache) > 4:
                self._epoch_cache.clear()
            self._epoch_cache[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._epoch_cache[epoch]

    def indices(self, step: int) -> np.ndarray:
        start = step * self.batch_size
        out = np.empty(self.batch_size, dtype=np.int64)
        for k in range(self.batch_size):
            epoch, pos = divmod(start + k, self.n)
            out[k] = self._epoch(epoch)[pos]
        return out
