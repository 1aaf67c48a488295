"""Learning-rate and perturbation-size schedules: a value per step."""

from __future__ import annotations

import math
from dataclasses import dataclass

KINDS = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class Schedule:
    """``base`` after ``warmup`` linear warm-up steps, then constant or decaying to ``final`` at ``total``."""

    base: float
    kind: str = "constant"
    total: int = 1
    warmup: int = 0
    final: float = 0.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown schedule '{self.kind}' (choose {', '.join(KINDS)})")

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return self.base * (step + 1) / self.warmup
        if self.kind == "constant":
            return self.base
        span = max(self.total - self.warmup, 1)
        progress = min(max(step - self.warmup, 0) / span, 1.0)
        if self.kind == "linear":
            weight = 1.0 - progress
        else:
            weight = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.final + (self.base - self.final) * weight
