"""Zeroth-order estimators, optimizers and schedules.

An optimizer is a strategy object over the arena buffer (see :class:`Optimizer`); the trainer picks
one by name from :data:`OPTIMIZERS` (``--optimizer``) and never looks inside it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from edgetune.zo.dizo import Anchors, DiZO
from edgetune.zo.hizoo import HiZOO
from edgetune.zo.lowrank import LOZO
from edgetune.zo.microadam import ZOMicroAdam
from edgetune.zo.prge import ParallelZO
from edgetune.zo.schedules import Schedule
from edgetune.zo.subset import BlockSubsets
from edgetune.zo.window import ZOAdam, ZOMomentum
from edgetune.zo.zosgd import ZOSGD, StepRecord


class Optimizer(Protocol):
    name: str

    def step(self, t: int, loss_fn: Callable[[], float], chain: bool = False) -> StepRecord:
        """One step from the arena's θ_t; ``chain``: step t + 1 follows with nothing reading θ between."""

    def settle(self) -> None:
        """Leave the arena at θ (after an interruption of a chained step)."""

    def replay(self, record: StepRecord) -> None:
        """Redo a recorded step's arena passes without forwards: θ_t → θ_{t+1}, bit for bit.

        Records are replayed in step order from step 0, so state rebuilt from earlier records
        (a window of past steps) is available; ``edgetune replay`` rebuilds a run this way.
        """

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state beyond the arena (saved in checkpoints; empty for ZO-SGD)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


OPTIMIZERS: dict[str, type] = {
    cls.name: cls for cls in (ZOSGD, DiZO, ZOMomentum, ZOAdam, ZOMicroAdam, LOZO, HiZOO)
}


def build_optimizer(config, buffer: np.ndarray, anchors: Anchors | None = None,
                    subsets: BlockSubsets | None = None, weights: Mapping[str, np.ndarray] | None = None) -> Optimizer:
    """The optimizer ``config.optimizer`` names, over ``buffer``, with the config's schedules.

    ``anchors`` (the pretrained θ0, memory-mapped) reaches only optimizers that declare ``uses_anchors``;
    ``subsets`` (:func:`edgetune.zo.subset.block_subsets`, the arena's blocks) is required by ``--rotate``;
    ``weights`` (the arena's views by tensor name) by optimizers that declare ``uses_layout`` (LOZO's matrices).
    """
    if getattr(config, "rotate", 0) and subsets is None:
        raise ValueError("--rotate needs the arena's block subsets (edgetune.zo.subset.block_subsets)")
    if getattr(config, "parallel", "off") == "on":  # P-RGE; Tuner.fit attaches its copy-batched engine
        return ParallelZO.from_config(config, buffer)
    cls = OPTIMIZERS[config.optimizer]
    if getattr(cls, "uses_anchors", False):
        return cls.from_config(config, buffer, anchors)
    if getattr(cls, "uses_layout", False):
        if weights is None:
            raise ValueError(f"--optimizer {cls.name} needs the arena's tensors (weights=)")
        return cls.from_config(config, buffer, weights)
    if subsets is not None:  # TrainConfig.validate lets --rotate reach ZO-SGD only
        return cls.from_config(config, buffer, subsets=subsets)
    return cls.from_config(config, buffer)


__all__ = [
    "OPTIMIZERS", "Anchors", "BlockSubsets", "DiZO", "HiZOO", "LOZO", "Optimizer", "Schedule",
    "StepRecord", "ZOAdam", "ZOMicroAdam", "ZOMomentum", "ZOSGD", "build_optimizer",
]
