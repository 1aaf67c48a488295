"""What every ZO strategy over the arena holds: the buffer, the noise seed, the lr/ε schedules, the
query policy, weight decay and noise kind, the arena spans a step works on (all of it, or a rotated
block subset) — and a chained step's pending perturbation."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetune import _core
from edgetune.zo.queries import FixedQueries, QueryPolicy, build_query_policy
from edgetune.zo.schedules import Schedule
from edgetune.zo.subset import BlockSubsets, Span


class ZOBase:
    name = ""
    forwards_per_query = 2

    def __init__(
        self,
        buffer: np.ndarray,
        seed: int,
        lr: Schedule,
        eps: Schedule,
        queries: int | QueryPolicy = 1,
        weight_decay: float = 0.0,
        noise: str = "rademacher",  # as TrainConfig and the CLI
        subsets: BlockSubsets | None = None,
    ):
        """``queries``: a :class:`QueryPolicy`, or an int for that many queries every step; ``subsets``:
        the rotated blocks each step works on (``--rotate``; None: the whole arena)."""
        if isinstance(queries, int):
            if queries < 1:
                raise ValueError("queries must be >= 1")
            queries = FixedQueries(queries)
        self.buffer = buffer
        self.seed = seed
        self.lr = lr
        self.eps = eps
        self.query_policy = queries
        self.weight_decay = weight_decay
        self.noise = noise
        self.subsets = subsets
        self._pending: tuple[int, float] | None = None  # (seed, ε) of a perturbation applied by a chained step
        self._pending_spans: list[Span] = [(0, len(buffer))]  # where it lies: all of θ unless a rotated step set it

    @staticmethod
    def settings(config, buffer: np.ndarray) -> dict[str, Any]:
        """The constructor arguments a run's :class:`TrainConfig` implies."""
        return dict(
            buffer=buffer,
            seed=config.seed,
            lr=Schedule(config.lr, config.schedule, config.steps, config.warmup),
            eps=Schedule(config.eps, "spall-eps" if config.schedule == "spall" else "constant"),
            queries=build_query_policy(config),
            weight_decay=config.weight_decay,
            noise=config.noise,
        )

    @classmethod
    def from_config(cls, config, buffer: np.ndarray, subsets: BlockSubsets | None = None):
        return cls(**cls.settings(config, buffer), subsets=subsets)

    def spans(self, t: int) -> list[Span]:
        """The arena ranges step t perturbs and updates."""
        return self.subsets.spans(t) if self.subsets is not None else [(0, len(self.buffer))]

    def _perturb(self, spans: list[Span], seed: int, scale: float) -> None:
        """θ += scale·z(seed) over ``spans``, each with the noise of its global arena offsets."""
        for start, end in spans:
            _core.perturb(self.buffer[start:end], seed, scale, self.noise, start)

    def _combine(self, spans: list[Span], decay: float, seeds: list[int], coefs: list[float]) -> None:
        """θ ← decay·θ + Σ coefs[k]·z(seeds[k]) over ``spans``; θ elsewhere is left as it is."""
        for start, end in spans:
            _core.combine(self.buffer[start:end], decay, seeds, coefs, self.noise, start)

    def settle(self) -> None:
        """Take back a chained perturbation (after an interruption): θ to within rounding."""
        if self._pending is not None:
            seed, eps = self._pending
            self._perturb(self._pending_spans, seed, -eps)
            self._pending = None

    def state_nbytes(self) -> int:
        """Bytes of optimizer state beyond the arena (0: θ is the whole state)."""
        return 0
