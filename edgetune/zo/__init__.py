"""Zeroth-order estimators, optimizers and schedules.

An optimizer is a strategy object over the arena buffer (see :class:`Optimizer`); the trainer picks
one by name from :data:`OPTIMIZERS` (``--optimizer``) and never looks inside it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from edgetune.zo.schedules import Schedule
from edgetune.zo.zosgd import ZOSGD, StepRecord


class Optimizer(Protocol):
    name: str

    def step(self, t: int, loss_fn: Callable[[], float], chain: bool = False) -> StepRecord:
        """One step from the arena's θ_t; ``chain``: step t + 1 follows with nothing reading θ between."""

    def settle(self) -> None:
        """Leave the arena at θ (after an interruption of a chained step)."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state beyond the arena (saved in checkpoints; empty for ZO-SGD)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


OPTIMIZERS: dict[str, type] = {ZOSGD.name: ZOSGD}


def build_optimizer(config, buffer: np.ndarray) -> Optimizer:
    """The optimizer ``config.optimizer`` names, over ``buffer``, with the config's schedules."""
    cls = OPTIMIZERS[config.optimizer]
    return cls.from_config(config, buffer)


__all__ = ["OPTIMIZERS", "Optimizer", "Schedule", "StepRecord", "ZOSGD", "build_optimizer"]
