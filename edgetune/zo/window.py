"""ZO momentum and ZO-Adam whose moments are rebuilt from a window of past steps: no per-parameter state.

A ZO gradient estimate is ĝ_s = (1/q) Σ_i g_{s,i} z(seed_{s,i}), so the last m estimates are m·q
(seed, g) pairs — a few hundred bytes whatever the model's size (after MicroAdam, arXiv 2405.15593,
which keeps a window of compressed gradients instead of Adam's moment vectors). Each update
regenerates the window's noise chunk by chunk and rebuilds the truncated moments

    m_t = Σ_{k<L} a_k ĝ_{t−k},   a_k = (1−β1) β1^k / Σ_{j<L} (1−β1) β1^j        (L = min(m, t + 1))
    v_t = Σ_{k<L} b_k ĝ_{t−k}²   (elementwise, b_k likewise with β2)

The normalisation is Adam's bias correction over the truncated window: the weights sum to one, so a
window of one step is ZO-SGD (bit for bit for momentum with one query) and lr means what it means there.

``zo-momentum``  θ ← decay·θ − lr·m_t: one ``combine`` pass over the window's m·q seeds.
``zo-adam``      θ ← decay·θ − lr·m_t/(√v_t + δ): one pass of the ``adam_window`` kernel, which restores
                 the last perturbation, regenerates each window step's noise, forms ĝ_s per step
                 before squaring it (with Gaussian noise or q > 1, ĝ² has cross terms) and applies the
                 update. With Rademacher noise and one query z² = 1, so v_t is the scalar Σ b_k g_k²
                 and the update is a ``combine`` with scaled coefficients — no squares or roots per
                 parameter, and other rounding than the kernel (each path is deterministic).

Memory moves to compute: an update regenerates m·q noise streams instead of reading two moment
vectors. All q queries of a step are measured at θ_t; the update follows them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from edgetune import _core
from edgetune.errors import TrainingError
from edgetune.zo.base import ZOBase
from edgetune.zo.schedules import Schedule
from edgetune.zo.zosgd import StepRecord

ADAM_DELTA = 1e-8  # δ of θ ← θ − lr·m̂/(√v̂ + δ)
_SEED_BYTES, _GRAD_BYTES, _STEP_BYTES = 8, 4, 8  # a window entry as a C implementation would hold it

f32 = np.float32


def ema_weights(beta: float, length: int) -> list[float]:
    """(1−β)β^k for k < length, normalised to sum to one, as float32 (newest step first).

    Computed by repeated float64 multiplication, not ``**``, so every platform gets the same bits.
    """
    raw, power = [], 1.0
    for _ in range(length):
        raw.append((1.0 - beta) * power)
        power *= beta
    total = sum(raw)
    return [float(f32(w / total)) for w in raw]


class GradientWindow:
    """The last ``length`` steps as (step, seeds, grads), newest first: ĝ_s = Σ_i (g_i/q) z(seed_i)."""

    def __init__(self, length: int):
        if length < 1:
            raise ValueError("window length must be >= 1")
        self.length = length
        self._entries: deque[tuple[int, list[int], list[float]]] = deque(maxlen=length)

    def push(self, step: int, seeds: list[int], grads: list[float]) -> None:
        self._entries.appendleft((step, list(seeds), list(grads)))

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[tuple[int, list[int], list[float]]]:
        return iter(self._entries)

    def terms(self, scales: list[float]) -> tuple[list[int], list[float]]:
        """Seeds and float32 coefficients of Σ_s scales[s]·ĝ_s, newest step first."""
        seeds, coefs = [], []
        for scale, (_, step_seeds, grads) in zip(scales, self._entries):
            per_query = f32(scale) / f32(len(step_seeds))
            seeds += step_seeds
            coefs += [float(per_query * f32(g)) for g in grads]
        return seeds, coefs

    def nbytes(self) -> int:
        return sum(_STEP_BYTES + len(seeds) * (_SEED_BYTES + _GRAD_BYTES) for _, seeds, _ in self._entries)

    def state_dict(self) -> list[dict[str, Any]]:
        return [{"step": step, "seeds": seeds, "grads": grads} for step, seeds, grads in self._entries]

    def load_state_dict(self, entries: list[dict[str, Any]]) -> None:
        self._entries.clear()
        for entry in reversed(entries[: self.length]):
            self.push(int(entry["step"]), [int(s) for s in entry["seeds"]], [float(g) for g in entry["grads"]])


class WindowedZO(ZOBase):
    """A ZO step whose q queries are all measured at θ_t, then one update pass by the subclass.

    Subclasses implement :meth:`_update`; the probing, chaining, replay and records are shared.
    The arena passes of a step: perturb(+εz_0); per query perturb(−2εz_i) and, between queries, one
    combine that restores z_i and adds z_{i+1}; then the update, which also restores z_{q−1} and,
    chained, adds the next step's first perturbation.
    """

    def step(self, t: int, loss_fn: Callable[[], float], chain: bool = False) -> StepRecord:
        """One step at the arena's θ_t; ``chain=True``: step t + 1 follows with nothing reading θ between."""
        lr, eps, wd = f32(self.lr(t)), f32(self.eps(t)), f32(self.weight_decay)
        first = _core.derive_seed(self.seed, t, 0)
        if self._pending is None:
            _core.perturb(self.buffer, first, float(eps), self.noise)
        elif self._pending != (first, float(eps)):
            raise RuntimeError(f"step {t} does not follow the chained step before it")
        self._pending = None
        seeds, grads, losses = self._probe(t, eps, loss_fn)
        nxt = (_core.derive_seed(self.seed, t + 1, 0), float(f32(self.eps(t + 1)))) if chain else None
        self._update(t, seeds, grads, lr, eps, f32(1) - lr * wd, nxt)
        self._pending = nxt
        return StepRecord(t, seeds, grads, float(lr), float(eps), float(wd), self.noise, float(np.mean(losses)))

    def replay(self, record: StepRecord) -> None:
        """The passes :meth:`step` made, unchained (bit-identical to chained ones), without the forwards.
        Records must come in step order from the run's start (or from a loaded state)."""
        lr, eps, wd = f32(record.lr), f32(record.eps), f32(record.weight_decay)
        _core.perturb(self.buffer, record.seeds[0], float(eps), self.noise)
        self._probe(record.step, eps, None, record)
        self._update(record.step, list(record.seeds), list(record.grads), lr, eps, f32(1) - lr * wd, None)

    def _probe(self, t: int, eps: np.float32, loss_fn: Callable[[], float] | None,
               record: StepRecord | None = None) -> tuple[list[int], list[float], list[float]]:
        """The ± pairs of step t from θ + εz_0, leaving the arena at θ − εz_{q−1}. Replay passes the
        ``record`` instead of ``loss_fn`` and makes the same passes without forwards."""
        def seed_of(i: int) -> int:
            return int(record.seeds[i]) if record else _core.derive_seed(self.seed, t, i)

        seeds, grads, losses = [seed_of(0)], [], []
        limit = len(record.seeds) if record else self.query_policy.limit(t)
        while True:
            seed = seeds[-1]
            if record:
                _core.perturb(self.buffer, seed, float(f32(-2) * eps), self.noise)
                grads.append(float(record.grads[len(grads)]))
            else:
                plus = f32(loss_fn())
                _core.perturb(self.buffer, seed, float(f32(-2) * eps), self.noise)
                minus = f32(loss_fn())
                if not (np.isfinite(plus) and np.isfinite(minus)):
                    _core.perturb(self.buffer, seed, float(eps), self.noise)  # back to θ before raising
                    raise TrainingError(f"non-finite loss at step {t} (L+={plus}, L-={minus})")
                grads.append(float((plus - minus) / (f32(2) * eps)))
                losses += [float(plus), float(minus)]
            if len(grads) == limit or not (record or self.query_policy.more(grads)):
                return seeds, grads, losses
            seeds.append(seed_of(len(grads)))
            _core.combine(self.buffer, 1.0, [seed, seeds[-1]], [float(eps), float(eps)], self.noise)

    def _update(self, t: int, seeds: list[int], grads: list[float], lr: np.float32, eps: np.float32,
                decay: np.float32, nxt: tuple[int, float] | None) -> None:
        """From θ − εz_{q−1}: restore, θ ← decay·θ − lr·(direction), then add ``nxt`` = (seed, ε), if any."""
        raise NotImplementedError


