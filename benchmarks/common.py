"""Shared helpers for the benchmark scripts: the real default model, long batches, result tables."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def demo_model(threads: int | None = None) -> tuple[Path, Path, Path]:
    """The demo's job: all-MiniLM-L6-v2 with a fresh 2-label head and Rotten Tomatoes splits."""
    from edgetune.data.datasets import write_rotten_tomatoes_splits
    from edgetune.demo import RECIPE, default_workdir
    from edgetune.export import export_isolated
    from edgetune.data.resources import minilm_dir

    work = default_workdir()
    model = export_isolated("classification", minilm_dir(), work / "minilm-rt", labels=["negative", "positive"],
                            seed=0, pooling=RECIPE["pooling"])
    train, dev = write_rotten_tomatoes_splits(work / "rotten_tomatoes", n_train=RECIPE["n_train"],
                                              n_dev=RECIPE["n_dev"], seed=0)
    return Path(model), Path(train), Path(dev)


def long_texts_jsonl(source: Path, target: Path, words: int) -> Path:
    """Join snippets until each text has ``words`` words, so batches reach the wanted token length."""
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    out, i = [], 0
    while len(out) < 64:
        text, label = [], rows[i % len(rows)]["label"]
        while len(text) < words:
            text += rows[i % len(rows)]["text"].split()
            i += 1
        out.append(json.dumps({"text": " ".join(text[:words]), "label": label}))
    target.write_text("\n".join(out) + "\n")
    return target


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries it over exec, so a child process
    would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child_peak_rss(module: str, function: str, args: Sequence, repeats: int = 1) -> list[float]:
    """Peak RSS (MB) of ``repeats`` fresh Pythons, each running ``module.function(*args)`` and nothing else.

    ``module`` is a benchmark script in this folder; ``args`` are literals (their ``repr`` is the call).
    """
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import {module} as m; "
            f"m.{function}(*{list(args)!r}); from common import peak_rss_mb; print(peak_rss_mb())")
    values = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"child {module}.{function} failed: {out.stderr.strip().splitlines()[-1:]}")
        values.append(float(out.stdout.strip().splitlines()[-1]))
    return values


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> dict:
    import os

    import onnxruntime as ort  # here, not at the top: peer children (bench_peers) must not load it

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "onnxruntime": ort.__version__, "python": platform.python_version()}


def write_results(name: str, payload: dict, table_header: list[str], rows: list[list]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = ["| " + " | ".join(table_header) + " |", "|" + "---|" * len(table_header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
