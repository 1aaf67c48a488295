"""``--lr auto`` and ``--eps auto``: the step size from the curvature along the noise, measured before step 0.

ZO-SGD moves θ along one noise direction z per query: θ ← θ − lr·g·z with g ≈ zᵀ∇L. Along z the loss is
a parabola of curvature zᵀHz, so the step that minimises it is 1/zᵀHz and anything past 2/zᵀHz climbs
(the project measured "usable ZO lr ≈ 2/zᵀHz", docs/performance.md). Three forwards per probe measure it:

    zᵀHz ≈ (L(θ+hz) + L(θ−hz) − 2L(θ)) / h²,     g ≈ (L(θ+hz) − L(θ−hz)) / 2h

over a few probes z (seeds drawn from the run's seed) and batches (a stream of their own, from the same
seed), so a run calibrates the same way every time. lr = c / median(zᵀHz), clamped; when the curvature is
negative or lost in rounding (a saddle, a loss linear along z) the step falls back to one that moves the
loss by a fraction of itself, lr = δ·L / g² (the first-order change lr·g² is then δ·L).

ε: the projected gradient divides L+ − L− by 2ε, so ε must make that difference far larger than the
float32 rounding of L (≈ 2⁻²³·|L|·√rows), and small against the curvature scale |g|/zᵀHz (where the
parabola bends away from the tangent).

θ is saved before the probes and restored after each, so the run starts from exactly the base weights (a
probe's ±hz passes would leave a rounding residue that no trajectory record describes). It is saved to an
unlinked temporary file, not copied in memory: a copy of the trainable arena is the size of the model when
everything is tuned, and the run's whole-process peak must stay at inference's (the file's pages sit in the
page cache, outside the process's RSS). Only a file that cannot be written falls back to a copy in memory.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np

from edgetune import _core

C_LR = 0.025  # lr = C_LR / median(zᵀHz): the largest stable on the tiny models and MiniLM last:2 (docs/optimizers.md)
PROBES = 8
BATCHES = 4
FORWARDS = BATCHES + 2 * PROBES  # a base loss per batch, a ± pair per probe
PROBE_H = 3e-3  # the probe's step h: zᵀHz was the same within 10 % for h from 1e-3 to 1e-2 (tiny classifier, MiniLM last:2)
LR_BOUNDS = (1e-7, 1.0)  # clamp: beyond these the measurement says more about rounding than about the loss
FALLBACK_FRACTION = 0.01  # δ of the fallback lr = δ·L/g²: a first step that moves the loss by about 1 %
_ROUNDING = 2.0**-23
_PROBE_STEP = 2**32  # the probes' seeds: derive_seed(seed, 2³², i), a step index no logged step can have (u32)


@dataclass
class Calibration:
    """What the probes measured and the lr and ε they chose (summary.json's ``calibration``)."""

    lr: float
    eps: float
    curvature: float  # median zᵀHz over the probes
    loss: float  # mean L(θ) over the calibration batches
    loss_noise: float  # standard deviation of L(θ) across those batches
    grad_rms: float  # root mean square of the probes' projected gradients
    probes: int
    forwards: int
    fallback: bool  # the curvature was not usable: lr from the gradient scale

    def to_json(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """The console's one line."""
        why = (f"from gradient scale {self.grad_rms:.3g} (zᵀHz {self.curvature:.3g} not usable)" if self.fallback
               else f"from zᵀHz {self.curvature:.3g}")
        return f"lr auto: {self.lr:.4g} {why} ({self.probes} probes), eps {self.eps:.3g}"


def calibrate(buffer: np.ndarray, seed: int, noise: str, batches: list[Callable[[], object]],
              loss: Callable[[], float], eps: float | None, probes: int = PROBES, c: float | None = None) -> Calibration:
    """Measure lr (and ε when ``eps`` is None) on ``buffer`` (θ, left bit for bit as it was).

    ``batches``: one callable per calibration batch that binds it; ``loss``: the mean loss of the bound batch
    at the arena's current θ. Probe i runs on batch i mod len(batches)."""
    base, curvatures, grads = [], [], []
    with _saved(buffer) as restore:
        for b, bind in enumerate(batches):
            bind()
            base.append(float(loss()))
            for i in range(b, probes, len(batches)):
                z_seed = _core.derive_seed(seed, _PROBE_STEP, i)
                _core.perturb(buffer, z_seed, PROBE_H, noise, 0)
                plus = float(loss())
                _core.perturb(buffer, z_seed, -2 * PROBE_H, noise, 0)
                minus = float(loss())
                restore()
                curvatures.append((plus + minus - 2 * base[b]) / PROBE_H**2)
                grads.append((plus - minus) / (2 * PROBE_H))
    return choose(curvatures, grads, base, eps, C_LR if c is None else c, forwards=len(batches) + 2 * probes)


@contextlib.contextmanager
def _saved(buffer: np.ndarray) -> Iterator[Callable[[], None]]:
    """θ saved (see the module's docstring); yields the function that puts it back, called once more on exit."""
    raw = memoryview(buffer).cast("B")
    with contextlib.ExitStack() as stack:
        try:
            file = stack.enter_context(tempfile.TemporaryFile())  # unlinked at once: gone however the process ends
            file.write(raw)
            file.flush()

            def restore() -> None:  # read straight into the arena: no second buffer
                file.seek(0)
                if file.readinto(raw) != raw.nbytes:
                    raise OSError("short read of the saved weights")
        except OSError as exc:  # a full or read-only temporary folder
            logging.getLogger(__name__).info("lr auto: the weights kept in memory during calibration (%s)", exc)
            copy = buffer.copy()

            def restore() -> None:
                buffer[...] = copy
        try:
            yield restore
        finally:
            restore()


def choose(curvatures: list[float], grads: list[float], base: list[float], eps: float | None, c: float,
           forwards: int) -> Calibration:
    """lr and ε from the probes' measurements (pure: the rules of the module docstring)."""
    loss = float(np.mean(base))
    noise = float(np.std(base))
    curvature = float(np.median(curvatures))
    grad_rms = float(np.sqrt(np.mean(np.square(grads))))
    rounding = _ROUNDING * max(abs(loss), 1e-30)
    # a second difference within a few rounding steps of L says nothing about the curvature
    usable = np.isfinite(curvature) and curvature * PROBE_H**2 > 64 * rounding
    if usable:
        lr = c / curvature
    else:
        lr = FALLBACK_FRACTION * max(abs(loss), 1e-12) / max(grad_rms**2, 1e-30)
    lr = float(np.clip(lr, *LR_BOUNDS))
    if eps is None:
        eps = _auto_eps(grad_rms, curvature if usable else 0.0, rounding)
    return Calibration(lr=lr, eps=float(eps), curvature=curvature, loss=loss, loss_noise=noise, grad_rms=grad_rms,
                       probes=len(curvatures), forwards=forwards, fallback=not usable)


def _auto_eps(grad_rms: float, curvature: float, rounding: float) -> float:
    """ε with L+ − L− = 2ε·g at least 10⁴ rounding steps, and at most a tenth of |g|/zᵀHz (where the parabola
    leaves the tangent); the geometric middle of the two, within [1e-5, 1e-1]."""
    low = 1e4 * rounding / max(grad_rms, 1e-30)
    high = 0.1 * grad_rms / curvature if curvature > 0 else 1e-1
    middle = np.sqrt(low * high) if high > low else low
    return float(np.clip(middle, 1e-5, 1e-1))
