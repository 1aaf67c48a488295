"""Learning curve of the demo's job: all-MiniLM-L6-v2 + fresh head on Rotten Tomatoes.

    python benchmarks/bench_minilm_rt.py [--steps N --trainable SPEC --lr LR --eval-every K]

Writes benchmarks/results/minilm_rt.{json,md}: dev accuracy and loss every K steps, wall time and
peak RSS. Defaults are the demo's recipe (edgetune/demo.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import demo_model, machine, write_results  # noqa: E402

from edgetune import Tuner  # noqa: E402
from edgetune.demo import RECIPE  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for key in ("trainable", "steps", "queries", "lr", "eps", "batch_size", "max_length"):
        parser.add_argument("--" + key.replace("_", "-"), type=type(RECIPE[key]), default=RECIPE[key])
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model, train, dev = demo_model()
    tuner = Tuner.from_onnx(model, trainable=args.trainable, max_length=args.max_length, threads=args.threads)
    began = time.perf_counter()
    result = tuner.fit(train, eval_data=dev, steps=args.steps, lr=args.lr, eps=args.eps, batch_size=args.batch_size,
                       queries=args.queries, eval_every=args.eval_every)
    seconds = time.perf_counter() - began
    curve = [{"step": 0, **result.before}] + result.history
    payload = {"machine": machine(), "config": vars(args), "trainable_params": tuner.trainable_params,
               "curve": curve, "seconds": seconds, "peak_rss_mb": result.peak_rss_mb}
    rows = [[c["step"], c["step"] * 2 * args.queries, f"{c['accuracy']:.3f}", f"{c['loss']:.4f}"] for c in curve]
    write_results("minilm_rt", payload, ["step", "suffix forward passes", "dev accuracy", "dev loss"], rows)
    print(f"{args.trainable}: {tuner.trainable_params:,} weights, {seconds:.0f} s, peak RSS {result.peak_rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