class _MomentWindow(WindowedZO):
    """Shared by ZO momentum and ZO-Adam: the window of (seed, g) pairs and β1, β2."""

    def __init__(self, buffer: np.ndarray, seed: int, lr: Schedule, eps: Schedule, window: int = 10,
                 beta1: float = 0.9, beta2: float = 0.99, **kwargs: Any):
        super().__init__(buffer, seed, lr, eps, **kwargs)
        self.window = GradientWindow(window)
        self.beta1 = beta1
        self.beta2 = beta2

    @classmethod
    def from_config(cls, config, buffer: np.ndarray) -> _MomentWindow:
        return cls(**cls.settings(config, buffer), window=config.window, beta1=config.beta1, beta2=config.beta2)

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window.load_state_dict(state.get("window", []))

    def state_nbytes(self) -> int:
        return self.window.nbytes()

    def _momentum_pass(self, seeds: list[int], lr: np.float32, eps: np.float32, decay: np.float32,
                       scale: np.float32, nxt: tuple[int, float] | None) -> None:
        """combine: decay·(θ − εz_last) + decay·ε·z_last − lr·scale·m_t (+ nxt). The restore is folded
        into the newest query's coefficient, as ZO-SGD does, so no extra noise stream is generated."""
        window_seeds, coefs = self.window.terms(ema_weights(self.beta1, len(self.window)))
        coefs = [float(-(lr * scale) * f32(c)) for c in coefs]
        last = len(seeds) - 1  # the newest step's entries come first, in query order
        coefs[last] = float(decay * eps + f32(coefs[last]))
        if nxt is not None:
            window_seeds, coefs = window_seeds + [nxt[0]], coefs + [nxt[1]]
        _core.combine(self.buffer, float(decay), window_seeds, coefs, self.noise)


