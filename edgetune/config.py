"""Run configuration: dataclasses whose fields are the CLI flags, the YAML keys and the API's keywords.

Each field describes itself (:func:`edgetune.zo.options.option`: help, range or choices, trajectory mark);
the flags, ``--config`` checking, the replay header's keys and ``docs/cli.md`` are generated from them.
Every option a user gives (a flag, a ``--config`` key, a keyword of the Python API) is checked here before
any work starts by one generic check, :func:`validate_fields`: the types from the annotations, then the
ranges and choices from the metadata; only rules between fields are code. Messages name the option as
its flag (``--steps``) whichever way it came in, except a YAML key of the wrong type, which names the
file and the key.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import Field, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from edgetune.errors import EdgetuneError
from edgetune.graph.units import parse_size_mb
# Bound and option are the vocabulary of every option declaration, the optimizers' included (re-exported here)
from edgetune.zo.options import (OPTIMIZER_NAMES, OPTIMIZER_OPTIONS, ROTATE_MODES, Bound, DiZOOptions, HeadOptions,
                                 HiZOOOptions, LOZOOptions, MicroAdamOptions, WindowOptions, option)
from edgetune.zo.queries import QUERY_SCHEDULES

TASKS = ("classification", "lm")
MAX_SEED = 2**64 - 1  # seeds are the core's uint64
MAX_THREADS = 1024  # far above any CPU edgetune targets; a larger count is a typo, and ORT would try to start them
_F32_MAX = 3.4028234663852886e38  # the trajectory log stores lr, ε and weight decay as float32
_F32_TINY = 1.401298464324817e-45  # the smallest positive float32: a smaller lr or ε rounds to 0 there


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


THREADS = Bound(1, MAX_THREADS)
SEED = Bound(0, MAX_SEED)


def check_bounds(values: Mapping[str, Any], bounds: Mapping[str, Bound]) -> None:
    """Raise naming the flag of the first value outside its :class:`Bound` (None values are unset)."""
    for name, bound in bounds.items():
        value = values.get(name)
        if value is not None and not bound.holds(value):
            why = f" ({bound.why})" if bound.why else ""
            raise EdgetuneError(f"{flag(name)} must be {bound.describe()}, got {value}{why}")


def _shown(value: Any) -> str:
    """A value as the user wrote it, in YAML's spelling for the scalars Python spells differently."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value) if isinstance(value, str) else str(value)


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}
_COLLECTIONS = {dict: "a mapping of strings", list: "a list of strings", tuple: "a list of strings",
                Sequence: "a list of strings"}


def _expected(hint: Any) -> str:
    arms = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    words = [_KINDS.get(arm, _COLLECTIONS.get(typing.get_origin(arm), str(arm)))
             for arm in arms if arm is not type(None)]
    return " or ".join(dict.fromkeys(words))


