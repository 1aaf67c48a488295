"""Sizes of a run's shippable artifacts against the model file, and replay exactness, on MiniLM + RT.

* ``sparse.etdiff`` of ``sparse:density=D`` runs (D = 0.1 % and 1 % of every linear weight);
* ``run.etlog`` of a ``--trainable head`` run (and the sparse runs' logs), and what 1000 steps of it take:
  the empty log (header, framing) plus 1000 × the measured bytes per step (records have a fixed size);
* each log replayed onto the base (``edgetune.replay``): max |logit difference| against the tuned model.

    python benchmarks/bench_artifacts.py [--steps 200] [--sparse-steps 30] [--queries 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).parent))
from common import demo_model, machine, write_results  # noqa: E402

from edgetune import Tuner  # noqa: E402
from edgetune.replay import replay_run  # noqa: E402
from edgetune.artifacts.trajectory import Trajectory  # noqa: E402


def dev_logits(model: Path, tuner: Tuner, dev: Path) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    batch = next(tuner.load_data(dev).batches(64, tuner.info.data_inputs))
    return session.run(["logits"], batch.inputs)[0]


def measure(trainable: str, steps: int, queries: int, model: Path, train: Path, dev: Path, work: Path) -> dict:
    run_dir, replay_dir = work / "run", work / "replayed"
    tuner = Tuner.from_onnx(model, trainable=trainable)
    result = tuner.fit(train, eval_data=dev, output_dir=run_dir, steps=steps, lr=1e-2, eps=1e-3, queries=queries,
                       batch_size=16, eval_batch_size=128)
    tuner.save(run_dir)
    replay_run(model, run_dir / "run.etlog", replay_dir)
    tuned, replayed = dev_logits(run_dir / "model.onnx", tuner, dev), dev_logits(replay_dir / "model.onnx", tuner, dev)
    diff = run_dir / "sparse.etdiff"
    log = Trajectory.read(run_dir / "run.etlog")
    framing = len(Trajectory(log.header).to_bytes())  # header, preamble and checksum without records
    per_step = ((run_dir / "run.etlog").stat().st_size - framing) / steps
    return {
        "trainable": trainable, "steps": steps, "queries": queries, "trainable_params": tuner.trainable_params,
        "accuracy_before": result.before["accuracy"], "accuracy_after": result.after["accuracy"],
        "etlog_bytes": (run_dir / "run.etlog").stat().st_size,
        "etlog_framing_bytes": framing, "etlog_bytes_per_step": per_step,
        "etlog_bytes_1000_steps": round(framing + 1000 * per_step),
        "etdiff_bytes": diff.stat().st_size if diff.exists() else None,
        "replay_max_abs_logit_diff": float(np.max(np.abs(tuned - replayed))),
        "replay_model_bytes_identical": (run_dir / "model.onnx").read_bytes() == (replay_dir / "model.onnx").read_bytes(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="steps of the head run")
    parser.add_argument("--sparse-steps", type=int, default=30, help="steps of each sparse run (the diff's size does not depend on it)")
    parser.add_argument("--queries", type=int, default=4)
    args = parser.parse_args()
    model, train, dev = demo_model()
    model_bytes = model.stat().st_size
    runs = [("head", args.steps), ("sparse:density=0.001", args.sparse_steps), ("sparse:density=0.01", args.sparse_steps)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (trainable, steps) in enumerate(runs):
            row = measure(trainable, steps, args.queries, model, train, dev, Path(tmp) / str(i))
            print(row, flush=True)
            results.append(row)

    def share(size: int | None) -> str:
        return "-" if size is None else f"{size / 1e3:,.1f} KB ({100 * size / model_bytes:.3f} %)"

    rows = [[r["trainable"], f"{r['trainable_params']:,}", r["steps"], share(r["etdiff_bytes"]), share(r["etlog_bytes"]),
             f"{r['etlog_bytes_per_step']:.0f} B", share(r["etlog_bytes_1000_steps"]),
             f"{r['accuracy_before']:.3f} → {r['accuracy_after']:.3f}",
             f"{r['replay_max_abs_logit_diff']:.1g}" + (" (same file)" if r["replay_model_bytes_identical"] else "")]
            for r in results]
    header = ["--trainable", "tuned values", "steps", ".etdiff (of model)", ".etlog (of model)", ".etlog per step",
              ".etlog at 1000 steps", "dev accuracy",
              "replay: max |Δlogit|"]
    write_results("artifacts", {"machine": machine(), "model_bytes": model_bytes, "queries": args.queries,
                                "runs": results}, header, rows)
    print(f"model.onnx: {model_bytes / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
