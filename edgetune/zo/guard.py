"""The guard: ZO can diverge, so a run watches its smoothed training loss and steps back when it climbs.

Decision (:class:`Guard`): an EMA of the step losses against the best EMA of the run. When the EMA stays above
the best by more than a threshold for ``patience`` steps in a row (2 when it is far above), the run rolls back to the state where the
best was reached and halves lr. The threshold is relative to the loss noise (a mean absolute deviation of
the step losses from the EMA, tracked as an EMA of its own and seeded by the calibration's spread across
batches; the steps above the threshold do not feed it, so a divergence cannot raise its own bar), never below
2 % of the best loss: a rise within the batches' spread is not a divergence. The loop does not chain steps
while the guard watches: a rollback starts from an exact θ (one more pass over the slice per step).

A step whose loss is not finite (θ overflowed along the noise) is answered the same way, at once: back to
the best state, lr halved (``TrainingRun.recover``); the failed step leaves no record, only its forwards.

Undo (:func:`undo_record`): a ZO-SGD step is θ ← θ + c·z(seed) with c = −(lr/q)·g. The steps since the
best state are undone by applying −c for each of their seeds: no copy of the weights, only the seeds and
coefficients the step records already hold. The undo is written to the trajectory as one ordinary step
record (``rollback`` names the state it returns to; lr = q so that each query's coefficient is its g,
exactly) and applied live by the optimizer's own replay, so ``edgetune replay`` redoes the same float32
passes and lands on the same bits. It is exact in real arithmetic only: in float32 each undone step leaves
a rounding residue of about one ulp of ε·|z| per element (the ±ε passes and the coefficient's rounding),
far below the step itself.

Under ``--head exact`` the layers below roll back this way; the head, first-order and a few thousand floats,
comes back from a copy kept at the best state (``ExactHead.mark_best``), written into the last undo record.

The rule above is for a slice ZO tunes whole (:data:`ZO`). A head fitted first-order breaks two of its
assumptions: its batch losses are heavy-tailed (a batch holding one misclassified row is 30x the others), and it
runs hundreds of thousands of steps on a plateau, where the best, the lowest EMA of the run, is an extreme low of
the noise (the MiniLM race: 8 rollbacks for noise, the head's lr cut 256x). So (:attr:`Guard.rule`):

- :data:`HEAD_ALONE` (nothing tuned by ZO): a first-order fit of a linear layer under a softmax loss is convex
  and Adam's step is bounded by its lr, so a rise is noise: no rollback for it. A non-finite loss still rolls
  back, and keep-best still applies at the end.
- :data:`BELOW_HEAD` (ZO below the exact head): each loss enters the EMA and the deviation clipped at SIGMAS σ of
  one loss above the EMA (a Huber mean and spread: all losses feed the deviation, clipped); the threshold gains
  √(2 ln(α·n)) σ of the EMA after n steps (where the lowest of n EMAs lies); and the fast test is
  :data:`FAR_STEPS` losses in a row above best + SPIKE·threshold/√(α/(2−α)) (the clipped EMA cannot jump).
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from dataclasses import asdict, dataclass

import numpy as np

from edgetune.zo.zosgd import StepRecord

ALPHA = 0.1  # EMA weight of a step's loss: about 10 steps of memory
EMA_SD = math.sqrt(ALPHA / (2 - ALPHA))  # the EMA's standard deviation in those of one loss
PATIENCE = 10  # steps the EMA must stay above the threshold before the guard acts
SPIKE = 5.0  # or 2 steps when it is this many thresholds above: a divergence does not wait (the tiny classifier at
# 6x its lr reached a loss of 2000 in the 10 steps of patience)
FAR_STEPS = 4  # BELOW_HEAD: or this many step losses in a row SPIKE thresholds of one loss above the best
SIGMAS = 4.0  # threshold in standard deviations of the EMA itself
RELATIVE = 0.02  # and never below this fraction of the best loss
SHRINK = 0.5
MAX_ROLLBACKS = 8  # past these the run keeps going at its last lr (a loss that only rises is reported at the end)

# The rule a run's guard follows, by what tunes its slice (``--head``):
ZO = "zo"  # ZO tunes all of it: the rule above (the C runtime ports it bit for bit)
BELOW_HEAD = "zo-below-exact-head"  # ZO below a head fitted first-order: the rise test robust to a fitted head's noise
HEAD_ALONE = "exact-head-alone"  # the head alone, first-order: no rollback for a rise


@dataclass
class GuardState:
    ema: float | None = None
    deviation: float = 0.0  # EMA of |loss − ema|
    best: float = math.inf
    best_step: int = 0  # the step whose θ (before its update) had the best EMA
    rising: int = 0  # consecutive steps above the threshold
    rollbacks: int = 0
    start: float | None = None  # the first loss: what "worse than the start" compares with
    observed: int = 0  # the steps folded in: the best is the lowest EMA of as many (BELOW_HEAD's allowance)
    above: int = 0  # consecutive step losses SPIKE single-loss thresholds above the best (BELOW_HEAD's far test)


class Guard:
    """Watches step losses; :meth:`observe` says when to roll back."""

    def __init__(self, loss_noise: float = 0.0, state: dict | None = None, loss: float | None = None,
                 rule: str = ZO):
        """``loss_noise``, ``loss``: the calibration's spread and mean of L(θ) over its batches. The mean seeds the
        EMA and the start: one batch's loss would (seed 0 of MiniLM-RT opens on a batch 2.5 % below the mean, and
        the guard took 96 steps of a falling mean loss for a rise above it and rolled back to step 0).
        ``rule``: :data:`ZO`, :data:`BELOW_HEAD` or :data:`HEAD_ALONE`, the run's (a checkpoint's state does not
        hold it)."""
        self.rule = rule
        if state:  # a checkpoint's: JSON has no infinity, a best not yet seen is null there
            self.state = GuardState(**{**state, "best": math.inf if state["best"] is None else state["best"]})
        else:
            self.state = GuardState(deviation=loss_noise * math.sqrt(2 / math.pi), ema=loss, start=loss)

    @property
    def spread(self) -> float:
        """The rise the batches' spread explains: SIGMAS standard deviations of the EMA, ≥ RELATIVE of the best."""
        s = self.state
        sigma = s.deviation * math.sqrt(math.pi / 2)  # a mean absolute deviation of a normal is 0.8σ
        return max(SIGMAS * sigma * EMA_SD, RELATIVE * abs(s.best))

    @property
    def threshold(self) -> float:
        """The rise above the best the guard takes for a divergence. Under BELOW_HEAD the best, the lowest of n
        EMAs, sits about √(2 ln(αn)) of their standard deviations below where the loss is (the EMA decorrelates
        in 1/α steps): over a long plateau a fixed bar above it is crossed by noise alone, so it moves up by that."""
        if self.rule != BELOW_HEAD:
            return self.spread
        s = self.state
        lowest = math.sqrt(2 * math.log(max(ALPHA * s.observed, 1.0)))
        return self.spread + lowest * s.deviation * math.sqrt(math.pi / 2) * EMA_SD

    def observe(self, record: StepRecord) -> bool:
        """Fold step ``record.step``'s loss (measured at θ before its update) in; True: roll back now."""
        s, loss = self.state, record.loss
        s.observed += 1
        if s.ema is None:
            s.ema = s.start = loss
        elif self.rule == BELOW_HEAD:
            self._fold_robust(loss)
        else:
            if abs(loss - s.ema) <= self.spread / EMA_SD:  # within the batches' spread (SIGMAS σ of one loss)
                s.deviation = (1 - ALPHA) * s.deviation + ALPHA * abs(loss - s.ema)
            s.ema = (1 - ALPHA) * s.ema + ALPHA * loss
        if s.ema < s.best:
            s.best, s.best_step, s.rising = s.ema, record.step, 0
            return False
        rise = s.ema - s.best
        s.rising = s.rising + 1 if rise > self.threshold else 0
        if self.rule == BELOW_HEAD:  # the clipped EMA climbs too slowly to tell a divergence early: the losses can
            far = s.above >= FAR_STEPS
        else:
            far = rise > SPIKE * self.threshold and s.rising >= 2
        # the head alone is a convex fit by a first-order step that does not diverge at its lr: a rise is its
        # batches' noise (a non-finite loss and keep-best at the end still apply)
        return (s.rising >= PATIENCE or far) and s.rollbacks < MAX_ROLLBACKS and self.rule != HEAD_ALONE

    def _fold_robust(self, loss: float) -> None:
        """BELOW_HEAD: a fitted head's batch losses are heavy-tailed (most ~0.01, one misclassified row ~3). Each
        moves the EMA and the deviation by no more than SIGMAS σ of one loss (a Huber mean and spread), so only a
        rise most batches share moves them; a sustained rise r lifts the threshold to about r/2 at most, so it is
        still seen. A loss far above the best counts towards the far test (outliers come one or two at a time)."""
        s = self.state
        bound = self.spread / EMA_SD
        s.above = s.above + 1 if loss > s.best + SPIKE * self.threshold / EMA_SD else 0
        s.deviation = (1 - ALPHA) * s.deviation + ALPHA * min(abs(loss - s.ema), bound)
        s.ema = (1 - ALPHA) * s.ema + ALPHA * min(loss, s.ema + bound)

    def rolled_back(self) -> None:
        """After a rollback: the EMA restarts at the best, the rise is forgotten."""
        s = self.state
        s.ema, s.rising, s.above, s.rollbacks = s.best, 0, 0, s.rollbacks + 1

    def worse_than_start(self) -> bool:
        """The smoothed loss at the end is above the first loss by more than the threshold."""
        s = self.state
        return s.ema is not None and s.start is not None and s.ema > s.start + self.threshold

    def line(self, done: int, lr_before: float, lr_after: float, rolled: bool) -> str:
        s = self.state
        rise = f"guard: loss rose from {s.best:.4g} to {s.ema:.4g} over {done - s.best_step} steps; "
        if rolled:
            return rise + f"rolled back to step {s.best_step}, lr {lr_before:.3g} → {lr_after:.3g}"
        return rise + f"lr {lr_before:.3g} → {lr_after:.3g} (this optimizer cannot roll back: it keeps its state)"

    def nonfinite_line(self, failed: int, lr_before: float, lr_after: float) -> str:
        return (f"guard: non-finite loss at step {failed}; rolled back to step {self.state.best_step}, "
                f"lr {lr_before:.3g} → {lr_after:.3g}")

    def state_dict(self) -> dict:
        state = asdict(self.state)
        return {**state, "best": state["best"] if math.isfinite(state["best"]) else None}


