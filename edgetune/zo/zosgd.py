"""ZO-SGD: the SPSA / MeZO estimator with q queries per step.

For step t and query i the core draws z = noise(derive_seed(seed, t, i)) over the whole arena and

    θ + εz → L+,   θ − εz → L−,   g = (L+ − L−) / 2ε,   θ ← decay·θ − (lr/q)·g·z

The restore, the update and the next query's perturbation are one fused pass (``combine``), so a
step costs 2q + 1 passes over the arena and z is never stored. ``step(..., chain=True)`` also folds
the next step's first perturbation into the last combine: 2q passes per step in a run. A fused pass
computes the same float32 operations in the same order as the passes it replaces (each term rounded
in turn, no FMA), so chaining never changes a bit of the trajectory; it only saves a memory pass.
The arithmetic is the C API tuner's (``edgetune.h``), so an app embedding the C core gets the same
weights. q per step comes from a query policy (``edgetune.zo.queries``): fixed, growing, or decided
after each ± pair by the spread of the slopes so far (see :func:`fused_update` for the coefficients).

Under ``--rotate`` (``edgetune.zo.subset``) every pass of step t runs over the spans of that step's
blocks only; the rest of θ, decay included, is left as it is. A chained step fuses the next step's
first perturbation into the spans both steps share, and perturbs the next step's other spans in a
pass of their own: per element the same operations in the same order, so still bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgetune import _core
from edgetune.errors import EdgetuneError, NonFiniteLoss
from edgetune.zo.base import ZOBase
from edgetune.zo.subset import Span


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
    forwards: int | None = None  # forward passes the step ran, extra ones included; None: 2 per query
    projection: dict | None = None  # DiZO's projection after the step: its slopes and per-tensor scales
    divisor: int | None = None  # the q of the lr/q each query's fused pass applied (see fused_update); None: len(seeds)
    blocks: list[int] | None = None  # the blocks a rotated step updated (--rotate); None: the whole arena
    rollback: int | None = None  # the guard's undo back to θ before step ``rollback`` (edgetune.zo.guard); no forwards
    curvature: list[float] | None = None  # HiZOO: each query's (L+ + L− − 2L(θ))/2ε², what its Σ update read
    # --head exact: the head's float32 values (weight, then bias, raveled) after this step, where replay sets
    # them: the last record of each log write and rollback records (edgetune.zo.exact_head); the log's head segment
    head_values: bytes | None = None

    def __post_init__(self) -> None:
        if self.forwards is None:
            self.forwards = 2 * len(self.seeds)
        if self.divisor is None:
            self.divisor = len(self.seeds)

    def to_json(self) -> dict:
        """The fields, less an absent projection and a divisor equal to q (the trajectory log stores only
        the fields present)."""
        implied = {"projection": None, "divisor": len(self.seeds), "blocks": None, "rollback": None,
                   "curvature": None}
        # the head's values are floats, not JSON: the trajectory stores it in its own segment, steps.jsonl not
        return {k: v for k, v in self.__dict__.items()
                if k != "head_values" and (k not in implied or v != implied[k])}


def fused_update(seeds: list[int], grads: list[float], lr: np.float32, eps: np.float32, wd: np.float32,
                 divisor: int, last: bool) -> tuple[np.float32, list[int], list[float]]:
    """Decay, seeds and coefficients of the pass after query k = len(grads) − 1's ± pair, less the next
    query's perturbation: it restores θ from θ − εz_k and applies −(lr/divisor)·g_k·z_k.

    ``divisor`` is the most queries the step may take; the update of a query is applied before the policy
    knows whether more follow. The last pass also applies the weight decay and, when the step stopped at
    q < divisor queries, moves the earlier queries' coefficients from lr/divisor to lr/q in the same pass:
    q − 1 more noise streams in a pass the step makes anyway, and none when q = divisor (fixed and grow
    schedules, whose arithmetic is the C API tuner's).
    """
    f32 = np.float32
    k = len(grads) - 1
    g = f32(grads[k])
    if not last:
        return f32(1), [seeds[k]], [float(eps - (lr / f32(divisor)) * g)]
    q = len(grads)
    decay = f32(1) - lr * wd
    shift = decay * (lr / f32(divisor) - lr / f32(q))  # the earlier queries' coefficient change, decayed
    earlier = [float(shift * f32(gi)) for gi in grads[:k]] if q < divisor else []
    return decay, seeds[:len(earlier)] + [seeds[k]], earlier + [float(decay * eps - (lr / f32(q)) * g)]


class ZOSGD(ZOBase):
    """Strategy object: one call to :meth:`step` is one optimisation step on the arena buffer."""

    name = "zo-sgd"

    def state_dict(self) -> dict:
        return {}  # θ is the whole state

    def load_state_dict(self, state: dict) -> None:
        pass

    def step(self, t: int, loss_fn: Callable[[], float], chain: bool = False) -> StepRecord:
        """One step at the arena's θ_t; ``chain=True`` promises that step t + 1 follows directly,
        so its first perturbation is fused into this step's last pass (no eval or save between).
        The query policy decides after each ± pair whether another query follows."""
        f32 = np.float32
        lr, eps, wd = f32(self.lr(t)), f32(self.eps(t)), f32(self.weight_decay)
        limit = self.query_policy.limit(t)
        spans = self.spans(t)
        seeds, grads, losses = [_core.derive_seed(self.seed, t, 0)], [], []
        if self._pending is None:
            self._perturb(spans, seeds[0], float(eps))
        elif self._pending != (seeds[0], float(eps)) or self._pending_spans != spans:
            raise RuntimeError(f"step {t} does not follow the chained step before it")
        self._pending = None
        while True:
            seed = seeds[-1]
            loss_plus = f32(loss_fn())
            self._perturb(spans, seed, float(f32(-2) * eps))
            loss_minus = f32(loss_fn())
            if not (np.isfinite(loss_plus) and np.isfinite(loss_minus)):
                self._restore_after_failure(spans, seeds, grads, lr, eps, limit)
                raise NonFiniteLoss(f"non-finite loss at step {t} (L+={loss_plus}, L-={loss_minus})",
                                    forwards=2 * (len(grads) + 1))
            grads.append(float((loss_plus - loss_minus) / (f32(2) * eps)))
            losses += [float(loss_plus), float(loss_minus)]
            last = len(grads) == limit or not self.query_policy.more(grads)
            decay, pass_seeds, coefs = fused_update(seeds, grads, lr, eps, wd, limit, last)
            if not last:
                seeds.append(_core.derive_seed(self.seed, t, len(grads)))
                self._combine(spans, float(decay), pass_seeds + [seeds[-1]], coefs + [float(eps)])
            elif chain:
                self._pending = (_core.derive_seed(self.seed, t + 1, 0), float(f32(self.eps(t + 1))))
                self._pending_spans = self.spans(t + 1)
                self._combine_chained(spans, float(decay), pass_seeds, coefs)
            else:
                self._combine(spans, float(decay), pass_seeds, coefs)
            if last:
                return StepRecord(t, seeds, grads, float(lr), float(eps), float(wd), self.noise,
                                  float(np.mean(losses)), divisor=limit, blocks=self._blocks(t))

    def _restore_after_failure(self, spans: list[Span], seeds: list[int], grads: list[float], lr: np.float32,
                               eps: np.float32, limit: int) -> None:
        """Back to θ_t before a non-finite query's error: its +εz pass, with the share of the update the queries
        before it applied in their fused passes (−(lr/limit)·g each) taken back in the same pass; a rollback
        undoes only logged steps, so a share left in θ would be in no log, and replay would miss it."""
        if not grads:
            self._perturb(spans, seeds[-1], float(eps))
            return
        taken_back = [float((lr / np.float32(limit)) * np.float32(g)) for g in grads]
        self._combine(spans, 1.0, seeds[:len(grads)] + [seeds[-1]], taken_back + [float(eps)])

    def _combine_chained(self, spans: list[Span], decay: float, seeds: list[int], coefs: list[float]) -> None:
        """The step's last pass over ``spans`` with the pending perturbation of the next step added: fused
        where the next step works on the same span, a pass of its own on a span only the next step has."""
        seed, eps = self._pending
        shared = [span for span in spans if span in self._pending_spans]
        self._combine(shared, decay, seeds + [seed], coefs + [eps])
        self._combine([span for span in spans if span not in shared], decay, seeds, coefs)
        self._perturb([span for span in self._pending_spans if span not in shared], seed, eps)

    def _blocks(self, t: int) -> list[int] | None:
        return self.subsets.chosen(t) if self.subsets is not None else None

    def replay(self, record: StepRecord) -> None:
        """The passes :meth:`step` made, unchained (bit-identical to chained ones), without the forwards."""
        if record.noise != self.noise:
            raise ValueError(f"step {record.step} used {record.noise} noise; this optimizer draws {self.noise}")
        if record.blocks != self._blocks(record.step):
            raise EdgetuneError(f"step {record.step} was logged on blocks {record.blocks}, but this edgetune's "
                                f"--rotate settings choose {self._blocks(record.step)} for it")
        f32 = np.float32
        q = len(record.seeds)
        lr, eps, wd = f32(record.lr), f32(record.eps), f32(record.weight_decay)
        spans = self.spans(record.step)
        self._perturb(spans, record.seeds[0], float(eps))
        for i, seed in enumerate(record.seeds):
            self._perturb(spans, seed, float(f32(-2) * eps))
            decay, seeds, coefs = fused_update(record.seeds, record.grads[:i + 1], lr, eps, wd, record.divisor,
                                               i == q - 1)
            if i + 1 < q:
                seeds.append(record.seeds[i + 1])
                coefs.append(float(eps))
            self._combine(spans, float(decay), seeds, coefs)
