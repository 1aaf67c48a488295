"""Run configuration: one dataclass whose fields are the CLI flags and the YAML keys.

Every option a user gives (a flag, a ``--config`` key, a keyword of the Python API) is checked here
against its dataclass field's type and range before any work starts: :func:`typed_options` for the
types (one generic check, driven by the field annotations) and :func:`check_bounds` for the ranges.
Messages name the option as its flag (``--steps``) whichever way it came in, except a YAML key of
the wrong type, which names the file and the key.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from edgetune.errors import EdgetuneError

DEFAULT_TRAINABLE = "last:1"
TASKS = ("classification", "lm")
MAX_SEED = 2**64 - 1  # seeds are the core's uint64
MAX_THREADS = 1024  # far above any CPU edgetune targets; a larger count is a typo, and ORT would try to start them
_F32_MAX = 3.4028234663852886e38  # the trajectory log stores lr, ε and weight decay as float32
_F32_TINY = 1.401298464324817e-45  # the smallest positive float32: a smaller lr or ε rounds to 0 there


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Bound:
    """An inclusive range of a numeric option (None: open on that side); ``positive`` excludes 0."""

    low: float | None = None
    high: float | None = None
    positive: bool = False
    why: str = ""  # a reason shown after the range

    def holds(self, value: float) -> bool:
        return ((self.low is None or value >= self.low) and (self.high is None or value <= self.high)
                and not (self.positive and value <= 0))

    def describe(self) -> str:
        low = "positive" if self.positive else f"at least {self.low}" if self.low is not None else None
        if self.high is None:
            return low or "a number"
        if self.positive:
            return f"positive and at most {self.high}"
        return f"between {self.low} and {self.high}" if self.low is not None else f"at most {self.high}"


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


def _expected(hint: Any) -> str:
    arms = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    words = [_KINDS.get(arm, "a mapping of strings" if typing.get_origin(arm) is dict else str(arm))
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
    return isinstance(value, hint), value


def typed_options(cls: type, values: Mapping[str, Any], source: str | Path | None = None) -> dict[str, Any]:
    """``values`` (keys among ``cls``'s fields) checked against the field types; float fields must be finite.

    ``source``: the YAML file they came from, named in the message with the key; its numeric strings
    are accepted for float fields, as the flag parser accepts them.
    """
    return _check_types(typing.get_type_hints(cls), values, source)


def check_option(name: str, value: Any, hint: Any, bound: Bound | None = None) -> Any:
    """One option outside a dataclass (``eval --batch-size``, ``export --opset``): its type, then its range."""
    kept = _check_types({name: hint}, {name: value})[name]
    if bound is not None:
        check_bounds({name: kept}, {name: bound})
    return kept


def _check_types(hints: Mapping[str, Any], values: Mapping[str, Any], source: str | Path | None = None,
                 ) -> dict[str, Any]:
    checked = {}
    for name, value in values.items():
        ok, kept = _coerce(value, hints[name], numeric_text=source is not None)
        where = f"{source}: key '{name}'" if source is not None else flag(name)
        if not ok:
            raise EdgetuneError(f"{where}: expected {_expected(hints[name])}, got {_shown(value)}")
        if isinstance(kept, float) and not math.isfinite(kept):
            raise EdgetuneError(f"{where}: expected a finite number, got {kept}")
        checked[name] = kept
    return checked


def known_options(cls: type, values: Mapping[str, Any], where: str = "") -> None:
    """Refuse a key that is not a field of ``cls`` (a typo would otherwise be ignored or a TypeError)."""
    unknown = sorted(set(values) - field_names(cls))
    if unknown:
        raise EdgetuneError(f"{where}unknown option '{unknown[0]}'")


@dataclass
class TrainConfig:
    """How to tune. Every field is also a ``tune`` flag (``--batch-size``) and a YAML key (``batch_size``)."""

    steps: int = 1000
    optimizer: str = "zo-sgd"  # see edgetune.zo.OPTIMIZERS
    batch_size: int = 16  # more than the training set has is capped to its size (each step then sees all of it)
    lr: float = 1e-3
    eps: float = 1e-3
    queries: int = 1  # queries per step; the most a step may take under the grow and variance schedules
    query_schedule: str = "fixed"  # fixed | grow | variance (edgetune.zo.queries)
    queries_min: int = 1  # grow: queries at step 0; variance: queries before the spread is tested
    query_threshold: float = 0.5  # variance: query until the relative standard error of mean(g²) is below
    forward_budget: int = 0  # forward passes after which the run ends (after the step that reaches it); 0: none
    parallel: str = "off"  # P-RGE, queries as perturbed copies in one forward: off | on | auto (edgetune.zo.prge)
    schedule: str = "constant"  # lr schedule: constant | linear | cosine
    warmup: int = 0
    weight_decay: float = 0.0
    noise: str = "rademacher"  # rademacher (±1, 5× faster kernel) | gaussian
    seed: int = 0
    eval_every: int = 0  # 0: evaluate only before and after
    save_every: int = 0  # 0: checkpoint only at the end
    eval_batch_size: int = 0  # 0: --batch-size, so that evaluating needs no more memory than a step
    # DiZO (--optimizer dizo), published defaults: project every κ steps by a ZO search of the per-tensor
    # scale r of θ − θ0 (iterations, probe ±ε, step, clip to 1 ± τ)
    dizo_interval: int = 50
    dizo_iters: int = 10
    dizo_eps: float = 0.1
    dizo_step: float = 2.0
    dizo_tau: float = 0.2
    # zo-momentum / zo-adam / zo-microadam: moments rebuilt from the last `window` steps (edgetune.zo.window)
    window: int = 10
    beta1: float = 0.9
    beta2: float = 0.99
    topk_density: float = 0.01  # zo-microadam: fraction of each step's estimate kept in the window
    # --rotate K: each step perturbs and updates K of the trainable blocks (and everything outside the blocks),
    # the same K for `rotate_every` steps, walked in order (cyclic) or drawn from the seed (random); 0: off
    rotate: int = 0
    rotate_every: int = 1
    rotate_mode: str = "random"  # cyclic | random (edgetune.zo.subset)

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TrainConfig:
        """A validated config from keyword options (the Python API's ``fit(**options)``)."""
        known_options(cls, options)
        config = cls(**typed_options(cls, options))
        config.validate()
        return config

    def validate(self) -> None:
        for name, value in typed_options(type(self), asdict(self)).items():
            setattr(self, name, value)  # an int given for a float field becomes that float
        check_bounds(asdict(self), _train_bounds())
        self._validate_float32()
        if self.warmup > self.steps:
            raise EdgetuneError(f"--warmup {self.warmup} is more than --steps {self.steps}")
        if not 0 < self.dizo_tau < 1:
            raise EdgetuneError(f"--dizo-tau must be between 0 and 1, not {self.dizo_tau}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise EdgetuneError(f"--{name} must be in [0, 1), not {getattr(self, name)}")
        if not 0 < self.topk_density <= 1:
            raise EdgetuneError(f"--topk-density must be in (0, 1], not {self.topk_density}")
        from edgetune.zo import OPTIMIZERS  # config stays importable without the core
        from edgetune.zo.queries import QUERY_SCHEDULES

        if self.optimizer not in OPTIMIZERS:
            raise EdgetuneError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, not '{self.optimizer}'")
        if self.noise not in ("gaussian", "rademacher"):
            raise EdgetuneError(f"--noise must be gaussian or rademacher, not '{self.noise}'")
        if self.query_schedule not in QUERY_SCHEDULES:
            raise EdgetuneError(f"--query-schedule must be one of {', '.join(QUERY_SCHEDULES)}, not '{self.query_schedule}'")
        if not 1 <= self.queries_min <= self.queries:
            raise EdgetuneError(f"--queries-min must be between 1 and --queries ({self.queries})")
        if self.parallel not in ("off", "on", "auto"):
            raise EdgetuneError(f"--parallel must be off, on or auto, not '{self.parallel}'")
        if self.parallel != "off" and (self.optimizer != "zo-sgd" or self.query_schedule != "fixed"):
            raise EdgetuneError("--parallel on/auto needs --optimizer zo-sgd with --query-schedule fixed")
        if self.schedule not in ("constant", "linear", "cosine"):
            raise EdgetuneError(f"--schedule must be constant, linear or cosine, not '{self.schedule}'")
        self._validate_rotation()

    def _validate_float32(self) -> None:
        """lr, ε and decay go into every step record as float32: each must survive the rounding."""
        for name in ("lr", "eps", "weight_decay"):
            value = getattr(self, name)
            if abs(value) > _F32_MAX or (name != "weight_decay" and value < _F32_TINY):
                raise EdgetuneError(f"{flag(name)} {value} does not fit the trajectory log's 32-bit float "
                                    f"(it must be {'at most' if abs(value) > _F32_MAX else 'at least'} "
                                    f"{_F32_MAX if abs(value) > _F32_MAX else _F32_TINY:.7g})")

    def _validate_rotation(self) -> None:
        from edgetune.zo.subset import ROTATE_MODES

        if self.rotate < 0:
            raise EdgetuneError(f"--rotate must be 0 (off) or a number of blocks, not {self.rotate}")
        if self.rotate_every < 1:
            raise EdgetuneError(f"--rotate-every must be at least 1, not {self.rotate_every}")
        if self.rotate_mode not in ROTATE_MODES:
            raise EdgetuneError(f"--rotate-mode must be {' or '.join(ROTATE_MODES)}, not '{self.rotate_mode}'")
        if self.rotate and self.optimizer != "zo-sgd":
            raise EdgetuneError(f"--rotate works with --optimizer zo-sgd only, not '{self.optimizer}'")
        if self.rotate and self.parallel != "off":
            raise EdgetuneError("--rotate needs --parallel off (P-RGE perturbs copies of the whole slice)")

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


def _train_bounds() -> dict[str, Bound]:
    """The numeric ranges of :class:`TrainConfig`, the trajectory log's field widths among them."""
    from edgetune.artifacts.trajectory import MAX_QUERIES, MAX_STEPS  # the format owns its widths; it needs the core

    at_least_1 = Bound(1)
    return {
        "steps": Bound(1, MAX_STEPS, why="the trajectory log numbers steps in 32 bits"),
        "batch_size": at_least_1, "eval_batch_size": Bound(0, why="0: the training --batch-size"),
        "queries": Bound(1, MAX_QUERIES, why="the trajectory log stores q in 16 bits"),
        "dizo_interval": at_least_1, "dizo_iters": at_least_1, "window": at_least_1,
        "lr": Bound(positive=True), "eps": Bound(positive=True), "dizo_eps": Bound(positive=True),
        "dizo_step": Bound(positive=True), "query_threshold": Bound(positive=True),
        "weight_decay": Bound(0), "warmup": Bound(0),
        "forward_budget": Bound(0, why="0: no budget"), "eval_every": Bound(0, why="0: only before and after"),
        "save_every": Bound(0, why="0: only at the end"), "seed": SEED,
    }


@dataclass
class ModelOptions:
    """How a model is loaded: :meth:`edgetune.Tuner.from_onnx`'s options past the path and ``trainable``,
    and the matching flags of ``tune`` and ``eval``."""

    tokenizer: str | Path | None = None
    task: str | None = None
    max_length: int | None = None  # None: 128, or the model's positions where it has fewer
    threads: int | None = None
    split: bool = True
    verbalizer: str | dict[str, str] | None = None
    template: str | None = None

    def validate(self) -> None:
        typed_options(type(self), asdict(self))
        check_bounds(asdict(self), {
            # one token leaves a causal LM nothing to predict and a classifier nothing but [CLS]
            "max_length": Bound(2), "threads": THREADS})
        if self.task is not None and self.task not in TASKS:
            raise EdgetuneError(f"--task must be {' or '.join(TASKS)}, not '{self.task}'")


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