def _coerce(value: Any, hint: Any, numeric_text: bool) -> tuple[bool, Any]:
    """Whether ``value`` is of type ``hint``, and the value to keep (an int given for a float field as a float)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            ok, kept = _coerce(value, arm, numeric_text)
            if ok:
                return True, kept
        return False, value
    if hint is type(None):
        return value is None, value
    if isinstance(value, bool) or hint is bool:  # a bool is an int to Python, never to a user
        return isinstance(value, bool) and hint is bool, value
    if hint is float:
        if isinstance(value, str) and numeric_text:  # PyYAML reads 1e-3 (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        if not isinstance(value, (int, float)):
            return False, value
        try:
            return True, float(value)
        except OverflowError:  # an int beyond any float: refused as not finite
            return True, math.inf
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(x, str) for x in (*value, *value.values())), value
    if origin in (list, tuple, Sequence):  # a sequence of strings, never a string itself
        return isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value), value
    return isinstance(value, hint), value


def typed_options(cls: type, values: Mapping[str, Any], source: str | Path | None = None) -> dict[str, Any]:
    """``values`` (keys among ``cls``'s fields) checked against the field types; float fields must be finite.

    ``source``: the YAML file they came from, named in the message with the key; its numeric strings
    are accepted for float fields, as the flag parser accepts them. A numeric field that also takes words
    (``--lr auto``) takes those words only.
    """
    words = {f.name: f.metadata["keywords"] for f in fields(cls) if f.metadata.get("keywords")}
    return _check_types(typing.get_type_hints(cls), values, source, words)


def check_option(name: str, value: Any, hint: Any, bound: Bound | None = None) -> Any:
    """One option outside a dataclass (``eval --batch-size``, ``export --opset``): its type, then its range."""
    kept = _check_types({name: hint}, {name: value})[name]
    if bound is not None:
        check_bounds({name: kept}, {name: bound})
    return kept


def _check_types(hints: Mapping[str, Any], values: Mapping[str, Any], source: str | Path | None = None,
                 words: Mapping[str, tuple[str, ...]] = {}) -> dict[str, Any]:
    checked = {}
    for name, value in values.items():
        ok, kept = _coerce(value, hints[name], numeric_text=source is not None)
        where = f"{source}: key '{name}'" if source is not None else flag(name)
        if name in words and isinstance(kept, str) and kept not in words[name]:
            raise EdgetuneError(f"{where}: expected a number or {choice_words(words[name])}, got {_shown(value)}")
        if not ok:
            raise EdgetuneError(f"{where}: expected {_expected(hints[name])}, got {_shown(value)}")
        if isinstance(kept, float) and not math.isfinite(kept):
            raise EdgetuneError(f"{where}: expected a finite number, got {kept}")
        checked[name] = kept
    return checked


def known_options(classes: Sequence[type], values: Mapping[str, Any], where: str = "") -> None:
    """Refuse a key that is not an option of one of ``classes`` (a typo would otherwise be ignored or a TypeError)."""
    unknown = sorted(set(values).difference(*({f.name for f in cli_fields(cls)} for cls in classes)))
    if unknown:
        raise EdgetuneError(f"{where}unknown option '{unknown[0]}'")


@dataclass
class _CommonOptions:
    """The options of every run, whichever the optimizer (:class:`TrainConfig`'s first fields)."""

    steps: int = option(1000, "optimizer steps", bound=Bound(1))
    optimizer: str = option("zo-sgd", "the zeroth-order optimizer", choices=OPTIMIZER_NAMES, trajectory=True)
    batch_size: int = option(16, "training examples per step; more than the training set has is capped to its "
                             "size (each step then sees all of it)", bound=Bound(1), trajectory=True)
    lr: float | str = option("auto", "learning rate, or auto: 0.05/zᵀHz, the curvature along the noise bounded from "
                             "8-32 probes before step 0 (their forwards count in the budget)", bound=Bound(positive=True),
                             keywords=("auto",), trajectory=True)
    eps: float | str = option(1e-3, "perturbation size ε, or auto: from the loss's float32 rounding and the curvature "
                              "(measured with --lr auto's probes)", bound=Bound(positive=True), keywords=("auto",),
                              trajectory=True)
    lr_adapt: str = option("off", "step-size adaptation: meazo scales lr by one scalar, 1/√v̂ with v the EMA of the "
                           "squared projected gradient (MEAZO)", choices=("off", "meazo"), trajectory=True)
    guard: str = option("on", "watch the smoothed training loss: on a sustained rise roll back to the best step "
                        "(zo-sgd; other optimizers only halve lr) and halve lr; a run that ends worse than it began "
                        "keeps its best state", choices=("on", "off"), trajectory=True)
    queries: int = option(1, "queries (perturbation pairs) per step; the most a step may take under the grow and "
                          "variance schedules", bound=Bound(1), trajectory=True)
    query_schedule: str = option("fixed", "queries per step: fixed, grow from --queries-min to --queries, or "
                                 "variance (query until the estimate is steady)", choices=QUERY_SCHEDULES,
                                 trajectory=True)
    queries_min: int = option(1, "grow: queries at step 0; variance: queries before the spread is tested",
                              bound=Bound(1), trajectory=True)
    query_threshold: float = option(0.5, "variance: query until the relative standard error of mean(g²) is below "
                                    "this", bound=Bound(positive=True), trajectory=True)
    forward_budget: int = option(0, "forward passes after which the run ends (after the step that reaches it); "
                                 "0: none", bound=Bound(0, why="0: no budget"))
    parallel: str = option("off", "P-RGE: evaluate the queries as perturbed copies in one forward (auto: measure "
                           "and choose)", choices=("off", "on", "auto"), trajectory=True)
    schedule: str = option("constant", "learning-rate schedule (spall: Spall's gains, lr/(k+1+A)^0.602 and "
                           "ε/(k+1)^0.101 with A = 10% of --steps)", choices=("constant", "linear", "cosine", "spall"),
                           trajectory=True)
    warmup: int = option(0, "steps of linear learning-rate warm-up", bound=Bound(0), trajectory=True)
    weight_decay: float = option(0.0, "decoupled weight decay", bound=Bound(0), trajectory=True)
    noise: str = option("rademacher", "perturbation noise: rademacher (±1, a 5x faster kernel) or gaussian",
                        choices=("rademacher", "gaussian"), trajectory=True)
    seed: int = option(0, "seed of every perturbation and batch", bound=SEED, trajectory=True)
    eval_every: int = option(0, "evaluate on --eval-data every this many steps; 0: only before and after",
                             bound=Bound(0, why="0: only before and after"))
    save_every: int = option(0, "checkpoint every this many steps; 0: only at the end",
                             bound=Bound(0, why="0: only at the end"))
    eval_batch_size: int = option(0, "examples per evaluation run; 0: --batch-size, so that evaluating needs no "
                                  "more memory than a step", bound=Bound(0, why="0: the training --batch-size"))
    rotate: int = option(0, "perturb and update K of the trainable blocks per step (and everything outside the "
                         "blocks); 0: all", bound=Bound(0, words="0 (off) or a number of blocks"), trajectory=True)
    rotate_every: int = option(1, "--rotate: keep the same K blocks for this many steps", bound=Bound(1),
                               trajectory=True)
    rotate_mode: str = option("random", "--rotate: walk the blocks in order (cyclic) or draw them from the seed "
                              "(random)", choices=ROTATE_MODES, trajectory=True)
    activation_cache: str = option("auto", "keep the frozen prefix's output per training example, so that after "
                                   "the first epoch a step runs only the trainable suffix: auto (in a temporary file, "
                                   "read through the page cache: no RSS), off, or a RAM budget such as 200MB (in "
                                   "RAM when it all fits, else the file)")
    activation_cache_dtype: str = option("fp32", "--activation-cache storage: fp32 (the same losses to the last "
                                         "bit) or fp16 (half the memory, not exact)", choices=("fp32", "fp16"))


@dataclass
class TrainConfig(HiZOOOptions, LOZOOptions, HeadOptions, MicroAdamOptions, WindowOptions, DiZOOptions,
                  _CommonOptions):
    """How to tune. Every field is also a ``tune`` flag (``--batch-size``) and a YAML key (``batch_size``).

    The fields are the common options, then those each optimizer declares (:mod:`edgetune.zo.options`),
    flat: ``TrainConfig(dizo_interval=20)``, ``--dizo-interval 20``, ``dizo_interval: 20``.
    """

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TrainConfig:
        """A validated config from keyword options (the Python API's ``fit(**options)``)."""
        known_options((cls,), options)
        config = cls(**options)
        config.validate()
        config.refuse_ignored(options)
        return config

    @classmethod
    def trajectory_keys(cls) -> tuple[str, ...]:
        """The fields the trajectory depends on: a resumed run must keep them, the replay header holds them."""
        return tuple(f.name for f in fields(cls) if f.metadata["trajectory"])

    @classmethod
    def groups(cls) -> list[tuple[str, list[str]]]:
        """The fields by owner: the common ones, then each optimizer's (a title and the field names)."""
        owned = [(f"--optimizer {choice_words(group.for_optimizers)}", [f.name for f in fields(group)])
                 for group in OPTIMIZER_OPTIONS]
        owned.append(("the classifier's head (--head exact)", [f.name for f in fields(HeadOptions)]))
        taken = {name for _, names in owned for name in names}
        return [("training options", [f.name for f in fields(cls) if f.name not in taken]), *owned]

    def validate(self) -> None:
        validate_fields(self)
        self._validate_widths()
        if self.warmup > self.steps:
            raise EdgetuneError(f"--warmup {self.warmup} is more than --steps {self.steps}")
        if self.queries_min > self.queries:
            raise EdgetuneError(f"--queries-min must be between 1 and --queries ({self.queries})")
        if self.parallel != "off" and (self.optimizer != "zo-sgd" or self.query_schedule != "fixed"):
            raise EdgetuneError("--parallel on/auto needs --optimizer zo-sgd with --query-schedule fixed")
        if self.rotate and self.optimizer != "zo-sgd":
            raise EdgetuneError(f"--rotate works with --optimizer zo-sgd only, not '{self.optimizer}'")
        if self.rotate and self.parallel != "off":
            raise EdgetuneError("--rotate needs --parallel off (P-RGE perturbs copies of the whole slice)")
        if self.optimizer == "hizoo" and self.noise != "gaussian":
            # its curvature estimate weighs each weight by u² − 1, which ±1 noise makes 0 everywhere
            raise EdgetuneError("--optimizer hizoo needs --noise gaussian (with rademacher noise u² = 1, so its "
                                "curvature estimate c·(u² − 1) is 0)")
        if self.optimizer == "hizoo" and self.query_schedule != "fixed":
            raise EdgetuneError(f"--optimizer hizoo needs --query-schedule fixed, not {self.query_schedule}")
        self._validate_calibration_budget()
        self._validate_head()
        if self.activation_cache not in ("auto", "off"):
            try:
                parse_size_mb(self.activation_cache, "--activation-cache")
            except EdgetuneError:
                raise EdgetuneError("--activation-cache must be auto, off or a RAM budget such as 200MB, got "
                                    f"'{self.activation_cache}'") from None

    def exact_head_allowed(self) -> bool:
        """Whether ``--head auto`` may choose exact: only ZO-SGD, unrotated, perturbs part of the slice."""
        return self.optimizer == "zo-sgd" and self.parallel == "off" and not self.rotate

    def resolved_head(self, head_in_graph: bool) -> str:
        """``head`` with auto resolved: exact where the prepared graph outputs the head's gradient
        (``head_in_graph``: ``Tuner.from_onnx`` found a linear head in the slice) and :meth:`exact_head_allowed`."""
        if self.head != "auto":
            return self.head
        return "exact" if head_in_graph and self.exact_head_allowed() else "zo"

    def graph_head(self) -> str:
        """The ``head`` to prepare the graph for (``Tuner.from_onnx``): auto only where it may choose exact."""
        return "zo" if self.head == "auto" and not self.exact_head_allowed() else self.head

    def _validate_head(self) -> None:
        """--head exact keeps ZO off the head: only ZO-SGD perturbs part of the slice (the others, P-RGE's
        copies and DiZO's projection work on all of it), and --rotate would choose that part itself."""
        if self.head != "exact":
            return
        if self.optimizer != "zo-sgd":
            raise EdgetuneError(f"--head exact needs --optimizer zo-sgd, not {self.optimizer} (it perturbs and "
                                "updates the whole slice, the head included)")
        if self.parallel != "off":
            raise EdgetuneError("--head exact needs --parallel off (P-RGE perturbs copies of the whole slice, "
                                "the head included)")
        if self.rotate:
            raise EdgetuneError("--head exact needs --rotate 0 (both choose the part of the slice ZO perturbs)")

    def refuse_ignored(self, given: Iterable[str]) -> None:
        """An option of another optimizer than ``optimizer``, among the ``given`` ones (flags, YAML keys,
        keywords) with a value other than its default, would be silently ignored: refuse it.

        A default value passes, so that a run's summary.json config, which lists every option, can be reused.
        """
        for group in OPTIMIZER_OPTIONS:
            if self.optimizer in group.for_optimizers:
                continue
            for f in fields(group):
                if f.name in given and getattr(self, f.name) != f.default:
                    raise EdgetuneError(f"{flag(f.name)} {getattr(self, f.name)} is an option of --optimizer "
                                        f"{choice_words(group.for_optimizers)}, not {self.optimizer} "
                                        "(it would be ignored)")
        if self.head in HeadOptions.for_head:
            return
        for f in fields(HeadOptions):
            if f.name != "head" and f.name in given and getattr(self, f.name) != f.default:
                raise EdgetuneError(f"{flag(f.name)} {getattr(self, f.name)} is an option of --head exact, not "
                                    f"--head {self.head} (it would be ignored)")

    def _validate_calibration_budget(self) -> None:
        """--lr/--eps auto spend their probes' forwards from --forward-budget: a budget they use up would run no step."""
        from edgetune.zo.calibrate import FORWARDS  # it needs the core, which the config does not load otherwise

        if "auto" in (self.lr, self.eps) and 0 < self.forward_budget <= FORWARDS:
            raise EdgetuneError(f"--forward-budget {self.forward_budget} leaves no step after the {FORWARDS} forwards "
                                "of --lr/--eps auto's calibration: give --lr and --eps, or a larger budget")

    def _validate_widths(self) -> None:
        """Every step record of the trajectory log holds the step and q in 32 and 16 bits, and lr, ε and decay
        as float32: each value must survive that."""
        from edgetune.artifacts.trajectory import MAX_QUERIES, MAX_STEPS  # the format owns its widths; it needs the core

        check_bounds({"steps": self.steps, "queries": self.queries}, {
            "steps": Bound(1, MAX_STEPS, why="the trajectory log numbers steps in 32 bits"),
            "queries": Bound(1, MAX_QUERIES, why="the trajectory log stores q in 16 bits")})
        for name in ("lr", "eps", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, str):  # auto: the calibrated value is checked where it is measured
                continue
            if abs(value) > _F32_MAX or (name != "weight_decay" and value < _F32_TINY):
                raise EdgetuneError(f"{flag(name)} {value} does not fit the trajectory log's 32-bit float "
                                    f"(it must be {'at most' if abs(value) > _F32_MAX else 'at least'} "
                                    f"{_F32_MAX if abs(value) > _F32_MAX else _F32_TINY:.7g})")

    def check_eval_data(self, eval_data: str | Path | None) -> None:
        """--eval-every asks for evaluations during the run: without --eval-data there is nothing to evaluate."""
        if self.eval_every and not eval_data:
            raise EdgetuneError(f"--eval-every {self.eval_every} needs --eval-data (the file to evaluate on)")

    @property
    def eval_rows(self) -> int:
        """Examples per evaluation run: ``eval_batch_size``, or the training batch size when it is 0."""
        return self.eval_batch_size or self.batch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelOptions:
    """How a model is loaded: :meth:`edgetune.Tuner.from_onnx`'s options past the path and ``trainable``,
    and the matching flags of ``tune`` and ``eval``."""

    tokenizer: str | Path | None = option(None, "tokenizer.json (default: beside the model)")
    task: str | None = option(None, "default: from the model", choices=TASKS, parse=True)
    max_length: int | None = option(None, "truncate examples to this many tokens (default 128, or the model's "
                                    "positions where it has fewer)",
                                    # one token leaves a causal LM nothing to predict and a classifier nothing but [CLS]
                                    bound=Bound(2))
    threads: int | None = option(None, "ONNX Runtime and kernel threads (default: all cores)", bound=THREADS,
                                 parse=True)
    split: bool = option(True, "run the whole graph per evaluation instead of caching the frozen prefix")
    verbalizer: str | dict[str, str] | None = option(
        None, 'classify {"text","label"} data with a causal LM by the word it says after the prompt: '
        '"negative=terrible,positive=great" (default: from the model\'s metadata)')
    template: str | None = option(None, 'prompt for --verbalizer, with {text} where the text goes (default "{text}")')
    providers: Sequence[str] | None = option(None, "ONNX Runtime execution providers, in order of preference "
                                             "(default: CPU)", cli=False)

    def validate(self) -> None:
        validate_fields(self)

    def keywords(self) -> dict[str, Any]:
        """The options as :meth:`edgetune.Tuner.from_onnx`'s keywords."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def validate_fields(options: Any) -> None:
    """Check each field of the dataclass ``options``: its type (from the annotations; an int given for a float
    field becomes that float), then its range and choices (from the field's metadata); None is unset."""
    checked = typed_options(type(options), {f.name: getattr(options, f.name) for f in fields(options)})
    for name, value in checked.items():
        setattr(options, name, value)
    for f in fields(options):
        value = getattr(options, f.name)
        if value is None:
            continue
        if isinstance(value, str) and f.metadata.get("keywords"):  # --lr auto: a word the type check let through
            continue
        if f.metadata.get("bound") is not None:
            check_bounds({f.name: value}, {f.name: f.metadata["bound"]})
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise EdgetuneError(f"{flag(f.name)} must be {choice_words(choices)}, not '{value}'")


def choice_words(choices: Sequence[str]) -> str:
    """``a or b``, ``a, b or c``, or ``one of a, b, c, d`` for longer lists."""
    if len(choices) > 3:
        return "one of " + ", ".join(choices)
    return " or ".join([", ".join(choices[:-1]), choices[-1]]) if len(choices) > 1 else choices[0]


def cli_fields(cls: type) -> list[Field]:
    """The fields of ``cls`` that are flags and ``--config`` keys."""
    return [f for f in fields(cls) if f.metadata.get("cli", True)]


def read_config_options(path: str | Path, classes: Sequence[type]) -> dict[str, Any]:
    """The keys of a ``--config`` file, each a flag of one of ``classes`` (an unknown one is refused) and of its
    field's type (messages name the file and the key)."""
    values = read_yaml_config(path)
    known_options(classes, values, f"{path}: ")
    typed: dict[str, Any] = {}
    for cls in classes:
        names = {f.name for f in cli_fields(cls)}
        typed.update(typed_options(cls, {k: v for k, v in values.items() if k in names}, path))
    return typed


def field_names(cls) -> set[str]:
    return {f.name for f in fields(cls)}


def read_yaml_config(path: str | Path) -> dict[str, Any]:
    """Keys of a ``--config`` file, with dashes or underscores, as flag destinations."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise EdgetuneError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise EdgetuneError(f"{path}: is a folder, not a YAML config file") from None
    except OSError as exc:
        raise EdgetuneError(f"{path}: cannot read the config file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise EdgetuneError(f"{path}: not a YAML config file (not UTF-8 text)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise EdgetuneError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise EdgetuneError(f"{path}: expected a mapping of option names to values")
    return {str(key).replace("-", "_"): value for key, value in data.items()}
