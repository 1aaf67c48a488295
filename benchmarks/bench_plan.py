"""`edgetune plan`'s predictions against measured peak RSS.

    python benchmarks/bench_plan.py [--repeats 1] [--skip-torch]

For all-MiniLM-L6-v2 (and SmolLM2-135M if ~/.cache/edgetune/demo/smollm2/model.onnx exists; it is not
exported here) at a few (batch, length) points, each configuration runs in a fresh child process
that reports its VmHWM (not ru_maxrss: Linux carries that over exec, so a child would report its
parent's peak): plain ORT inference, edgetune modes (Tuner.from_onnx + 2 fit steps), and for MiniLM
PyTorch first-order fine-tuning with AdamW (full, gradient checkpointing, LoRA r=8 on q,v). With
--repeats > 1 the median is reported (glibc's adaptive mmap threshold makes a large session's
resident memory vary run to run). Writes benchmarks/results/plan.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_smollm2_rt import TEMPLATE, VERBALIZER  # noqa: E402
from common import child_peak_rss, demo_model, long_texts_jsonl, machine, write_results  # noqa: E402

from edgetune.plan import Planner  # noqa: E402

SMOLLM2 = Path.home() / ".cache" / "edgetune" / "demo" / "smollm2" / "model.onnx"
LORA = "lora:r=8,targets=q,v"
MINILM_POINTS = [(8, 128), (32, 128), (16, 64)]
SMOLLM2_POINTS = [(4, 128), (16, 64)]
MINILM_MODES = ["all", "last:2", LORA]
SMOLLM2_MODES = ["last:2", LORA]
TORCH_MODES = ["full", "full + checkpointing", LORA]




# -- children: each does one thing and prints its VmHWM -------------------------------------------

def child_inference(model: str, batch: int, length: int) -> None:
    import onnxruntime as ort

    from edgetune.engine.session import session_options

    session = ort.InferenceSession(model, session_options(1), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    ids = np.random.default_rng(0).integers(5, 1000, (batch, length), dtype=np.int64)
    positions = np.broadcast_to(np.arange(length, dtype=np.int64), (batch, length)).copy()
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids),
             "position_ids": positions}
    feeds = {k: v for k, v in feeds.items() if k in names}
    for _ in range(2):
        session.run(["logits"], feeds)


def child_tune(model: str, batch: int, length: int, mode: str, data: str, verbalizer: str | None = None,
               template: str | None = None) -> None:
    from edgetune import Tuner

    tuner = Tuner.from_onnx(model, trainable=mode, max_length=length, threads=1, verbalizer=verbalizer,
                            template=template)
    tuner.fit(data, steps=2, batch_size=batch, queries=1, lr=1e-6, eps=1e-3)


def child_torch(batch: int, length: int, mode: str) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from edgetune.resources import minilm_dir

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=2)
    if mode == LORA:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], lora_dropout=0.0))
    if "checkpointing" in mode:
        model.gradient_checkpointing_enable()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.randint(5, 1000, (batch, length))
    labels = torch.randint(0, 2, (batch,))
    for _ in range(2):
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def measure(kind: str, *args, repeats: int = 1) -> tuple[float, list[float]]:
    values = child_peak_rss("bench_plan", f"child_{kind}", args, repeats)
    return statistics.median(values), values


def lm_texts(source: Path, target: Path, words: int) -> Path:
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    text = " ".join(r["text"] for r in rows)
    chunks = text.split()
    target.write_text("".join(json.dumps({"text": " ".join(chunks[i * words:(i + 1) * words])}) + "\n" for i in range(64)))
    return target


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1, help="children per configuration (median reported)")
    parser.add_argument("--smollm2-repeats", type=int, default=3)
    parser.add_argument("--skip-torch", action="store_true")
    args = parser.parse_args(argv)
    began = time.time()
    minilm, train, _ = demo_model()
    tmp = Path(tempfile.gettempdir())
    models = [("all-MiniLM-L6-v2", minilm, MINILM_POINTS, MINILM_MODES, args.repeats)]
    if SMOLLM2.is_file():
        models.insert(0, ("SmolLM2-135M", SMOLLM2, SMOLLM2_POINTS, SMOLLM2_MODES, args.smollm2_repeats))
    else:
        print(f"note: {SMOLLM2} not found, SmolLM2 skipped (export it with `edgetune export --model smollm2`)")
    try:
        import torch  # noqa: F401
        has_torch = not args.skip_torch
    except ImportError:
        has_torch = False
        print("note: torch not importable, first-order rows skipped")

    rows, records = [], []
    for name, model, points, modes, repeats in models:
        planner = Planner(model)
        for batch, length in points:
            if planner.arch.task == "lm":
                data = lm_texts(train, tmp / f"edgetune_plan_lm_{length}.jsonl", length)
            else:
                data = long_texts_jsonl(train, tmp / f"edgetune_plan_{length}.jsonl", words=length)
            jobs = [(planner.inference(batch, length), "inference", (str(model), batch, length))]
            jobs += [(planner.edgetune(m, batch, length), "tune", (str(model), batch, length, m, str(data))) for m in modes]
            if planner.arch.task == "lm":  # a verbaliser scores one token per example (--scored-tokens 1)
                verbalized = long_texts_jsonl(train, tmp / f"edgetune_plan_verbalizer_{length}.jsonl", words=length)
                prediction = Planner(model, scored_tokens=1).edgetune(LORA, batch, length)
                prediction.mode += ", verbaliser (--scored-tokens 1)"
                jobs.append((prediction, "tune", (str(model), batch, length, LORA, str(verbalized), VERBALIZER, TEMPLATE)))
            if has_torch and name == "all-MiniLM-L6-v2":
                predictions = {"full": planner.first_order(batch, length),
                               "full + checkpointing": planner.first_order(batch, length, checkpointing=True),
                               LORA: planner.first_order(batch, length, lora=LORA)}
                jobs += [(predictions[m], "torch", (batch, length, m)) for m in TORCH_MODES]
            for prediction, kind, child_args in jobs:
                measured, values = measure(kind, *child_args, repeats=repeats)
                error = 100.0 * (prediction.peak_mb - measured) / measured
                label = {"tune": "edgetune ", "torch": "PyTorch first-order "}.get(kind, "") + prediction.mode
                rows.append([name, f"{batch}×{length}", label, f"{prediction.peak_mb:.0f}", f"{measured:.0f}",
                             f"{error:+.1f}"])
                records.append({"model": name, "batch": batch, "length": length, "mode": label,
                                "predicted_mb": round(prediction.peak_mb, 1), "measured_mb": round(measured, 1),
                                "measured_runs_mb": [round(v, 1) for v in values], "error_pct": round(error, 1),
                                "parts": prediction.to_json()["parts"]})
                print(" | ".join(rows[-1]), flush=True)
    errors = [abs(r["error_pct"]) for r in records]
    payload = {"machine": machine(), "seconds": round(time.time() - began, 1), "rows": records,
               "max_abs_error_pct": max(errors), "mean_abs_error_pct": round(statistics.mean(errors), 1),
               "within_15pct": sum(e <= 15 for e in errors), "count": len(errors)}
    write_results("plan", payload, ["model", "batch×len", "mode", "predicted MB", "measured MB", "error %"], rows)
    print(f"max |error| {max(errors):.1f} %, mean {statistics.mean(errors):.1f} %, "
          f"{payload['within_15pct']}/{len(errors)} within 15 %, {payload['seconds']:.0f} s")


if __name__ == "__main__":
    main()
