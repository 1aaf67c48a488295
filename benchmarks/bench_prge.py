"""P-RGE: per-evaluation speed-up of copy-batched forwards over sequential ones, and what `auto` picks.

MiniLM (demo_model()) with LoRA r=8 on q,v and with the last block (`last:1`) trainable, at a short
(batch 1 x 32 tokens) and a long (batch 8 x 128) shape. For q = 1, 2, 4, 8 queries per forward
(2q copies) it times one fill of the copies + one forward against one perturbation pass + one forward
per evaluation, as `--parallel auto` measures at start-up; then applies auto's rule for q = 8 to those
figures and times whole steps of the choice against whole ZO-SGD steps (the ">5 % slower" check). Each case
runs in its own process so that its peak RSS (VmHWM, read after each width in increasing order)
shows the activation memory the copies add.

    python benchmarks/bench_prge.py            # ~5 minutes on the 2-core dev box
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (  # noqa: E402
    demo_model, long_texts_jsonl, machine, peak_rss_mb, write_results)

CASES = [(trainable, shape) for trainable in ("lora:r=8,targets=q,v", "last:1") for shape in ("short", "long")]
SHAPES = {"short": (1, 32), "long": (8, 128)}
QUERIES = 8
NOISE = "rademacher"


def run_case(trainable: str, shape: str) -> dict:
    from edgetune import Tuner
    from edgetune.config import TrainConfig
    from edgetune.zo import ZOSGD, Schedule
    from edgetune.zo.prge import ParallelZO, choose_batching, measured_costs

    batch_size, tokens = SHAPES[shape]
    model, train, _ = demo_model()
    if shape == "long":
        train = long_texts_jsonl(train, Path(tempfile.mkdtemp()) / "long.jsonl", words=tokens)
    tuner = Tuner.from_onnx(model, trainable=trainable, max_length=tokens)
    batch = tuner.load_data(train).batch(np.arange(batch_size), tuner.info.data_inputs)
    buffer = tuner.arena.buffer()
    engine = tuner.copy_batched_engine()
    repeats = 5 if shape == "short" else 2
    sequential, batched = measured_costs(tuner.engine, engine, batch, buffer, NOISE, repeats)
    result = {"trainable": trainable, "shape": shape, "batch": batch_size,
              "tokens": int(batch.inputs["input_ids"].shape[1]), "trainable_params": tuner.trainable_params}
    result["sequential_ms"] = sequential() * 1e3
    result["rss_sequential_mb"] = peak_rss_mb()
    result["widths"] = []
    for group in (1, 2, 4, 8):
        cost = batched(group) * 1e3
        result["widths"].append({"q": group, "copies": 2 * group, "batched_ms": cost,
                                 "speedup": result["sequential_ms"] / cost, "rss_mb": peak_rss_mb()})

    # auto's own rule on these measurements, then checked on whole steps (timed independently)
    choice = choose_batching(QUERIES, lambda: result["sequential_ms"] / 1e3,
                             lambda group: result["widths"][group.bit_length() - 1]["batched_ms"] / 1e3)
    config = TrainConfig(queries=QUERIES, lr=1e-9, eps=1e-3, noise=NOISE)  # lr ~0: θ stays put while timing
    zosgd = ZOSGD(buffer, 0, Schedule(config.lr), Schedule(config.eps), QUERIES, noise=NOISE)
    tuner.engine.set_batch(batch)
    result["auto"] = choice.to_json()
    if choice.queries_per_forward:  # else auto's step is the ZO-SGD step itself
        chosen = ParallelZO.from_config(config, buffer)
        chosen.attach(engine, choice.queries_per_forward)
        engine.set_batch(batch)
        seq_step, auto_step = interleaved_fastest(lambda: zosgd.step(0, tuner.engine.mean_loss),
                                                  lambda: chosen.step(0, engine.mean_loss),
                                                  rounds=4 if shape == "short" else 2)
        result["auto"].update(sequential_step_ms=seq_step * 1e3, auto_step_ms=auto_step * 1e3,
                              step_speedup=seq_step / auto_step)
    return result


def interleaved_fastest(first, second, rounds: int) -> tuple[float, float]:
    """Fastest time of each of two calls, alternated so that load changes hit both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds + 1):  # the first round warms up
        for run, out in zip((first, second), times):
            began = time.perf_counter()
            run()
            out.append(time.perf_counter() - began)
    return min(times[0][1:]), min(times[1][1:])


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--case":
        print(json.dumps(run_case(sys.argv[2], sys.argv[3])))
        return
    demo_model()  # export once, before the children race for it
    began, cases = time.perf_counter(), []
    for trainable, shape in CASES:
        out = subprocess.run([sys.executable, __file__, "--case", trainable, shape], capture_output=True, text=True,
                             check=True)
        cases.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{trainable} {shape}: done", file=sys.stderr)
    rows = []
    for case in cases:
        for w in case["widths"]:
            rows.append([case["trainable"], f"{case['batch']}x{case['tokens']}", w["q"], w["copies"],
                         f"{case['sequential_ms']:.2f}", f"{w['batched_ms']:.2f}", f"{w['speedup']:.2f}x",
                         f"{w['rss_mb'] - case['rss_sequential_mb']:+.0f}"])
        auto = case["auto"]
        picked = f"q={auto['queries_per_forward']} per forward" if auto["queries_per_forward"] else "sequential"
        step = f"step {auto['step_speedup']:.2f}x" if "step_speedup" in auto else "ZO-SGD itself"
        rows.append([case["trainable"], f"{case['batch']}x{case['tokens']}", "auto", picked, "", "", step, ""])
    payload = {"machine": machine(), "queries": QUERIES, "noise": NOISE, "cases": cases,
               "seconds": time.perf_counter() - began}
    write_results("prge", payload, ["trainable", "batch x tokens", "q per forward", "copies",
                                    "sequential ms/eval", "batched ms/eval", "speed-up", "RSS +MB vs sequential"],
                  rows)


if __name__ == "__main__":
    main()
