"""Matching a :class:`TrainableSpec`'s plain terms against a model's weights (the grammar: ``graph.trainable``)."""

from __future__ import annotations

import fnmatch
import re

from edgetune.errors import ModelError
from edgetune.graph.blocks import EMBEDDINGS, HEAD, Param
from edgetune.graph.trainable import ALL, BLOCKS, LAST, REGEX, Term, TrainableSpec


def select_params(params: list[Param], spec: TrainableSpec) -> list[Param]:
    """Weights the plain terms of ``spec`` select (none when it has only a ``lora:`` or ``sparse:`` term);
    each term must select some."""
    blocks = sorted({p.block for p in params if p.block is not None})
    chosen: set[str] = set()
    for term in spec.terms:
        matched = _match_term(term, params, blocks)
        if not matched:
            raise ModelError(f"--trainable term '{term}' selects no weights ({_describe(params, blocks)})")
        chosen.update(p.name for p in matched)
    return [p for p in params if p.name in chosen]


def _match_term(term: Term, params: list[Param], blocks: list[int]) -> list[Param]:
    if term.kind == ALL:
        return list(params)
    if term.kind in (HEAD, EMBEDDINGS):
        return [p for p in params if p.region == term.kind]
    if term.kind == LAST:
        if not blocks:
            raise ModelError(f"--trainable '{term}': no transformer blocks were found in the model")
        if term.first > len(blocks):
            raise ModelError(f"--trainable '{term}': the model has only {len(blocks)} blocks ({_describe(params, blocks)})")
        wanted = set(blocks[-term.first:])
        return [p for p in params if p.block in wanted or p.region == HEAD]
    if term.kind == BLOCKS:
        if blocks and term.last > blocks[-1]:
            raise ModelError(f"--trainable '{term}': block {term.last} is beyond the model's last block "
                             f"({_describe(params, blocks)})")
        return [p for p in params if p.block is not None and term.first <= p.block <= term.last]
    if term.kind == REGEX:
        pattern = re.compile(term.pattern)
        return [p for p in params if pattern.search(p.name)]
    return [p for p in params if fnmatch.fnmatchcase(p.name, term.pattern)]


def _describe(params: list[Param], blocks: list[int]) -> str:
    span = f"blocks {blocks[0]}-{blocks[-1]}" if blocks else "no blocks found"
    return f"model has {len(params)} weights, {span}"
