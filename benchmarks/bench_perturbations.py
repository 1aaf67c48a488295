"""LOZO and HiZOO against ZO-SGD (issue 15 part 5): all-MiniLM-L6-v2 + fresh head on Rotten Tomatoes.

    python benchmarks/bench_perturbations.py [--forwards 300 --seeds 0,1,2 --slices last:2,head,lora:r=8
        --optimizers zo-sgd,lozo,hizoo --evals 3 --n-dev 200 --jobs 3]

Every (slice, optimizer, seed) is one run in a child process (threads 1; ``--jobs`` at a time), all with the
defaults a user gets (--lr auto, its ε, the guard, q = 1) and the same forward budget: HiZOO's extra forward
at θ each step and the calibration's forwards count in it. HiZOO runs with --noise gaussian (it needs it);
the others with the default rademacher noise; ``zo-sgd:gaussian`` is ZO-SGD with HiZOO's noise, hence the
same calibration probes and lr: HiZOO's control. Each run evaluates on the first ``--n-dev`` dev rows at
``--evals`` even forward counts; the table gives the mean (and spread) over seeds of dev accuracy and loss
at each, and each optimizer's CPU-seconds per step against ZO-SGD's on the same slice (process CPU time
of the steps alone, evaluations left out: fair on a shared machine), and per forward.
Writes benchmarks/results/perturbations.{json,md}; ``python benchmarks/figures.py perturbations`` draws it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import demo_model, machine, write_results  # noqa: E402

NOISE = {"hizoo": "gaussian"}  # what each optimizer needs beyond the defaults


class StepClock:
    """CPU-seconds of the steps alone: the process time between consecutive steps, less any evaluation."""

    def __init__(self):
        self.last, self.times, self.forwards = None, [], []

    def on_start(self, start, total) -> None:
        self.last = time.process_time()

    def on_step(self, record) -> None:
        now = time.process_time()
        if self.last is not None:
            self.times.append(now - self.last)
            self.forwards.append(record.forwards)
        self.last = now

    def on_eval(self, step, metrics) -> None:
        self.last = None  # the next step's interval would include the evaluation


def child(spec: dict) -> dict:
    """One run: the curve at the budget's even forward counts and the step clock."""
    from edgetune import Tuner
    from edgetune.demo import RECIPE

    model, train, dev = (Path(p) for p in spec["paths"])
    tuner = Tuner.from_onnx(model, trainable=spec["slice"], max_length=RECIPE["max_length"], threads=1)
    optimizer, _, noise = spec["optimizer"].partition(":")  # "zo-sgd:gaussian": HiZOO's control, same noise
    per_step = 3 if optimizer == "hizoo" else 2
    every = max(1, spec["forwards"] // (per_step * spec["evals"]))
    clock = StepClock()
    began = time.perf_counter()
    options = dict(optimizer=optimizer, seed=spec["seed"], steps=spec["forwards"], batch_size=RECIPE["batch_size"],
                   forward_budget=spec["forwards"], eval_every=every, eval_batch_size=64)
    if noise or optimizer in NOISE:
        options["noise"] = noise or NOISE[optimizer]
    try:
        result = tuner.fit(train, eval_data=dev, progress=clock, **options)
    except Exception as exc:  # a diverged run may end on a non-finite loss: a result here
        return {**spec, "error": str(exc).splitlines()[0]}
    curve = [{"forwards": 0, **result.before}] + result.history
    if curve[-1]["forwards"] != result.forward_passes:
        curve.append({"forwards": result.forward_passes, **result.after})
    return {**spec, "trainable_params": tuner.trainable_params, "seconds": time.perf_counter() - began,
            "curve": [{k: p[k] for k in ("forwards", "accuracy", "loss")} for p in curve],
            "lr": result.calibration["lr"] if result.calibration else None, "guard": result.guard,
            "step_cpu_s": float(np.median(clock.times)) if clock.times else None,
            "forwards_per_step": float(np.mean(clock.forwards)) if clock.forwards else None}


def at(curve: list[dict], forwards: int) -> dict:
    """The evaluation nearest ``forwards`` (a run passes its budget by at most one step's forwards)."""
    return min(curve, key=lambda p: (abs(p["forwards"] - forwards), p["forwards"]))


def run_child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {**spec, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def summarise(runs: list[dict], checkpoints: list[int]) -> tuple[list[dict], list[list]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["slice"], run["optimizer"]), []).append(run)
    summary, rows = [], []
    for (slice_, optimizer), group in groups.items():
        ok = [r for r in group if "curve" in r]
        base = [r for r in groups.get((slice_, "zo-sgd"), []) if r.get("step_cpu_s")]
        step = float(np.mean([r["step_cpu_s"] for r in ok])) if ok else None
        base_step = float(np.mean([r["step_cpu_s"] for r in base])) if base else None
        per_forward = (step / np.mean([r["forwards_per_step"] for r in ok])) if ok else None
        base_per_forward = (base_step / np.mean([r["forwards_per_step"] for r in base])) if base else None
        points = []
        for f in checkpoints:
            acc = [at(r["curve"], f)["accuracy"] for r in ok]
            loss = [at(r["curve"], f)["loss"] for r in ok]
            points.append({"forwards": f, "accuracy": float(np.mean(acc)), "accuracy_sd": float(np.std(acc)),
                           "loss": float(np.mean(loss)), "loss_sd": float(np.std(loss))})
        entry = {"slice": slice_, "optimizer": optimizer, "seeds": len(ok), "failed": len(group) - len(ok),
                 "trainable_params": ok[0]["trainable_params"] if ok else None, "points": points,
                 "step_cpu_s": step, "step_ratio": step / base_step if step and base_step else None,
                 "per_forward_ratio": per_forward / base_per_forward if per_forward and base_per_forward else None,
                 "guard_lines": sum(len(r["guard"]) for r in ok)}
        summary.append(entry)
        cells = [f"{p['accuracy']:.3f}±{p['accuracy_sd']:.3f} / {p['loss']:.4f}" for p in points[1:]]
        rows.append([slice_, optimizer, f"{entry['trainable_params']:,}" if ok else "-", len(ok), *cells,
                     f"{step:.3f}" if step else "-",
                     f"{entry['step_ratio']:.2f}" if entry["step_ratio"] else "-",
                     f"{entry['per_forward_ratio']:.2f}" if entry["per_forward_ratio"] else "-",
                     entry["guard_lines"]])
    return summary, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--forwards", type=int, default=300)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--slices", default="last:2,head,lora:r=8")
    parser.add_argument("--optimizers", default="zo-sgd,lozo,hizoo")
    parser.add_argument("--evals", type=int, default=3, help="dev evaluations per run, at even forward counts")
    parser.add_argument("--n-dev", type=int, default=200, help="dev rows evaluated (the first N of the demo's)")
    parser.add_argument("--jobs", type=int, default=3, help="child processes at a time")
    parser.add_argument("--rows", type=Path, help="JSON-lines file of finished runs (reused: a rerun skips them)")
    parser.add_argument("--table-only", action="store_true", help="write the table from --rows, run nothing")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    model, train, full_dev = demo_model()
    dev = full_dev.with_name(f"dev-{args.n_dev}.jsonl")
    dev.write_text("".join(full_dev.read_text().splitlines(keepends=True)[:args.n_dev]))
    rows_file = args.rows or Path(__file__).parent / "results" / "perturbations.rows.jsonl"
    done = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.is_file() else []
    specs = [{"slice": s, "optimizer": o, "seed": int(seed), "forwards": args.forwards, "evals": args.evals,
              "paths": [str(model), str(train), str(dev)]}
             for seed in args.seeds.split(",") for s in args.slices.split(",") for o in args.optimizers.split(",")]
    # seed by seed: a run cut short still has every configuration on its first seeds
    key = lambda r: (r["slice"], r["optimizer"], r["seed"], r["forwards"])  # noqa: E731
    todo = [s for s in specs if key(s) not in {key(r) for r in done} and not args.table_only]

    def one(spec: dict) -> dict:
        row = {**run_child(spec), "load_average": os.getloadavg()[0]}
        with rows_file.open("a") as out:
            out.write(json.dumps(row) + "\n")
        print(f"{spec['slice']} {spec['optimizer']} seed {spec['seed']}: "
              + (row.get("error") or f"{row['curve'][-1]}, {row['step_cpu_s']:.3f} CPU-s a step"), flush=True)
        return row

    with ThreadPoolExecutor(args.jobs) as pool:
        done += list(pool.map(one, todo))
    slices, optimizers = args.slices.split(","), args.optimizers.split(",")
    runs = sorted((r for r in done if key(r) in {key(s) for s in specs}),
                  key=lambda r: (slices.index(r["slice"]), optimizers.index(r["optimizer"]), r["seed"]))
    checkpoints = [args.forwards * k // args.evals for k in range(args.evals + 1)]
    summary, rows = summarise(runs, checkpoints)
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("child", "table_only")}
    payload = {"machine": machine(), "config": config, "checkpoints": checkpoints, "summary": summary,
               "runs": runs, "load_average": [r["load_average"] for r in runs]}
    header = ["slice", "optimizer", "trainable", "seeds",
              *[f"acc / loss at {f} fwd" for f in checkpoints[1:]], "CPU-s / step", "step ÷ zo-sgd",
              "per forward ÷ zo-sgd", "guard lines"]
    write_results("perturbations", payload, header, rows)


if __name__ == "__main__":
    main()