def update_terms(record: StepRecord) -> list[tuple[int, float]]:
    """(seed, c) of each query of a ZO-SGD step: θ ← θ + Σ c·z(seed), c = −(lr/q)·g in float32 (a rollback
    record's own terms are its undo: c = −g with its lr = q)."""
    if not record.seeds:  # a step of the exact head alone: nothing of ZO to undo (its head is kept apart)
        return []
    f32 = np.float32
    per = f32(record.lr) / f32(len(record.seeds))
    return [(seed, float(-(per * f32(g)))) for seed, g in zip(record.seeds, record.grads)]


def undo_record(step: int, undone: list[list[tuple[int, float]]], to_step: int, eps: float, noise: str,
                loss: float) -> StepRecord:
    """The record that takes θ back over the steps ``undone`` (their (seed, c) terms, oldest first): one
    query per undone term, latest first, g = c so that the replayed coefficient is −c."""
    terms = [term for step_terms in reversed(undone) for term in reversed(step_terms)]
    return StepRecord(step=step, seeds=[seed for seed, _ in terms], grads=[c for _, c in terms],
                      lr=float(len(terms)), eps=eps, weight_decay=0.0, noise=noise, loss=loss, forwards=0,
                      rollback=to_step)


class AppliedTerms:
    """The undo terms of the steps θ holds, in step order, packed: 24 bytes a query where a list of Python
    tuples took ~250 bytes a step, and a run keeps every step's terms (keep-best may return to step 0)."""

    def __init__(self) -> None:
        self._steps, self._seeds, self._coefficients = array("q"), array("Q"), array("d")

    def add(self, record: StepRecord) -> None:
        for seed, c in update_terms(record):
            self._steps.append(record.step)
            self._seeds.append(seed)
            self._coefficients.append(c)

    def take_since(self, step: int) -> list[tuple[int, float]]:
        """The terms of the steps from ``step`` on, removed (a rollback undoes them)."""
        start = bisect_left(self._steps, step)
        terms = list(zip(self._seeds[start:], self._coefficients[start:]))
        del self._steps[start:], self._seeds[start:], self._coefficients[start:]
        return terms
