"""Query-count schedules against forward passes: fixed q vs. growing q vs. variance-driven q, over seeds.

    python benchmarks/bench_adaptive_q.py [--budget 16000 --eval-every 1600 --seeds 0,1,2 --jobs 2]

The demo's MiniLM + Rotten Tomatoes job (``common.demo_model()``), each schedule from the same
initial weights, to the same forward-pass budget, once per seed. Every run is cut into segments of
``--eval-every`` forwards (``fit(forward_budget=k·K, resume=True)``), so each schedule is evaluated
on the dev set at the first step past every multiple of K forwards. Runs are independent and
deterministic whatever their thread count, so ``--jobs`` runs them side by side.

One dev evaluation is noisy (±1.4 points at 1000 examples) and the seed moves a curve by more than
that, so the verdict is read from the curves averaged over seeds: the forwards each schedule's mean
curve needs to reach the fixed schedule's mean final accuracy (and its mean final dev loss, which is
far less noisy), next to the same figure per seed. With a split model the frozen prefix also runs once
per step, so a schedule with more, cheaper steps pays for it in seconds: both are reported. Writes
benchmarks/results/adaptive_q.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, demo_model, machine, write_results  # noqa: E402

from edgetune.demo import RECIPE  # noqa: E402
from edgetune.zo.queries import GrowingQueries  # noqa: E402


def grow_steps(low: int, high: int, budget: int) -> int:
    """The longest run whose growing schedule, completed, fits the budget (2 forwards per query)."""
    steps = 1
    while sum(2 * GrowingQueries(low, high, steps + 1).limit(t) for t in range(steps + 1)) <= budget:
        steps += 1
    return steps


def schedules(args) -> dict[str, dict[str, Any]]:
    """Each schedule's TrainConfig options; ``queries`` is the fixed q and the others' maximum."""
    return {
        f"fixed q={args.queries}": {"query_schedule": "fixed", "steps": args.budget // (2 * args.queries)},
        f"grow {args.queries_min}→{args.queries}": {
            "query_schedule": "grow", "queries_min": args.queries_min,
            "steps": grow_steps(args.queries_min, args.queries, args.budget)},
        f"variance ≤{args.queries}, threshold {args.threshold}": {
            "query_schedule": "variance", "queries_min": 2, "query_threshold": args.threshold,
            "steps": args.budget // 4},  # never reached: the budget ends the run
    }


def run_schedule(model: Path, train: Path, dev: Path, options: dict[str, Any], seed: int, threads: int,
                 args) -> dict[str, Any]:
    """One run to the budget, evaluated every ``args.eval_every`` forwards."""
    from edgetune import Tuner

    tuner = Tuner.from_onnx(model, trainable=args.trainable, max_length=args.max_length, threads=threads)
    common = dict(lr=args.lr, eps=args.eps, batch_size=args.batch_size, queries=args.queries, seed=seed)
    began, curve = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="adaptive-q-") as out:
        for segment in range(1, args.budget // args.eval_every + 1):
            result = tuner.fit(train, eval_data=dev, output_dir=out, resume=segment > 1,
                               forward_budget=segment * args.eval_every, **common, **options)
            if segment == 1:
                curve.append({"step": 0, "forwards": 0, **result.before})
            curve.append(result.history[-1])
            if result.history[-1]["step"] >= options["steps"]:
                break  # a schedule that completes under the budget
        steps = (Path(out) / "steps.jsonl").read_text().splitlines()
        queries = [len(json.loads(line)["seeds"]) for line in steps]
    return {"seed": seed, "curve": curve, "seconds": time.perf_counter() - began, "steps": len(queries),
            "mean_queries": sum(queries) / len(queries), "queries_range": [min(queries), max(queries)]}


def mean_curve(runs: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Point k of every seed's curve (the first step past k·K forwards), averaged."""
    return [{key: statistics.fmean(run["curve"][k][key] for run in runs) for key in ("forwards", "accuracy", "loss")}
            for k in range(min(len(run["curve"]) for run in runs))]


def forwards_to(curve: list[dict[str, float]], key: str, target: float) -> float | None:
    """The forwards at the first point whose ``key`` reaches ``target`` (accuracy up, loss down)."""
    better = (lambda v: v >= target) if key == "accuracy" else (lambda v: v <= target)
    return next((point["forwards"] for point in curve if better(point[key])), None)


