"""Optimizer state per trainable parameter and the cost of rebuilding moments from a window (issue 5).

    python benchmarks/bench_window.py [--trainable last:1] [--window 10] [--steps 12] [--repeats 3]

On the demo's MiniLM model (``demo_model()``), for zo-sgd, zo-momentum, zo-adam and zo-microadam
with Rademacher and Gaussian noise: the optimizer's state in bytes per trainable parameter, read from
its buffers after the window has filled (``state_nbytes()``; ZO-SGD's θ is its whole state), and the
time of one step's arena passes without the forwards (a constant loss), against the time of the step's
two forwards at batch 16. Dense fp32 Adam (m and v) is listed for reference as 8 bytes per parameter.
Writes benchmarks/results/window.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import demo_model, machine, median_time, write_results  # noqa: E402

from edgetune import Tuner, _core  # noqa: E402
from edgetune.config import TrainConfig  # noqa: E402
from edgetune.zo import build_optimizer  # noqa: E402

OPTIMIZERS = ("zo-sgd", "zo-momentum", "zo-adam", "zo-microadam")
DENSE_ADAM_BYTES = 8  # fp32 m and v


def state_bytes(optimizer) -> int:
    """Bytes held beyond the arena; ZO-SGD keeps none (its ``state_dict`` is empty)."""
    return optimizer.state_nbytes() if hasattr(optimizer, "state_nbytes") else 0


def measure(config: TrainConfig, buffer: np.ndarray, steps: int, repeats: int) -> tuple[int, float]:
    """(state bytes after ``steps`` steps, median seconds of one more step's arena passes)."""
    optimizer = build_optimizer(config, buffer)
    for t in range(steps):
        optimizer.step(t, lambda: 0.0)
    clock = iter(range(steps, steps + repeats))
    seconds = median_time(lambda: optimizer.step(next(clock), lambda: 0.0), repeats)
    return state_bytes(optimizer), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainable", default="last:1")
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--steps", type=int, default=12, help="steps before measuring (fills the window)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model, train, _ = demo_model()
    tuner = Tuner.from_onnx(model, trainable=args.trainable, max_length=64)
    batch = tuner.load_data(train).batch(range(16), tuner.info.data_inputs)
    tuner.engine.set_batch(batch)
    forward = median_time(tuner.engine.loss, args.repeats)
    theta = tuner.arena.buffer()
    n = theta.size
    print(f"{args.trainable}: {n} trainable parameters, one forward at batch 16 × 64 tokens {forward * 1e3:.1f} ms")

    rows, results = [], []
    for noise in ("rademacher", "gaussian"):
        baseline = None
        for name in OPTIMIZERS:
            config = TrainConfig(optimizer=name, noise=noise, window=args.window, lr=1e-3, eps=1e-3, steps=10**6)
            nbytes, seconds = measure(config, theta.copy(), args.steps, args.repeats)
            baseline = baseline or seconds
            step_ratio = (2 * forward + seconds) / (2 * forward + baseline)
            results.append({"optimizer": name, "noise": noise, "state_bytes": nbytes, "bytes_per_param": nbytes / n,
                            "passes_ms": seconds * 1e3, "passes_vs_zo_sgd": seconds / baseline,
                            "step_vs_zo_sgd": step_ratio})
            rows.append([name, noise, f"{nbytes:,}", f"{nbytes / n:.4g}", f"{seconds * 1e3:.1f}",
                         f"{seconds / baseline:.2f}×", f"{step_ratio:.2f}×"])
    rows.append(["Adam, dense fp32 m and v (reference)", "-", f"{DENSE_ADAM_BYTES * n:,}", str(DENSE_ADAM_BYTES),
                 "-", "-", "-"])
    payload = {"machine": machine(), "simd": _core.simd_level(), "threads": _core.get_num_threads(),
               "trainable": args.trainable, "params": n, "window": args.window, "forward_ms": forward * 1e3,
               "results": results}
    write_results("window", payload, ["optimizer", "noise", "state bytes", "bytes / param",
                                      "arena passes per step (ms)", "passes vs zo-sgd",
                                      "step incl. 2 forwards vs zo-sgd"], rows)


if __name__ == "__main__":
    main()
