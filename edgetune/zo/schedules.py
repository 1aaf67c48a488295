"""Learning-rate and perturbation-size schedules: a value per step."""

from __future__ import annotations

import math
from dataclasses import dataclass

KINDS = ("constant", "linear", "cosine", "spall", "spall-eps")
# Spall's gains (SPSA, IEEE TAC 1998): a_k = a/(k+1+A)^0.602 for the step and c_k = c/(k+1)^0.101 for the
# perturbation, A = 10 % of the steps; scaled here so that step 0 takes ``base`` (a = base·(1+A)^0.602)
SPALL_ALPHA, SPALL_GAMMA, SPALL_A = 0.602, 0.101, 0.1


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
        if self.kind == "spall":
            stability = SPALL_A * self.total
            return self.base * ((1 + stability) / (step + 1 + stability)) ** SPALL_ALPHA
        if self.kind == "spall-eps":
            return self.base / (step + 1) ** SPALL_GAMMA
        span = max(self.total - self.warmup, 1)
        progress = min(max(step - self.warmup, 0) / span, 1.0)
        if self.kind == "linear":
            weight = 1.0 - progress
        else:
            weight = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.final + (self.base - self.final) * weight


class StepSize:
    """The lr a run's optimizer reads each step: its schedule × a scale the guard halves on a rollback ×,
    under ``--lr-adapt meazo``, MEAZO's one scalar (Dbouk et al., arXiv 2605.03869): lr_t = lr·r/(√v̂ + ζ) with
    v the EMA of the squared mean projected gradient, bias-corrected.

    ``reference``: the gradient scale at which MEAZO's factor is 1 (the calibration's RMS g, else the first
    step's), so that ``--lr`` keeps its meaning. One-step lag: step t reads v̂ of the steps before it, because
    a fused ZO step applies its update in the pass that measures g. The state (scale, v, n) is checkpointed;
    every record carries the lr it used, so replay needs none of it.
    """

    def __init__(self, schedule: Schedule, adapt: str = "off", reference: float | None = None,
                 beta: float = 0.99, zeta: float = 1e-12):
        self.schedule, self.adapt, self.beta, self.zeta = schedule, adapt, beta, zeta
        self.scale = 1.0
        self.reference = reference
        self.v, self.n = 0.0, 0

    def __call__(self, step: int) -> float:
        return self.schedule(step) * self.scale * self.factor()

    def factor(self) -> float:
        if self.adapt != "meazo" or not self.n or not self.reference:
            return 1.0
        v_hat = self.v / (1 - self.beta**self.n)
        return self.reference / (math.sqrt(v_hat) + self.zeta)

    def observe(self, grads: list[float]) -> None:
        """Fold a step's projected gradients into v (MEAZO's g_t is their mean)."""
        if self.adapt != "meazo":
            return
        g = sum(grads) / len(grads)
        if self.reference is None:
            self.reference = abs(g) or None
        self.v = self.beta * self.v + (1 - self.beta) * g * g
        self.n += 1

    def state_dict(self) -> dict:
        return {"scale": self.scale, "reference": self.reference, "v": self.v, "n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state.get("scale", 1.0))
        self.reference = state.get("reference", self.reference)
        self.v, self.n = float(state.get("v", 0.0)), int(state.get("n", 0))
