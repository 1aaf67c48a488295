"""Parsing ``--trainable`` into the list of weights to tune.

Terms are separated by commas and their selections are united:

``all``            every weight
``last:N``         the last N blocks and everything after them (final norm, pooler, head)
``blocks:A-B``     blocks A..B (inclusive); ``blocks:A`` one block
``head``           weights after the last block
``embeddings``     weights before the first block
``re:REGEX``       weight names matching a regular expression
anything else      a glob over weight names (``*.bias``, ``classifier.*``)
"""

from __future__ import annotations

import fnmatch
import re

from edgetune.errors import ModelError
from edgetune.graph.blocks import EMBEDDINGS, HEAD, Param

DEFAULT_TRAINABLE = "last:1"


def select_params(params: list[Param], spec: str) -> list[Param]:
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
        wanted = set(blocks[-count:])
        return [p for p in params if p.block in wanted or p.region == HEAD]
    if kind == "blocks" and arg:
        low, _, high = arg.partition("-")
        first = _positive_int(low, term, allow_zero=True)
        last = _positive_int(high, term, allow_zero=True) if high else first
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
