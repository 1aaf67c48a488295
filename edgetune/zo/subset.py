"""Rotating block subsets (``--rotate K``): each step perturbs and updates K of the trainable blocks.

The ``--trainable`` selection stays lifted as it is, so every forward still runs the whole trainable
suffix; what shrinks is the step's arena passes and the dimension of its estimate. Step t perturbs
and updates only the arena ranges of K of the selected transformer blocks, plus every trainable tensor
outside the blocks (embeddings, final norm, head), which are in every step. For a ±1 or Gaussian
direction over d weights the SPSA estimate has E‖ĝ‖² ≈ (d + 2)‖∇L‖², so a step over K of n blocks is
a block-coordinate step with about K/n of the variance (docs/optimizers.md: a rotating block subset).

The subset is a pure function of (seed, t // every), so a resumed run and ``edgetune replay`` draw it
again and nothing is stored: ``cyclic`` walks the blocks in order, K at a time; ``random`` takes the K
blocks with the smallest keys ``derive_seed(seed, window, STREAM + block)``, a uniform draw of K of n
that depends on edgetune's own hash only (a numpy Generator's streams may change between numpy
versions, and a log must replay on another machine). A block's noise is that of its global arena
offsets, so its values match the unrotated noise stream over the same weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgetune import _core
from edgetune.errors import EdgetuneError
from edgetune.graph.blocks import Param
from edgetune.graph.prepare import arena_group
from edgetune.zo.options import ROTATE_MODES

STREAM = 0x524F_5441_5445_0000  # "ROTATE": the random draw's keys, apart from the small query indices of noise seeds

Span = tuple[int, int]  # [start, end) of the arena


@dataclass(frozen=True)
class ArenaBlocks:
    """Where the trainable weights lie in the arena: each transformer block's range and the rest."""

    blocks: dict[int, Span]  # block index -> its arena range
    always: list[Span]  # ranges of the trainable tensors outside every block (embeddings, head)

    @classmethod
    def of(cls, params: Sequence[Param], arena) -> ArenaBlocks:
        """The layout of ``arena`` (a finalized :class:`edgetune._core.Arena`) holding ``params``."""
        block_of = {arena_group(p): p.block for p in params}
        ranges = {group: tuple(arena.group_range(group)) for group in block_of}
        return cls(blocks={b: ranges[g] for g, b in sorted(block_of.items()) if b is not None},
                   always=sorted(ranges[g] for g, b in block_of.items() if b is None))


class BlockSubsets:
    """The arena spans step t works on under ``--rotate count`` (see the module docstring)."""

    def __init__(self, layout: ArenaBlocks, count: int, every: int = 1, mode: str = "random", seed: int = 0):
        if not layout.blocks:
            raise EdgetuneError("--rotate needs transformer blocks among the trainable weights; "
                                "--trainable selects none")
        n = len(layout.blocks)
        if count > n:
            raise EdgetuneError(f"--rotate {count}: --trainable selects only {n} transformer block{'s' * (n > 1)} "
                                f"({', '.join(map(str, layout.blocks))})")
        if count < 1 or every < 1 or mode not in ROTATE_MODES:
            raise ValueError(f"rotate {count} blocks every {every} steps in mode {mode!r}")
        self.layout, self.count, self.every, self.mode, self.seed = layout, count, every, mode, seed
        self._order = sorted(layout.blocks)

    def chosen(self, t: int) -> list[int]:
        """The blocks step t updates, ascending."""
        window = t // self.every
        if self.mode == "cyclic":
            first = window * self.count
            return sorted(self._order[(first + j) % len(self._order)] for j in range(self.count))
        keys = {b: _core.derive_seed(self.seed, window, STREAM + b) for b in self._order}
        return sorted(sorted(self._order, key=lambda b: (keys[b], b))[:self.count])

    def spans(self, t: int) -> list[Span]:
        """Arena ranges of step t's blocks and of the tensors outside the blocks, by start."""
        return sorted([self.layout.blocks[b] for b in self.chosen(t)] + self.layout.always)


def block_subsets(config, params: Sequence[Param], arena) -> BlockSubsets | None:
    """The rotation ``config.rotate`` asks for over ``arena`` (None when off); a bad K fails here, in one line."""
    if not config.rotate:
        return None
    return BlockSubsets(ArenaBlocks.of(params, arena), config.rotate, config.rotate_every, config.rotate_mode,
                        config.seed)
