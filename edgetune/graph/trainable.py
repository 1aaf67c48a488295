"""The ``--trainable`` grammar: :meth:`TrainableSpec.parse` is the one place that reads the string.

Terms are separated by commas and their selections are united:

``auto``           (alone; the default) the slice chosen by what the model is (``graph.auto_slice``)
``all``            every weight
``last:N``         the last N blocks and everything after them (final norm, pooler, head)
``blocks:A-B``     blocks A..B (inclusive); ``blocks:A`` one block
``head``           weights after the last block
``embeddings``     weights before the first block
``re:REGEX``       weight names matching a regular expression
anything else      a glob over weight names (``*.bias``, ``classifier.*``)
``importance:K``   the K blocks a forward-only sensitivity probe ranks highest, plus the head
                   (``zo.importance``; resolved on data into ``blocks:…`` terms by :meth:`TrainableSpec.resolve`)

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

Parsing checks everything that does not need the model (numbers, ranges, regular expressions, options),
so a bad spec is refused before any model is read; :func:`edgetune.graph.select.select_params` then
matches the plain terms against a model's weights. ``str(spec)`` is the canonical text: equal specs
(``lora`` and ``lora:r=8,targets=q,v``) give the same text, which parses back to an equal spec; it is
what a trajectory log, a checkpoint and the prepared-graph cache record.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from edgetune.errors import ModelError
from edgetune.graph.blocks import EMBEDDINGS, HEAD

ALL, LAST, BLOCKS, REGEX, GLOB = "all", "last", "blocks", "re", "glob"
LORA, SPARSE, IMPORTANCE = "lora", "sparse", "importance"
SCORES = ("magnitude",)  # sparse: how the tuned entries are chosen
_LORA_DEFAULT_TARGETS = ("q", "v")
# Words that start another term: seen after an options term they mean it was not last.
_TERM_WORDS = (ALL, HEAD, EMBEDDINGS, LORA, SPARSE)

Fail = Callable[[str], ModelError]


@dataclass(frozen=True)
class Term:
    """One plain selection term: ``kind`` with its block numbers (``last``, ``blocks``) or pattern."""

    kind: str  # ALL, HEAD, EMBEDDINGS, LAST, BLOCKS, REGEX or GLOB
    first: int = 0  # last:N → N; blocks:A-B → A
    last: int = 0  # blocks:A-B → B
    pattern: str = ""  # re: and globs

    def __str__(self) -> str:
        if self.kind == LAST:
            return f"{LAST}:{self.first}"
        if self.kind == BLOCKS:
            return f"{BLOCKS}:{self.first}" + (f"-{self.last}" if self.last != self.first else "")
        if self.kind == REGEX:
            return f"{REGEX}:{self.pattern}"
        return self.pattern if self.kind == GLOB else self.kind


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

    def __str__(self) -> str:
        # r and targets always (what a reader looks for), the rest where it is not the default
        options = [f"r={self.rank}"]
        if self.alpha != 2.0 * self.rank:
            options.append(f"alpha={_number_text(self.alpha)}")
        options.append("targets=" + ",".join(self.targets))
        if self.frozen_a:
            options.append("fa")
        if self.seed:
            options.append(f"seed={self.seed}")
        if self.layers is not None:
            first, last = self.layers
            options.append(f"layers={first}" + (f"-{last}" if last != first else ""))
        return f"{LORA}:" + ",".join(options)


@dataclass(frozen=True)
class SparseSpec:
    density: float
    score: str = "magnitude"
    targets: tuple[str, ...] | None = None  # LoRA-style aliases or module suffixes; None: every linear layer

    def __str__(self) -> str:
        options = [f"density={_number_text(self.density)}"]
        if self.score != SCORES[0]:
            options.append(f"score={self.score}")
        if self.targets is not None:
            options.append("targets=" + ",".join(self.targets))
        return f"{SPARSE}:" + ",".join(options)


@dataclass(frozen=True)
class TrainableSpec:
    """A parsed ``--trainable``: plain terms, at most one of ``lora``/``sparse``, and an ``importance:K``."""

    terms: tuple[Term, ...] = ()
    lora: LoraSpec | None = None
    sparse: SparseSpec | None = None
    importance: int | None = None  # K of importance:K, until :meth:`resolve` replaces it by blocks
    text: str = field(default="", compare=False)  # as the user wrote it (messages, the run's summary)

    def __post_init__(self) -> None:
        if not self.text:  # built in code, not parsed: its own canonical text
            object.__setattr__(self, "text", str(self))

    @classmethod
    def parse(cls, text: str) -> TrainableSpec:
        """Read ``--trainable``; every problem is one :class:`ModelError` line naming the flag and the term."""
        fail = _spec_error(text)
        if text.strip() == AUTO:  # a word, not a glob: only a tuning run, which reads the model, resolves it
            raise fail("auto chooses the slice from the model when tuning (edgetune tune, Tuner.from_onnx); "
                       "name the weights here")
        terms = [t.strip() for t in text.split(",")]
        lora_at, sparse_at = (_term_index(terms, name) for name in (LORA, SPARSE))
        if lora_at is not None and sparse_at is not None and lora_at < sparse_at:
            raise fail("a lora: and a sparse: term cannot be combined")  # the other way round: not last
        at = min(i for i in (lora_at, sparse_at, len(terms)) if i is not None)
        plain, options = terms[:at], [terms[at].partition(":")[2], *terms[at + 1:]] if at < len(terms) else []
        importance = [t for t in plain if t.startswith(IMPORTANCE + ":")]
        if len(importance) > 1:
            raise fail("importance:K given twice")
        spec = cls(
            terms=tuple(_parse_term(t) for t in plain if t and t not in importance),
            lora=_parse_lora(options, fail) if at == lora_at else None,
            sparse=_parse_sparse(options, fail) if at == sparse_at else None,
            importance=_parse_importance(importance[0], fail) if importance else None,
            text=text,
        )
        if not (spec.terms or spec.lora or spec.sparse or spec.importance):
            raise ModelError(f"--trainable '{text}' selects no weights")
        return spec

    def __str__(self) -> str:
        parts = [str(t) for t in self.terms]
        if self.importance is not None:
            parts.append(f"{IMPORTANCE}:{self.importance}")
        parts += [str(added) for added in (self.lora, self.sparse) if added is not None]
        return ",".join(parts)

    def resolve(self, ranking: Sequence[int]) -> TrainableSpec:
        """This spec with ``importance:K`` replaced by the K best of ``ranking`` (blocks, best first) and the head."""
        if self.importance is None:
            return self
        if self.importance > len(ranking):
            raise ModelError(f"--trainable '{self.text}': the model has only {len(ranking)} blocks")
        chosen = [Term(BLOCKS, b, b) for b in sorted(ranking[: self.importance])]
        return replace(self, terms=(*self.terms, *chosen, Term(HEAD)), importance=None, text="")


def _spec_error(text: str) -> Fail:
    """The error a term's parser raises: one line naming the flag and the whole spec."""
    return lambda message: ModelError(f"--trainable '{text}': {message}")


