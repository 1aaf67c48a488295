"""P-RGE: parallel randomized gradient estimation, and the start-up choice of whether it pays.

For step t with q queries and seeds s_i = derive_seed(seed, t, i), the core writes 2·g perturbed
copies of the arena (g queries per forward, ``queries_per_forward``), copy 2j = θ + εz_j and
copy 2j+1 = θ − εz_j, and one run of the copy-batched graph returns every copy's loss:

    g_i = (L+_i − L−_i) / 2ε,    θ ← decay·θ − (lr/q) Σ_i g_i z_i      (one combine pass over q seeds)

θ itself is never perturbed, so nothing is restored. This is its own estimator, not ZO-SGD run
faster: every query of a step is evaluated at θ_t (ZO-SGD applies query i's update before query
i + 1 is evaluated), and θ ± εz is computed directly (ZO-SGD reaches θ − εz through θ + εz − 2εz,
and θ_{t+1} through a fused restore). It is deterministic: the same seed, data, configuration and
queries per forward give the same bits, since the copies are a pure function of (θ, seed) and the
update is the core's fixed-order combine.

``--parallel auto`` times both ways on the run's first batch and provider (:func:`choose_batching`)
and takes the batched one only when it is faster per evaluation by a margin, so it is never slower
than sequential ZO-SGD by more than timing noise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetune import _core
from edgetune.errors import TrainingError
from edgetune.zo.base import ZOBase
from edgetune.zo.queries import FixedQueries
from edgetune.zo.zosgd import StepRecord

log = logging.getLogger(__name__)

GROUP_SIZES = (1, 2, 4, 8)  # queries per forward that `auto` tries (2, 4, 8, 16 copies)
MARGIN = 0.05  # batching must save at least this fraction of the sequential cost per evaluation


class ParallelZO(ZOBase):
    """Strategy object: ``step`` evaluates the step's queries ``queries_per_forward`` at a time."""

    name = "p-rge"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not isinstance(self.query_policy, FixedQueries):
            raise ValueError("P-RGE takes a fixed number of queries per step")
        self.queries = self.queries_per_forward = self.query_policy.limit(0)
        self.engine = None  # the CopyBatchedEngine that step() evaluates on (see attach); replay needs none

    def attach(self, engine, queries_per_forward: int) -> None:
        """Evaluate on ``engine`` (a CopyBatchedEngine), ``queries_per_forward`` queries (2× copies) per run."""
        if self.queries % queries_per_forward:
            raise ValueError(f"queries per forward ({queries_per_forward}) must divide queries ({self.queries})")
        self.engine, self.queries_per_forward = engine, queries_per_forward
        engine.set_width(2 * queries_per_forward)

    def state_dict(self) -> dict:
        return {"queries_per_forward": self.queries_per_forward}  # a resumed run batches as this one did

    def load_state_dict(self, state: dict) -> None:
        pass  # θ is the whole state; parallel_strategy reads the queries per forward from the same dict

    def step(self, t: int, loss_fn: Callable[[], np.ndarray], chain: bool = False) -> StepRecord:
        """One step at θ_t; ``loss_fn`` returns the mean loss of each copy. ``chain`` changes nothing:
        θ is never perturbed, so there is no perturbation to carry into the next step."""
        f32 = np.float32
        lr, eps, wd = f32(self.lr(t)), f32(self.eps(t)), f32(self.weight_decay)
        seeds = [_core.derive_seed(self.seed, t, i) for i in range(self.queries)]
        signs = [float(eps), float(-eps)] * self.queries_per_forward
        grads, losses = [], []
        for first in range(0, self.queries, self.queries_per_forward):
            group = seeds[first:first + self.queries_per_forward]
            copy_seeds = [s for s in group for _ in range(2)]
            _core.perturb_copies(self.buffer, self.engine.copies, self.engine.spans, copy_seeds, signs, self.noise)
            per_copy = np.asarray(loss_fn(), np.float32).reshape(-1, 2)
            if not np.all(np.isfinite(per_copy)):
                raise TrainingError(f"non-finite loss at step {t} (L± = {per_copy.ravel().tolist()})")
            grads += [float((plus - minus) / (f32(2) * eps)) for plus, minus in per_copy]
            losses += per_copy.ravel().tolist()
        _core.combine(self.buffer, float(f32(1) - lr * wd), seeds, self._coefs(grads, lr), self.noise)
        return StepRecord(t, seeds, grads, float(lr), float(eps), float(wd), self.noise, float(np.mean(losses)))

    def replay(self, record: StepRecord) -> None:
        """The step's one arena pass, from its logged seeds and projected gradients."""
        f32 = np.float32
        lr, wd = f32(record.lr), f32(record.weight_decay)
        _core.combine(self.buffer, float(f32(1) - lr * wd), record.seeds, self._coefs(record.grads, lr), record.noise)

    @staticmethod
    def _coefs(grads: Sequence[float], lr: np.float32) -> list[float]:
        scale = lr / np.float32(len(grads))
        return [float(-scale * np.float32(g)) for g in grads]


