"""Choosing which transformer blocks to tune by a measured, forward-only importance score.

For a block b with d_b weights, a ZO-SGD step restricted to b lowers the loss in expectation by at
most ‖∇_b L‖² / (2·λ·(d_b + 2)) (λ the local curvature bound; the d_b + 2 is the variance of the
SPSA estimate along a ±1 or Gaussian direction). So the block worth tuning is the one with the most
gradient energy per dimension, and the ZO probe itself measures it: for a random direction z over the
block, g = (L(θ + εz) − L(θ − εz)) / 2ε has E[g²] = ‖∇_b L‖². The score is mean(g²) / (d_b + 2) over a
few probes on a few batches — 2 forwards per block per probe, no gradients, no extra memory beyond
an inference-sized arena.

``--trainable importance:K`` picks the K best blocks (plus the head, as ``last:N`` does) this way at
start-up; the result is an ordinary ``blocks:…`` selection, so the frozen prefix below the lowest
chosen block is still run once per step.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetune import _core
from edgetune.data import BatchStream
from edgetune.errors import EdgetuneError
from edgetune.graph.blocks import HEAD
from edgetune.zo.subset import ArenaBlocks

IMPORTANCE = "importance"
_TERM = re.compile(rf"(?:^|,)\s*{IMPORTANCE}:(\d+)\s*(?=,|$)")


@dataclass(frozen=True)
class BlockScore:
    block: int
    params: int
    score: float  # mean squared projected gradient per dimension: mean(g²) / (d + 2)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def score_groups(
    buffer: np.ndarray,
    groups: dict[int, tuple[int, int]],
    loss_fn: Callable[[], float],
    probes: int,
    eps: float,
    seed: int,
    noise: str = "rademacher",
    next_batch: Callable[[int], None] | None = None,
) -> dict[int, float]:
    """Score each arena range ``groups[key] = (start, end)`` by mean(g²) / (d + 2) over ``probes``.

    ``next_batch(p)`` (optional) binds the batch for probe p. Each range is perturbed in place with
    the noise of its global offsets and put back (to within rounding) before the next one.
    """
    energy = dict.fromkeys(groups, 0.0)
    for probe in range(probes):
        if next_batch is not None:
            next_batch(probe)
        for key, (start, end) in groups.items():
            view = buffer[start:end]
            probe_seed = _core.derive_seed(seed, probe, key)
            _core.perturb(view, probe_seed, eps, noise, start)
            plus = float(loss_fn())
            _core.perturb(view, probe_seed, -2.0 * eps, noise, start)
            minus = float(loss_fn())
            _core.perturb(view, probe_seed, eps, noise, start)
            if not (np.isfinite(plus) and np.isfinite(minus)):
                raise EdgetuneError(f"non-finite loss while scoring block {key} (L+={plus}, L-={minus})")
            energy[key] += ((plus - minus) / (2.0 * eps)) ** 2
    return {key: energy[key] / probes / (end - start + 2) for key, (start, end) in groups.items()}


def rank_blocks(
    onnx_path: str | Path,
    data: str | Path,
    *,
    probes: int = 8,
    batch_size: int = 8,
    eps: float = 1e-3,
    seed: int = 0,
    noise: str = "rademacher",
    **tuner_options,
) -> list[BlockScore]:
    """Blocks of ``onnx_path`` from most to least important on ``data`` (see the module docstring).

    ``tuner_options`` go to :meth:`Tuner.from_onnx` (tokenizer, max_length, threads, verbalizer, ...).
    The whole model is lifted for the measurement (an inference-sized arena) and released afterwards.
    """
    from edgetune.tuner import Tuner

    tuner = Tuner.from_onnx(onnx_path, trainable="all", **tuner_options)
    groups = ArenaBlocks.of(tuner.params, tuner.arena).blocks
    blocks = sorted(groups)
    if not blocks:
        raise EdgetuneError(f"{onnx_path}: importance scoring needs transformer blocks; none were found")
    dataset = tuner.load_data(data)
    stream = BatchStream(len(dataset), batch_size, seed)

    def next_batch(probe: int) -> None:
        tuner.engine.set_batch(dataset.batch(stream.indices(probe), tuner.info.data_inputs))

    scores = score_groups(tuner.arena.buffer(), groups, lambda: np.mean(tuner.engine.loss()), probes, eps, seed,
                          noise, next_batch)
    sizes = {b: end - start for b, (start, end) in groups.items()}
    ranked = [BlockScore(b, sizes[b], scores[b]) for b in blocks]
    return sorted(ranked, key=lambda s: (-s.score, s.block))


def importance_count(spec: str | None) -> int | None:
    """K of an ``importance:K`` term in ``--trainable``, or None."""
    if not spec:
        return None
    match = _TERM.search(spec)
    if match is None:
        if f"{IMPORTANCE}:" in spec:
            raise EdgetuneError(f"--trainable '{spec}': write importance:K with K a positive number of blocks")
        return None
    count = int(match.group(1))
    if count < 1:
        raise EdgetuneError(f"--trainable '{spec}': importance:K needs K >= 1")
    return count


def resolve_importance(spec: str, ranking: list[BlockScore]) -> str:
    """``spec`` with its ``importance:K`` term replaced by the K best blocks and the head."""
    count = importance_count(spec)
    if count is None:
        return spec
    if count > len(ranking):
        raise EdgetuneError(f"--trainable '{spec}': the model has only {len(ranking)} blocks")
    chosen = sorted(s.block for s in ranking[:count])
    terms = ",".join([*(f"blocks:{b}" for b in chosen), HEAD])
    return _TERM.sub(lambda m: ("," if m.group(0).startswith(",") else "") + terms, spec, count=1)
