"""The exact head against the ZO head: dev accuracy against training wall clock.

    python benchmarks/bench_exact_head.py [--budget-s 60] [--only NAME ...] [--name exact_head]

all-MiniLM-L6-v2 with the demo's fresh 2-label head (mean pooling) on Rotten Tomatoes, with the data,
batch (8), token ids, batch order, threads (2), seed (0) and dev rows (200) of bench_peers.py
(``prepare_data``), so (a) reproduces its "edgetune head, q=16" row:

- ZO head only, q = 16, ZO-SGD lr 1e-2, ε 1e-3, Gaussian noise (peers.json's best edgetune row);
- the exact head only: the head's gradient from the graph (``graph/head_grad.py``), first-order on the
  head (``zo/exact_head.py``), Adam 3e-3 (the default) or SGD 0.1, picked by ``--lr-grid``; one forward
  per step;
- the exact head + ZO-SGD (q = 1, lr 5e-5 as peers' last:2 row, ε 1e-3, Gaussian) on ``last:1`` or
  ``last:2`` below it.

Every configuration runs in a fresh child process for ``--budget-s`` seconds of training time (wall clock,
or with ``--budget-clock cpu`` the child's own CPU seconds, which other load does not eat into); the clock
stops while the dev rows are scored at the marks of ``MARKS`` (accuracy against time). Writes
benchmarks/results/<name>.{json,md}, with the load average: the machine is shared. ``--lr-grid`` picks the
exact head's method and lr against steps instead (<name>_lr_grid.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from common import demo_model, machine, write_results  # noqa: E402
from peers_common import RESULT_MARK, PeerData  # noqa: E402

MARKS = (5, 10, 20, 30, 45, 60, 90, 120, 180, 240, 300)  # training seconds at which dev accuracy is scored
ZO_EPS, SEED = 1e-3, 0
CONFIGS = {
    "zo head q=16": {"trainable": "head", "head": "zo", "queries": 16, "zo_lr": 1e-2},
    "exact head (adam 3e-3)": {"trainable": "head", "head": "exact", "method": "adam", "head_lr": 3e-3},
    "exact head (sgd 0.1)": {"trainable": "head", "head": "exact", "method": "sgd", "head_lr": 0.1},
    "exact head + ZO last:1": {"trainable": "last:1", "head": "exact", "method": "adam", "head_lr": 3e-3,
                               "queries": 1, "zo_lr": 5e-5},
    "exact head + ZO last:2": {"trainable": "last:2", "head": "exact", "method": "adam", "head_lr": 3e-3,
                               "queries": 1, "zo_lr": 5e-5},
}


class Run:
    """One configuration in this process: the tuner, its optimizer, the batches of ``data``."""

    def __init__(self, config: dict, onnx_path: Path, args):
        from edgetune import Tuner, _core
        from edgetune.data import load_tokenizer
        from edgetune.graph.prepare import prepare
        from edgetune.graph.trainable import TrainableSpec
        from edgetune.zo import ZOSGD, Schedule
        from edgetune.zo.exact_head import ExactHead, HeadGrads, WithoutHead

        _core.set_num_threads(args.threads)
        exact = config["head"] == "exact"
        prepared = prepare(onnx_path, TrainableSpec.parse(config["trainable"]), split=True, head_grad=exact)
        tokenizer = onnx_path.parent / "tokenizer.json"
        self.tuner = tuner = Tuner(prepared, load_tokenizer(tokenizer), tokenizer, args.tokens, args.threads, None)

        def zo(subsets=None):
            return ZOSGD(tuner.arena.buffer(), SEED, Schedule(config["zo_lr"]), Schedule(ZO_EPS),
                         queries=config["queries"], noise="gaussian", subsets=subsets)

        self.head = prepared.head
        if not exact:
            self.optimizer = zo()
            return
        below = WithoutHead(tuner.arena, prepared.head)
        self.optimizer = ExactHead(HeadGrads.bind(tuner.engine, tuner.weights, prepared.head),
                                   None if below.empty else zo(below), config["head_lr"], config["method"])

    def batch(self, arrays: dict[str, np.ndarray]):
        from edgetune.data.batching import Batch

        inputs = {name: arrays[name] for name in self.tuner.info.data_inputs}
        return Batch(inputs=inputs, labels=arrays["labels"], size=len(arrays["labels"]))

    def step(self, t: int, arrays: dict[str, np.ndarray]):
        self.tuner.engine.set_batch(self.batch(arrays))
        return self.optimizer.step(t, self.tuner.engine.mean_loss, chain=True)

    def accuracy(self, data: PeerData, batch_size: int) -> float:
        self.optimizer.settle()  # a chained step left θ + εz behind
        correct = 0
        for rows in data.dev_batches(batch_size):
            logits = self.tuner.engine.loss_and_logits(self.batch(rows))[1]
            correct += int(np.sum(np.argmax(logits, axis=-1) == rows["labels"]))
        return correct / len(data.dev)


def child(config: dict, onnx_path: Path, workdir: Path, args) -> dict:
    """Train ``config`` for ``args.budget_s`` s of training time on ``args.budget_clock`` (wall: elapsed;
    cpu: this process's CPU seconds, which other load on a shared machine does not eat into); dev accuracy
    at each mark, with the clock stopped."""
    data = PeerData.load(workdir)
    run = Run(config, onnx_path, args)
    clock = time.perf_counter if args.budget_clock == "wall" else time.process_time
    marks = [m for m in MARKS if m < args.budget_s] + [args.budget_s]
    curve = [{"train_s": 0.0, "wall_s": 0.0, "steps": 0, "forwards": 0,
              "accuracy": run.accuracy(data, args.eval_batch_size)}]
    steps, forwards, trained, wall, losses = 0, 0, 0.0, 0.0, []
    for mark in marks:
        began, wall_began = clock(), time.perf_counter()
        while trained + (clock() - began) < mark and steps < len(data.order):
            record = run.step(steps, data.train.batch(data.order[steps]))
            losses.append(record.loss)
            forwards += record.forwards
            steps += 1
        trained += clock() - began
        wall += time.perf_counter() - wall_began
        curve.append({"train_s": round(trained, 2), "wall_s": round(wall, 2), "steps": steps, "forwards": forwards,
                      "accuracy": run.accuracy(data, args.eval_batch_size)})
    tail = losses[-max(1, steps // 10):]
    return {"accuracy_at_budget": curve[-1]["accuracy"], "steps": steps, "forwards": forwards,
            "step_ms": 1e3 * wall / max(steps, 1), "final_train_loss": float(np.mean(tail)),
            "train_wall_s": wall, "trainable_params": run.tuner.trainable_params, "curve": curve}


GRID = [("adam", lr) for lr in (1e-3, 3e-3, 1e-2, 3e-2)] + [("sgd", lr) for lr in (3e-2, 1e-1, 3e-1, 1.0)]
GRID_MARKS = (25, 50, 100, 200, 400, 800, 1600, 3000)  # steps at which the grid scores the dev rows


def lr_grid(onnx_path: Path, workdir: Path, args) -> dict:
    """The exact head's method and lr, by dev accuracy against steps (not seconds: load-independent).

    Only the head trains, so the frozen encoder's features of every train and dev row are computed once
    (the prefix of the ``head_grad`` graph) and each step's gradient is the graph's formula in numpy on
    the same batches in the same order; the update is :class:`ExactHead`'s own.
    """
    from edgetune.zo.exact_head import ExactHead, HeadGrads

    data = PeerData.load(workdir)
    run = Run({"trainable": "head", "head": "exact", "method": "sgd", "head_lr": 0.0}, onnx_path, args)
    head, engine = run.head, run.tuner.engine

    def features(split) -> np.ndarray:
        rows = [split.batch(range(i, min(i + 32, len(split)))) for i in range(0, len(split), 32)]
        return np.concatenate([engine.data_feeds(run.batch(r))[head.features] for r in rows])

    train_h, dev_h = features(data.train), features(data.dev)
    train_y, dev_y = data.train.arrays["labels"], data.dev.arrays["labels"]
    initial = {name: run.tuner.weights[name].copy() for name in (head.weight, head.bias)}
    results = {}
    for method, lr in GRID:
        weight, bias = initial[head.weight].copy(), initial[head.bias].copy()
        grads = HeadGrads(weight, bias, np.zeros_like(weight), np.zeros_like(bias))
        optimizer = ExactHead(grads, None, lr, method)
        curve = []
        for t in range(GRID_MARKS[-1]):
            rows = data.order[t]
            optimizer.step(t, lambda: _formula(grads, head, train_h[rows], train_y[rows]))
            if t + 1 in GRID_MARKS:
                logits = dev_h @ (weight.T if head.trans_b else weight) + bias
                curve.append({"steps": t + 1, "accuracy": float(np.mean(np.argmax(logits, 1) == dev_y))})
        results[f"{method} {lr:g}"] = {"method": method, "lr": lr, "curve": curve}
    return results


def _formula(grads, head, h: np.ndarray, labels: np.ndarray) -> float:
    """The graph's head gradient (graph/head_grad.py) in numpy, into ``grads``; the batch's mean loss."""
    logits = h @ (grads.weight.T if head.trans_b else grads.weight) + grads.bias
    logits = logits - logits.max(1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    delta = (probs - np.eye(probs.shape[1], dtype=np.float32)[labels]) / len(h)
    grads.weight_grad[...] = delta.T @ h if head.trans_b else h.T @ delta
    grads.bias_grad[...] = delta.sum(0)
    return float(np.mean(-np.log(probs[np.arange(len(h)), labels])))


def run_child(name: str, workdir: Path, args) -> dict:
    command = [sys.executable, __file__, "--child", name, "--workdir", str(workdir), "--budget-s", str(args.budget_s),
               "--threads", str(args.threads), "--tokens", str(args.tokens),
               "--eval-batch-size", str(args.eval_batch_size), "--budget-clock", args.budget_clock]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode or not lines:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return json.loads(lines[-1][len(RESULT_MARK):])


def table(results: dict[str, dict], budget_s: float, clock: str) -> tuple[list[str], list[list]]:
    base = results.get("zo head q=16", {}).get("accuracy_at_budget")
    shown = [m for m in MARKS if m < budget_s] + [budget_s]
    header = ["configuration", f"dev acc @ {budget_s:g} {clock} s", "vs ZO head", "steps", "wall ms/step",
              *(f"acc @ {m:g} {clock} s" for m in shown)]
    rows = []
    for name, r in results.items():
        if "error" in r:
            rows.append([name, "error: " + r["error"]] + [""] * (len(header) - 2))
            continue
        ratio = f"{r['accuracy_at_budget'] / base:.3f}x" if base else "-"
        rows.append([name, f"{r['accuracy_at_budget']:.3f}", ratio, r["steps"], f"{r['step_ms']:.1f}",
                     *(f"{p['accuracy']:.3f}" for p in r["curve"][1:])])
    return header, rows


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=60.0, help="training wall clock per configuration")
    parser.add_argument("--budget-clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: count each configuration's own CPU seconds (fair on a machine others load)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--dev-size", type=int, default=200)
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), help="these configurations (default: all)")
    parser.add_argument("--name", default="exact_head", help="results file stem")
    parser.add_argument("--lr-grid", action="store_true",
                        help="only the exact head's method/lr grid against steps (<name>_lr_grid.{json,md})")
    parser.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    onnx_path, train_path, dev_path = demo_model()
    if args.child:
        print(RESULT_MARK + json.dumps(child(CONFIGS[args.child], onnx_path, args.workdir, args)), flush=True)
        return
    from bench_peers import prepare_data

    names = args.only or list(CONFIGS)
    with tempfile.TemporaryDirectory(prefix="edgetune_exact_head_") as tmp:
        workdir = Path(tmp)
        prepare_data(workdir, onnx_path, train_path, dev_path, args)
        if args.lr_grid:
            grid = lr_grid(onnx_path, workdir, args)
            header = ["head method, lr", *(f"acc @ {m} steps" for m in GRID_MARKS)]
            rows = [[name, *(f"{p['accuracy']:.3f}" for p in r["curve"])] for name, r in grid.items()]
            write_results(f"{args.name}_lr_grid", {"machine": machine(), "batch_size": args.batch_size,
                                                   "tokens": args.tokens, "seed": SEED, "dev_size": args.dev_size,
                                                   "grid": grid}, header, rows)
            return
        load_before = os.getloadavg()
        results = {}
        for name in names:
            results[name] = run_child(name, workdir, args)
            print(f"{name}: {json.dumps({k: v for k, v in results[name].items() if k != 'curve'})}",
                  file=sys.stderr, flush=True)
    payload = {"machine": machine(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
               "batch_size": args.batch_size, "tokens": args.tokens, "threads": args.threads, "seed": SEED,
               "budget_s": args.budget_s, "budget_clock": args.budget_clock, "dev_size": args.dev_size,
               "zo_eps": ZO_EPS,
               "configs": {name: {**CONFIGS[name], **results[name]} for name in names}}
    write_results(args.name, payload, *table(results, args.budget_s, args.budget_clock))


if __name__ == "__main__":
    main()
