"""The exact head: the classifier's last linear layer updated first-order, the layers below by ZO.

The suffix graph outputs the exact gradient of the batch's mean loss with respect to the head's weight
and bias (``graph/head_grad.py``), and :meth:`edgetune.engine.LossEngine.bind_output` has every forward
write it into two small arrays (:class:`HeadGrads`). The head stays in the arena like any trainable
slice, so checkpoints, ``save`` and ``model.onnx`` see it unchanged, but the ZO optimizer below is built
over the arena less the head's ranges (:class:`WithoutHead`): its forwards at θ ± εz leave the head as
it is, and the mean of their head gradients is the gradient at θ up to O(ε²) (the ± terms' first-order
parts cancel). With nothing below the head in the slice, a step is one forward at θ.

After the ZO step has updated the layers below, the head takes one step from the same θ_t: Adam by
default (2·(C·H + C) floats of moments; chosen over SGD in benchmarks/bench_exact_head.py), or SGD, along
the gradient of the mean loss + λ/2·‖W‖² (``l2``, default :data:`edgetune.zo.options.HEAD_L2` = 0.01: the weight's
gradient plus λ·W, the bias's as it is), which keeps a head that runs for hundreds of epochs from over-fitting.

Replay: the head's update is a function of the features, not of seeds and scalars, and the layers below
replay from their seeds whatever the head holds. So the log carries the head's float32 values (C·H + C
floats, ``StepRecord.head_values``, the trajectory log's head segment) only where replay must set them: on
the last record each time the log is written (:meth:`edgetune.loop.TrainingRun.save_checkpoint`) and on a
rollback record (the state it returns to); :meth:`ExactHead.replay` sets them, the same bits. Not one update
per step: a head step served from the activation cache costs ~0.5 ms, so a run takes hundreds of thousands
of them, and 3 kB each (kept in memory until the log is written) grew a 300-CPU-s run to 4 GB.

Rollback: the head is small, so the run keeps copies of it (with its Adam moments) where the guard may
return: before the first step and before the step with the best smoothed loss (:meth:`ExactHead.mark_best`).
The layers below roll back by their undo records as without the exact head; the head is restored from the
copy (:meth:`ExactHead.restore`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetune.errors import EdgetuneError, NonFiniteLoss, TrainingError
from edgetune.graph.head_grad import HEAD_GRAD_B, HEAD_GRAD_W, LinearHead
from edgetune.zo import build_optimizer
from edgetune.zo.options import HEAD_L2, HEAD_METHODS
from edgetune.zo.schedules import Schedule
from edgetune.zo.subset import Span
from edgetune.zo.zosgd import StepRecord

DEFAULT_METHOD = "adam"
# bench_exact_head.py --lr-grid (MiniLM + Rotten Tomatoes, batch 8): Adam 3e-3 and SGD 0.1 reach 0.81 dev
# accuracy in 200 steps and hold 0.79-0.81 to 3000; Adam 1e-2+ and SGD 0.3+ wander lower. Adam is the default:
# its step does not scale with the features' magnitude, which differs between models.
DEFAULT_LR = {"adam": 3e-3, "sgd": 1e-1}


class WithoutHead:
    """The arena spans a ZO step perturbs and updates when the head is updated exactly: all but the head.

    Passed as an optimizer's ``subsets`` (the interface :class:`edgetune.zo.subset.BlockSubsets` offers):
    the noise of a span is that of its global arena offsets, as under ``--rotate``.
    """

    def __init__(self, arena, head: LinearHead):
        """The ranges of every tensor of ``arena`` (a finalized :class:`edgetune._core.Arena`) but the head's,
        adjacent ones merged (the arena's alignment padding between tensors stays out)."""
        kept = {head.weight, head.bias}
        ranges = sorted((arena.offset(n), arena.offset(n) + arena.numel(n)) for n in arena.names() if n not in kept)
        self._spans: list[Span] = []
        for start, end in ranges:
            if self._spans and self._spans[-1][1] == start:
                self._spans[-1] = (self._spans[-1][0], end)
            else:
                self._spans.append((start, end))

    def spans(self, t: int) -> list[Span]:
        return list(self._spans)

    def chosen(self, t: int) -> None:
        return None  # not a block rotation: the records name no blocks

    @property
    def empty(self) -> bool:
        return not self._spans


@dataclass
class HeadState:
    """The head as it was before step ``step``: its values (weight, then bias, raveled) and optimizer state."""

    step: int
    values: np.ndarray
    moments: list[tuple[np.ndarray, np.ndarray]]
    updates: int

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "values": self.values.tolist(), "updates": self.updates,
                "moments": [[m.tolist(), v.tolist()] for m, v in self.moments]}

    @classmethod
    def from_json(cls, state: dict[str, Any]) -> HeadState:
        # float32 → JSON → float32 is exact: the floats JSON holds are float32 values
        return cls(int(state["step"]), np.asarray(state["values"], np.float32),
                   [(np.asarray(m, np.float32), np.asarray(v, np.float32)) for m, v in state["moments"]],
                   int(state["updates"]))


