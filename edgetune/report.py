"""A run's report: ``curves.png`` (loss and metric against forward passes) and a few lines of text.

matplotlib is optional (the ``plot`` extra) and imported only inside :func:`draw_curves`: its import
alone adds tens of MB, and ``tune``'s whole-run peak RSS is a headline figure, so ``tune`` draws in a
short-lived child (:func:`draw_in_child`) and its own peak never sees matplotlib.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np

from edgetune.artifacts.curves import RunCurves, read_curves
from edgetune.artifacts.io import atomic_write_bytes
from edgetune.errors import EdgetuneError

FIGURE = "curves.png"
PLOT_HINT = "pip install 'edgetune[plot]'"
_DPI = 110


def plot_available() -> bool:
    """Whether matplotlib can be imported, asked without importing it."""
    return importlib.util.find_spec("matplotlib") is not None


def smoothed(values: np.ndarray, window: int | None = None) -> np.ndarray:
    """Trailing mean over ``window`` values (default: a tenth of the run, at least 1); the first values
    average what there is so far, so the line starts where the raw one does."""
    window = max(1, len(values) // 10) if window is None else max(1, window)
    sums = np.cumsum(np.insert(np.asarray(values, dtype=float), 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def title(curves: RunCurves) -> str:
    """Model, trainable slice and optimizer from summary.json's config; the folder for a run not finished."""
    config = curves.config
    if not config:
        return f"{curves.folder} (run not finished)"
    model = Path(str(config.get("onnx", "?")))
    model = f"{model.parent.name}/{model.name}" if model.parent.name else model.name  # model.onnx alone says little
    return (f"{model} · trainable {config.get('trainable', '?')} · {config.get('optimizer', '?')}, "
            f"lr {config.get('lr', '?')}, q {config.get('queries', '?')}")


def draw_curves(curves: RunCurves) -> bytes:
    """The figure as PNG bytes: training loss (raw and smoothed) and evaluation loss above, the evaluation
    metric below, both against cumulative forward passes; each evaluation a marker."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a device; never pick an interactive backend
    from matplotlib.figure import Figure  # not pyplot: no global figure registry to leak into

    with_metric = curves.metric is not None and any(p.metric is not None for p in curves.evals)
    figure = Figure(figsize=(7.5, 5.5 if with_metric else 3.6), dpi=_DPI, layout="constrained")
    axes = figure.subplots(2 if with_metric else 1, 1, sharex=True, squeeze=False)[:, 0]
    loss_axes = axes[0]
    loss_axes.plot(curves.forwards, curves.loss, color="tab:blue", alpha=0.25, linewidth=0.8, label="training loss")
    loss_axes.plot(curves.forwards, smoothed(curves.loss), color="tab:blue", linewidth=1.6, label="smoothed")
    if curves.evals:
        loss_axes.plot([p.forwards for p in curves.evals], [p.loss for p in curves.evals], "o-", color="tab:orange",
                       markersize=4, label="eval loss")
    loss_axes.set_ylabel("loss")
    loss_axes.legend(loc="best", fontsize=8)
    loss_axes.grid(alpha=0.3)
    if with_metric:
        points = [p for p in curves.evals if p.metric is not None]
        axes[1].plot([p.forwards for p in points], [p.metric for p in points], "o-", color="tab:green", markersize=4)
        axes[1].set_ylabel(f"eval {curves.metric}")
        axes[1].grid(alpha=0.3)
    axes[-1].set_xlabel("forward passes (cumulative, training)")
    figure.suptitle(title(curves), fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def check_output(folder: str | Path, output: str | Path | None) -> None:
    """Refuse, before reading anything, an ``output`` that is one of the run's files or a folder."""
    from edgetune.artifacts.outdir import RUN_FILES, refuse_input_file

    if output is not None:
        refuse_input_file(output, [Path(folder) / name for name in RUN_FILES])
        if Path(output).is_dir():
            raise EdgetuneError(f"--output {output} is a folder: give the PNG file to write")


def render_curves(curves: RunCurves, output: str | Path | None = None) -> Path:
    """Draw ``curves`` and write the PNG atomically to ``output`` (default: ``curves.png`` in the run's
    folder); the path written."""
    if not plot_available():
        raise EdgetuneError(f"drawing {FIGURE} needs matplotlib: {PLOT_HINT}")
    target = Path(output) if output else curves.folder / FIGURE
    png = draw_curves(curves)
    try:
        atomic_write_bytes(target, png)
    except OSError as exc:
        raise EdgetuneError(f"{target}: cannot write the figure ({exc.strerror})") from None
    return target


def render(folder: str, output: str | None = None) -> str:
    """Check, read, draw, write: what ``edgetune report`` and :func:`draw_in_child` do; the path written."""
    check_output(folder, output)
    return str(render_curves(read_curves(folder), output))


def summary_lines(curves: RunCurves) -> list[str]:
    """Steps, forward passes, the metric before -> after, peak RSS: the run in a few lines."""
    state = "finished" if curves.finished else "not finished (no summary.json: in progress or interrupted)"
    lines = [f"{curves.folder}: {int(curves.steps[-1])} steps, {curves.total_forwards:,} forward passes, {state}"]
    if curves.evals:
        first, last = curves.evals[0], curves.evals[-1]
        metric = (f"{curves.metric} {first.metric:.4f} -> {last.metric:.4f}, "
                  if first.metric is not None and last.metric is not None else "")
        lines.append(f"eval: {metric}loss {first.loss:.4f} -> {last.loss:.4f} "
                     f"(step {first.step} -> {last.step}, {len(curves.evals)} evaluations)")
    else:
        lines.append("eval: none logged (no --eval-data, or no evaluation yet)")
    if curves.peak_rss_mb is not None:
        lines.append(f"peak RSS {curves.peak_rss_mb:.0f} MB")
    return lines


def draw_in_child(folder: str | Path) -> str:
    """:func:`render` in a short-lived interpreter, so that matplotlib's memory never counts in this one's peak."""
    from edgetune.process.child import run_child

    return run_child("edgetune.report", [str(folder)], f"drawing {Path(folder) / FIGURE}", fallback=EdgetuneError)


if __name__ == "__main__":
    from edgetune.process.child import child_main

    child_main(render)
