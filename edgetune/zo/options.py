"""Options that describe themselves, and the options each optimizer owns.

An option is a dataclass field declared with :func:`option`: its default, its help text, its range
(:class:`Bound`) or choices, and whether it is part of the trajectory (``edgetune replay`` needs its value
to redo the run). :class:`edgetune.config.TrainConfig` composes the optimizers' groups below with its own
fields; the ``tune`` flags, the ``--config`` keys, the replay header's keys and ``docs/cli.md`` are all
generated from these declarations, and one generic check validates them.

This module imports nothing of edgetune's (no compiled core): the config reads it without the optimizers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The names --optimizer takes, in the order messages and help list them (edgetune.zo.OPTIMIZERS maps them
# to their classes; a test holds the two equal).
OPTIMIZER_NAMES = ("zo-sgd", "dizo", "zo-momentum", "zo-adam", "zo-microadam", "lozo", "hizoo")
ROTATE_MODES = ("cyclic", "random")
HEAD_METHODS = ("adam", "sgd")  # the exact head's first-order update (edgetune.zo.exact_head)
# The exact head's L2 penalty λ: its step follows the gradient of the batch's mean loss + λ/2·‖W‖² (the weight,
# not the bias). Without it a head alone on frozen features is unregularised logistic regression: a time budget
# that lets it see its rows hundreds of times (the race: ~1,700 cached head steps a CPU-second) drives ‖W‖ up
# and the training loss to 0 and loses the accuracy it had after a few epochs. With it the head converges to
# the one minimiser of a strongly convex objective, however long it runs. 0.01 is the customary weight decay
# (PyTorch AdamW's default), here coupled as torch.optim.Adam's weight_decay is: decoupled (AdamW), its pull
# lr·0.01·W at lr 3e-3 is too weak to stop the growth in 1e5 steps. Measured on MiniLM's cached features (batch 8,
# Adam 3e-3, mean dev accuracy at 5 points from step 7.5e3 to 1e5, RT 3e3 to 6e4, 2 batch orders): debates 0.591
# (λ 0) → 0.639 (0.01), Rotten Tomatoes 0.766 → 0.788; 1e-3 holds less (0.628 / 0.771), 3e-2 as well as 0.01 on
# debates, less on RT (0.640 / 0.783). In the race (debates, 120 CPU-s, ~190k steps): 0.583 → 0.658 at 60 CPU-s.
HEAD_L2 = 0.01


@dataclass(frozen=True)
class Bound:
    """An inclusive range of a numeric option (None: open on that side); ``positive`` excludes 0 and
    ``below`` the high end itself. ``words`` replaces the generated description in messages."""

    low: float | None = None
    high: float | None = None
    positive: bool = False
    why: str = ""  # a reason shown after the range
    below: bool = False
    words: str = ""

    def holds(self, value: float) -> bool:
        above_low = self.low is None or value >= self.low
        under_high = self.high is None or (value < self.high if self.below else value <= self.high)
        return above_low and under_high and not (self.positive and value <= 0)

    def describe(self) -> str:
        if self.words:
            return self.words
        low = "positive" if self.positive else f"at least {self.low}" if self.low is not None else None
        if self.high is None:
            return low or "a number"
        high = f"below {self.high}" if self.below else f"at most {self.high}"
        if self.low is not None and not (self.positive or self.below):
            return f"between {self.low} and {self.high}"
        return f"{low} and {high}" if low else high


def option(default: Any, help: str, *, bound: Bound | None = None, choices: tuple[str, ...] | None = None,
           trajectory: bool = False, parse: bool = False, cli: bool = True, keywords: tuple[str, ...] = ()) -> Any:
    """A field that describes itself.

    ``trajectory``: the run's trajectory depends on it (a resumed run must keep it; the replay header holds
    it). ``parse``: its flag checks the range or choices as argparse parses it (an ``argument --X:`` line),
    not after all options are merged. ``cli``: it is a flag and a ``--config`` key (False: Python API only).
    ``keywords``: words a numeric option also takes (``--lr auto``), in place of a number within ``bound``.
    """
    metadata = {"help": help, "bound": bound, "choices": choices, "trajectory": trajectory, "parse": parse,
                "cli": cli, "keywords": keywords}
    return field(default=default, metadata=metadata)


@dataclass
class DiZOOptions:
    """``--optimizer dizo``, published defaults: every κ steps, a ZO search of the per-tensor scale r of
    θ − θ0 (``dizo_iters`` iterations, probe ±ε, step, r clipped to 1 ± τ); see :mod:`edgetune.zo.dizo`."""

    for_optimizers = ("dizo",)

    dizo_interval: int = option(50, "project towards the pretrained weights every this many steps (κ)",
                                bound=Bound(1), trajectory=True)
    dizo_iters: int = option(10, "ZO iterations of each projection's search for the scales r",
                             bound=Bound(1), trajectory=True)
    dizo_eps: float = option(0.1, "probe size of the scale search, relative to each tensor's distance",
                             bound=Bound(positive=True), trajectory=True)
    dizo_step: float = option(2.0, "step size of the scale search", bound=Bound(positive=True),
                              trajectory=True)
    dizo_tau: float = option(0.2, "clip each scale to 1 ± τ", bound=Bound(high=1, positive=True, below=True),
                             trajectory=True)


@dataclass
class WindowOptions:
    """The window optimizers' moments, rebuilt from the last ``window`` steps; see :mod:`edgetune.zo.window`."""

    for_optimizers = ("zo-momentum", "zo-adam", "zo-microadam")

    window: int = option(10, "past steps the moments are rebuilt from", bound=Bound(1), trajectory=True)
    beta1: float = option(0.9, "decay of the first moment over the window", bound=Bound(0, 1, below=True),
                          trajectory=True)
    beta2: float = option(0.99, "decay of the second moment over the window", bound=Bound(0, 1, below=True),
                          trajectory=True)


