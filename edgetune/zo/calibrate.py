"""``--lr auto`` and ``--eps auto``: the step size from the curvature along the noise, measured before step 0.

ZO-SGD moves θ along one noise direction z per query: θ ← θ − lr·g·z with g ≈ zᵀ∇L. Along z the loss is
a parabola of curvature zᵀHz, so the step that minimises it is 1/zᵀHz and anything past 2/zᵀHz climbs
(the project measured "usable ZO lr ≈ 2/zᵀHz", docs/performance.md). Three forwards per probe measure it:

    zᵀHz ≈ (L(θ+hz) + L(θ−hz) − 2L(θ)) / h²,     g ≈ (L(θ+hz) − L(θ−hz)) / 2h

over a few probes z (seeds drawn from the run's seed) and batches (a stream of their own, from the same
seed), so a run calibrates the same way every time.

The estimate must be robust: zᵀHz varies far more from one z to the next than its mean (on MiniLM last:2 the
probes read ±100 around a mean of 10–25: the Hessian is indefinite), so the median of 8 probes changed sign
from seed to seed and the lr with it, by 5×. The step that minimises the expected loss is c / E[zᵀHz], so
lr = c / (mean + 2 standard errors) of the probes: an upper confidence bound of the mean, which shrinks the
step exactly where the probes disagree, and equals the mean (up to a few %) where they agree (a convex
head, the tiny models). While the standard error is over a quarter of that bound, rounds of 8 more probes
follow (``max_probes``: the loop spends at most a fifth of a forward budget on them). Where the bound is
not positive (a saddle: curvature negative along most z) the step is c / RMS(zᵀHz), the scale of the
curvature of either sign; only where even that is lost in rounding (a loss linear along z, e.g. LoRA-FA's
B = 0) does lr fall back to a step that moves the loss by a fraction of itself, lr = δ·L / g² (the
first-order change lr·g² is then δ·L). Every value is clamped to LR_BOUNDS.

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

# lr = C_LR / zᵀHz's upper bound. The bound is about twice the median of 8 probes where they mostly agree (the tiny
# models), and 0.025 / median was the largest stable constant there and on MiniLM last:2: 0.05 keeps those lrs
C_LR = 0.05
PROBES = 8  # a round of probes: the first, and each one the confidence check adds
MAX_PROBES = 32
CONFIDENCE = 0.25  # more rounds while the standard error of the mean zᵀHz is above this fraction of its bound
BATCHES = 4
FORWARDS = BATCHES + 2 * PROBES  # the fewest: a base loss per batch, a ± pair per probe of the first round
PROBE_H = 3e-3  # the probe's step h: zᵀHz was the same within 10 % for h from 1e-3 to 1e-2 (tiny classifier, MiniLM last:2)
LR_BOUNDS = (1e-7, 1.0)  # clamp: beyond these the measurement says more about rounding than about the loss
# δ of the fallback lr = δ·L/g²: a first step that moves the loss by about 4 %. Measured where it applies, SmolLM2's
# LoRA-FA at B = 0 (120 forwards): δ = 0.01 gave lr 0.078 and dev loss 6.96 → 2.78, the hand-tuned lr 0.3 (δ ≈ 0.04) 0.98
FALLBACK_FRACTION = 0.04
_ROUNDING = 2.0**-23
_PROBE_STEP = 2**32  # the probes' seeds: derive_seed(seed, 2³², i), a step index no logged step can have (u32)


@dataclass
class Calibration:
    """What the probes measured and the lr and ε they chose (summary.json's ``calibration``)."""

    lr: float
    eps: float
    curvature: float  # the curvature lr is from: mean zᵀHz + 2 standard errors (RMS zᵀHz at a saddle)
    loss: float  # mean L(θ) over the calibration batches
    loss_noise: float  # standard deviation of L(θ) across those batches
    grad_rms: float  # root mean square of the probes' projected gradients
    probes: int
    forwards: int
    fallback: bool  # the curvature was not usable: lr from the gradient scale
    curvature_se: float = 0.0  # standard error of the mean zᵀHz (0 in a checkpoint that predates it)

    def to_json(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """The console's one line."""
        why = (f"from gradient scale {self.grad_rms:.3g} (zᵀHz {self.curvature:.3g} not usable)" if self.fallback
               else f"from zᵀHz {self.curvature:.3g}")
        return f"lr auto: {self.lr:.4g} {why} ({self.probes} probes), eps {self.eps:.3g}"


def calibrate(buffer: np.ndarray, seed: int, noise: str, batches: list[Callable[[], object]],
              loss: Callable[[], float], eps: float | None, probes: int = PROBES, c: float | None = None,
              max_probes: int = MAX_PROBES, spans: list[tuple[int, int]] | None = None) -> Calibration:
    """Measure lr (and ε when ``eps`` is None) on ``buffer`` (θ, left bit for bit as it was).

    ``batches``: one callable per calibration batch that binds it; ``loss``: the mean loss of the bound batch
    at the arena's current θ. Probe i runs on batch i mod len(batches). ``probes`` run first, then rounds of
    as many more while :func:`uncertain` says so, up to ``max_probes`` (the same seeds give the same rounds).
    ``spans``: the arena ranges the steps perturb (None: all of it), each with the noise of its global offsets;
    under --head exact the head is not among them, and its curvature must not set the lower layers' lr."""
    spans = [(0, len(buffer))] if spans is None else spans

    def perturb(z_seed: int, scale: float) -> None:
        for start, end in spans:
            _core.perturb(buffer[start:end], z_seed, scale, noise, start)

    base: list[float] = []
    curvatures: list[float] = []
    grads: list[float] = []
    with _saved(buffer) as restore:
        done = 0
        while done == 0 or (done + probes <= max_probes and uncertain(curvatures, base)):
            for b, bind in enumerate(batches):
                bind()
                if len(base) < len(batches):  # θ is the same in every round: one base loss per batch
                    base.append(float(loss()))
                for i in range(done + (b - done) % len(batches), done + probes, len(batches)):
                    z_seed = _core.derive_seed(seed, _PROBE_STEP, i)
                    perturb(z_seed, PROBE_H)
                    plus = float(loss())
                    perturb(z_seed, -2 * PROBE_H)
                    minus = float(loss())
                    restore()
                    curvatures.append((plus + minus - 2 * base[b]) / PROBE_H**2)
                    grads.append((plus - minus) / (2 * PROBE_H))
            done += probes
    return choose(curvatures, grads, base, eps, C_LR if c is None else c, forwards=len(batches) + 2 * done)


def probe_cap(forward_budget: int) -> int:
    """The most probes a calibration may take: MAX_PROBES, and under a forward budget (what is left of it) whole
    rounds within a fifth of it (a short run keeps its forwards for steps), never fewer than the first round."""
    if not forward_budget:
        return MAX_PROBES
    rounds = (forward_budget // 5 - BATCHES) // (2 * PROBES)
    return int(np.clip(rounds * PROBES, PROBES, MAX_PROBES))


def _bound(curvatures: list[float]) -> tuple[float, float]:
    """(mean zᵀHz + 2 standard errors, the standard error) over the probes."""
    values = np.asarray(curvatures, dtype=np.float64)
    se = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    return float(np.mean(values)) + 2 * se, se


def _measurable(curvature: float, loss: float) -> bool:
    """A second difference within a few rounding steps of L says nothing about the curvature."""
    return bool(np.isfinite(curvature)) and curvature * PROBE_H**2 > 64 * _ROUNDING * max(abs(loss), 1e-30)


def uncertain(curvatures: list[float], base: list[float]) -> bool:
    """Whether another round of probes may change lr: the curvature is measurable at all (a loss linear
    along the noise stays linear however many probes read it) and the mean's standard error is more than
    CONFIDENCE of its upper bound, or that bound is not positive (a saddle, or probes of either sign)."""
    loss = float(np.mean(base))
    if not _measurable(float(np.sqrt(np.mean(np.square(curvatures)))), loss):
        return False
    bound, se = _bound(curvatures)
    return bound <= 0 or se > CONFIDENCE * bound


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
    curvature, se = _bound(curvatures)
    grad_rms = float(np.sqrt(np.mean(np.square(grads))))
    rounding = _ROUNDING * max(abs(loss), 1e-30)
    if not _measurable(curvature, loss):  # a saddle: the scale of the curvature of either sign
        curvature = float(np.sqrt(np.mean(np.square(curvatures))))
    usable = _measurable(curvature, loss)
    if usable:
        lr = c / curvature
    else:
        lr = FALLBACK_FRACTION * max(abs(loss), 1e-12) / max(grad_rms**2, 1e-30)
    lr = float(np.clip(lr, *LR_BOUNDS))
    if eps is None:
        eps = _auto_eps(grad_rms, curvature if usable else 0.0, rounding)
    return Calibration(lr=lr, eps=float(eps), curvature=curvature, loss=loss, loss_noise=noise, grad_rms=grad_rms,
                       probes=len(curvatures), forwards=forwards, fallback=not usable, curvature_se=se)


def _auto_eps(grad_rms: float, curvature: float, rounding: float) -> float:
    """ε with L+ − L− = 2ε·g at least 10⁴ rounding steps, and at most a tenth of |g|/zᵀHz (where the parabola
    leaves the tangent); the geometric middle of the two, within [1e-5, 1e-1]."""
    low = 1e4 * rounding / max(grad_rms, 1e-30)
    high = 0.1 * grad_rms / curvature if curvature > 0 else 1e-1
    middle = np.sqrt(low * high) if high > low else low
    return float(np.clip(middle, 1e-5, 1e-1))
