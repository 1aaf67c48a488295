"""The grammar ``lora:`` and ``sparse:`` terms share: ``NAME:key=value,...,targets=a,b,...,flag``.

Such a term must end ``--trainable`` because its options are comma-separated like the terms, and a
``targets=`` value runs on over the bare tokens that follow it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgetune.errors import ModelError
from edgetune.graph.blocks import EMBEDDINGS, HEAD

LORA = "lora"
SPARSE = "sparse"
# Words that start another --trainable term: seen after an options term they mean it was not last.
_TERM_WORDS = ("all", HEAD, EMBEDDINGS, LORA, SPARSE)


@dataclass(frozen=True)
class TermOptions:
    values: dict[str, str]  # key=value options, ``targets`` aside
    targets: tuple[str, ...] | None  # in order, without repeats; None: no targets= given
    flags: frozenset[str]


def split_term(spec: str, name: str) -> tuple[str, list[str] | None]:
    """Split ``--trainable`` into the terms before a ``name:`` term and that term's option tokens
    (None: there is no such term)."""
    terms = [t.strip() for t in spec.split(",")]
    at = next((i for i, t in enumerate(terms) if t == name or t.startswith(name + ":")), None)
    if at is None:
        return spec, None
    return ",".join(terms[:at]), [terms[at][len(name) + 1:], *terms[at + 1:]]


def spec_error(spec: str) -> Callable[[str], ModelError]:
    """The error a term's parser raises: one line naming the flag and the whole spec."""
    return lambda message: ModelError(f"--trainable '{spec}': {message}")


def parse_options(name: str, tokens: list[str], keys: tuple[str, ...], flags: tuple[str, ...],
                  fail: Callable[[str], Exception]) -> TermOptions:
    """Read a ``name:`` term's tokens; ``keys`` take ``=value`` (``targets`` among them where allowed),
    ``flags`` stand alone. Unknown or repeated options and a term after this one raise ``fail(message)``."""
    values: dict[str, str] = {}
    targets: list[str] = []
    given_flags: set[str] = set()
    in_targets = False
    for token in (t for t in tokens if t):
        key, eq, value = token.partition("=")
        if eq and ":" not in key:  # "lora:r=2" is another term, not an option
            if key not in keys:
                raise fail(f"unknown {name} option '{key}' (options: {', '.join(keys + flags)})")
            if key in values:
                raise fail(f"{name} option '{key}' given twice")
            values[key] = value
            in_targets = key == "targets"
            if in_targets and value:
                targets.append(value)
        elif token in flags:
            given_flags.add(token)
            in_targets = False
        elif in_targets and ":" not in token and token not in _TERM_WORDS and not any(c in token for c in "*?["):
            targets.append(token)
        else:
            raise fail(f"'{token}' follows the {name}: term, which must come last (its options use commas too)")
    if "targets" in values and not targets:
        raise fail("targets= names no layers")
    values.pop("targets", None)  # its first layer only: the whole list is ``targets``
    return TermOptions(values, tuple(dict.fromkeys(targets)) or None, frozenset(given_flags))
