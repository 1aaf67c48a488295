"""Query-count schedules against forward passes: fixed q vs. growing q vs. variance-driven q.

    python benchmarks/bench_adaptive_q.py [--trainable head --budget 4000 --eval-every 800 --n-dev 1000]

The README's MiniLM + Rotten Tomatoes job (``common.demo_model()``), each schedule from the same
initial weights and seed, to the same forward-pass budget. Every run is cut into segments of
``--eval-every`` forwards (``fit(forward_budget=k·K, resume=True)``), so each schedule is evaluated
on the dev set at the first step past every multiple of K forwards. Writes
benchmarks/results/adaptive_q.{json,md}: the curves (dev accuracy against forwards), the forwards each
schedule needs to reach the fixed schedule's final accuracy, and wall time. With a split model the
frozen prefix also runs once per step, so a schedule with more, cheaper steps pays for it in seconds:
both are reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import demo_model, machine, write_results  # noqa: E402

from edgetune import Tuner  # noqa: E402
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


def run_schedule(model: Path, train: Path, dev: Path, options: dict[str, Any], args) -> dict[str, Any]:
    """One run to the budget, evaluated every ``args.eval_every`` forwards."""
    tuner = Tuner.from_onnx(model, trainable=args.trainable, max_length=args.max_length, threads=args.threads)
    common = dict(lr=args.lr, eps=args.eps, batch_size=args.batch_size, queries=args.queries, seed=args.seed)
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
    return {"options": options, "curve": curve, "seconds": time.perf_counter() - began, "steps": len(queries),
            "mean_queries": sum(queries) / len(queries), "queries_range": [min(queries), max(queries)]}


def forwards_to_reach(curve: list[dict[str, Any]], accuracy: float) -> int | None:
    return next((point["forwards"] for point in curve if point["accuracy"] >= accuracy), None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainable", default=RECIPE["trainable"])
    parser.add_argument("--budget", type=int, default=4000, help="forward passes per run")
    parser.add_argument("--eval-every", type=int, default=800, help="forward passes between dev evaluations")
    parser.add_argument("--queries", type=int, default=RECIPE["queries"], help="fixed q, and the others' maximum")
    parser.add_argument("--queries-min", type=int, default=4, help="the growing schedule's first q")
    parser.add_argument("--threshold", type=float, default=0.5, help="the variance schedule's --query-threshold")
    for key in ("lr", "eps", "batch_size", "max_length"):
        parser.add_argument("--" + key.replace("_", "-"), type=type(RECIPE[key]), default=RECIPE[key])
    parser.add_argument("--levels", type=lambda text: [float(v) for v in text.split(",")], default=[0.66, 0.68, 0.70],
                        help="dev accuracies to report the forwards to, besides the fixed run's final one")
    parser.add_argument("--n-dev", type=int, default=1000, help="dev examples evaluated (the first N of the demo's 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="adaptive_q", help="results file name in benchmarks/results/")
    args = parser.parse_args(argv)

    model, train, dev_file = demo_model()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="adaptive-q-dev-") as folder:
        dev = Path(folder) / "dev.jsonl"  # a subset: evaluations dominate the run time on a small machine
        dev.write_text("".join(dev_file.read_text().splitlines(keepends=True)[:args.n_dev]))
        for label, options in schedules(args).items():
            runs[label] = run_schedule(model, train, dev, options, args)
            last = runs[label]["curve"][-1]
            print(f"{label}: dev accuracy {last['accuracy']:.3f} at {last['forwards']} forwards, "
                  f"{runs[label]['steps']} steps, {runs[label]['seconds']:.0f} s", flush=True)

    # The fixed run's final accuracy, and levels on the rising part of the curves: one dev evaluation
    # is noisy (±1.5 points at 1000 examples), so a single target can be met early by chance.
    fixed = next(iter(runs.values()))
    targets = sorted({*args.levels, fixed["curve"][-1]["accuracy"]})
    fixed_needs = {target: forwards_to_reach(fixed["curve"], target) for target in targets}
    rows = []
    for label, run in runs.items():
        run["forwards_to_reach"] = {f"{target:.3f}": forwards_to_reach(run["curve"], target) for target in targets}
        reached = [(run["forwards_to_reach"][f"{target:.3f}"], fixed_needs[target]) for target in targets]
        last = run["curve"][-1]
        rows.append([label, f"{run['mean_queries']:.1f} ({run['queries_range'][0]}–{run['queries_range'][1]})",
                     run["steps"], last["forwards"], f"{last['accuracy']:.3f}",
                     *[f"{n} ({n / base:.2f}×)" if n and base else "not reached" for n, base in reached],
                     f"{run['seconds']:.0f}"])
    payload = {"machine": machine(), "config": vars(args), "targets": targets, "runs": runs}
    header = ["schedule", "mean q (range)", "steps", "forward passes", "final dev accuracy",
              *[f"forwards to {target:.3f} (÷ fixed)" for target in targets], "seconds"]
    write_results(args.name, payload, header, rows)
    print("\ncurves (forwards:accuracy):")
    for label, run in runs.items():
        print(f"{label}: " + " ".join(f"{p['forwards']}:{p['accuracy']:.3f}" for p in run["curve"]))


if __name__ == "__main__":
    main()
