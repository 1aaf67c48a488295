"""ZO step time ÷ one inference forward, and tuning peak RSS ÷ inference peak RSS, in one run.

    python benchmarks/bench_step.py [--onnx model.onnx --data train.jsonl] [--batch-size 8 --tokens 128]

Without --onnx it uses the demo's job (all-MiniLM-L6-v2 + Rotten Tomatoes; needs the export
extra the first time). Timings alternate between the configurations so drift hits all of them.
Writes benchmarks/results/step.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).parent))
from common import child_peak_rss, demo_model, long_texts_jsonl, machine, median_time, write_results  # noqa: E402

from edgetune import Tuner, _core  # noqa: E402
from edgetune.engine.session import session_options  # noqa: E402
from edgetune.config import TrainConfig  # noqa: E402
from edgetune.zo import ZOSGD, Schedule  # noqa: E402

NOISE = TrainConfig().noise

CONFIGS = [("all", "all", True), ("last:2 + split", "last:2", True), ("last:2, no split", "last:2", False)]


def build(model, trainable, split, args):
    tuner = Tuner.from_onnx(model, trainable=trainable, max_length=args.tokens, threads=args.threads, split=split)
    data = tuner.load_data(args.data_long)
    batch = data.batch(range(args.batch_size), tuner.info.data_inputs)
    # the noise `edgetune tune` draws by default (Rademacher: ~4x cheaper passes than Gaussian)
    optimizer = ZOSGD(tuner.arena.buffer(), seed=0, lr=Schedule(1e-7), eps=Schedule(1e-3), noise=NOISE)
    state = {"t": 0}

    def step():
        tuner.engine.set_batch(batch)
        optimizer.step(state["t"], lambda: np.mean(tuner.engine.loss()), chain=True)
        state["t"] += 1

    return tuner, batch, step




def kernel_time(tuner, args) -> float:
    """The arena passes of a chained q=1 step, timed alone: the share of a step that is ours.

    Chained steps (as ``fit`` runs them) make two passes: perturb by −2ε, then one fused pass that
    restores, updates and adds the next step's +ε perturbation.
    """
    buffer = tuner.arena.buffer()

    def passes():
        _core.perturb(buffer, 1, -2e-3, NOISE)
        _core.combine(buffer, 1.0, [1, 2], [1e-3, 1e-3], NOISE)

    return float(np.median([median_time(passes, args.repeats) for _ in range(args.rounds)]))


def rss_child(mode: str, args, trainable: str | None = None) -> float:
    """Peak RSS (MB) of a fresh process doing only inference or only tuning.

    The child gets the model's path, so it never imports the exporter (torch alone is ~0.5 GB).
    """
    argv = args.argv + ["--onnx", str(args.onnx), "--data", str(args.data)]
    return child_peak_rss("bench_step", "child", (mode, argv, trainable))[0]


def child(mode: str, argv: list[str], trainable: str | None) -> None:
    args = parse_args(argv)
    args.rss_trainable = trainable
    prepare_data(args)
    {"inference": child_inference, "tune": child_tune}[mode](args)


def child_inference(args):
    """Only what an app doing inference would have: the session and the tokenised batch."""
    inputs = dict(np.load(batch_file(args)))
    session = ort.InferenceSession(str(args.onnx), session_options(args.threads), providers=["CPUExecutionProvider"])
    for _ in range(5):
        session.run(["logits"], inputs)


def batch_file(args) -> Path:
    return Path(tempfile.gettempdir()) / f"edgetune_bench_batch_{args.batch_size}x{args.tokens}.npz"


def child_tune(args):
    _, _, step = build(args.onnx, args.rss_trainable, True, args)
    for _ in range(5):
        step()


def prepare_data(args):
    if args.onnx is None:
        args.onnx, args.data, _ = demo_model()
    args.data_long = long_texts_jsonl(Path(args.data), Path(tempfile.gettempdir()) / "edgetune_bench_long.jsonl",
                                      words=args.tokens)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--rss-trainable", nargs="+", default=["all", "last:2"])
    args = parser.parse_args(argv)
    args.argv = argv
    return args


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    prepare_data(args)
    forward_session = ort.InferenceSession(str(args.onnx), session_options(args.threads),
                                           providers=["CPUExecutionProvider"])
    built = {name: build(args.onnx, trainable, split, args) for name, trainable, split in CONFIGS}
    batch = next(iter(built.values()))[1]
    forward = lambda: forward_session.run(["logits"], batch.inputs)  # noqa: E731
    forward()
    times = {name: [] for name in built} | {"forward": []}
    for _ in range(args.rounds):  # interleaved so that machine drift hits every configuration
        times["forward"].append(median_time(forward, args.repeats))
        for name, (_, _, step) in built.items():
            step()
            times[name].append(median_time(step, args.repeats))
    kernel_s = kernel_time(built["all"][0], args)
    fwd = float(np.median(times["forward"]))
    rows, payload = [], {"machine": machine(), "batch_size": args.batch_size, "tokens": args.tokens,
                         "threads": args.threads, "forward_ms": fwd * 1e3, "configs": {}}
    for name, (tuner, _, _) in built.items():
        step_s = float(np.median(times[name]))
        payload["configs"][name] = {"step_ms": step_s * 1e3, "ratio": step_s / fwd,
                                    "trainable_params": tuner.trainable_params}
        rows.append([name, f"{tuner.trainable_params:,}", f"{step_s * 1e3:.1f}", f"{step_s / fwd:.2f}×"])
    rows.insert(0, ["inference forward", "-", f"{fwd * 1e3:.1f}", "1.00×"])
    all_step = payload["configs"]["all"]["step_ms"] / 1e3
    payload["kernel_ms_all"] = kernel_s * 1e3
    payload["kernel_share_all"] = kernel_s / all_step
    rows.append(["kernel passes of one chained `all` step (perturb, fused combine)", "-", f"{kernel_s * 1e3:.1f}",
                 f"{kernel_s / fwd:.2f}× ({kernel_s / all_step:.0%} of the step)"])
    np.savez(batch_file(args), **batch.inputs)
    infer_rss = rss_child("inference", args)
    payload["rss_mb"] = {"inference": infer_rss}
    for trainable in args.rss_trainable:
        tune_rss = rss_child("tune", args, trainable)
        payload["rss_mb"][trainable] = {"tune": tune_rss, "ratio": tune_rss / infer_rss}
        rows.append([f"peak RSS: tune ({trainable}) ÷ inference", "-", f"{tune_rss:.0f} / {infer_rss:.0f} MB",
                     f"{tune_rss / infer_rss:.2f}×"])
    write_results("step", payload, ["configuration", "trainable weights", "time per step (ms)", "÷ forward"], rows)


if __name__ == "__main__":
    main()
