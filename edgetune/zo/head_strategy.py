"""What the training loop asks of a run's head, one interface whether ZO tunes the slice whole (:class:`ZOSlice`,
the null strategy) or ``--head exact`` fits the head first-order (:class:`FittedHead`)."""

from __future__ import annotations

from typing import Any

from edgetune.zo.exact_head import ExactHead
from edgetune.zo.guard import BELOW_HEAD, HEAD_ALONE, ZO
from edgetune.zo.subset import Span


class ZOSlice:
    """ZO tunes the whole slice: ``zo`` is the run's optimizer, and the head has nothing of its own."""

    guard_rule = ZO  # what the guard takes for a divergence (edgetune.zo.guard)

    def __init__(self, optimizer: Any):
        self.zo = optimizer  # the part of the slice ZO tunes (None: none of it)

    def zo_spans(self, t: int) -> list[Span] | None:
        return None  # the arena ranges ZO perturbs (and the calibration probes): None, the whole arena

    def warm_up(self, steps: int) -> bool:
        """Whether --lr auto waits ``steps`` for the head to learn alone (else it calibrates at once)."""
        return False

    def warmed_up(self, t: int) -> bool:
        return False

    def carried_state(self) -> dict[str, Any] | None:
        return None  # what the optimizer rebuilt at the calibrated lr takes over

    def mark_best(self, step: int) -> None:
        """θ before ``step`` is the guard's best."""

    def roll_back(self, step: int) -> bytes | None:
        """The head's state back to before ``step``; its values there, for the last undo record to set."""
        return None  # the undo records take θ back whole

    def head_values(self) -> bytes | None:
        return None  # what the log's last record carries for replay to set


class FittedHead(ZOSlice):
    """--head exact: ZO below the head (``zo``; None with the head alone), the head fitted first-order."""

    def __init__(self, optimizer: ExactHead):
        super().__init__(optimizer.lower)
        self.head = optimizer
        self.guard_rule = HEAD_ALONE if self.zo is None else BELOW_HEAD

    def zo_spans(self, t: int) -> list[Span] | None:
        return self.zo.spans(t) if self.zo is not None else None

    def warm_up(self, steps: int) -> bool:
        self.head.warm_until = steps
        return True

    def warmed_up(self, t: int) -> bool:
        return bool(self.head.warm_until) and t >= self.head.warm_until

    def carried_state(self) -> dict[str, Any] | None:
        return self.head.state_dict()  # its moments and kept copies go on past the calibration

    def mark_best(self, step: int) -> None:
        self.head.mark_best(step)

    def roll_back(self, step: int) -> bytes | None:
        kept = self.head.state_at(step)
        self.head.restore(kept)  # its Adam moments and count (replay sets the values from the record)
        return kept.values.astype("<f4").tobytes()

    def head_values(self) -> bytes | None:
        return self.head.values()


def head_strategy(optimizer: Any) -> ZOSlice:
    """The strategy of a run's ``optimizer``."""
    return FittedHead(optimizer) if isinstance(optimizer, ExactHead) else ZOSlice(optimizer)
