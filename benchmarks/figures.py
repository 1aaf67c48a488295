"""Figures of the benchmark results: ``docs/figures/NAME.png`` from ``benchmarks/results/NAME.json``.

    python benchmarks/figures.py [NAME ...]      # default: every result that has a figure below

Each figure is named after the result it draws (``peers.png`` from ``peers.json``), so that
``benchmarks/update_readme.py`` can place it in that benchmark's section of docs/results.md. Rendered at
110 dpi with matplotlib's Agg backend (``pip install 'edgetune[plot]'``); a result file that is absent is
skipped with a note, so a partial benchmark run still redraws what it has.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from edgetune.artifacts.io import atomic_write_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "figures"
DPI = 110


def _figure(width: float = 7.5, height: float = 4.0, panels: int = 1) -> tuple[Figure, list]:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return figure, list(figure.subplots(1, panels, squeeze=False)[0])


def _curves(axes, series: dict[str, list[dict]], x: str, y: str) -> None:
    """One marked line per named series of ``{x: ..., y: ...}`` points."""
    for label, points in series.items():
        axes.plot([p[x] for p in points], [p[y] for p in points], "o-", markersize=3.5, label=label)
    axes.set_xlabel("forward passes" if x == "forwards" else x)
    axes.set_ylabel(f"dev {y}")
    axes.grid(alpha=0.3)


def _bars(axes, labels: list[str], values: list[float], xlabel: str, fmt: str = "{:.0f}") -> None:
    """Horizontal bars, first label on top, each with its value written at its end."""
    positions = range(len(labels))[::-1]
    bars = axes.barh(list(positions), values, color="tab:blue")
    axes.set_yticks(list(positions), labels, fontsize=8)
    axes.bar_label(bars, [fmt.format(v) for v in values], fontsize=7, padding=2)
    axes.set_xlabel(xlabel)
    axes.margins(x=0.18)


def peers(data: dict) -> Figure:
    """Per peer: time per step, peak RSS against the framework-free floor, dev accuracy after the wall budget."""
    figure, (speed, memory, accuracy) = _figure(11, 3.6, panels=3)
    names = list(data["peers"])
    rows = [data["peers"][name] for name in names]
    _bars(speed, names, [r["step_ms"] for r in rows], "ms / step (lower is better)")
    _bars(memory, [""] * len(names), [r["peak_rss_mb"] for r in rows], "peak RSS, MB")
    floor = data.get("floor", {}).get("floor_mb")
    if floor:
        memory.axvline(floor, color="black", linestyle="--", linewidth=1, label=f"framework-free floor {floor:.0f} MB")
        memory.legend(fontsize=7, loc="lower right")
    _bars(accuracy, [""] * len(names), [r["accuracy_after"] for r in rows], f"dev accuracy after {data['budget_s']:.0f} s",
          fmt="{:.3f}")
    accuracy.axvline(rows[0]["accuracy_before"], color="black", linestyle="--", linewidth=1, label="before tuning")
    accuracy.legend(fontsize=7, loc="lower right")
    figure.suptitle(f"peers on MiniLM, batch {data['batch_size']}×{data['tokens']}, {data['threads']} threads", fontsize=10)
    return figure


def adaptive_q_curves(data: dict) -> Figure:
    figure, (accuracy, loss) = _figure(10, 3.8, panels=2)
    _curves(accuracy, data["mean_curves"], "forwards", "accuracy")
    _curves(loss, data["mean_curves"], "forwards", "loss")
    accuracy.legend(fontsize=8)
    figure.suptitle("query schedules: mean of 3 seeds", fontsize=10)
    return figure


def optimizers(data: dict) -> Figure:
    """Dev accuracy against forward passes per optimizer configuration; the reference accuracy dashed."""
    figure, (axes,) = _figure(8, 4.4)
    _curves(axes, {r["config"]: r["mean_curve"] for r in data["results"]}, "forwards", "accuracy")
    axes.axhline(data["reference_accuracy"], color="black", linestyle="--", linewidth=1, label="reference accuracy")
    axes.legend(fontsize=7, loc="best")
    figure.suptitle(f"optimizers on {data['task']}, budget {data['forward_budget']:,} forward passes", fontsize=10)
    return figure


def tuning_curve(data: dict) -> Figure:
    """A single run's evaluations against steps: its metric and its loss."""
    curve = data["curve"]
    metric = "accuracy" if "accuracy" in curve[0] else "perplexity"
    figure, (left, right) = _figure(9, 3.4, panels=2)
    _curves(left, {"dev": curve}, "step", metric)
    _curves(right, {"dev": curve}, "step", "loss")
    config = data["config"]
    figure.suptitle(f"trainable {config['trainable']}, {config['queries']} queries, lr {config['lr']}", fontsize=10)
    return figure


