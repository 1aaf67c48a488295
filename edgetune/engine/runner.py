"""Running the prepared graphs with the trainable slice bound zero-copy to the arena.

The arena views are bound once with IOBinding; the core perturbs the arena in place between runs and
ORT reads the new values on the next run, with no re-binding and no session rebuild.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import onnx

from edgetune.data.batching import Batch
from edgetune.engine.activation_cache import ActivationCache, CacheFileError, CacheLayoutError
from edgetune.engine.session import create_session
from edgetune.graph.loss import LABELS_INPUT, LOGITS_OUTPUT, LOSS_OUTPUT, TOKEN_LOGITS_OUTPUT

logger = logging.getLogger(__name__)

_NUMPY_TYPES = {onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32}


class LossEngine:
    """Per-example loss (and logits) of the prepared model at the arena's current weights."""

    def __init__(self, prepared, tensors: dict[str, np.ndarray], threads: int | None, providers: Sequence[str] | None):
        self._input_types = {name: _NUMPY_TYPES.get(t, np.int64) for name, t in prepared.info.input_types.items()}
        self.boundary = list(prepared.boundary)
        self.prefix = create_session(prepared.prefix, threads, providers) if prepared.prefix is not None else None
        self.suffix = create_session(prepared.suffix, threads, providers)
        self._prefix_inputs = {i.name for i in self.prefix.get_inputs()} if self.prefix else set()
        self._suffix_inputs = {i.name for i in self.suffix.get_inputs()}
        # A causal LM's training graph may score only labelled positions (graph/loss.py).
        self.token_logits = TOKEN_LOGITS_OUTPUT in {o.name for o in self.suffix.get_outputs()}
        self._binding = self.suffix.io_binding()
        self._tensors = tensors  # arena views; must outlive the binding
        for name, view in tensors.items():
            self._binding.bind_input(name, "cpu", 0, np.float32, list(view.shape), view.ctypes.data)
        self._binding.bind_output(LOSS_OUTPUT, "cpu")
        self._batch_arrays: dict[str, np.ndarray] = {}
        self.cached = list(prepared.cached)  # what an activation cache may keep per example
        # the token rows a pooled boundary is made from: the prefix outputs them while a cache is attached
        self._pooled_sources = [n for n in self.cached if n not in self.boundary]
        self._rest_graph, self._rest = prepared.rest, None  # its session is made when a cache attaches
        self._session_args = (threads, providers)
        self.activation_cache: ActivationCache | None = None  # attach_cache: a training run's, while it runs

    def set_batch(self, batch: Batch) -> None:
        """Bind ``batch``; runs the frozen prefix once so every later ``loss()`` only runs the suffix."""
        self._batch_arrays = self.data_feeds(batch)  # bind_cpu_input does not own the memory
        for name, array in self._batch_arrays.items():
            self._binding.bind_cpu_input(name, array)

    def loss(self) -> np.ndarray:
        self.suffix.run_with_iobinding(self._binding)
        return self._binding.copy_outputs_to_cpu()[0]

    def bind_output(self, name: str, array: np.ndarray) -> None:
        """Every later ``loss()`` also writes the suffix's output ``name`` into ``array`` (float32, C-contiguous,
        of the output's shape; the caller keeps it alive): an extra output such as the exact head's gradient
        (``graph/head_grad.py``), read in place with no copy per forward."""
        self._binding.bind_output(name, "cpu", 0, np.float32, list(array.shape), array.ctypes.data)

    def mean_loss(self) -> float:
        """The batch's mean loss at the arena's weights: one evaluation of an optimizer's ``loss_fn``.

        A defined order, the C runtime's too: the float32 losses summed in float64 in row order, then / n
        (np.mean sums float32 pairwise, an order C would have to copy from numpy's source)."""
        loss = self.loss()
        return float(np.add.accumulate(loss, dtype=np.float64)[-1] / len(loss))

    def loss_and_logits(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Evaluation path: plain ``run`` with numpy feeds (not the hot loop).

        The logits are [labelled tokens, vocabulary] when ``token_logits`` (rows as
        :func:`edgetune.graph.loss.labelled_positions` orders them), the model's own shape otherwise.
        """
        feeds = {**self.data_feeds(batch), **self._tensors}
        logits_name = TOKEN_LOGITS_OUTPUT if self.token_logits else LOGITS_OUTPUT
        loss, logits = self.suffix.run([LOSS_OUTPUT, logits_name], feeds)
        return loss, logits

    def data_feeds(self, batch: Batch) -> dict[str, np.ndarray]:
        """The suffix's inputs other than the trainable tensors, as C-contiguous numpy: the batch's own and the
        frozen prefix's outputs on it. The one place the prefix runs, for the training binding and evaluation."""
        feeds = self._input_feeds(batch)
        if self.prefix is not None:
            feeds.update(self._boundary(batch, feeds))
        return {k: v for k, v in feeds.items() if k in self._suffix_inputs}

    def _input_feeds(self, batch: Batch) -> dict[str, np.ndarray]:
        feeds = {name: np.ascontiguousarray(array, self._input_types.get(name, np.int64))
                 for name, array in batch.inputs.items()}
        feeds[LABELS_INPUT] = np.ascontiguousarray(batch.labels)
        return feeds

    def _run_prefix(self, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        return dict(zip(names, self.prefix.run(names, {k: v for k, v in feeds.items() if k in self._prefix_inputs})))

    def _boundary(self, batch: Batch, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The prefix's outputs on ``batch``: from the activation cache when it holds all of a training batch's
        examples (``batch.examples``), else by running the prefix (and keeping what the cache lacks)."""
        cache = self.activation_cache if batch.examples is not None else None
        length = next(iter(batch.inputs.values())).shape[1]  # the batch's padding, which every input shares
        if cache is not None and not cache.has_all(batch.examples) and _mostly_padding(cache, batch, length):
            self._fill_alone(cache, batch)
            cache = self.activation_cache  # None if its file could not take the rows
        if cache is not None and cache.has_all(batch.examples):
            out = cache.get(batch.examples, length)
            if self._rest is not None:
                rest_feeds = {i.name: out.get(i.name, feeds.get(i.name)) for i in self._rest.get_inputs()}
                names = [o.name for o in self._rest.get_outputs()]
                out.update(zip(names, self._rest.run(names, rest_feeds)))
            return out
        out = self._run_prefix(feeds, self.boundary + (self._pooled_sources if cache is not None else []))
        if cache is not None:
            try:
                cache.put(batch.examples, out, length)
            except CacheFileError as exc:
                self._cache_failed(cache, exc)
        return out

    def _fill_alone(self, cache: ActivationCache, batch: Batch) -> None:
        """Run the prefix on each example the cache lacks alone, at its own length: its rows are the bits the
        padded batch computes at its real positions (what :meth:`attach_cache` checks), without the padding's
        work (MiniLM on Rotten Tomatoes: 0.71x the CPU of the batch of 8 or 16 padded to its longest)."""
        plain = replace(batch, examples=None)
        try:
            for r, i in enumerate(batch.examples):
                if not cache.present[i]:
                    n = int(cache.lengths[i])
                    rows = self._run_prefix(self._input_feeds(_unpadded(plain.select([r]), n)), self.cached)
                    cache.put(np.asarray([i]), rows, n)
        except CacheFileError as exc:
            self._cache_failed(cache, exc)

    def _cache_failed(self, cache: ActivationCache, exc: CacheFileError) -> None:
        """A speed-up, not a result: the run goes on, exactly as without the cache."""
        logger.info("activation cache off: %s", exc)
        self.activation_cache = None
        cache.close()

    def attach_cache(self, cache: ActivationCache | None, batch: Batch | None = None) -> str | None:
        """Serve training batches from ``cache`` from now on (None detaches), if it is exact on ``batch``; the
        reason it is not otherwise (the cache then stays detached).

        Checked: each row the prefix computes alone is the bits it computes within the padded batch, and the
        loss from the cache's rows (padded positions zero) is the loss from the prefix's, bit for bit.
        """
        self.activation_cache = None
        if cache is None or batch is None or self.prefix is None or not self.cached:
            return None if cache is None else "no frozen prefix to cache"
        if self._rest_graph is not None and self._rest is None:
            self._rest = create_session(self._rest_graph, *self._session_args)
        self.activation_cache = cache
        try:
            reason = self._check_cache(cache, batch)
        except CacheLayoutError as exc:
            reason = str(exc)
        if reason is not None:
            self.activation_cache = None
            cache.close()
        return reason

    def _check_cache(self, cache: ActivationCache, batch: Batch) -> str | None:
        assert batch.examples is not None
        uncached = replace(batch, examples=None)
        inputs = self._input_feeds(uncached)
        rows = self._run_prefix(inputs, self.boundary + self._pooled_sources)
        feeds = {**{k: v for k, v in {**inputs, **rows}.items() if k in self._suffix_inputs}, **self._tensors}
        r = int(np.argmin(cache.lengths[batch.examples]))  # the shortest: the most padding in the batch
        n = int(cache.lengths[batch.examples[r]])
        alone = self._run_prefix(self._input_feeds(_unpadded(uncached.select([r]), n)), self.cached)
        for name in self.cached:
            if not np.array_equal(alone[name][0, :n], rows[name][r, :n]):
                return f"the prefix's output '{name}' for an example depends on the batch it is in"
        self.data_feeds(batch)  # fills the cache
        from_cache = {**self.data_feeds(batch), **self._tensors}
        if cache.exact:
            if not np.array_equal(self.suffix.run([LOSS_OUTPUT], feeds)[0],
                                  self.suffix.run([LOSS_OUTPUT], from_cache)[0]):
                return "the loss from cached rows differs from the prefix's in the last bit"
        return None


# Fill the cache one example at a time when the batch's real tokens are under this share of its padded ones:
# MiniLM's prefix alone on each example of a Rotten Tomatoes batch (real/padded ~0.6) took 0.71x the CPU of
# the padded batch, so batching's efficiency is worth ~0.85 of the tokens; with little padding the batch wins.
ALONE_BELOW = 0.8


def _mostly_padding(cache: ActivationCache, batch: Batch, length: int) -> bool:
    assert batch.examples is not None
    real = int(cache.lengths[np.unique(batch.examples)].sum())
    return real < ALONE_BELOW * len(batch.examples) * length


def _unpadded(batch: Batch, length: int) -> Batch:
    """``batch`` (one row) cut to its ``length`` real tokens: the row as a batch of its own would pad it."""
    padded = next(iter(batch.inputs.values())).shape[1]
    labels = batch.labels[:, :length] if batch.labels.ndim == 2 and batch.labels.shape[1] == padded else batch.labels
    return replace(batch, inputs={k: v[:, :length] for k, v in batch.inputs.items()}, labels=labels)
