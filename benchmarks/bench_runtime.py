"""The C tuning runtime (examples/c/tune_bundle) against the Python tuner on one bundle, in one run.

    python benchmarks/bench_runtime.py [--trainable head] [--steps 60] [--threads 2] [--build DIR]

The demo's job (all-MiniLM-L6-v2 with a fresh 2-label head, Rotten Tomatoes) bundled with `edgetune bundle`;
both runtimes tune it with the same flags (--lr 1e-3 --eps 1e-3 --guard off --schedule constant, batch 8,
seed 0) through the same libonnxruntime.so.1.32.0, from the same text JSONL (the C runtime tokenises it with its
C++ tokenizer from the bundle's tokenizer.json):
  * curve / slice: the per-step losses and the tuned slice compared bit for bit;
  * step time: mean wall and CPU seconds of the steps after the first (the Python tuner in-process through
    fit's progress callback, chained as `tune` runs; the C one as tune_bundle prints it), two runs each
    alternated, the best of each, and their ratio (CPU seconds are the fair figure on a shared machine);
  * peak RSS: the whole tune_bundle process (its VmHWM) against infer_bundle, plain ONNX Runtime inference
    of step 0's batch through the C API with the same session options (20 runs), and their ratio.
Writes benchmarks/results/runtime.{json,md} (another --trainable: runtime_<slice>.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).parent))
from common import demo_model, machine, write_results  # noqa: E402

from edgetune import _core  # noqa: E402
from edgetune.config import TrainConfig  # noqa: E402
from edgetune.tuner import Tuner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ORT_LIBRARY = Path(ort.__file__).parent / "capi" / f"libonnxruntime.so.{ort.__version__}"


def build_examples(build: Path) -> Path:
    env = {k: v for k, v in os.environ.items() if k != "CMAKE_ARGS"}
    for cmd in (["cmake", "-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DEDGETUNE_PYTHON=OFF",
                 "-DEDGETUNE_CUDA=OFF", "-DEDGETUNE_RUNTIME=ON"],
                ["cmake", "--build", build, "-j", "2", "--target", "tune_bundle", "infer_bundle"]):
        subprocess.run([str(c) for c in cmd], env=env, check=True, capture_output=True)
    return build


def run_with_peak(cmd: list[str]) -> tuple[str, float]:
    """stdout and peak RSS (MB) of one child: its own VmHWM, which both C programs print last (the rusage
    a parent reads would carry this Python's peak over the exec)."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{cmd[0]} failed: {proc.stderr.strip()}")
    return proc.stdout, float(proc.stdout.split("peak RSS ")[-1].split()[0])


def ids_jsonl(tuner: Tuner, source: Path, target: Path) -> None:
    data = tuner.load_data(source)
    target.write_text("".join(json.dumps({"ids": [int(i) for i in ids], "label": int(label)}) + "\n"
                              for ids, label in zip(data.ids, data.targets)))


def python_run(bundle: Path, train: Path, args, out: Path) -> dict:
    """The Python tuner in-process, as `tune --bundle` runs it (fit, chained steps), timed per step."""
    tuner = Tuner.from_bundle(bundle, threads=args.threads)
    marks: list[tuple[float, float]] = []
    losses: list[float] = []

    class Timer:
        def on_start(self, start, total):
            pass

        def on_step(self, record):
            marks.append((time.perf_counter(), time.process_time()))
            losses.append(float(np.float32(record.loss)))

        def on_eval(self, step, metrics):
            pass

    config = TrainConfig(steps=args.steps, lr=1e-3, eps=1e-3, guard="off", schedule="constant", batch_size=8,
                         seed=0)
    tuner.fit(train, config=config, progress=Timer())  # no output folder: no step log written per step
    tuner.save(out / "saved")
    wall = (marks[-1][0] - marks[0][0]) / (len(marks) - 1)
    cpu = (marks[-1][1] - marks[0][1]) / (len(marks) - 1)
    return {"losses": losses, "step_wall_s": wall, "step_cpu_s": cpu, "slice": out / "saved" / "trainable.safetensors"}


def c_run(build: Path, bundle: Path, train: Path, args, out: Path) -> dict:
    cmd = [str(build / "tune_bundle"), str(bundle), str(train), "--steps", str(args.steps), "--lr", "1e-3",
           "--eps", "1e-3", "--guard", "off", "--seed", "0", "--batch-size", "8", "--threads", str(args.threads), "--ort",
           str(ORT_LIBRARY), "--out", str(out)]
    stdout, peak = run_with_peak(cmd)
    losses = [float(np.float32(w[3])) for w in map(str.split, stdout.splitlines()) if w[:1] == ["step"] and w[2] == "loss"]
    timing = next(line.split() for line in stdout.splitlines() if line.startswith("step time"))
    return {"losses": losses, "step_wall_s": float(timing[2]), "step_cpu_s": float(timing[5]), "peak_mb": peak,
            "slice": out / "trainable.safetensors"}


def inference_peak(build: Path, bundle: Path, train_ids: Path, args, work: Path) -> tuple[float, int]:
    """Peak RSS of plain ORT inference (C API) of step 0's batch: the rows et_epoch_permutation puts first."""
    lines = train_ids.read_text().splitlines()
    rows = _core.epoch_permutation(0, 0, len(lines))[:8]
    batch = work / "step0.jsonl"
    batch.write_text("".join(lines[i] + "\n" for i in rows))
    stdout, peak = run_with_peak([str(build / "infer_bundle"), str(bundle / "model.onnx"), str(batch), "8", "20",
                                    str(args.threads), str(ORT_LIBRARY)])
    tokens = int(stdout.split("rows x ")[1].split()[0])
    return peak, tokens


def same_slice(a: Path, b: Path) -> bool:
    from safetensors.numpy import load_file

    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(np.array_equal(x[k].view(np.uint32), y[k].view(np.uint32)) for k in x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainable", default="head")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--build", type=Path, help="a CMake build folder to (re)use (default: a temp one)")
    args = parser.parse_args()
    model, train, _ = demo_model(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build = build_examples(args.build or work / "build")
        bundle = work / "bundle"
        subprocess.run([sys.executable, "-m", "edgetune.cli", "bundle", "--onnx", str(model), "--trainable",
                        args.trainable, "--output", str(bundle), "--threads", str(args.threads)], check=True,
                       capture_output=True)
        train_ids = work / "train_ids.jsonl"
        ids_jsonl(Tuner.from_bundle(bundle, threads=args.threads), train, train_ids)
        # alternated, twice each: the machine is shared, so each runtime's best run is the one least disturbed
        runs = {"python": [], "c": []}
        for k in range(2):
            runs["python"].append(python_run(bundle, train, args, work / f"py{k}"))
            # the text: tokenised by the runtime's C++ tokenizer
            runs["c"].append(c_run(build, bundle, train, args, work / f"c{k}"))
        py, c = ({**r[0], **{key: min(x[key] for x in r) for key in ("step_wall_s", "step_cpu_s")}}
                 for r in (runs["python"], runs["c"]))
        c["peak_mb"] = max(x["peak_mb"] for x in runs["c"])
        infer_mb, tokens = inference_peak(build, bundle, train_ids, args, work)
        identical_curve = all(x["losses"] == runs["python"][0]["losses"] for x in runs["python"] + runs["c"])
        identical_slice = all(same_slice(runs["python"][0]["slice"], x["slice"]) for x in runs["python"] + runs["c"])
        manifest = json.loads((bundle / "manifest.json").read_text())
        if args.build is None:
            shutil.rmtree(build, ignore_errors=True)
    payload = {
        "machine": machine(), "model": "all-MiniLM-L6-v2 + fresh head, Rotten Tomatoes", "trainable": args.trainable,
        "trainable_params": manifest["arena"]["count"], "head": manifest.get("head", "zo"),  # exact: bundle's default
        "steps": args.steps, "threads": args.threads,
        "input": "Rotten Tomatoes text JSONL (C: csrc/runtime/tokenizer)",
        "flags": "--lr 1e-3 --eps 1e-3 --guard off --schedule constant --batch-size 8 --seed 0",
        "curve_bit_identical": identical_curve, "slice_bit_identical": identical_slice,
        "runs_step_wall_s": {k: [x["step_wall_s"] for x in v] for k, v in runs.items()},
        "runs_step_cpu_s": {k: [x["step_cpu_s"] for x in v] for k, v in runs.items()},
        "python_step_wall_s": py["step_wall_s"], "python_step_cpu_s": py["step_cpu_s"],
        "c_step_wall_s": c["step_wall_s"], "c_step_cpu_s": c["step_cpu_s"],
        "step_wall_ratio_c_over_python": c["step_wall_s"] / py["step_wall_s"],
        "step_cpu_ratio_c_over_python": c["step_cpu_s"] / py["step_cpu_s"],
        "c_tune_peak_mb": c["peak_mb"], "c_inference_peak_mb": infer_mb, "inference_batch": [8, tokens],
        "peak_ratio_tune_over_inference": c["peak_mb"] / infer_mb, "load_average": os.getloadavg(),
        "ort_library": str(ORT_LIBRARY),
    }
    rows = [
        ["curve / tuned slice bit-identical", f"{identical_curve} / {identical_slice}", "", ""],
        ["step time, wall (ms)", f"{1e3 * py['step_wall_s']:.2f}", f"{1e3 * c['step_wall_s']:.2f}",
         f"{payload['step_wall_ratio_c_over_python']:.2f}x"],
        ["step time, CPU (ms)", f"{1e3 * py['step_cpu_s']:.2f}", f"{1e3 * c['step_cpu_s']:.2f}",
         f"{payload['step_cpu_ratio_c_over_python']:.2f}x"],
        ["peak RSS (MB): C tune vs C inference", f"{infer_mb:.0f} (inference)", f"{c['peak_mb']:.0f} (tune)",
         f"{payload['peak_ratio_tune_over_inference']:.3f}x"],
    ]
    name = "runtime" if args.trainable == "head" else "runtime_" + args.trainable.replace(":", "")
    write_results(name, payload, [f"MiniLM {args.trainable} ({payload['head']} head), {args.steps} steps, "
                                  f"{args.threads} threads",
                                       "Python / peer", "C runtime", "C ÷ other"], rows)


if __name__ == "__main__":
    main()
