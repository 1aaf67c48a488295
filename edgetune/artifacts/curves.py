"""A run's learning curves, read back from its folder: what ``curves.png`` and ``edgetune report`` show.

The step log (``steps.jsonl``) is the one file needed, so that a run in progress or interrupted can be
looked at too. ``summary.json`` (a finished run) or else the checkpoint's state (an interrupted one) adds
the evaluations. The x axis is cumulative *forward passes*, the unit a zeroth-order run pays in: a step
with q queries costs 2q of them (more with DiZO's or the window's extra passes), so steps are no common scale;
a calibration before the first step (summary.json's or the checkpoint's ``calibration``) shifts them all.
"""

from __future__ import annotations

import json
import math
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetune.artifacts.checkpoint import read_checkpoint_state
from edgetune.errors import DataError, EdgetuneError

STEPS = "steps.jsonl"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.safetensors"
METRICS = ("accuracy", "perplexity")  # what an evaluation reports besides its loss: classifier or LM


@dataclass
class EvalPoint:
    """One evaluation: after ``step`` steps and ``forwards`` training forward passes (0: before tuning)."""

    step: int
    forwards: int
    loss: float
    metric: float | None  # accuracy or perplexity (see RunCurves.metric)


@dataclass
class RunCurves:
    """Per step: steps done, cumulative forward passes and training loss; the evaluations in order."""

    folder: Path
    steps: np.ndarray  # steps done after each logged step (1, 2, ...)
    forwards: np.ndarray  # cumulative training forward passes at the end of each step
    loss: np.ndarray  # training loss of each step (mean over its queries' L+ and L-)
    evals: list[EvalPoint] = field(default_factory=list)
    metric: str | None = None  # "accuracy" or "perplexity"; None without evaluations
    config: dict[str, Any] = field(default_factory=dict)  # summary.json's config ({} for a run not finished)
    peak_rss_mb: float | None = None
    finished: bool = False  # summary.json was read

    @property
    def total_forwards(self) -> int:
        return int(self.forwards[-1]) if len(self.forwards) else 0


def read_curves(folder: str | Path) -> RunCurves:
    """The curves of the run in ``folder``; a missing folder or step log, or a malformed file, is one line."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgetuneError(f"{folder}: no such folder (give the --output-dir of an edgetune tune run)")
    steps, forwards, loss = read_step_log(folder / STEPS)
    curves = RunCurves(folder, steps, forwards, loss)
    summary = _read_json(folder / SUMMARY) if (folder / SUMMARY).is_file() else None
    if summary is not None:
        result = summary.get("result") if isinstance(summary.get("result"), dict) else {}
        curves.config = summary.get("config") if isinstance(summary.get("config"), dict) else {}
        curves.peak_rss_mb = _number(result.get("peak_rss_mb"))
        curves.finished = True
        state = result
    elif (folder / CHECKPOINT).is_file():  # interrupted: the last checkpoint holds the evaluations so far
        state = read_checkpoint_state(folder / CHECKPOINT)
    else:
        state = {}
    curves.evals, curves.metric = _evaluations(state, folder)
    curves.forwards += _forwards_before_steps(state)
    return curves


def _forwards_before_steps(state: dict[str, Any]) -> int:
    """Forwards a run spent before its first step (--lr/--eps auto's calibration probes): the step log
    holds steps only, while the evaluations' ``forwards`` count these too."""
    calibration = state.get("calibration")
    forwards = calibration.get("forwards") if isinstance(calibration, dict) else None
    return forwards if _is_int(forwards) and forwards > 0 else 0


def read_step_log(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps done, cumulative forwards and loss per record of ``path``, read line by line (a long run's log
    is never held whole). A torn last line (no newline: a write in progress or a kill) is left out."""
    if not path.is_file():
        raise EdgetuneError(f"{path}: no step log (is {path.parent} the --output-dir of an edgetune tune run?)")
    steps, costs, losses = array("q"), array("q"), array("d")  # 24 bytes a step, not a list's ~100
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    step, cost, loss = _step_record(line)
                except ValueError as exc:
                    if not line.endswith("\n"):
                        break
                    raise DataError(f"{path}:{number}: not a step record ({exc})") from None
                steps.append(step + 1)
                costs.append(cost)
                losses.append(loss)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a step log (not UTF-8 text)") from None
    except OSError as exc:
        raise EdgetuneError(f"{path}: cannot read ({exc.strerror})") from None
    if not steps:
        raise DataError(f"{path}: no steps logged yet")
    return np.frombuffer(steps, dtype=np.int64), np.cumsum(np.frombuffer(costs, dtype=np.int64)), np.frombuffer(losses)


def _step_record(line: str) -> tuple[int, int, float]:
    """(step index, forward passes, loss) of one steps.jsonl line; ValueError says what is wrong."""
    record = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    step, loss, cost = record.get("step"), record.get("loss"), record.get("forwards")
    if not _is_int(step) or step < 0:
        raise ValueError(f"step is {step!r}, not a step number")
    if not isinstance(loss, (int, float)) or isinstance(loss, bool):
        raise ValueError(f"loss is {loss!r}, not a number")
    if cost is None:  # older logs: two forwards per query (L+ and L-)
        seeds = record.get("seeds")
        if not isinstance(seeds, list):
            raise ValueError("no forwards and no seeds to count them from")
        cost = 2 * len(seeds)
    if not _is_int(cost) or cost < 0:
        raise ValueError(f"forwards is {cost!r}, not a count")
    return step, cost, float(loss)


def _evaluations(state: dict[str, Any], folder: Path) -> tuple[list[EvalPoint], str | None]:
    """The evaluation before tuning (forwards 0) and every one in ``state["history"]``, in that order."""
    rows = ([{"step": 0, "forwards": 0, **state["before"]}] if isinstance(state.get("before"), dict) else [])
    history = state.get("history")
    rows += [row for row in history if isinstance(row, dict)] if isinstance(history, list) else []
    metric = next((name for name in METRICS for row in rows if name in row), None)
    points = []
    for row in rows:
        step, forwards = row.get("step"), row.get("forwards")
        if not (_is_int(step) and _is_int(forwards)) or _number(row.get("loss")) is None:
            raise DataError(f"{folder}: an evaluation without step, forwards and loss: {json.dumps(row)[:120]}")
        points.append(EvalPoint(step, forwards, float(row["loss"]), _number(row.get(metric)) if metric else None))
    return points, metric


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not readable JSON ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise EdgetuneError(f"{path}: cannot read ({exc.strerror})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a run summary (not a JSON object)")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None