def _term_index(terms: list[str], name: str) -> int | None:
    return next((i for i, t in enumerate(terms) if t == name or t.startswith(name + ":")), None)


def _parse_term(text: str) -> Term:
    if text in (ALL, HEAD, EMBEDDINGS):
        return Term(text)
    kind, _, arg = text.partition(":")
    if kind == LAST and arg:
        return Term(LAST, _block_number(arg, text))
    if kind == BLOCKS and arg:
        low, dash, high = arg.partition("-")
        first = _block_number(low, text, allow_zero=True)
        last = _block_number(high, text, allow_zero=True) if high else first
        if last < first:
            raise ModelError(f"--trainable '{text}': an empty range (write blocks:FIRST-LAST)")
        return Term(BLOCKS, first, last)
    if kind == REGEX and arg:
        try:
            re.compile(arg)
        except re.error as exc:
            raise ModelError(f"--trainable '{text}': bad regular expression ({exc})") from None
        return Term(REGEX, pattern=arg)
    return Term(GLOB, pattern=text)


def _block_number(text: str, term: str, allow_zero: bool = False) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < (0 if allow_zero else 1):
        raise ModelError(f"--trainable '{term}': '{text}' is not a valid block count or index")
    return value


def _parse_importance(term: str, fail: Fail) -> int:
    count = term.partition(":")[2]
    if not count.isdigit():
        raise fail("write importance:K with K a positive number of blocks")
    if int(count) < 1:
        raise fail("importance:K needs K >= 1")
    return int(count)


