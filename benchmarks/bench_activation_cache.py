"""The frozen-prefix activation cache: step time ÷ inference forward after the first epoch, with and without it.

    python benchmarks/bench_activation_cache.py [--trainable last:2 --batch-size 16 --examples 256]

MiniLM (all-MiniLM-L6-v2 + Rotten Tomatoes, the demo's job), the first ``--examples`` training examples.
Every measured step (q = 1, chained, as ``fit`` runs them) is on a batch of a later epoch, and the inference
forward, the step with the cache and the step without it are timed on the same batch, one after the other,
so machine drift (the load average is recorded) hits all three. Also: the cache's bytes per example, its
loss equal to the uncached one bit for bit, the fp16 store's largest loss difference, and the whole-process
peak RSS of fresh children fitting with and without the cache (and of inference alone).
Writes benchmarks/results/activation_cache.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).parent))
from common import child_peak_rss, demo_model, machine, median_time, write_results  # noqa: E402

from edgetune import Tuner  # noqa: E402
from edgetune.config import TrainConfig  # noqa: E402
from edgetune.engine.activation_cache import ActivationCache  # noqa: E402
from edgetune.engine.session import session_options  # noqa: E402
from edgetune.zo import ZOSGD, Schedule  # noqa: E402

NOISE = TrainConfig().noise


def subset(source: Path, n: int) -> Path:
    target = Path(tempfile.gettempdir()) / f"edgetune_bench_cache_{n}.jsonl"
    target.write_text("".join(source.read_text().splitlines(keepends=True)[:n]))
    return target


class Stepper:
    """One tuner stepping ZO-SGD (q = 1, chained) over the batches it is given; ``dtype`` None: no cache,
    ``budget`` 0: the cache in a file."""

    def __init__(self, model: Path, data: Path, args, dtype: str | None, budget: int = 2**40):
        self.tuner = Tuner.from_onnx(model, trainable=args.trainable, max_length=args.tokens, threads=args.threads)
        self.data = self.tuner.load_data(data)
        self.cache = None
        if dtype is not None:
            self.cache = ActivationCache(self.tuner.engine.cached, [len(i) for i in self.data.ids], budget, dtype)
            reason = self.tuner.engine.attach_cache(self.cache, self.batch(np.arange(args.batch_size)))
            assert reason is None, reason
        self.optimizer = ZOSGD(self.tuner.arena.buffer(), seed=0, lr=Schedule(1e-7), eps=Schedule(1e-3),
                               noise=NOISE)
        self.t = 0

    def batch(self, indices):
        batch = self.data.batch(indices, self.tuner.info.data_inputs)
        batch.examples = np.asarray(indices)
        return batch

    def step(self, indices) -> None:
        self.tuner.engine.set_batch(self.batch(indices))
        self.optimizer.step(self.t, lambda: np.mean(self.tuner.engine.loss()), chain=True)
        self.t += 1

    def loss(self, indices) -> np.ndarray:
        self.optimizer.settle()
        self.tuner.engine.set_batch(self.batch(indices))
        return self.tuner.engine.loss().copy()


def rss_child(mode: str, model: str, data: str, args_list: list[str]) -> None:
    """A fresh process doing only inference over the data's batches, or only fitting (cache on or off)."""
    args = parse_args(args_list)
    if mode == "inference":  # the batches the parent tokenised: no edgetune in this process
        session = ort.InferenceSession(model, session_options(args.threads), providers=["CPUExecutionProvider"])
        batches = np.load(batches_file(args))
        for k in range(len(batches.files) // 3):
            session.run(["logits"], {name: batches[f"{k}/{name}"] for name in INPUTS})
        return
    tuner = Tuner.from_onnx(model, trainable=args.trainable, max_length=args.tokens, threads=args.threads)
    steps = 3 * args.examples // args.batch_size
    tuner.fit(data, steps=steps, batch_size=args.batch_size, lr=1e-7, activation_cache=mode)


INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def batches_file(args) -> Path:
    return Path(tempfile.gettempdir()) / f"edgetune_bench_cache_batches_{args.examples}x{args.batch_size}.npz"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainable", default="last:2")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=24, help="timed steps, all after the first epoch")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    model, train, _ = demo_model()
    data = subset(Path(train), args.examples)
    load_before = os.getloadavg()
    forward_session = ort.InferenceSession(str(model), session_options(args.threads),
                                           providers=["CPUExecutionProvider"])
    off, on, half = (Stepper(model, data, args, dtype) for dtype in (None, "fp32", "fp16"))
    filed = Stepper(model, data, args, "fp32", budget=0)
    rng = np.random.default_rng(0)
    epoch = [rng.permutation(args.examples)[k:k + args.batch_size]
             for k in range(0, args.examples - args.batch_size + 1, args.batch_size)]
    for indices in epoch:  # the first epoch fills the caches (at the same weights as the uncached tuner)
        on.loss(indices)
        half.loss(indices)
        filed.loss(indices)
    exact = all(np.array_equal(off.loss(i), on.loss(i)) and np.array_equal(off.loss(i), filed.loss(i))
                for i in epoch)
    fp16_diff = max(float(np.max(np.abs(off.loss(i) - half.loss(i)))) for i in epoch)
    times = {"forward": [], "step, no cache": [], "step, cache": [], "step, cache in a file": []}
    for k in range(args.steps):
        indices = epoch[k % len(epoch)]
        inputs = on.batch(indices).inputs
        times["forward"].append(median_time(lambda: forward_session.run(["logits"], inputs), args.repeats))
        times["step, no cache"].append(median_time(lambda: off.step(indices), args.repeats))
        times["step, cache"].append(median_time(lambda: on.step(indices), args.repeats))
        times["step, cache in a file"].append(median_time(lambda: filed.step(indices), args.repeats))
    load_after = os.getloadavg()
    fwd = float(np.median(times["forward"]))
    summary = on.cache.describe()
    payload = {"machine": machine(), "load_average": [load_before[0], load_after[0]], "trainable": args.trainable,
               "batch_size": args.batch_size, "examples": args.examples, "threads": args.threads,
               "timed_steps": args.steps, "forward_ms": fwd * 1e3, "configs": {}, "cache": summary,
               "cache_in_file": filed.cache.describe(),
               "loss_bit_identical_fp32": exact, "fp16_max_loss_difference": fp16_diff,
               "fp16_bytes_per_example": half.cache.describe()["bytes_per_example"]}
    rows = [["inference forward", f"{fwd * 1e3:.1f}", "1.00×"]]
    for name in ("step, no cache", "step, cache", "step, cache in a file"):
        step_s = float(np.median(times[name]))
        payload["configs"][name] = {"step_ms": step_s * 1e3, "ratio": step_s / fwd}
        rows.append([f"{args.trainable} {name}", f"{step_s * 1e3:.1f}", f"{step_s / fwd:.2f}×"])
    rows.append(["cache per example (fp32 / fp16)", f"{summary['bytes_per_example'] / 1024:.1f} / "
                 f"{payload['fp16_bytes_per_example'] / 1024:.1f} KiB", "-"])
    rows.append(["loss with the fp32 cache (RAM and file) = without, bit for bit", str(exact), "-"])
    rows.append(["largest loss difference with the fp16 cache", f"{fp16_diff:.2e}", "-"])
    np.savez(batches_file(args), **{f"{k}/{name}": on.batch(indices).inputs[name]
                                    for k, indices in enumerate(epoch) for name in INPUTS})
    child_args = [str(model), str(data), argv]
    rss = {mode: child_peak_rss("bench_activation_cache", "rss_child", [mode, *child_args])[0]
           for mode in ("inference", "off", "auto")}
    payload["rss_mb"] = rss
    for mode in ("off", "auto"):
        rows.append([f"peak RSS: fit 3 epochs, --activation-cache {mode} ÷ inference",
                     f"{rss[mode]:.0f} / {rss['inference']:.0f} MB", f"{rss[mode] / rss['inference']:.2f}×"])
    rows.append(["load average (1 min) before / after", f"{load_before[0]:.1f} / {load_after[0]:.1f}", "-"])
    write_results("activation_cache", payload, ["configuration", "time per step (ms)", "÷ forward"], rows)
    print(json.dumps(payload["configs"]))


if __name__ == "__main__":
    main()
