"""DiZO (divergence-driven ZO, arXiv 2502.03304): ZO-SGD plus a layer-wise projection towards θ0.

Every κ steps (``dizo_interval``) DiZO rescales each trainable tensor's divergence from the
pretrained weights θ0 on the step's batch:

    θ_ℓ ← θ0_ℓ + r_ℓ · (θ_ℓ − θ0_ℓ),   r_ℓ = γ_ℓ / ‖θ_ℓ − θ0_ℓ‖

The vector r is found by ``dizo_iters`` ZO iterations on the loss: all r_ℓ are perturbed at once by
±ε·u (u Rademacher), the loss read on both sides, r ← clip(r − step·g·u, 1 − τ, 1 + τ), starting at
r = 1 (γ at the current distance). Searching r rather than γ makes ε, the step and the clip relative
to each tensor's own distance, as the reference implementation does by scaling γ's noise with
‖θ_ℓ − θ0_ℓ‖; no norm is ever computed.

Memory: θ0 is a read-only memory map of the prepared model's initial slice (evicted chunk by chunk),
and a candidate r is evaluated by rescaling θ in place from the previous candidate, never by keeping
a copy of θ: 2·iters + 1 passes of θ ← θ0 + (r_new / r_old)(θ − θ0) per projection. Each pass rounds
(θ − θ0), its product and the sum, so the projected θ differs from an exact one-pass rescale by a few
ulp of θ per pass; the sequence of passes is a function of the recorded slopes, so a replay repeats
it and lands on the same bits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgetune import _core
from edgetune.errors import EdgetuneError, TrainingError
from edgetune.zo.zosgd import ZOSGD, StepRecord


class AnchorFile(Protocol):
    """θ0 by tensor name, read-only and paged in on demand (``graph.cache.MappedTensors``)."""

    def __getitem__(self, name: str) -> np.ndarray: ...
    def evict(self, view: np.ndarray) -> None: ...


# Projection noise seeds are derive_seed(seed ^ salt, step, iteration): a stream apart from the queries'.
_PROJECTION_SALT = 0xD120D120D120D120
_CHUNK = 1 << 16  # elements per rescale slice: 256 KB of temporaries, and of anchor pages resident


@dataclass(frozen=True)
class Anchors:
    """θ0 for DiZO: the arena's views and, by the same names, their initial values memory-mapped."""

    weights: Mapping[str, np.ndarray]
    initial: AnchorFile


