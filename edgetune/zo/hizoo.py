"""HiZOO (arXiv 2402.15173): ZO-SGD along a perturbation shaped by a diagonal Hessian estimate Σ.

Σ (one float32 per trainable weight, starting at 1) is the paper's Σ⁻¹. Step t measures L(θ) once (one
forward more than ZO-SGD) and, per query with u ~ N(0, I) and the shape s = (Σ/mean Σ)^(−1/2):

    L± = L(θ ± ε·s∘u),   g = (L+ − L−)/2ε,   c = (L+ + L− − 2L(θ))/2ε²
    θ ← decay·θ − (lr/q)·Σ_i g_i·s∘u_i                        (s of Σ before the step)
    Σ ← (1 − α)·Σ + α·|c·(u² − 1)/s²|                         (α: --hizoo-smooth)

c·(u² − 1)/s² is the diagonal of the paper's estimator c·P^½(uuᵀ − I)P^½ for a perturbation P^(−½)u
(here P = 1/s²), unbiased for diag H up to O(ε²) (E[(uᵀAu)(uuᵀ − I)] = 2A for Gaussian u); the authors'
code drops the −I, which leaves nothing per-weight with ±1 noise, so HiZOO needs --noise gaussian.
Where this departs from the paper: Σ shapes the perturbation but not its size. The paper perturbs by
Σ^(−½) itself, so lr's meaning drifts as Σ's scale follows |c| (about zᵀHz/2, hundreds of times the
per-weight curvature); normalising by mean Σ keeps E‖s∘u‖² near d, so --lr auto's calibration (made at
Σ = 1, where HiZOO is ZO-SGD) keeps its meaning. The shape is clipped to [1/10, 10] so that one
weight's vanishing estimate cannot blow its noise up.

Exactness: every pass is float32 numpy, elementwise, in the order written above (the mean of Σ is a
float64 pairwise sum, fixed by numpy's algorithm); the record holds each query's c, so ``replay`` and a
resume (:meth:`rebuild`, Σ from the logged steps: Σ is never checkpointed) repeat the same operations.
Memory: Σ and two temporaries of the slice's size, hence the cap (--hizoo-max-params).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from edgetune import _core
from edgetune.errors import EdgetuneError, TrainingError
from edgetune.zo.base import ZOBase
from edgetune.zo.zosgd import StepRecord

f32 = np.float32
SHAPE_CLIP = 10.0  # the most s = (Σ/mean Σ)^(−½) may scale one weight's noise up or down


class HiZOO(ZOBase):
    """ZO-SGD with HiZOO's diagonal-curvature-shaped perturbation (see the module docstring)."""

    name = "hizoo"
    forwards_per_query = 2  # and one per step at θ

    def __init__(self, buffer: np.ndarray, seed: int, lr, eps, smooth: float = 0.01, **kwargs):
        super().__init__(buffer, seed, lr, eps, **kwargs)
        if self.noise != "gaussian":
            raise ValueError("HiZOO needs Gaussian noise")
        if not 0 < smooth < 1:
            raise ValueError(f"HiZOO smoothing {smooth} must be in (0, 1)")
        self.smooth = smooth
        self.hessian = np.ones(len(buffer), f32)  # Σ: the diagonal Hessian estimate

    @classmethod
    def from_config(cls, config, buffer: np.ndarray) -> HiZOO:
        if buffer.size > config.hizoo_max_params:
            raise EdgetuneError(f"--optimizer hizoo: --trainable selects {buffer.size} weights, more than "
                                f"--hizoo-max-params {config.hizoo_max_params} (it keeps a curvature float per weight): "
                                "tune a smaller slice (head, lora:r=8) or raise --hizoo-max-params")
        return cls(**cls.settings(config, buffer), smooth=config.hizoo_smooth)

    def state_dict(self) -> dict:
        return {}  # Σ is rebuilt from the trajectory on resume (rebuild), never written to the checkpoint

    def load_state_dict(self, state: dict) -> None:
        pass

    def state_nbytes(self) -> int:
        return self.hessian.nbytes

    def rebuild(self, records: Iterable[StepRecord]) -> None:
        """Σ after ``records`` (the run's steps from step 0), from their seeds and curvatures; θ untouched."""
        self.hessian = np.ones(len(self.buffer), f32)
        for record in records:
            shape = self._shape()
            for seed, c in zip(record.seeds, record.curvature or []):
                self._observe(self._noise(seed), c, shape)

    def step(self, t: int, loss_fn: Callable[[], float], chain: bool = False) -> StepRecord:
        """One step (never chained: the update's shape is read from Σ between steps)."""
        lr, eps, wd = f32(self.lr(t)), f32(self.eps(t)), f32(self.weight_decay)
        base = f32(loss_fn())
        if not np.isfinite(base):
            raise TrainingError(f"non-finite loss at step {t} (L={base})")
        shape = self._shape()
        seeds, grads, curvature = [], [], []
        for i in range(self.query_policy.limit(t)):
            seeds.append(_core.derive_seed(self.seed, t, i))
            plus, minus = self._query(shape, seeds[-1], eps, loss_fn)
            if not (np.isfinite(plus) and np.isfinite(minus)):
                raise TrainingError(f"non-finite loss at step {t} (L+={plus}, L-={minus})")
            grads.append(float((plus - minus) / (f32(2) * eps)))
            curvature.append(float((plus + minus - f32(2) * base) / (f32(2) * eps * eps)))
            if not np.isfinite(curvature[-1]):
                raise TrainingError(f"step {t}: the curvature along the noise overflows float32 (ε {eps} too small?)")
        self._update(shape, seeds, grads, curvature, lr, wd)
        return StepRecord(t, seeds, grads, float(lr), float(eps), float(wd), self.noise, float(base),
                          forwards=2 * len(seeds) + 1, curvature=curvature)

    def replay(self, record: StepRecord) -> None:
        """The passes :meth:`step` made, without the forwards; Σ follows from the recorded curvatures."""
        if record.noise != self.noise:
            raise ValueError(f"step {record.step} used {record.noise} noise; this optimizer draws {self.noise}")
        if record.curvature is None or len(record.curvature) != len(record.seeds):
            raise EdgetuneError(f"step {record.step} has no HiZOO curvature for each query: not a hizoo step")
        shape = self._shape()
        for seed in record.seeds:
            self._query(shape, seed, f32(record.eps), None)
        self._update(shape, record.seeds, record.grads, record.curvature, f32(record.lr), f32(record.weight_decay))

    def _shape(self) -> np.ndarray:
        """s = (Σ/mean Σ)^(−½), clipped to [1/SHAPE_CLIP, SHAPE_CLIP]."""
        mean = f32(np.mean(self.hessian, dtype=np.float64))
        with np.errstate(divide="ignore"):
            shape = np.sqrt(mean / self.hessian)
        return np.clip(shape, f32(1 / SHAPE_CLIP), f32(SHAPE_CLIP), out=shape)

    def _noise(self, seed: int) -> np.ndarray:
        return _core.noise(seed, 0, len(self.buffer), self.noise)

    def _query(self, shape: np.ndarray, seed: int, eps: np.float32,
               loss_fn: Callable[[], float] | None) -> tuple[np.float32, np.float32]:
        """θ + p, θ − p (p = ε·s∘u) and back, reading the loss at both sides unless replaying (None)."""
        probe = self._noise(seed)
        probe *= shape
        probe *= eps
        self.buffer += probe
        plus = f32(loss_fn()) if loss_fn else f32(0)
        twice = probe + probe  # exact: 2p
        self.buffer -= twice
        minus = f32(loss_fn()) if loss_fn else f32(0)
        self.buffer += probe
        return plus, minus

    def _update(self, shape: np.ndarray, seeds: list[int], grads: list[float], curvature: list[float],
                lr: np.float32, wd: np.float32) -> None:
        decay = f32(1) - lr * wd
        if decay != 1:
            self.buffer *= decay
        per_query = lr / f32(len(seeds))
        for seed, g, c in zip(seeds, grads, curvature):
            u = self._noise(seed)
            step = shape * (-(per_query * f32(g)))
            step *= u
            self.buffer += step
            self._observe(u, c, shape)

    def _observe(self, u: np.ndarray, c: float, shape: np.ndarray) -> None:
        """Σ ← (1 − α)Σ + α|c·(u² − 1)/s²| (u is overwritten)."""
        alpha = f32(self.smooth)
        u *= u
        u -= f32(1)
        u *= f32(c)
        u /= shape
        u /= shape
        np.abs(u, out=u)
        u *= alpha
        self.hessian *= f32(1) - alpha
        self.hessian += u