def plan(data: dict) -> Figure:
    """Predicted against measured peak RSS, one marker per row, coloured by set; y = x and ±15 % shaded."""
    figure, (axes,) = _figure(6, 5.2)
    for name in sorted({row["set"] for row in data["rows"]}):
        rows = [row for row in data["rows"] if row["set"] == name]
        axes.scatter([r["measured_mb"] for r in rows], [r["predicted_mb"] for r in rows], s=16, label=name)
    top = max(max(r["measured_mb"], r["predicted_mb"]) for r in data["rows"]) * 1.05
    axes.plot([0, top], [0, top], color="black", linewidth=1)
    axes.fill_between([0, top], [0, top * 0.85], [0, top * 1.15], color="grey", alpha=0.15, label="±15 %")
    axes.set_xscale("log")
    axes.set_yscale("log")
    for axis in (axes.xaxis, axes.yaxis):  # MB as plain numbers, not powers of ten
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.0f}"))
        axis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:.0f}" if str(value)[0] in "2468" else ""))
    axes.set_xlabel("measured peak RSS, MB")
    axes.set_ylabel("predicted peak RSS, MB")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    summary = data["summary"]["all"]
    figure.suptitle(f"edgetune plan: mean |error| {summary['mean_abs_error_pct']:.1f} %, "
                    f"{summary['within_15pct']}/{summary['count']} within 15 %", fontsize=10)
    return figure


def job_peak(data: dict) -> Figure:
    """Whole tune job's peak beside plain inference's, per model and trainable slice."""
    figure, (axes,) = _figure(8, 3.8)
    rows = data["rows"]
    labels = [f"{row['model'].split(' (')[0]}\n{row['trainable']}" for row in rows]
    positions = range(len(rows))
    job = axes.bar([p - 0.2 for p in positions], [r["job_mb"] for r in rows], 0.4, label="edgetune tune (whole job)")
    infer = axes.bar([p + 0.2 for p in positions], [r["inference_mb"] for r in rows], 0.4, label="ORT inference")
    axes.bar_label(job, [f"{r['ratio']:.2f}×" for r in rows], fontsize=7, padding=2)
    axes.bar_label(infer, fontsize=7, padding=2, fmt="%.0f")
    axes.set_xticks(list(positions), labels, fontsize=7)
    axes.set_ylabel("peak RSS, MB")
    axes.legend(fontsize=8)
    figure.suptitle(f"job peak ÷ inference peak ({data['steps']} steps, target ≤ {data['target']}×)", fontsize=10)
    return figure


def kernels(data: dict) -> Figure:
    """ns per weight of each kernel, per instruction set, at 1 thread (log scale)."""
    figure, (axes,) = _figure(8, 5)
    rows = [row for row in data["rows"] if row["threads"] == 1]
    # the kernel's name up to its details: "numpy gaussian: standard_normal(out=) + ..." -> "numpy gaussian"
    names = [re.split(r"[:(]", row["kernel"])[0].strip() for row in rows]
    _bars(axes, [f"{name} [{row['isa']}]" for name, row in zip(names, rows)], [row["ns"] for row in rows],
          "ns per weight, 1 thread (log)", fmt="{:.2f}")
    axes.set_xscale("log")
    figure.suptitle(f"noise kernels, {data['meta'].get('simd_level', '')} machine", fontsize=10)
    return figure


def prge(data: dict) -> Figure:
    """Speed-up of batched copies (P-RGE) over sequential queries, against queries per forward."""
    figure, (axes,) = _figure(6.5, 4)
    for case in data["cases"]:
        widths = case["widths"]
        label = f"{case['trainable']}, {case['shape']} ({case['batch']}×{case['tokens']})"
        axes.plot([w["q"] for w in widths], [w["speedup"] for w in widths], "o-", markersize=3.5, label=label)
    axes.axhline(1, color="black", linewidth=1, linestyle="--")
    axes.set_xscale("log", base=2)
    axes.set_xlabel("queries per forward")
    axes.set_ylabel("speed-up over sequential")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    return figure


def window(data: dict) -> Figure:
    """Each optimizer's step time relative to zo-sgd's, with its state size."""
    figure, (axes,) = _figure(7, 3.8)
    rows = data["results"]
    labels = [f"{row['optimizer']} ({row['noise']}, {row['bytes_per_param']:.2g} B/weight)" for row in rows]
    _bars(axes, labels, [row["step_vs_zo_sgd"] for row in rows], "step time ÷ zo-sgd's", fmt="{:.2f}×")
    axes.axvline(1, color="black", linewidth=1, linestyle="--")
    figure.suptitle(f"optimizer state and step cost, {data['params']:,} trainable weights", fontsize=10)
    return figure


