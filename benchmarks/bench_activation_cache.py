"""The frozen-prefix activation cache: step time ÷ inference forward after the first epoch, with and without it.

    python benchmarks/bench_activation_cache.py [--trainable last:2 --batch-size 16 --examples 256]

MiniLM (all-MiniLM-L6-v2 + Rotten Tomatoes, the demo's job), the first ``--examples`` training examples.
Every measured step (q = 1, chained, as ``fit`` runs them) is on a batch of a later epoch, and the inference
forward, the step with the cache and the step without it are timed on the same batch, one after the other,
so machine drift (the load average is recorded) hits all three. Also: the cache's bytes per example, its
loss equal to the uncached one bit for bit, the fp16 store's largest loss difference, and the whole-process
peak RSS of fresh children fitting with and without the cache (and of inference alone).
Then the ``head`` slice, whose input is a pooled vector per example: the cache keeps the token rows the
pooling reads (``graph/split.cache_cut``); step ÷ forward for ZO-SGD and ``--head exact``, the first epoch
with the cache filling against without, and the first epoch's prefix cost under the padding policies that a
cache of the pooled vectors themselves would need (see ``head_section``).
Writes benchmarks/results/activation_cache.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
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
from edgetune.zo.exact_head import ExactHead, HeadGrads  # noqa: E402

NOISE = TrainConfig().noise


def subset(source: Path, n: int) -> Path:
    target = Path(tempfile.gettempdir()) / f"edgetune_bench_cache_{n}.jsonl"
    target.write_text("".join(source.read_text().splitlines(keepends=True)[:n]))
    return target


class Stepper:
    """One tuner stepping ZO-SGD (q = 1, chained) over the batches it is given; ``dtype`` None: no cache,
    ``budget`` 0: the cache in a file; ``exact``: the head first-order (``--head exact``) instead of ZO-SGD."""

    def __init__(self, model: Path, data: Path, args, dtype: str | None, budget: int = 2**40,
                 trainable: str | None = None, exact: bool = False):
        self.tuner = Tuner.from_onnx(model, trainable=trainable or args.trainable, max_length=args.tokens,
                                     threads=args.threads, head="exact" if exact else "zo")
        self.data = self.tuner.load_data(data)
        self.cache = None
        self.attach_s = 0.0  # attaching checks the cache on a batch, which fills the cache with it
        if dtype is not None:
            self.cache = ActivationCache(self.tuner.engine.cached, [len(i) for i in self.data.ids], budget, dtype)
            first = self.batch(np.arange(args.batch_size))
            start = time.perf_counter()
            reason = self.tuner.engine.attach_cache(self.cache, first)
            self.attach_s = time.perf_counter() - start
            assert reason is None, reason
        self.optimizer = ZOSGD(self.tuner.arena.buffer(), seed=0, lr=Schedule(1e-7), eps=Schedule(1e-3),
                               noise=NOISE)
        if exact:  # the head alone: one forward a step, the head's gradient bound as the loop binds it
            self.optimizer = ExactHead(HeadGrads.bind(self.tuner.engine, self.tuner.weights, self.tuner.head),
                                       None, 1e-7)
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


def step_rows(label: str, names: list[str], times: dict[str, list[float]], payload: dict, digits: int = 2) -> list:
    """The table's rows for the timed configurations ``names`` (÷ the median forward, filled into ``payload``)
    and the cache's size per example."""
    fwd, rows = payload["forward_ms"] / 1e3, []
    for name in names:
        step_s = float(np.median(times[name]))
        payload["configs"][name] = {"step_ms": step_s * 1e3, "ratio": step_s / fwd}
        rows.append([f"{label} {name}", f"{step_s * 1e3:.1f}", f"{step_s / fwd:.{digits}f}×"])
    kib = [payload[key]["bytes_per_example"] / 1024 if key == "cache" else payload[key] / 1024
           for key in ("cache", "fp16_bytes_per_example")]
    rows.append([f"{label}: cache per example (fp32 / fp16)", f"{kib[0]:.1f} / {kib[1]:.1f} KiB", "-"])
    return rows


