"""Parsing ``--trainable`` into the list of weights to tune.

Terms are separated by commas and their selections are united:

``all``            every weight
``last:N``         the last N blocks and everything after them (final norm, pooler, head)
``blocks:A-B``     blocks A..B (inclusive); ``blocks:A`` one block
``head``           weights after the last block
``embeddings``     weights before the first block
``re:REGEX``       weight names matching a regular expression
anything else      a glob over weight names (``*.bias``, ``classifier.*``)

``lora:OPTIONS``   low-rank adapters on linear layers (see ``graph.lora``); it must be the last term
                   because its options are comma-separated too: ``lora:r=8,targets=q,v,alpha=16,fa``.
                   ``r`` rank (default 8), ``alpha`` scale numerator (default 2r, so alpha/r = 2),
                   ``targets`` aliases ``q,k,v,o,gate,up,down`` or module-name suffixes (default q,v),
                   ``fa`` LoRA-FA (A frozen, only B tuned), ``seed`` for A's initialisation (default 0),
                   ``layers=A-B`` (or ``layers=A``) only the linear layers of blocks A..B (default all).
                   ``head,lora:r=4,targets=q,v`` tunes the head weights and adapters on q and v.
``sparse:OPTIONS`` δ slices of linear weights (see ``graph.sparse``); last, like ``lora:``, and not with it:
                   ``density`` fraction of each weight tuned, ``score=magnitude``, ``targets`` as for lora
                   (default every linear layer).
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass

from edgetune.errors import ModelError
from edgetune.graph.blocks import EMBEDDINGS, HEAD, Param
from edgetune.graph.options import LORA, parse_options, spec_error, split_term

DEFAULT_TRAINABLE = "last:1"
_LORA_DEFAULT_TARGETS = ("q", "v")


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = _LORA_DEFAULT_TARGETS
    frozen_a: bool = False  # LoRA-FA
    seed: int = 0
    layers: tuple[int, int] | None = None  # first and last block (inclusive); None: every block and the head

    def covers(self, block: int | None) -> bool:
        """Whether a linear layer in ``block`` (None: outside every block) gets an adapter."""
        if self.layers is None:
            return True
        return block is not None and self.layers[0] <= block <= self.layers[1]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def split_lora(spec: str) -> tuple[str, LoraSpec | None]:
    """Split ``--trainable`` into its plain terms and the trailing ``lora:`` term, if any."""
    plain, tokens = split_term(spec, LORA)
    return plain, None if tokens is None else _parse_lora(tokens, spec)


def _parse_lora(tokens: list[str], spec: str) -> LoraSpec:
    fail = spec_error(spec)
    parsed = parse_options(LORA, tokens, ("r", "alpha", "targets", "seed", "layers"), ("fa",), fail)
    options = parsed.values
    rank = _number(options.get("r", "8"), int, "r", fail)
    alpha = _number(options["alpha"], float, "alpha", fail) if "alpha" in options else 2.0 * rank
    seed = _number(options.get("seed", "0"), int, "seed", fail, allow_zero=True)
    layers = _block_range(options["layers"], fail) if "layers" in options else None
    return LoraSpec(rank, alpha, parsed.targets or _LORA_DEFAULT_TARGETS, "fa" in parsed.flags, seed, layers)


def _block_range(text: str, fail) -> tuple[int, int]:
    low, dash, high = text.partition("-")
    first = _number(low, int, "layers", fail, allow_zero=True)
    last = _number(high, int, "layers", fail, allow_zero=True) if dash else first
    if last < first:
        raise fail(f"lora layers={text} is an empty range (write layers=FIRST-LAST)")
    return first, last


def _number(text: str, kind, name: str, fail, allow_zero: bool = False):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        sign = "non-negative" if allow_zero else "positive"
        raise fail(f"lora {name} must be a {sign} {'integer' if kind is int else 'number'}, not '{text}'")
    return value


def select_params(params: list[Param], spec: str) -> list[Param]:
    """Weights the plain terms of ``spec`` select (strip a ``lora:`` term with :func:`split_lora` first)."""
    blocks = sorted({p.block for p in params if p.block is not None})
    chosen: set[str] = set()
    for term in (t.strip() for t in spec.split(",")):
        if not term:
            continue
        matched = _match_term(term, params, blocks)
        if not matched:
            raise ModelError(f"--trainable term '{term}' selects no weights ({_describe(params, blocks)})")
        chosen.update(p.name for p in matched)
    if not chosen:
        raise ModelError(f"--trainable '{spec}' selects no weights")
    return [p for p in params if p.name in chosen]


def _match_term(term: str, params: list[Param], blocks: list[int]) -> list[Param]:
    kind, _, arg = term.partition(":")
    if term == "all":
        return list(params)
    if term == HEAD:
        return [p for p in params if p.region == HEAD]
    if term == EMBEDDINGS:
        return [p for p in params if p.region == EMBEDDINGS]
    if kind == "last" and arg:
        count = _positive_int(arg, term)
        if not blocks:
            raise ModelError(f"--trainable '{term}': no transformer blocks were found in the model")
        if count > len(blocks):
            raise ModelError(f"--trainable '{term}': the model has only {len(blocks)} blocks ({_describe(params, blocks)})")
        wanted = set(blocks[-count:])
        return [p for p in params if p.block in wanted or p.region == HEAD]
    if kind == "blocks" and arg:
        low, _, high = arg.partition("-")
        first = _positive_int(low, term, allow_zero=True)
        last = _positive_int(high, term, allow_zero=True) if high else first
        if blocks and last > blocks[-1]:
            raise ModelError(f"--trainable '{term}': block {last} is beyond the model's last block "
                             f"({_describe(params, blocks)})")
        return [p for p in params if p.block is not None and first <= p.block <= last]
    if kind == "re" and arg:
        try:
            pattern = re.compile(arg)
        except re.error as exc:
            raise ModelError(f"--trainable '{term}': bad regular expression ({exc})") from None
        return [p for p in params if pattern.search(p.name)]
    return [p for p in params if fnmatch.fnmatchcase(p.name, term)]


def _positive_int(text: str, term: str, allow_zero: bool = False) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < (0 if allow_zero else 1):
        raise ModelError(f"--trainable '{term}': '{text}' is not a valid block count or index")
    return value


def _describe(params: list[Param], blocks: list[int]) -> str:
    span = f"blocks {blocks[0]}-{blocks[-1]}" if blocks else "no blocks found"
    return f"model has {len(params)} weights, {span}"