def perturbations(data: dict) -> Figure:
    """Per slice (a column): mean dev accuracy (top) and loss (bottom) against forward passes, per optimizer."""
    slices = list(dict.fromkeys(entry["slice"] for entry in data["summary"]))
    figure = Figure(figsize=(2.6 * len(slices), 4.0), dpi=DPI, layout="constrained")
    grid = figure.subplots(2, len(slices), squeeze=False)
    for column, slice_ in enumerate(slices):
        series = {f"{e['optimizer']} ({e['step_ratio']:.2f}x step)" if e.get("step_ratio") else e["optimizer"]:
                  e["points"] for e in data["summary"] if e["slice"] == slice_}
        _curves(grid[0][column], series, "forwards", "accuracy")
        _curves(grid[1][column], series, "forwards", "loss")
        grid[0][column].set_title(slice_, fontsize=9)
        grid[0][column].legend(fontsize=7)
    seeds = max(entry["seeds"] for entry in data["summary"])
    figure.suptitle(f"LOZO and HiZOO against ZO-SGD, --lr auto, MiniLM + Rotten Tomatoes, mean of {seeds} seeds",
                    fontsize=10)
    return figure


def race(data: dict) -> Figure:
    """Per data set (a row): dev accuracy against training wall-clock, CPU seconds and forward passes (ORT's
    are forward-equivalents, 3 a step; log-scaled past 100), ORT's 60-s accuracy on the budget's clock dashed,
    the 120-s goal dotted."""
    tasks = data["datasets"]
    figure = Figure(figsize=(8.4, 2.3 * len(tasks) + 0.5), dpi=DPI, layout="constrained")  # four peers: < 150 KB
    unit = "s" if data["budget_clock"] == "wall" else "CPU-s"
    grid = figure.subplots(len(tasks), 3, squeeze=False)
    for row, task in zip(grid, tasks.values()):
        curves = {name: peer["curve"] for name, peer in task["peers"].items() if "curve" in peer}
        target = (task.get("summary") or {}).get("target")
        for axes, x, label in zip(row, ("wall_s", "cpu_s", "forwards"),
                                  ("training wall-clock (s)", "training CPU seconds", "forward passes")):
            _curves(axes, curves, x, "accuracy")
            axes.set_xlabel(label)
            if x == "forwards":  # a head step served by the activation cache counts one: 500k of them in 300 CPU-s
                axes.set_xscale("symlog", linthresh=100)
            if target is not None:
                axes.axhline(target, color="black", linestyle="--", linewidth=1, label=f"ORT's 60-{unit} accuracy")
        goal = row[1] if unit == "CPU-s" else row[0]
        if target is not None:
            goal.axvline(data["goal_s"], color="grey", linestyle=":", linewidth=1,
                         label=f"{data['goal_s']:g}-{unit} goal")
        row[0].set_title(task["title"], fontsize=9, loc="left")
    # one legend under the panels: five peers and two marks would cover a panel's curves
    figure.legend(*grid[-1][1].get_legend_handles_labels(), fontsize=7, loc="outside lower center", ncols=4)
    figure.suptitle(f"edgetune vs ORT training (AdamW), batch {data['batch_size']}, {data['threads']} threads, "
                    f"{data['budget_s']:g} s {data['budget_clock']} budget", fontsize=10)
    return figure


DRAW: dict[str, Callable[[dict], Figure]] = {
    "peers": peers,
    "adaptive_q_curves": adaptive_q_curves,
    "optimizers_minilm": optimizers,
    "optimizers_minilm_last1": optimizers,
    "optimizers_smollm2": optimizers,
    "optimizers_smollm2_more": optimizers,
    "minilm_rt": tuning_curve,
    "smollm2_rt": tuning_curve,
    "personalise_smollm2": tuning_curve,
    "plan": plan,
    "job_peak": job_peak,
    "kernels": kernels,
    "prge": prge,
    "window": window,
    "perturbations": perturbations,
    "race": race,
}


def render(name: str, results: Path = RESULTS, figures: Path = FIGURES) -> Path | None:
    """Draw ``results/NAME.json`` into ``figures/NAME.png``; None when the result is absent."""
    source = results / f"{name}.json"
    if not source.is_file():
        return None
    buffer = io.BytesIO()
    DRAW[name](json.loads(source.read_text(encoding="utf-8"))).savefig(buffer, format="png", dpi=DPI)
    target = figures / f"{name}.png"
    atomic_write_bytes(target, buffer.getvalue())
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", choices=[[], *DRAW], metavar="NAME", help=f"any of {', '.join(DRAW)}")
    for name in parser.parse_args(argv).names or DRAW:
        target = render(name)
        print(f"{name}: {target.relative_to(ROOT)} ({target.stat().st_size // 1024} KB)" if target
              else f"{name}: no benchmarks/results/{name}.json, skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