def head_section(model: Path, data: Path, args, epoch: list[np.ndarray], forward_session) -> tuple[dict, list]:
    """The ``head`` slice, whose input is pooled ([batch, width]): the cache keeps the token rows under the
    pooling. Its first epoch (filling the cache, one example at a time where the batch is mostly padding)
    against the same steps without it; the forward's cost over the first epoch under the padding policies a
    cache of the pooled vectors would need (every batch padded to the data's longest example, or each example
    alone at its own length) against the batch's own padding; then step ÷ forward after the first epoch for
    ZO-SGD and ``--head exact``."""
    off, on = (Stepper(model, data, args, dtype, budget=0, trainable="head") for dtype in (None, "fp32"))
    exact_off, exact_on = (Stepper(model, data, args, dtype, budget=0, trainable="head", exact=True)
                           for dtype in (None, "fp32"))
    half = Stepper(model, data, args, "fp16", budget=0, trainable="head")
    first = {"no cache": 0.0, "cache": on.attach_s}  # a run checks the cache on its first batch
    for indices in epoch:  # one pass each: a second would find the rows cached
        first["no cache"] += median_time(lambda: off.step(indices), 1)
        first["cache"] += median_time(lambda: on.step(indices), 1)
        exact_on.loss(indices)
        half.loss(indices)
    exact = all(np.array_equal(off.loss(i), on.loss(i)) for i in epoch)
    longest = max(len(ids) for ids in on.data.ids)
    policies = {"the batch's longest": 0.0, f"the data's longest ({longest})": 0.0, "each example alone": 0.0}
    for indices in epoch:
        inputs = on.batch(indices).inputs
        fixed = {k: np.pad(v, ((0, 0), (0, longest - v.shape[1])), constant_values=on.data.pad_id if
                           k == "input_ids" else 0) for k, v in inputs.items()}
        alone = [on.batch([i]).inputs for i in indices]
        names = list(policies)
        policies[names[0]] += median_time(lambda: forward_session.run(["logits"], inputs), 1)
        policies[names[1]] += median_time(lambda: forward_session.run(["logits"], fixed), 1)
        policies[names[2]] += median_time(lambda: [forward_session.run(["logits"], a) for a in alone], 1)
    times = {"forward": [], "step, no cache": [], "step, cache in a file": [], "exact head step, no cache": [],
             "exact head step, cache in a file": []}
    steppers = dict(zip(list(times)[1:], (off, on, exact_off, exact_on)))
    for k in range(args.steps):
        indices = epoch[k % len(epoch)]
        inputs = on.batch(indices).inputs
        times["forward"].append(median_time(lambda: forward_session.run(["logits"], inputs), args.repeats))
        for name, stepper in steppers.items():
            times[name].append(median_time(lambda: stepper.step(indices), args.repeats))
    fwd = float(np.median(times["forward"]))
    summary = on.cache.describe()
    payload = {"forward_ms": fwd * 1e3, "configs": {}, "cache": summary, "loss_bit_identical_fp32": exact,
               "fp16_bytes_per_example": half.cache.describe()["bytes_per_example"],
               "first_epoch_s": first, "first_epoch_prefix_s": policies}
    rows = [["head: inference forward, timed with the head's steps", f"{fwd * 1e3:.1f}", "1.00×"]]
    rows += step_rows("head", list(steppers), times, payload, digits=3)
    rows.append(["head: loss with the fp32 cache = without, bit for bit", str(exact), "-"])
    rows.append(["head: first epoch, filling the cache ÷ without it", f"{first['cache']:.2f} / {first['no cache']:.2f} s",
                 f"{first['cache'] / first['no cache']:.2f}×"])
    base = policies[names[0]]
    for name in names[1:]:
        how = f"padded to {name}" if "longest" in name else f"on {name} at its length"
        rows.append([f"head: first epoch's forwards {how} ÷ padded to the batch's longest",
                     f"{policies[name]:.2f} / {base:.2f} s", f"{policies[name] / base:.2f}×"])
    return payload, rows


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
    order = rng.permutation(args.examples)
    epoch = [order[k:k + args.batch_size] for k in range(0, args.examples - args.batch_size + 1, args.batch_size)]
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
    epoch_inputs = [on.batch(indices).inputs for indices in epoch]
    fwd = float(np.median(times["forward"]))
    summary = on.cache.describe()
    payload = {"machine": machine(), "trainable": args.trainable,
               "batch_size": args.batch_size, "examples": args.examples, "threads": args.threads,
               "timed_steps": args.steps, "forward_ms": fwd * 1e3, "configs": {}, "cache": summary,
               "cache_in_file": filed.cache.describe(),
               "loss_bit_identical_fp32": exact, "fp16_max_loss_difference": fp16_diff,
               "fp16_bytes_per_example": half.cache.describe()["bytes_per_example"]}
    rows = [["inference forward", f"{fwd * 1e3:.1f}", "1.00×"]]
    rows += step_rows(args.trainable, ["step, no cache", "step, cache", "step, cache in a file"], times, payload)
    rows.append(["loss with the fp32 cache (RAM and file) = without, bit for bit", str(exact), "-"])
    rows.append(["largest loss difference with the fp16 cache", f"{fp16_diff:.2e}", "-"])
    del off, on, half, filed  # their sessions' memory, before the head's five tuners
    payload["head"], head_rows = head_section(model, data, args, epoch, forward_session)
    rows += head_rows
    np.savez(batches_file(args), **{f"{k}/{name}": batch[name]
                                    for k, batch in enumerate(epoch_inputs) for name in INPUTS})
    child_args = [str(model), str(data)]
    head_argv = [*argv, "--trainable", "head"]
    rss = {mode: child_peak_rss("bench_activation_cache", "rss_child", [mode, *child_args, argv])[0]
           for mode in ("inference", "off", "auto")}
    rss.update({f"head {mode}": child_peak_rss("bench_activation_cache", "rss_child", [mode, *child_args, head_argv])[0]
                for mode in ("off", "auto")})
    payload["rss_mb"] = rss
    for mode in ("off", "auto", "head off", "head auto"):
        slice_, _, setting = mode.rpartition(" ")
        rows.append([f"peak RSS: fit {slice_ or args.trainable} 3 epochs, --activation-cache {setting} ÷ inference",
                     f"{rss[mode]:.0f} / {rss['inference']:.0f} MB", f"{rss[mode] / rss['inference']:.2f}×"])
    load_after = os.getloadavg()
    payload["load_average"] = [load_before[0], load_after[0]]
    rows.append(["load average (1 min) before / after", f"{load_before[0]:.1f} / {load_after[0]:.1f}", "-"])
    write_results("activation_cache", payload, ["configuration", "time per step (ms)", "÷ forward"], rows)
    print(json.dumps(payload["configs"]))


if __name__ == "__main__":
    main()