@dataclass
class HeadGrads:
    """Where every forward leaves the head's gradient (bound engine outputs) and the head's arena views."""

    weight: np.ndarray
    bias: np.ndarray | None
    weight_grad: np.ndarray
    bias_grad: np.ndarray | None

    @classmethod
    def bind(cls, engine, weights: dict[str, np.ndarray], head: LinearHead) -> HeadGrads:
        """Arrays for the gradient outputs, bound to ``engine`` (a LossEngine over a ``head_grad`` graph)."""
        weight_grad = np.zeros(head.weight_shape, np.float32)
        engine.bind_output(HEAD_GRAD_W, weight_grad)
        bias_grad = None
        if head.bias is not None:
            bias_grad = np.zeros(head.bias_shape, np.float32)
            engine.bind_output(HEAD_GRAD_B, bias_grad)
        return cls(weights[head.weight], weights[head.bias] if head.bias else None, weight_grad, bias_grad)

    @classmethod
    def unbound(cls, weights: dict[str, np.ndarray], head: LinearHead) -> HeadGrads:
        """The head's arena views with gradient arrays no engine writes: for replay, which runs no forward."""
        bias = weights[head.bias] if head.bias else None
        return cls(weights[head.weight], bias, np.zeros(head.weight_shape, np.float32),
                   None if bias is None else np.zeros(head.bias_shape, np.float32))

    def pairs(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(arena view, gradient array) of the weight and, when there is one, the bias."""
        return [(self.weight, self.weight_grad)] + ([(self.bias, self.bias_grad)] if self.bias is not None else [])


class ExactHead:
    """An optimizer (see :class:`edgetune.zo.Optimizer`): ZO below the head (``lower``), first-order on it."""

    name = "exact-head"

    def __init__(self, grads: HeadGrads, lower=None, lr: Schedule | float | None = None,
                 method: str = DEFAULT_METHOD, betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-8,
                 noise: str = "rademacher", l2: float = HEAD_L2):
        """``lower``: a ZO optimizer built with ``subsets=WithoutHead(...)``, or None when the slice is the
        head alone; ``lr``: the head's own (None: :data:`DEFAULT_LR` of ``method``); ``noise``: the run's
        noise kind, which a head-only step's record names (a trajectory holds one kind) though it draws none;
        ``l2``: the penalty λ on the weight (λ·W joins its gradient)."""
        if method not in HEAD_METHODS:
            raise EdgetuneError(f"head method '{method}': choose {' or '.join(HEAD_METHODS)}")
        if not l2 >= 0.0:
            raise EdgetuneError(f"head L2 penalty {l2}: it must be 0 or more")
        self.grads, self.lower, self.method, self.l2 = grads, lower, method, np.float32(l2)
        self.lr = lr if isinstance(lr, Schedule) else Schedule(DEFAULT_LR[method] if lr is None else float(lr))
        self.betas, self.adam_eps, self.noise = betas, adam_eps, noise
        self._sums = [np.zeros_like(g) for _, g in grads.pairs()]
        self._moments = [(np.zeros_like(g), np.zeros_like(g)) for _, g in grads.pairs()] if method == "adam" else []
        self._updates = 0  # Adam's bias correction counts the head's steps, resumed with the state
        self.warm_until = 0  # steps before this update the head alone (--lr auto's warm-up: edgetune.loop)
        self._before: HeadState | None = None  # the head before the step in progress (or the last one)
        self._marks: dict[str, HeadState] = {}  # "start", "best": where a rollback may return

    @classmethod
    def replayer(cls, config, arena, weights: dict[str, np.ndarray], head: LinearHead) -> ExactHead:
        """The optimizer ``edgetune replay`` redoes an exact-head run's records with (``config``: the run's)."""
        below = WithoutHead(arena, head)
        lower = None if below.empty else build_optimizer(config, arena.buffer(), subsets=below)
        return cls(HeadGrads.unbound(weights, head), lower, config.head_lr, config.head_method, noise=config.noise,
                   l2=config.head_l2)

    def step(self, t: int, loss_fn: Callable[[], float], chain: bool = False) -> StepRecord:
        """One ZO step of the layers below (or one forward at θ), then the head's step from the mean gradient."""
        self._before = self._capture(t)
        if t == 0:
            self._marks["start"] = self._before
        for total in self._sums:
            total.fill(0.0)
        forwards = 0

        def measured() -> float:
            nonlocal forwards
            loss = loss_fn()
            for total, (_, grad) in zip(self._sums, self.grads.pairs()):
                total += grad
            forwards += 1
            return loss

        if self.lower is None or t < self.warm_until:
            loss = measured()
            if not np.isfinite(loss):  # θ is as the step found it: the guard may roll back and go on
                raise NonFiniteLoss(f"non-finite loss at step {t} ({loss})", forwards=1)
            record = StepRecord(t, [], [], float(self.lr(t)), 0.0, 0.0, self.noise, float(loss), forwards=1)
        else:
            record = self.lower.step(t, measured, chain=chain)
        self._update(t, [total / np.float32(forwards) for total in self._sums])
        return record

    def _update(self, t: int, means: list[np.ndarray]) -> None:
        """The head's step from the mean gradients, the weight's (``means[0]``) with the L2 term λ·W added."""
        if self.l2:
            means[0] += self.l2 * self.grads.weight
        lr = np.float32(self.lr(t))
        self._updates += 1
        if self.method == "sgd":
            deltas = [lr * grad for grad in means]
        else:
            beta1, beta2 = self.betas
            correction1, correction2 = 1.0 - beta1 ** self._updates, 1.0 - beta2 ** self._updates
            deltas = []
            for grad, (m, v) in zip(means, self._moments):
                m *= np.float32(beta1)
                m += np.float32(1.0 - beta1) * grad
                v *= np.float32(beta2)
                v += np.float32(1.0 - beta2) * grad * grad
                denominator = np.sqrt(v / np.float32(correction2)) + np.float32(self.adam_eps)
                deltas.append(np.float32(lr / correction1) * m / denominator)
        for (view, _), delta in zip(self.grads.pairs(), deltas):
            view -= delta

    def values(self) -> bytes:
        """The head's weight then bias as float32 bytes: the trajectory's head segment."""
        return _pack([view for view, _ in self.grads.pairs()])

    def settle(self) -> None:
        if self.lower is not None:
            self.lower.settle()

    def replay(self, record: StepRecord) -> None:
        """Redo step ``record``: the layers below from its seeds; the head's values, where the record holds them,
        are set."""
        if self.lower is not None and record.seeds:
            self.lower.replay(record)
        if record.head_values is None:
            return
        floats = np.frombuffer(record.head_values, np.float32)
        views = [view for view, _ in self.grads.pairs()]
        if floats.size != sum(view.size for view in views):
            raise EdgetuneError(f"step {record.step}: the head update holds {floats.size} floats, the head "
                                f"{sum(view.size for view in views)}")
        start = 0
        for view in views:
            part = floats[start:start + view.size].reshape(view.shape)
            start += view.size
            view[...] = part

    def _capture(self, t: int) -> HeadState:
        return HeadState(t, np.frombuffer(self.values(), np.float32).copy(),
                         [(m.copy(), v.copy()) for m, v in self._moments], self._updates)

    def mark_best(self, step: int) -> None:
        """The guard's best state is θ before ``step``, the step just taken: keep the head as it was then."""
        if self._before is not None and self._before.step == step:
            self._marks["best"] = self._before

    def state_at(self, step: int) -> HeadState:
        """The kept head before ``step`` (where the guard rolls back: its best, or the start)."""
        for mark in self._marks.values():
            if mark.step == step:
                return mark
        raise TrainingError(f"the exact head's state before step {step} was not kept; cannot roll back to it")

    def restore(self, state: HeadState) -> None:
        """The head's optimizer state back to ``state`` (its values come back by the rollback record's replay)."""
        for (m, v), (saved_m, saved_v) in zip(self._moments, state.moments):
            m[...] = saved_m.reshape(m.shape)
            v[...] = saved_v.reshape(v.shape)
        self._updates = state.updates

    def state_dict(self) -> dict[str, Any]:
        head: dict[str, Any] = {"method": self.method, "updates": self._updates}
        if self._moments:
            head["moments"] = [[m.ravel().tolist(), v.ravel().tolist()] for m, v in self._moments]
        head["marks"] = {name: mark.to_json() for name, mark in self._marks.items()}
        return {"head": head, "lower": self.lower.state_dict() if self.lower is not None else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        head = state.get("head", {})
        if head.get("method", self.method) != self.method:
            raise EdgetuneError(f"the checkpoint's head was tuned with {head['method']}, not {self.method}")
        self._updates = int(head.get("updates", 0))
        for (m, v), (saved_m, saved_v) in zip(self._moments, head.get("moments", [])):
            m.ravel()[:] = saved_m
            v.ravel()[:] = saved_v
        self._marks = {name: HeadState.from_json(mark) for name, mark in head.get("marks", {}).items()}
        if self.lower is not None:
            self.lower.load_state_dict(state.get("lower", {}))

    def state_nbytes(self) -> int:
        lower = self.lower.state_nbytes() if self.lower is not None else 0
        return lower + sum(m.nbytes + v.nbytes for m, v in self._moments) + sum(s.nbytes for s in self._sums)


def _pack(arrays: list[np.ndarray]) -> bytes:
    """``arrays`` raveled one after another as little-endian float32 bytes (the trajectory's head segment)."""
    return b"".join(np.ascontiguousarray(a, "<f4").tobytes() for a in arrays)
