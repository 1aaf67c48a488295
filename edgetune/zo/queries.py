"""How many queries (± forward pairs) a ZO step takes: one policy object per ``--query-schedule``.

``fixed``     q_t = queries. Today's behaviour, bit for bit.
``grow``      q_t = q_min + ⌊(q_max − q_min)·√(t / (T − 1)) + ½⌋ over the run's T steps: few queries while
              the gradient is large and a noisy step still helps, more as the run settles. AdaZeta
              (arXiv 2406.18060) grows its query count sub-linearly as min(⌊α·e^β⌋, Q_max) per epoch e
              with β < 1; this is the same shape per step with fixed ends (β = ½, from q_min to q_max).
``variance``  after each ± pair, query again while the squared slopes g_i² disagree: relative standard
              error of their mean above ``threshold``, between max(q_min, 2) and q_max queries.

Why g_i²: for z with E[zzᵀ] = I (Gaussian and Rademacher noise) E[g²] = ‖∇L‖², and the step's first-order
decrease of the batch loss is exactly (lr/q)·Σ g_i². The variance rule stops once that decrease is
known to the asked precision. Its spread is the evaluation noise (dropout, quantised losses) and the
shape of the gradient (a gradient on few weights gives agreeing slopes under Rademacher noise); for a
smooth loss with a gradient spread over many weights and Gaussian noise, g_i² is σ²χ²₁ and the rule
settles near q = 2 / threshold².

``limit(t)`` is the most queries step t may take: ZO-SGD applies each query's update with lr / limit(t)
in the fused pass that restores it, and corrects those coefficients in the last pass when a policy
stops earlier (see ``ZOSGD.step``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

QUERY_SCHEDULES = ("fixed", "grow", "variance")


class QueryPolicy(Protocol):
    name: str

    def limit(self, t: int) -> int:
        """The most queries step ``t`` may take."""

    def more(self, grads: Sequence[float]) -> bool:
        """After a ± pair, below ``limit``: whether the step takes another query, given its slopes so far."""


@dataclass(frozen=True)
class FixedQueries:
    queries: int
    name = "fixed"

    def limit(self, t: int) -> int:
        return self.queries

    def more(self, grads: Sequence[float]) -> bool:
        return True


@dataclass(frozen=True)
class GrowingQueries:
    """q_t from ``low`` at step 0 to ``high`` at step ``total`` − 1 as √(t / (total − 1)); ``high`` after."""

    low: int
    high: int
    total: int
    name = "grow"

    def limit(self, t: int) -> int:
        progress = min(t / (self.total - 1), 1.0) if self.total > 1 else 1.0
        return self.low + math.floor((self.high - self.low) * math.sqrt(progress) + 0.5)

    def more(self, grads: Sequence[float]) -> bool:
        return True


@dataclass(frozen=True)
class VarianceQueries:
    """Query while the relative standard error of mean(g_i²) exceeds ``threshold``, in [max(low, 2), high]."""

    low: int
    high: int
    threshold: float
    name = "variance"

    def limit(self, t: int) -> int:
        return self.high

    def more(self, grads: Sequence[float]) -> bool:
        if len(grads) < max(self.low, 2):  # a spread needs two slopes
            return True
        return relative_standard_error([g * g for g in grads]) > self.threshold


def relative_standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean over the mean, for two or more ``values`` ≥ 0 (all zero: they agree, 0)."""
    n = len(values)
    mean = math.fsum(values) / n
    if mean == 0.0:
        return 0.0
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return math.sqrt(variance / n) / abs(mean)


def build_query_policy(config) -> QueryPolicy:
    """The policy ``config.query_schedule`` names, with ``queries`` as its maximum."""
    if config.query_schedule == "grow":
        return GrowingQueries(config.queries_min, config.queries, config.steps)
    if config.query_schedule == "variance":
        return VarianceQueries(config.queries_min, config.queries, config.query_threshold)
    return FixedQueries(config.queries)
