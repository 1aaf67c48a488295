"""Refusing NaN and infinity where numbers enter edgetune from files or leave it for the user.

A non-finite weight, learning rate or metric never means what a user wants: a NaN lr in a replayed
log writes an all-NaN model, a NaN loss printed as JSON is not JSON. Every reader of numbers a user
can edit (trajectory logs, checkpoints, adapters, sparse diffs, configs read back) and every writer of
weights and metrics checks here and raises a one-line :class:`EdgetuneError` naming what is at fault.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from edgetune.errors import EdgetuneError


def require_finite_tensors(tensors: Mapping[str, np.ndarray], where: str, error: type[EdgetuneError] = EdgetuneError,
                           ) -> None:
    """Raise ``error`` naming ``where`` and the first tensor that holds a NaN or an infinity."""
    for name, value in tensors.items():
        array = np.asarray(value)
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            raise error(f"{where}: tensor '{name}' holds {bad} non-finite value(s) (NaN or infinity)")


def require_finite_numbers(values: Iterable[tuple[str, Any]], where: str,
                           error: type[EdgetuneError] = EdgetuneError) -> None:
    """Raise ``error`` for the first ``(name, value)`` whose value is a float NaN or infinity."""
    for name, value in values:
        if isinstance(value, float) and not math.isfinite(value):
            raise error(f"{where}: {name} is {value} (must be a finite number)")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def loads_finite(text: str | bytes) -> Any:
    """``json.loads`` that refuses the ``NaN``/``Infinity`` literals Python's json accepts (ValueError)."""
    return json.loads(text, parse_constant=_refuse_constant)


def dumps_finite(value: Any, **options: Any) -> str:
    """``json.dumps`` that refuses NaN and infinity instead of writing JSON no other reader parses."""
    return json.dumps(value, allow_nan=False, **options)