def ratio(needed: float | None, base: float | None) -> str:
    return f"{needed:.0f} ({needed / base:.2f}×)" if needed and base else "not reached"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainable", default=RECIPE["trainable"])
    parser.add_argument("--budget", type=int, default=16000, help="forward passes per run")
    parser.add_argument("--eval-every", type=int, default=1600, help="forward passes between dev evaluations")
    parser.add_argument("--queries", type=int, default=RECIPE["queries"], help="fixed q, and the others' maximum")
    parser.add_argument("--queries-min", type=int, default=4, help="the growing schedule's first q")
    parser.add_argument("--threshold", type=float, default=0.5, help="the variance schedule's --query-threshold")
    for key in ("lr", "eps", "batch_size", "max_length"):
        parser.add_argument("--" + key.replace("_", "-"), type=type(RECIPE[key]), default=RECIPE[key])
    parser.add_argument("--levels", type=lambda text: [float(v) for v in text.split(",")], default=[0.70, 0.72],
                        help="mean dev accuracies to report the forwards to, besides the fixed run's final one")
    parser.add_argument("--n-dev", type=int, default=1000, help="dev examples evaluated (the first N of the demo's 1000)")
    parser.add_argument("--seeds", type=lambda text: [int(v) for v in text.split(",")], default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (each gets threads // jobs threads)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="adaptive_q", help="results file name in benchmarks/results/")
    parser.add_argument("--report-only", action="store_true", help="rewrite the tables from NAME.json, run nothing")
    args = parser.parse_args(argv)

    if args.report_only:
        payload = json.loads((RESULTS / f"{args.name}.json").read_text())
        runs, info = payload["runs"], payload["machine"]
    else:
        runs, info = run_all(args), machine()
    report(args.name, args.levels, runs, info, vars(args) if not args.report_only else payload["config"])


def run_all(args) -> dict[str, list[dict[str, Any]]]:
    """Every schedule on every seed; each label's runs in seed order."""
    model, train, dev_file = demo_model()
    plan = schedules(args)
    with tempfile.TemporaryDirectory(prefix="adaptive-q-dev-") as folder:
        dev = Path(folder) / "dev.jsonl"  # a subset: evaluations dominate the run time on a small machine
        dev.write_text("".join(dev_file.read_text().splitlines(keepends=True)[:args.n_dev]))
        threads = max(1, args.threads // args.jobs)
        with ProcessPoolExecutor(args.jobs) as pool:
            futures = {(label, seed): pool.submit(run_schedule, model, train, dev, options, seed, threads, args)
                       for seed in args.seeds for label, options in plan.items()}
            runs: dict[str, list[dict[str, Any]]] = {label: [] for label in plan}
            for (label, seed), future in futures.items():
                runs[label].append(future.result())
                last = runs[label][-1]["curve"][-1]
                print(f"{label}, seed {seed}: dev accuracy {last['accuracy']:.3f}, loss {last['loss']:.4f} at "
                      f"{last['forwards']} forwards, {runs[label][-1]['steps']} steps", flush=True)
    return runs


def report(name: str, levels: list[float], runs: dict[str, list[dict[str, Any]]], info: dict,
           config: dict) -> None:
    """The verdict table (NAME.md) and the seed-averaged curves (NAME_curves.md), both in the JSON."""
    means = {label: mean_curve(seeded) for label, seeded in runs.items()}
    fixed_label = next(iter(runs))
    fixed, fixed_runs = means[fixed_label], runs[fixed_label]
    accuracy_target, loss_target = fixed[-1]["accuracy"], fixed[-1]["loss"]
    targets = sorted({*levels, accuracy_target})
    per_seed_fixed = [forwards_to(base["curve"], "accuracy", base["curve"][-1]["accuracy"]) for base in fixed_runs]
    rows, summary = [], {}
    for label, curve in means.items():
        seeded = runs[label]
        per_seed = [forwards_to(run["curve"], "accuracy", base["curve"][-1]["accuracy"])
                    for run, base in zip(seeded, fixed_runs)]
        summary[label] = {
            "mean_curve": curve,
            "forwards_to_accuracy": {f"{t:.3f}": forwards_to(curve, "accuracy", t) for t in targets},
            "forwards_to_fixed_loss": forwards_to(curve, "loss", loss_target),
            "per_seed_forwards_to_fixed_final": per_seed,
        }
        rows.append([
            label, f"{statistics.fmean(r['mean_queries'] for r in seeded):.1f}",
            f"{statistics.fmean(r['steps'] for r in seeded):.0f}",
            f"{curve[-1]['accuracy']:.3f}",
            *[ratio(summary[label]["forwards_to_accuracy"][f"{t:.3f}"],
                    summary[fixed_label]["forwards_to_accuracy"][f"{t:.3f}"]) for t in targets],
            " / ".join(f"{n / b:.2f}×" if n and b else "not reached" for n, b in zip(per_seed, per_seed_fixed)),
            f"{curve[-1]['loss']:.4f}", ratio(summary[label]["forwards_to_fixed_loss"],
                                              summary[fixed_label]["forwards_to_fixed_loss"]),
            f"{statistics.fmean(r['seconds'] for r in seeded):.0f}",
        ])
    payload = {"machine": info, "config": config, "targets": targets, "loss_target": loss_target,
               "runs": runs, "summary": summary}
    header = ["schedule", "mean q", "steps", "mean final dev accuracy",
              *[f"forwards to {t:.3f}{' (fixed final)' if t == accuracy_target else ''} (÷ fixed)" for t in targets],
              "per seed: forwards to that seed's fixed final accuracy (÷ fixed)", "mean final dev loss",
              f"forwards to {loss_target:.4f} (fixed final loss, ÷ fixed)", "seconds per run"]
    write_results(name, payload, header, rows)
    labels = list(means)
    curve_rows = [[f"{fixed_runs[0]['curve'][k]['forwards'] if k else 0}",
                   *[f"{means[label][k]['accuracy']:.3f}" for label in labels],
                   *[f"{means[label][k]['loss']:.4f}" for label in labels]]
                  for k in range(min(len(c) for c in means.values()))]
    curve_header = ["forwards", *[f"accuracy, {label}" for label in labels], *[f"loss, {label}" for label in labels]]
    write_results(f"{name}_curves", {"mean_curves": means}, curve_header, curve_rows)


if __name__ == "__main__":
    main()
