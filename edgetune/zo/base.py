"""What every ZO strategy over the arena holds: the buffer, the noise seed, the lr/ε schedules, the
query policy, weight decay and noise kind — and a chained step's pending perturbation."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetune import _core
from edgetune.zo.queries import FixedQueries, QueryPolicy, build_query_policy
from edgetune.zo.schedules import Schedule


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
        noise: str = "gaussian",
    ):
        """``queries``: a :class:`QueryPolicy`, or an int for that many queries every step."""
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
        self._pending: tuple[int, float] | None = None  # (seed, ε) of a perturbation applied by a chained step

    @staticmethod
    def settings(config, buffer: np.ndarray) -> dict[str, Any]:
        """The constructor arguments a run's :class:`TrainConfig` implies."""
        return dict(
            buffer=buffer,
            seed=config.seed,
            lr=Schedule(config.lr, config.schedule, config.steps, config.warmup),
            eps=Schedule(config.eps),
            queries=build_query_policy(config),
            weight_decay=config.weight_decay,
            noise=config.noise,
        )

    @classmethod
    def from_config(cls, config, buffer: np.ndarray):
        return cls(**cls.settings(config, buffer))

    def settle(self) -> None:
        """Take back a chained perturbation (after an interruption): θ to within rounding."""
        if self._pending is not None:
            seed, eps = self._pending
            _core.perturb(self.buffer, seed, -eps, self.noise)
            self._pending = None

    def state_nbytes(self) -> int:
        """Bytes of optimizer state beyond the arena (0: θ is the whole state)."""
        return 0