@dataclass(frozen=True)
class _Options:
    values: dict[str, str]  # key=value options, ``targets`` aside
    targets: tuple[str, ...] | None  # in order, without repeats; None: no targets= given
    flags: frozenset[str]


def _parse_options(name: str, tokens: list[str], keys: tuple[str, ...], flags: tuple[str, ...], fail: Fail) -> _Options:
    """Read a ``name:`` term's tokens (``NAME:key=value,...,targets=a,b,...,flag``); ``keys`` take ``=value``,
    ``flags`` stand alone. A ``targets=`` value runs on over the bare tokens that follow it, which is why
    such a term must end ``--trainable``. Unknown or repeated options and a term after this one fail."""
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
    return _Options(values, tuple(dict.fromkeys(targets)) or None, frozenset(given_flags))


def _parse_lora(tokens: list[str], fail: Fail) -> LoraSpec:
    parsed = _parse_options(LORA, tokens, ("r", "alpha", "targets", "seed", "layers"), ("fa",), fail)
    options = parsed.values
    rank = _lora_number(options.get("r", "8"), int, "r", fail)
    alpha = _lora_number(options["alpha"], float, "alpha", fail) if "alpha" in options else 2.0 * rank
    seed = _lora_number(options.get("seed", "0"), int, "seed", fail, allow_zero=True)
    layers = _lora_layers(options["layers"], fail) if "layers" in options else None
    return LoraSpec(rank, alpha, parsed.targets or _LORA_DEFAULT_TARGETS, "fa" in parsed.flags, seed, layers)


def _lora_layers(text: str, fail: Fail) -> tuple[int, int]:
    low, dash, high = text.partition("-")
    first = _lora_number(low, int, "layers", fail, allow_zero=True)
    last = _lora_number(high, int, "layers", fail, allow_zero=True) if dash else first
    if last < first:
        raise fail(f"lora layers={text} is an empty range (write layers=FIRST-LAST)")
    return first, last


def _lora_number(text: str, kind: type, name: str, fail: Fail, allow_zero: bool = False):
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        sign = "non-negative" if allow_zero else "positive"
        raise fail(f"lora {name} must be a {sign} {'integer' if kind is int else 'number'}, not '{text}'")
    return value


def _parse_sparse(tokens: list[str], fail: Fail) -> SparseSpec:
    parsed = _parse_options(SPARSE, tokens, ("density", "score", "targets"), (), fail)
    options = parsed.values
    if "density" not in options:
        raise fail("sparse needs density=FRACTION (0.01 tunes 1 % of each targeted weight)")
    try:
        density = float(options["density"])
    except ValueError:
        density = math.nan
    if not 0 < density <= 1:
        raise fail(f"sparse density must be in (0, 1], not '{options['density']}'")
    score = options.get("score", SCORES[0])
    if score not in SCORES:
        raise fail(f"sparse score must be one of {', '.join(SCORES)}, not '{score}'")
    return SparseSpec(density, score, parsed.targets)


def _number_text(value: float) -> str:
    """A float as the shortest text that reads back to it (``16`` rather than ``16.0``)."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


# The slice the planner shows as a tuning run's typical one.
DEFAULT = TrainableSpec((Term(LAST, 1),))
# The tuner's default, and the text its flag and config key default to: the slice chosen by the model's kind
# (``graph.auto_slice``), resolved where the model is read, never by :meth:`TrainableSpec.parse`.
AUTO = "auto"
DEFAULT_TRAINABLE = AUTO