class ZOMomentum(_MomentWindow):
    """θ ← decay·θ − lr·m_t, m_t the normalised truncated EMA of the last ``window`` ZO estimates."""

    name = "zo-momentum"

    def _update(self, t, seeds, grads, lr, eps, decay, nxt):
        self.window.push(t, seeds, grads)
        self._momentum_pass(seeds, lr, eps, decay, f32(1), nxt)


class ZOAdam(_MomentWindow):
    """θ ← decay·θ − lr·m_t/(√v_t + δ) with both moments rebuilt from the window by the C++ kernel."""

    name = "zo-adam"

    def _update(self, t, seeds, grads, lr, eps, decay, nxt):
        self.window.push(t, seeds, grads)
        if self.noise == "rademacher" and all(len(s) == 1 for _, s, _ in self.window):
            # z² = 1: v_t = Σ_k b_k g_k² is one number, and the update a momentum pass scaled by 1/(√v + δ)
            v = f32(0)
            for weight, (_, _, (g,)) in zip(ema_weights(self.beta2, len(self.window)), self.window):
                v = v + f32(weight) * (f32(g) * f32(g))
            self._momentum_pass(seeds, lr, eps, decay, f32(1) / (np.sqrt(v) + f32(ADAM_DELTA)), nxt)
            return
        window_seeds, coefs = self.window.terms([1.0] * len(self.window))
        _core.adam_window(
            self.buffer, window_seeds, coefs, [len(s) for _, s, _ in self.window],
            ema_weights(self.beta1, len(self.window)), ema_weights(self.beta2, len(self.window)),
            float(decay), float(lr), ADAM_DELTA, restore=(seeds[-1], float(eps)), next=nxt, dist=self.noise,
        )
