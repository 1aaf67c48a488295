"""ZO-SGD: the SPSA / MeZO estimator with q queries per step.

For step t and query i the core draws z = noise(derive_seed(seed, t, i)) over the whole arena and

    θ + εz → L+,   θ − εz → L−,   g = (L+ − L−) / 2ε,   θ ← decay·θ − (lr/q)·g·z

The restore, the update and the next query's perturbation are one fused pass (``combine``), so a
step costs 2q + 1 passes over the arena and z is never stored. ``step(..., chain=True)`` also folds
the next step's first perturbation into the last combine: 2q passes per step in a run. A fused pass
computes the same float32 operations in the same order as the passes it replaces (each term rounded
in turn, no FMA), so chaining never changes a bit of the trajectory; it only saves a memory pass.
The arithmetic is the C API tuner's (``edgetune.h``), so an app embedding the C core gets the same
weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgetune import _core
from edgetune.errors import TrainingError
from edgetune.zo.schedules import Schedule


@dataclass
class StepRecord:
    """Everything needed to replay a step: seeds, projected gradients, lr, ε, decay and noise kind."""

    step: int
    seeds: list[int]
    grads: list[float]
    lr: float
    eps: float
    weight_decay: float
    noise: str
    loss: float  # mean of L+ and L− over the queries: the training loss at θ, for logs

    def to_json(self) -> dict:
        return dict(self.__dict__)


class ZOSGD:
    """Strategy object: one call to :meth:`step` is one optimisation step on the arena buffer."""

    name = "zo-sgd"
    forwards_per_query = 2

    def __init__(
        self,
        buffer: np.ndarray,
        seed: int,
        lr: Schedule,
        eps: Schedule,
        queries: int = 1,
        weight_decay: float = 0.0,
        noise: str = "gaussian",
    ):
        if queries < 1:
            raise ValueError("queries must be >= 1")
        self.buffer = buffer
        self.seed = seed
        self.lr = lr
        self.eps = eps
        self.queries = queries
        self.weight_decay = weight_decay
        self.noise = noise
        self._pending: tuple[int, float] | None = None  # (seed, ε) of a perturbation applied by a chained step

    @classmethod
    def from_config(cls, config, buffer: np.ndarray) -> ZOSGD:
        return cls(
            buffer,
            seed=config.seed,
            lr=Schedule(config.lr, config.schedule, config.steps, config.warmup),
            eps=Schedule(config.eps),
            queries=config.queries,
            weight_decay=config.weight_decay,
            noise=config.noise,
        )

    def state_dict(self) -> dict:
        return {}  # θ is the whole state

    def load_state_dict(self, state: dict) -> None:
        pass

    def step(self, t: int, loss_fn: Callable[[], float], chain: bool = False) -> StepRecord:
        """One step at the arena's θ_t; ``chain=True`` promises that step t + 1 follows directly,
        so its first perturbation is fused into this step's last pass (no eval or save between)."""
        q = self.queries
        f32 = np.float32
        lr, eps, wd = f32(self.lr(t)), f32(self.eps(t)), f32(self.weight_decay)
        seeds = [_core.derive_seed(self.seed, t, i) for i in range(q)]
        grads, losses = [], []
        if self._pending is None:
            _core.perturb(self.buffer, seeds[0], float(eps), self.noise)
        elif self._pending != (seeds[0], float(eps)):
            raise RuntimeError(f"step {t} does not follow the chained step before it")
        self._pending = None
        for i, seed in enumerate(seeds):
            loss_plus = f32(loss_fn())
            _core.perturb(self.buffer, seed, float(f32(-2) * eps), self.noise)
            loss_minus = f32(loss_fn())
            if not (np.isfinite(loss_plus) and np.isfinite(loss_minus)):
                _core.perturb(self.buffer, seed, float(eps), self.noise)  # back to θ before raising
                raise TrainingError(f"non-finite loss at step {t} (L+={loss_plus}, L-={loss_minus})")
            g = (loss_plus - loss_minus) / (f32(2) * eps)
            decay = f32(1) - lr * wd if i == q - 1 else f32(1)
            c_cur = decay * eps - (lr / f32(q)) * g
            if i + 1 < q:
                nxt = (seeds[i + 1], float(eps))
            elif chain:
                nxt = self._pending = (_core.derive_seed(self.seed, t + 1, 0), float(f32(self.eps(t + 1))))
            else:
                nxt = None
            if nxt is None:
                _core.combine(self.buffer, float(decay), [seed], [float(c_cur)], self.noise)
            else:
                _core.combine(self.buffer, float(decay), [seed, nxt[0]], [float(c_cur), nxt[1]], self.noise)
            grads.append(float(g))
            losses += [float(loss_plus), float(loss_minus)]
        return StepRecord(t, seeds, grads, float(lr), float(eps), float(wd), self.noise, float(np.mean(losses)))

    def settle(self) -> None:
        """Take back a chained perturbation (after an interruption): θ to within rounding."""
        if self._pending is not None:
            seed, eps = self._pending
            _core.perturb(self.buffer, seed, -eps, self.noise)
            self._pending = None
