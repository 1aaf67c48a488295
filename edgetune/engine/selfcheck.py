"""Start-up proof that ORT really reads the arena in place.

DESIGN.md records ways ORT can silently keep a stale copy of a weight (prepacking, folded
initializers). Tuning in that state would report progress while changing nothing, so the engine
checks once: a perturbation must change the loss, and restoring the bytes must restore it exactly.
"""

from __future__ import annotations

import numpy as np

from edgetune import _core
from edgetune.engine.runner import LossEngine
from edgetune.errors import TrainingError


def check_engine(engine: LossEngine, arena_buffer: np.ndarray, scale: float = 1e-2, seed: int = 0x5E1F) -> None:
    snapshot = arena_buffer.copy()
    before = engine.loss().copy()
    try:
        _core.perturb(arena_buffer, seed, scale, "gaussian")
        perturbed = engine.loss().copy()
    finally:
        arena_buffer[:] = snapshot
    restored = engine.loss()
    if not np.isfinite(before).all():
        raise TrainingError("the model's loss is not finite on the first batch before any tuning")
    if np.array_equal(perturbed, before):
        raise TrainingError(
            "self-check failed: perturbing the trainable weights did not change the loss "
            "(the runtime is using a stale copy of them)"
        )
    if not np.array_equal(restored, before):
        diff = float(np.max(np.abs(restored - before)))
        raise TrainingError(f"self-check failed: restoring the weights did not restore the loss (max diff {diff:g})")
