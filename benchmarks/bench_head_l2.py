"""The exact head's L2 penalty against over-fitting: dev accuracy against head steps, for a few λ.

    python benchmarks/bench_head_l2.py [--datasets rt debates] [--steps 100000] [--orders 0 1] [--name head_l2]

bench_race.py's models and rows (MiniLM with a fresh head, 128 tokens; Rotten Tomatoes: 4,000 training and 500 dev
rows; the debates: 600 and 240): with the head alone in the slice the encoder is frozen, so every row's features
are computed once (the prefix of the ``head_grad`` graph, as bench_exact_head.py's ``--lr-grid``), and each step
is :class:`edgetune.zo.exact_head.ExactHead`'s own update (Adam 3e-3, batch 8, the graph's gradient formula in
numpy) with ``l2`` = λ, on the batches of edgetune's order for seed ``--orders``. A race's time budget gives the
head this many steps: from the activation cache one costs ~0.5 ms, so 120 CPU-s are ~190,000. Per λ: the dev
accuracy at each mark (mean over the orders), the mean of the marks from the middle one on (whether the head holds
what it reached early), the training loss (all rows) and ‖W‖ at the end. Writes benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from bench_exact_head import Run, _formula  # noqa: E402
from bench_race import TASKS  # noqa: E402
from common import machine, write_results  # noqa: E402

PENALTIES = (0.0, 1e-3, 1e-2, 3e-2)  # 0: the exact head before --head-l2; 1e-2: its default
MARKS = (75, 300, 750, 1500, 3000, 7500, 15000, 30000, 60000, 100000, 200000)  # steps at which dev rows are scored
BATCH, HEAD_LR = 8, 3e-3


def features(key: str, args) -> dict:
    """The frozen features of the task's training rows and first dev rows, their labels, the fresh head."""
    task = TASKS[key]
    onnx_path, train_path, dev_path = task.files()
    run = Run({"trainable": "head", "head": "exact", "method": "adam", "head_lr": HEAD_LR}, onnx_path, args)
    tuner, head = run.tuner, run.head

    def encode(path: Path, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        data = tuner.load_data(path)
        rows = range(len(data) if count is None else min(count, len(data)))
        parts, labels = [], []
        for start in range(0, len(rows), 32):
            batch = data.batch(rows[start:start + 32], tuner.info.data_inputs)
            parts.append(tuner.engine.data_feeds(batch)[head.features])
            labels.append(batch.labels)
        return np.concatenate(parts), np.concatenate(labels)

    (train_h, train_y), (dev_h, dev_y) = encode(train_path), encode(dev_path, task.dev_size)
    return {"head": head, "train": (train_h, train_y), "dev": (dev_h, dev_y),
            "initial": (tuner.weights[head.weight].copy(), tuner.weights[head.bias].copy())}


def curve(feats: dict, l2: float, order_seed: int, steps: int) -> dict:
    """ExactHead alone on the cached features for ``steps`` steps: dev accuracy at the marks, the end's state."""
    from edgetune.data.batching import BatchStream
    from edgetune.zo.exact_head import ExactHead, HeadGrads

    head, (train_h, train_y), (dev_h, dev_y) = feats["head"], feats["train"], feats["dev"]
    weight, bias = (a.copy() for a in feats["initial"])
    grads = HeadGrads(weight, bias, np.zeros_like(weight), np.zeros_like(bias))
    optimizer = ExactHead(grads, None, HEAD_LR, "adam", l2=l2)
    stream = BatchStream(len(train_y), BATCH, order_seed)

    def accuracy(h: np.ndarray, y: np.ndarray) -> float:
        logits = h @ (weight.T if head.trans_b else weight) + bias
        return float(np.mean(np.argmax(logits, 1) == y))

    points = []
    for t in range(steps):
        rows = stream.indices(t)
        optimizer.step(t, lambda: _formula(grads, head, train_h[rows], train_y[rows]))
        if t + 1 in MARKS or t + 1 == steps:
            points.append({"steps": t + 1, "accuracy": accuracy(dev_h, dev_y)})
    train_loss = _formula(grads, head, train_h, train_y)
    return {"curve": points, "train_loss": train_loss, "weight_norm": float(np.linalg.norm(weight))}


def summarise(runs: list[dict]) -> dict:
    """Over the orders: the mean accuracy at each mark, the mean of the later half of the marks, the end's loss."""
    accuracy = np.mean([[p["accuracy"] for p in r["curve"]] for r in runs], axis=0)
    return {"steps": [p["steps"] for p in runs[0]["curve"]], "accuracy": accuracy.tolist(),
            "late_mean": float(accuracy[len(accuracy) // 2:].mean()),
            "train_loss": float(np.mean([r["train_loss"] for r in runs])),
            "weight_norm": float(np.mean([r["weight_norm"] for r in runs])), "runs": runs}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--orders", nargs="+", type=int, default=[0, 1], help="batch-order seeds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="head_l2")
    args = parser.parse_args(argv)
    args.tokens = 128  # bench_race's
    results = {}
    for key in args.datasets:
        feats = features(key, args)
        results[key] = {f"{l2:g}": summarise([curve(feats, l2, seed, args.steps) for seed in args.orders])
                        for l2 in PENALTIES}
        print(f"{key}: " + ", ".join(f"λ {k}: {v['late_mean']:.3f}" for k, v in results[key].items()),
              file=sys.stderr, flush=True)
    marks = [m for m in MARKS if m < args.steps] + [args.steps]
    header = ["data set", "head L2 λ", *(f"acc @ {m:,} steps" for m in marks), "mean, later half of the marks",
              "train loss at the end", "‖W‖ at the end"]
    rows = [[key, lam + (" (default)" if float(lam) == 1e-2 else ""), *(f"{a:.3f}" for a in s["accuracy"]),
             f"**{s['late_mean']:.3f}**", f"{s['train_loss']:.3f}", f"{s['weight_norm']:.1f}"]
            for key, by_l2 in results.items() for lam, s in by_l2.items()]
    write_results(args.name, {"machine": machine(), "batch_size": BATCH, "tokens": args.tokens, "head_lr": HEAD_LR,
                              "steps": args.steps, "orders": args.orders, "results": results}, header, rows)


if __name__ == "__main__":
    main()
