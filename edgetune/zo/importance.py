"""Choosing which transformer blocks to tune by a measured, forward-only importance score.

For a block b with d_b weights, a ZO-SGD step restricted to b lowers the loss in expectation by at
most ‖∇_b L‖² / (2·λ·(d_b + 2)) (λ the local curvature bound; the d_b + 2 is the variance of the
SPSA estimate along a ±1 or Gaussian direction). So the block worth tuning is the one with the most
gradient energy per dimension, and the ZO probe itself measures it: for a random direction z over the
block, g = (L(θ + εz) − L(θ − εz)) / 2ε has E[g²] = ‖∇_b L‖². The score is mean(g²) / (d_b + 2) over a
few probes on a few batches — 2 forwards per block per probe, no gradients, no extra memory beyond
an inference-sized arena.

``--trainable importance:K`` picks the K best blocks (plus the head, as ``last:N`` does) this way at
start-up (``Tuner.rank_blocks``, then ``TrainableSpec.resolve``); the result is an ordinary ``blocks:…``
selection, so the frozen prefix below the lowest chosen block is still run once per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgetune import _core
from edgetune.errors import EdgetuneError


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


def rank_blocks(groups: dict[int, tuple[int, int]], scores: dict[int, float]) -> list[BlockScore]:
    """The blocks of ``groups`` (block → its arena range) by their :func:`score_groups` scores, most
    important first; ties go to the lower block. ``Tuner.rank_blocks`` builds the arena and the data."""
    ranked = [BlockScore(b, end - start, scores[b]) for b, (start, end) in sorted(groups.items())]
    return sorted(ranked, key=lambda s: (-s.score, s.block))