class DiZO:
    """ZO-SGD steps (a composed :class:`ZOSGD`) with DiZO's projection after every κ-th step."""

    name = "dizo"
    uses_anchors = True

    def __init__(self, sgd: ZOSGD, anchors: Anchors, interval: int = 50, iters: int = 10, eps: float = 0.1,
                 step: float = 2.0, tau: float = 0.2):
        self._sgd = sgd
        self._anchors = anchors
        self._names = list(anchors.weights)
        self.interval, self.iters, self.eps, self.step_size, self.tau = interval, iters, eps, step, tau
        self._scales: np.ndarray | None = None  # r the arena holds while a projection is under way
        self._work = np.empty(_CHUNK, np.float32)

    @classmethod
    def from_config(cls, config, buffer: np.ndarray, anchors: Anchors | None = None) -> DiZO:
        if anchors is None:
            raise EdgetuneError("--optimizer dizo needs the pretrained weights as anchors: tune a model prepared "
                                "through the cache (Tuner.from_onnx with a --trainable slice)")
        return cls(ZOSGD.from_config(config, buffer), anchors, config.dizo_interval, config.dizo_iters,
                   config.dizo_eps, config.dizo_step, config.dizo_tau)

    @property
    def lr(self):
        """The composed ZO-SGD's lr schedule (the run wraps it: the guard's scale, MEAZO's factor)."""
        return self._sgd.lr

    @lr.setter
    def lr(self, schedule) -> None:
        self._sgd.lr = schedule

    def state_dict(self) -> dict:
        return self._sgd.state_dict()  # the projection keeps nothing between steps

    def load_state_dict(self, state: dict) -> None:
        self._sgd.load_state_dict(state)

    def projects_after(self, t: int) -> bool:
        return (t + 1) % self.interval == 0

    def step(self, t: int, loss_fn: Callable[[], float], chain: bool = False) -> StepRecord:
        projecting = self.projects_after(t)
        record = self._sgd.step(t, loss_fn, chain=chain and not projecting)  # the projection reads θ
        if projecting:
            slopes, scales = self._search(t, lambda plus, minus: self._measure(t, plus, minus, loss_fn))
            record.projection = {"slopes": slopes, "scales": dict(zip(self._names, map(float, scales)))}
            record.forwards += 2 * self.iters
        return record

    def replay(self, record: StepRecord) -> None:
        """Redo ``record``'s step on the arena without forwards: ZO-SGD's update, then the same
        rescale passes its projection made (from the recorded slopes), landing on the same bits."""
        self._sgd.replay(record)
        if record.projection is None:
            return
        slopes: Iterator[float] = iter(record.projection["slopes"])

        def recorded(plus: np.ndarray, minus: np.ndarray) -> float:
            self._rescale_to(plus)
            self._rescale_to(minus)
            return next(slopes)

        _, scales = self._search(record.step, recorded)
        expected = np.array([record.projection["scales"][name] for name in self._names])
        if not np.array_equal(scales, expected):
            raise EdgetuneError(f"step {record.step}: replayed DiZO scales differ from the recorded ones "
                                "(different dizo_* settings?)")

    def settle(self) -> None:
        """Undo an interrupted projection (θ back to within rounding), then ZO-SGD's pending perturbation."""
        if self._scales is not None:
            self._rescale_to(np.ones(len(self._names)))
            self._scales = None
        self._sgd.settle()

    # -- the projection ---------------------------------------------------------------------------

    def _search(self, t: int, slope: Callable[[np.ndarray, np.ndarray], float]) -> tuple[list[float], np.ndarray]:
        """ZO search of r from r = 1, leaving θ projected by the final r; returns the slopes and r.
        ``slope(plus, minus)`` leaves θ at ``minus`` and returns the loss's slope along u."""
        r = np.ones(len(self._names))
        self._scales = r.copy()
        slopes = []
        for k in range(self.iters):
            u = _core.noise(_core.derive_seed(self._sgd.seed ^ _PROJECTION_SALT, t, k), 0, len(r), "rademacher")
            g = slope(r + self.eps * u, r - self.eps * u)
            r = np.clip(r - self.step_size * g * u, 1 - self.tau, 1 + self.tau)
            slopes.append(g)
        self._rescale_to(r)
        self._scales = None
        return slopes, r

    def _measure(self, t: int, plus: np.ndarray, minus: np.ndarray, loss_fn: Callable[[], float]) -> float:
        self._rescale_to(plus)
        loss_plus = np.float32(loss_fn())
        self._rescale_to(minus)
        loss_minus = np.float32(loss_fn())
        if not (np.isfinite(loss_plus) and np.isfinite(loss_minus)):
            self.settle()
            raise TrainingError(f"non-finite loss in the DiZO projection after step {t} (L+={loss_plus}, L-={loss_minus})")
        return float((loss_plus - loss_minus) / np.float32(2 * self.eps))

    def _rescale_to(self, scales: np.ndarray) -> None:
        """θ_ℓ ← θ0_ℓ + (scales_ℓ / current_ℓ)(θ_ℓ − θ0_ℓ) in float32 slices, evicting θ0's pages as it goes."""
        ratios = (scales / self._scales).astype(np.float32)
        for name, ratio in zip(self._names, ratios):
            if ratio == 1:
                continue
            weights = self._anchors.weights[name].reshape(-1)
            anchor = self._anchors.initial[name].reshape(-1)
            for start in range(0, weights.size, _CHUNK):
                w, a = weights[start:start + _CHUNK], anchor[start:start + _CHUNK]
                delta = self._work[:w.size]
                np.subtract(w, a, out=delta)
                delta *= ratio
                np.add(a, delta, out=w)
                self._anchors.initial.evict(a)
        self._scales = scales.copy()