# -- the start-up choice ----------------------------------------------------------------------


@dataclass
class BatchingChoice:
    """What ``auto`` measured (seconds per evaluation) and chose; ``queries_per_forward`` 0 is sequential."""

    queries_per_forward: int
    sequential_s: float
    batched_s: dict[int, float] = field(default_factory=dict)

    @property
    def speedups(self) -> dict[int, float]:
        """Sequential cost over batched cost per evaluation, per queries per forward (> 1: batching helps)."""
        return {g: self.sequential_s / cost for g, cost in self.batched_s.items()}

    def describe(self) -> str:
        ratios = ", ".join(f"{2 * g} copies {s:.2f}x" for g, s in self.speedups.items())
        what = f"{self.queries_per_forward} queries per forward" if self.queries_per_forward else "sequential"
        return f"P-RGE: {what} (speed-up per evaluation over sequential: {ratios})"

    def to_json(self) -> dict:
        return {"choice": self.describe(), "queries_per_forward": self.queries_per_forward,
                "sequential_s": self.sequential_s,
                "batched_s": self.batched_s, "speedups": self.speedups}


def candidate_groups(queries: int) -> list[int]:
    """Queries per forward worth timing: the sizes in GROUP_SIZES that divide ``queries``."""
    return [g for g in GROUP_SIZES if g <= queries and queries % g == 0]


def choose_batching(
    queries: int,
    sequential_cost: Callable[[], float],
    batched_cost: Callable[[int], float],
    margin: float = MARGIN,
) -> BatchingChoice:
    """Batch only where it is faster than sequential by ``margin``; costs are seconds per evaluation."""
    choice = BatchingChoice(0, sequential_cost())
    for group in candidate_groups(queries):
        choice.batched_s[group] = batched_cost(group)
    best = min(choice.batched_s, key=choice.batched_s.get, default=None)
    if best is not None and choice.batched_s[best] <= (1 - margin) * choice.sequential_s:
        choice.queries_per_forward = best
    log.info(choice.describe())
    return choice


def fastest_seconds(run: Callable[[], object], repeats: int = 3) -> float:
    """Fastest wall time of ``run`` over ``repeats`` calls after a warm-up one (the first run allocates).
    The fastest, not the median: other load on the device only ever adds time, to either side."""
    run()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return min(times)


def measured_costs(sequential_engine, batched_engine, batch, buffer: np.ndarray, noise: str, repeats: int = 3):
    """Cost functions for :func:`choose_batching` that time both engines on ``batch``.

    Sequential: one forward plus one perturbation pass (ZO-SGD makes about one per evaluation), the
    pass on a scratch copy so θ stays untouched. Batched: one fill of the copies plus one forward, per copy.
    """
    scratch = buffer.copy()

    def sequential() -> float:
        sequential_engine.set_batch(batch)
        forward = fastest_seconds(sequential_engine.loss, repeats)
        return forward + fastest_seconds(lambda: _core.perturb(scratch, 1, 1e-3, noise), repeats)

    def batched(group: int) -> float:
        width = 2 * group
        batched_engine.set_width(width)
        batched_engine.set_batch(batch)
        seeds, scales = [s for s in range(group) for _ in range(2)], [1e-3, -1e-3] * group

        def evaluate() -> None:
            _core.perturb_copies(buffer, batched_engine.copies, batched_engine.spans, seeds, scales, noise)
            batched_engine.losses()

        return fastest_seconds(evaluate, repeats) / width

    return sequential, batched


def parallel_strategy(config, sequential_engine, optimizer, make_engine: Callable[[], object], batch,
                      buffer: np.ndarray, saved: dict | None):
    """The engine and optimizer that ``config.parallel`` asks for, and what ``auto`` measured (or None).

    ``make_engine()`` builds the copy-batched engine; ``optimizer`` is what ``build_optimizer``
    made (a ParallelZO for ``on``, ZO-SGD for ``auto``, kept when batching does not pay). A resumed
    run (``saved``: the checkpoint's optimizer state) batches exactly as the interrupted one did,
    without measuring again, so it resumes bit for bit.
    """
    choice, engine = None, None
    if saved is not None:
        group = saved.get("queries_per_forward", 0)
    elif config.parallel == "on":
        group = config.queries
    else:
        engine = make_engine()
        costs = measured_costs(sequential_engine, engine, batch, buffer, config.noise)
        choice = choose_batching(config.queries, *costs)
        group = choice.queries_per_forward
    if not group:
        return sequential_engine, optimizer, choice
    engine = engine or make_engine()
    parallel = optimizer if isinstance(optimizer, ParallelZO) else ParallelZO.from_config(config, buffer)
    parallel.attach(engine, group)
    return engine, parallel, choice
