"""What every command's parser shares: one-line argparse errors, range-checked numbers, and the flags
generated from the option dataclasses' fields (:func:`add_option_flags`)."""

from __future__ import annotations

import argparse
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, Field
from typing import Any

from edgetune.config import Bound, ModelOptions, cli_fields
from edgetune.errors import EdgetuneError


class Parser(argparse.ArgumentParser):
    """argparse with its errors as the one ``edgetune: error:`` line every other error gets (not the usage block)."""

    def error(self, message: str) -> None:
        command = self.prog.partition(" ")[2]
        self.exit(2, f"edgetune: error: {command + ': ' if command else ''}{message}\n")


def int_in(bound: Bound):
    """An int flag's parser that refuses values outside ``bound`` as it parses (one argparse error line)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: '{text}'") from None
        if not bound.holds(value):
            raise argparse.ArgumentTypeError(f"must be {bound.describe()}, got {value}")
        return value
    return parse


def finite_float(text: str) -> float:
    """A float flag's value; NaN and infinity are refused here, before numpy could warn about them."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: '{text}'") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got '{text}'")
    return value


def float_or_word(words: tuple[str, ...]) -> Callable[[str], float | str]:
    """A float flag that also takes one of ``words`` (``--lr auto``)."""
    def parse(text: str) -> float | str:
        return text if text in words else finite_float(text)
    return parse


def add_model_args(parser: argparse.ArgumentParser, skip: Iterable[str] = ("split",)) -> None:
    """``--onnx`` and the :class:`ModelOptions` flags (``split`` is ``tune``'s alone, placed among its own)."""
    parser.add_argument("--onnx", help="ONNX model with input_ids/attention_mask inputs and a logits output")
    add_option_flags(parser, ModelOptions, skip=skip)


# What `edgetune bundle` decided, by option name, with the flag that sets it: with --bundle they are the bundle's.
BUNDLE_FIXES = {"onnx": "--onnx", "trainable": "--trainable", "importance_probes": "--importance-probes",
                "tokenizer": "--tokenizer", "task": "--task", "max_length": "--max-length", "split": "--no-split",
                "verbalizer": "--verbalizer", "template": "--template"}


def refuse_bundle_fixed(given: Mapping[str, Any]) -> None:
    """One line for the first option in ``given`` (flags and --config keys that were set) a bundle fixes."""
    fixed = [name for name in BUNDLE_FIXES if given.get(name) is not None]
    if fixed:
        raise EdgetuneError(f"{BUNDLE_FIXES[fixed[0]]} cannot be given with --bundle: the bundle fixes it "
                            "(bundle the model again to change it)")


def add_option_flags(parser, cls: type, names: Iterable[str] | None = None, skip: Iterable[str] = ()) -> None:
    """One flag per option field of ``cls`` (those in ``names``, else all but ``skip``), in field order.

    Every flag defaults to None (unset: the config file or the field's default decides). A bool field is a
    switch: ``--NAME`` when it defaults to False, ``--no-NAME`` when it defaults to True. The help is the
    field's, with its default and its choices; a field marked ``parse`` checks its range or choices here.
    """
    by_name = {f.name: f for f in cli_fields(cls)}
    chosen = [by_name[n] for n in names] if names is not None else [f for f in by_name.values() if f.name not in skip]
    hints = typing.get_type_hints(cls)
    for f in chosen:
        parser.add_argument(*_flag_names(f), dest=f.name, help=option_help(f), **_flag_kind(f, hints[f.name]))


def options_of(cls: type, values: Mapping[str, Any]):
    """An instance of the option dataclass ``cls`` from those of ``values`` that are its flags (unvalidated)."""
    return cls(**{f.name: values[f.name] for f in cli_fields(cls) if f.name in values})


def option_help(f: Field) -> str:
    """The field's help, with its default where the help does not already say it (``%`` escaped for argparse)."""
    text = f.metadata["help"]
    if f.default not in (None, MISSING) and not isinstance(f.default, bool) and "default" not in text:
        text = f"{text} (default {f.default})"
    return text.replace("%", "%%")


def _flag_names(f: Field) -> list[str]:
    name = f.name.replace("_", "-")
    return [f"--no-{name}" if f.default is True else f"--{name}"]


def _flag_kind(f: Field, hint) -> dict:
    """argparse's type, action, choices and metavar for field ``f`` of type ``hint``."""
    if f.default is True or f.default is False:
        return {"action": "store_const", "const": not f.default}
    kind = next(arm for arm in _arms(hint) if arm is not type(None))
    bound: Bound | None = f.metadata.get("bound")
    choices = f.metadata.get("choices")
    if kind is float and f.metadata.get("keywords"):
        parse = float_or_word(f.metadata["keywords"])
    elif kind is float:
        parse = finite_float
    elif kind is int:
        parse = int_in(bound) if f.metadata.get("parse") and bound is not None else int
    else:  # str, a path, or a verbaliser's "word=label" text
        parse = str
    extra: dict = {"type": parse}
    if choices is not None:  # shown always, refused here only when the field asks for it (else one check later)
        extra.update({"choices": choices} if f.metadata.get("parse") else {"metavar": "{" + ",".join(choices) + "}"})
    return extra


def _arms(hint) -> tuple:
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