@dataclass
class MicroAdamOptions:
    """ZO-MicroAdam's compression of each step's estimate; see :mod:`edgetune.zo.microadam`."""

    for_optimizers = ("zo-microadam",)

    topk_density: float = option(0.01, "fraction of each step's estimate kept in the window (Top-K)",
                                 bound=Bound(high=1, positive=True), trajectory=True)


@dataclass
class LOZOOptions:
    """``--optimizer lozo``: each matrix's perturbation is U Vᵀ/√r, U fresh every step, V every ν steps (LOZO,
    arXiv 2410.07698); see :mod:`edgetune.zo.lowrank`."""

    for_optimizers = ("lozo",)

    lozo_rank: int = option(2, "rank r of each weight matrix's perturbation U Vᵀ/√r (a matrix with a side of r "
                            "or fewer gets dense noise)", bound=Bound(1), trajectory=True)
    lozo_interval: int = option(50, "draw each matrix's V afresh every this many steps (ν); U is drawn every step",
                                bound=Bound(1), trajectory=True)


@dataclass
class HiZOOOptions:
    """``--optimizer hizoo``: a diagonal Hessian estimate shapes the perturbation (HiZOO, arXiv 2402.15173);
    see :mod:`edgetune.zo.hizoo`."""

    for_optimizers = ("hizoo",)

    hizoo_smooth: float = option(0.01, "smoothing α of the diagonal Hessian estimate: Σ ← (1 − α)Σ + α|Σ'| each "
                                 "query", bound=Bound(0, 1, positive=True, below=True), trajectory=True)
    hizoo_max_params: int = option(5_000_000, "the most trainable weights hizoo takes (it keeps 4 bytes of "
                                   "curvature per weight, and temporaries as large)", bound=Bound(1),
                                   trajectory=True)


OPTIMIZER_OPTIONS = (DiZOOptions, WindowOptions, MicroAdamOptions, LOZOOptions, HiZOOOptions)


@dataclass
class HeadOptions:
    """``--head exact``: the classifier's last linear layer updated first-order from its exact gradient, which
    the graph computes in the forward, while ZO tunes the rest of the slice; see :mod:`edgetune.zo.exact_head`."""

    for_head = ("exact", "auto")  # the values of ``head`` that ``head_method`` and ``head_lr`` may act under

    head: str = option("auto", "how the classifier's last linear layer is tuned: exact (first-order, from its exact "
                       "gradient computed in the forward), zo (as the rest of the slice), or auto: exact where the "
                       "slice holds a classifier's linear head and the optimizer is zo-sgd (unrotated, --parallel "
                       "off), else zo", choices=("auto", "exact", "zo"), trajectory=True)
    head_method: str = option("adam", "--head exact: the head's update", choices=HEAD_METHODS, trajectory=True)
    head_lr: float | None = option(None, "--head exact: the head's learning rate (default: 3e-3 with adam, 0.1 with "
                                   "sgd)", bound=Bound(positive=True), trajectory=True)
    head_l2: float = option(HEAD_L2, "--head exact: the L2 penalty λ on the head's weight (its step follows the "
                            "gradient of the mean loss + λ/2·‖W‖²), which keeps a long head-only run from over-fitting; "
                            "0: none", bound=Bound(low=0.0), trajectory=True)
