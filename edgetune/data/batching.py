"""Tokenised data sets and the deterministic order in which batches are drawn.

The batch for step ``t`` is a pure function of (seed, t): an infinite stream of epochs, each a
seeded permutation, cut into consecutive batches. Resuming at step ``t`` therefore needs no saved
sampler state and continues bit-identically.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from edgetune import _core
from edgetune.data.chat import ChatTemplate
from edgetune.data.encode import IGNORE_INDEX, encode_classification, encode_lm, encode_verbalized
from edgetune.data.jsonl import TASK_LM, Example, LabelSet
from edgetune.data.tokenizer import pad_id
from edgetune.data.verbalizer import Verbalizer

logger = logging.getLogger(__name__)

__all__ = ["IGNORE_INDEX", "Batch", "BatchStream", "TokenizedSet"]


@dataclass
class Batch:
    """Model inputs (by ONNX input name) and ``labels`` for one batch.

    ``classes`` is the class index per row where the labels are token labels of a verbaliser task.
    """

    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    size: int
    classes: np.ndarray | None = None
    # each row's index in the training set, set by the training loop only: the activation cache's keys
    examples: np.ndarray | None = None

    def select(self, rows: Sequence[int]) -> Batch:
        """The batch of these rows of this one (padded as this one is)."""
        index = np.asarray(rows)
        take = (lambda a: a[index] if a is not None else None)  # noqa: E731
        return Batch(inputs={k: v[index] for k, v in self.inputs.items()}, labels=self.labels[index],
                     size=len(index), classes=take(self.classes), examples=take(self.examples))


class TokenizedSet:
    """Examples tokenised once, padded per batch to the longest member.

    With ``task`` "lm" the labels are per token (language modelling in any record format, or a
    ``verbalizer`` task); otherwise they are class indices.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        tokenizer: Tokenizer,
        max_length: int,
        task: str,
        labels: LabelSet | None = None,
        *,
        chat: ChatTemplate | None = None,
        eos_token: str | None = None,
        verbalizer: Verbalizer | None = None,
    ):
        self.task = task
        self.pad_id = pad_id(tokenizer)
        self.pad_to: int | None = None  # a static-shape graph's length: every batch is padded to it
        if verbalizer is not None:
            assert labels is not None
            encoded = encode_verbalized(examples, tokenizer, max_length, verbalizer, labels)
        elif task == TASK_LM:
            encoded = encode_lm(examples, tokenizer, max_length, chat, eos_token)
        else:
            assert labels is not None
            encoded = encode_classification(examples, tokenizer, max_length, labels)
        self.where, self.ids, self.type_ids = encoded.where, encoded.ids, encoded.type_ids
        classes = np.asarray(encoded.classes, dtype=np.int64)
        # Class labels are the loss's input for a classifier; token labels for a (verbaliser) LM.
        self.token_labels: list[np.ndarray] | None = encoded.labels if task == TASK_LM else None
        self.targets: np.ndarray | None = classes if task != TASK_LM else None
        self.classes: np.ndarray | None = classes if verbalizer is not None else None

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, indices: Sequence[int] | np.ndarray, input_names: Sequence[str]) -> Batch:
        rows = [int(i) for i in indices]
        length = self.pad_to or max(len(self.ids[i]) for i in rows)
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
        if self.token_labels is None:
            return Batch(inputs=inputs, labels=self.targets[rows], size=len(rows))
        labels = np.full((len(rows), length), IGNORE_INDEX, dtype=np.int64)
        for r, i in enumerate(rows):
            labels[r, : len(self.token_labels[i])] = self.token_labels[i]
        classes = self.classes[rows] if self.classes is not None else None
        return Batch(inputs=inputs, labels=labels, size=len(rows), classes=classes)

    def batches(self, batch_size: int, input_names: Sequence[str], max_tokens: int | None = None):
        """Every example once, in file order (for evaluation).

        ``max_tokens`` caps rows x padded length of a batch (at least one row), which bounds the
        ``batch x sequence x vocabulary`` logits that a language model's run allocates.
        """
        start = 0
        while start < len(self):
            end, longest = start, 0
            while end < len(self) and end - start < batch_size:
                longest = max(longest, len(self.ids[end]))
                if max_tokens is not None and end > start and (end - start + 1) * longest > max_tokens:
                    break
                end += 1
            yield self.batch(range(start, end), input_names)
            start = end


class BatchStream:
    """Indices of the batch for any step, reproducible from (seed, step) alone."""

    def __init__(self, n_examples: int, batch_size: int, seed: int):
        if batch_size > n_examples:  # more would repeat examples within a step, and allocate for every repeat
            logger.warning("--batch-size %d is more than the %d training examples: each step uses all %d",
                           batch_size, n_examples, n_examples)
            batch_size = n_examples
        self.n = n_examples
        self.batch_size = batch_size
        self.seed = seed
        self._epoch_cache: dict[int, np.ndarray] = {}

    def _epoch(self, epoch: int) -> np.ndarray:
        if epoch not in self._epoch_cache:
            if len(self._epoch_cache) > 4:
                self._epoch_cache.clear()
            # the core's permutation (edgetune.h et_epoch_permutation), not numpy's: the C runtime draws the
            # same batches from a bundle, so both runtimes tune on the same rows at every step
            self._epoch_cache[epoch] = _core.epoch_permutation(self.seed, epoch, self.n)
        return self._epoch_cache[epoch]

    def indices(self, step: int) -> np.ndarray:
        start = step * self.batch_size
        out = np.empty(self.batch_size, dtype=np.int64)
        for k in range(self.batch_size):
            epoch, pos = divmod(start + k, self.n)
            out[k] = self._epoch(epoch)[pos]
        return out
