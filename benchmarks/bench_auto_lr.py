"""``--lr auto`` against a hand-tuned lr grid: all-MiniLM-L6-v2 + fresh head on Rotten Tomatoes, same forward budget.

    python benchmarks/bench_auto_lr.py [--steps 200 --trainable last:2 --seeds 0,1 --grid 1e-3,3e-3,1e-2 --n-dev 300]
    [--arms NAME,... --rows FILE]

``--arms`` runs some of the arms (their names as in the table, ``lr 0.001`` for a grid lr) and ``--rows`` appends
each finished run to a JSON-lines file and writes the table from all the rows there: several processes on a
shared machine split the arms between them.

Each arm runs ``--steps`` ZO-SGD steps (q = 1) under a forward budget of 2·steps, so the calibration's forwards
come out of auto's steps. Arms: each grid lr (guard off, as a hand-tuned run is), auto without the guard,
auto with it (the default), and auto with MEAZO's one-scalar step (``--lr-adapt meazo``). Writes
benchmarks/results/auto_lr.{json,md}: dev accuracy and loss per arm and seed, the lr used, whether the run
diverged (dev loss above the start) and the machine's load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import demo_model, machine, write_results  # noqa: E402

from edgetune import Tuner  # noqa: E402
from edgetune.demo import RECIPE  # noqa: E402


def arms(grid: list[float]) -> list[tuple[str, dict]]:
    return ([("auto+guard", {}), ("auto", {"guard": "off"}), ("auto+guard+meazo", {"lr_adapt": "meazo"})]
            + [(f"lr {lr:g}", {"lr": lr, "guard": "off"}) for lr in grid])


def run_arm(model: Path, train: Path, dev: Path, args, options: dict, seed: int) -> dict:
    tuner = Tuner.from_onnx(model, trainable=args.trainable, max_length=RECIPE["max_length"], threads=args.threads)
    began = time.perf_counter()
    try:
        result = tuner.fit(train, eval_data=dev, steps=args.steps, forward_budget=2 * args.steps, seed=seed,
                           batch_size=RECIPE["batch_size"], eval_batch_size=64, **options)
    except Exception as exc:  # a diverged run may end on a non-finite loss: that is a result here
        return {"error": str(exc).splitlines()[0], "diverged": True, "seconds": time.perf_counter() - began}
    first_lr = result.calibration["lr"] if result.calibration else options.get("lr")
    return {"accuracy": result.after["accuracy"], "loss": result.after["loss"], "before_loss": result.before["loss"],
            "diverged": not result.after["loss"] <= result.before["loss"], "lr": first_lr,
            "guard": result.guard, "kept": result.kept, "forwards": result.forward_passes,
            "seconds": time.perf_counter() - began}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--trainable", default="last:2")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--grid", default="1e-3,3e-3,1e-2")
    parser.add_argument("--n-dev", type=int, default=300, help="dev rows evaluated (the first N of the demo's 1000)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arms", default="", help="comma-separated arm names to run (default: all)")
    parser.add_argument("--rows", type=Path, help="JSON-lines file the runs are appended to and the table read from")
    args = parser.parse_args()
    model, train, full_dev = demo_model()
    dev = full_dev.with_name(f"dev-{args.n_dev}.jsonl")
    dev.write_text("".join(full_dev.read_text().splitlines(keepends=True)[:args.n_dev]))
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    chosen = set(filter(None, args.arms.split(",")))
    for name, options in arms([float(x) for x in args.grid.split(",")]):
        for seed in seeds if not chosen or name in chosen else ():
            row = {"arm": name, "seed": seed, "load_average": os.getloadavg()[0], **run_arm(model, train, dev, args,
                                                                                            options, seed)}
            results.append(row)
            print(row, flush=True)
            if args.rows:
                with args.rows.open("a") as rows:
                    rows.write(json.dumps(row) + "\n")
    if args.rows:
        order = [name for name, _ in arms([float(x) for x in args.grid.split(",")])]
        results = sorted((json.loads(line) for line in args.rows.read_text().splitlines()),
                         key=lambda r: (order.index(r["arm"]) if r["arm"] in order else len(order), r["arm"], r["seed"]))
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    payload = {"machine": machine(), "config": config, "results": results}
    rows = [[r["arm"], r["seed"], f"{r['lr']:.3g}" if r.get("lr") else "-",
             f"{r['accuracy']:.3f}" if "accuracy" in r else "-", f"{r['loss']:.4f}" if "loss" in r else "-",
             "yes" if r["diverged"] else "no", len(r.get("guard", [])), r.get("kept", "-"), f"{r['seconds']:.0f}",
             f"{r['load_average']:.1f}"] for r in results]
    write_results("auto_lr", payload, ["arm", "seed", "lr (start)", "dev accuracy", "dev loss", "diverged",
                                       "guard rollbacks", "kept", "seconds", "load average"], rows)


if __name__ == "__main__":
    main()
