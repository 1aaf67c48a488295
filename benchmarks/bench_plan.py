"""`edgetune plan`'s predictions against measured peak RSS.

    python benchmarks/bench_plan.py [--repeats 1] [--skip-torch]

For all-MiniLM-L6-v2 (and SmolLM2-135M if ~/.cache/edgetune/demo/smollm2/model.onnx exists; it is not
exported here) at a few (batch, length) points, each configuration runs in a fresh child process
that reports its VmHWM (not ru_maxrss: Linux carries that over exec, so a child would report its
parent's peak): plain ORT inference, edgetune modes (Tuner.from_onnx + 2 fit steps), and for MiniLM
PyTorch first-order fine-tuning with AdamW (full, gradient checkpointing, LoRA r=8 on q,v). With
--repeats > 1 the median is reported (glibc's adaptive mmap threshold makes a large session's
resident memory vary run to run). Writes benchmarks/results/plan.{json,md}.

The planner's constants were fitted on MiniLM and SmolLM2 at the points its docstring lists
(``FITTED_POINTS``), so a row at such a point only shows the fit. Held-out rows validate it: the same
two models at shapes outside the fit (``HELDOUT_*_POINTS``, T = 384 beyond the fitted lengths) and a
model used in no fit, a BERT-shaped classifier from ``models/tiny.py`` scaled up to hidden 512, 8 heads,
4 blocks and an 8,000-row embedding (17 M weights; no PyTorch twin, so no first-order rows). Every row
says which set it is in, and the summary gives mean and max |error| per set.
``--heldout-only`` runs only the held-out rows and merges them into the existing plan.json.
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
from common import RESULTS, child_peak_rss, demo_model, long_texts_jsonl, machine, write_results  # noqa: E402

from edgetune.graph.trainable import TrainableSpec  # noqa: E402
from edgetune.plan import Planner  # noqa: E402

SMOLLM2 = Path.home() / ".cache" / "edgetune" / "demo" / "smollm2" / "model.onnx"
LORA = "lora:r=8,targets=q,v"
MINILM_POINTS = [(8, 128), (32, 128), (16, 64)]
SMOLLM2_POINTS = [(4, 128), (16, 64)]
MINILM_MODES = ["all", "last:2", LORA]
SMOLLM2_MODES = ["last:2", LORA]
TORCH_MODES = ["full", "full + checkpointing", LORA]
HELDOUT_MINILM_POINTS = [(4, 384), (24, 96)]
HELDOUT_SMOLLM2_POINTS = [(6, 96)]
SCALED_TINY = "tiny BERT h512 (held-out model)"
SCALED_TINY_SHAPE = {"vocab_size": 8000, "hidden": 512, "heads": 8, "layers": 4, "max_positions": 256}
SCALED_TINY_POINTS = [(8, 128), (16, 200)]
# (model, batch, length) at which edgetune/plan.py's constants were fitted (its comments): the ORT
# forward on MiniLM at 8xT (T 32..256), 16x128, 32x128, 64x64 and SmolLM2 at 4x128, 8x64, 16x64,
# 1x256; PyTorch's constants on MiniLM full fine-tuning at 8x128 and 32x128. The session constants
# were fitted on both models at load time (no shape), so no row of theirs is fully held out of that.
FITTED_POINTS = {("all-MiniLM-L6-v2", 8, t) for t in (32, 64, 128, 256)} | {
    ("all-MiniLM-L6-v2", 16, 128), ("all-MiniLM-L6-v2", 32, 128), ("all-MiniLM-L6-v2", 64, 64),
    ("SmolLM2-135M", 4, 128), ("SmolLM2-135M", 8, 64), ("SmolLM2-135M", 16, 64), ("SmolLM2-135M", 1, 256)}
FITTED, HELDOUT_SHAPE, HELDOUT_MODEL = "fitted", "held-out shape", "held-out model"




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

    from edgetune.data.resources import minilm_dir

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


def fit_set(model: str, batch: int, length: int) -> str:
    if model == SCALED_TINY:
        return HELDOUT_MODEL
    return FITTED if (model, batch, length) in FITTED_POINTS else HELDOUT_SHAPE


def scaled_tiny_model(directory: Path) -> Path:
    """The held-out model: models/tiny.py's classifier scaled up (its tokenizer beside it)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from models.tiny import make_classifier_bundle

    return make_classifier_bundle(directory, **SCALED_TINY_SHAPE)["model"]


def lm_texts(source: Path, target: Path, words: int) -> Path:
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    text = " ".join(r["text"] for r in rows)
    chunks = text.split()
    target.write_text("".join(json.dumps({"text": " ".join(chunks[i * words:(i + 1) * words])}) + "\n" for i in range(64)))
    return target


def run_model(name: str, model: Path, points, modes, repeats: int, has_torch: bool, train: Path,
              tmp: Path) -> list[dict]:
    """Predict and measure every mode of ``model`` at ``points``; one record per row."""
    planner = Planner(model)
    records = []
    for batch, length in points:
        if planner.arch.task == "lm":
            data = lm_texts(train, tmp / f"edgetune_plan_lm_{length}.jsonl", length)
        else:
            data = long_texts_jsonl(train, tmp / f"edgetune_plan_{name[:4]}_{length}.jsonl", words=length)
        jobs = [(planner.inference(batch, length), "inference", (str(model), batch, length))]
        jobs += [(planner.edgetune(TrainableSpec.parse(m), batch, length), "tune", (str(model), batch, length, m, str(data))) for m in modes]
        if planner.arch.task == "lm":  # a verbaliser scores one token per example (--scored-tokens 1)
            verbalized = long_texts_jsonl(train, tmp / f"edgetune_plan_verbalizer_{length}.jsonl", words=length)
            prediction = Planner(model, scored_tokens=1).edgetune(TrainableSpec.parse(LORA), batch, length)
            prediction.mode += ", verbaliser (--scored-tokens 1)"
            jobs.append((prediction, "tune", (str(model), batch, length, LORA, str(verbalized), VERBALIZER, TEMPLATE)))
        if has_torch and name == "all-MiniLM-L6-v2":
            predictions = {"full": planner.first_order(batch, length),
                           "full + checkpointing": planner.first_order(batch, length, checkpointing=True),
                           LORA: planner.first_order(batch, length, lora=TrainableSpec.parse(LORA))}
            jobs += [(predictions[m], "torch", (batch, length, m)) for m in TORCH_MODES]
        for prediction, kind, child_args in jobs:
            measured, values = measure(kind, *child_args, repeats=repeats)
            error = 100.0 * (prediction.peak_mb - measured) / measured
            label = {"tune": "edgetune ", "torch": "PyTorch first-order "}.get(kind, "") + prediction.mode
            records.append({"model": name, "batch": batch, "length": length, "mode": label,
                            "set": fit_set(name, batch, length),
                            "predicted_mb": round(prediction.peak_mb, 1), "measured_mb": round(measured, 1),
                            "measured_runs_mb": [round(v, 1) for v in values], "error_pct": round(error, 1),
                            "parts": prediction.to_json()["parts"]})
            print(" | ".join(str(c) for c in table_row(records[-1])), flush=True)
    return records


def table_row(r: dict) -> list:
    return [r["model"], f"{r['batch']}×{r['length']}", r["mode"], r["set"], f"{r['predicted_mb']:.0f}",
            f"{r['measured_mb']:.0f}", f"{r['error_pct']:+.1f}"]


def summary(records: list[dict]) -> dict:
    """mean and max |error| over all rows, and per set (fitted, held-out shape, held-out model, held-out)."""
    groups = {"all": records, "held-out": [r for r in records if r["set"] != FITTED]}
    for name in (FITTED, HELDOUT_SHAPE, HELDOUT_MODEL):
        groups[name] = [r for r in records if r["set"] == name]
    out = {}
    for name, rows in groups.items():
        errors = [abs(r["error_pct"]) for r in rows]
        if errors:
            out[name] = {"count": len(errors), "mean_abs_error_pct": round(statistics.mean(errors), 1),
                         "max_abs_error_pct": max(errors), "within_15pct": sum(e <= 15 for e in errors)}
    return out


def write_plan(records: list[dict], payload: dict) -> None:
    """plan.{json,md}: every row with its set; plan_summary.md: mean and max |error| per set (a table of
    its own, as update_readme.py pastes every table line of a results file into one docs table)."""
    sums = summary(records)
    payload = {**payload, "rows": records, "summary": sums, **{k: sums["all"][k] for k in sums["all"]}}
    write_results("plan", payload, ["model", "batch×len", "mode", "set", "predicted MB", "measured MB", "error %"],
                  [table_row(r) for r in records])
    lines = ["| set | rows | mean abs error % | max abs error % | within 15 % |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {s['count']} | {s['mean_abs_error_pct']:.1f} | {s['max_abs_error_pct']:.1f} | "
              f"{s['within_15pct']}/{s['count']} |" for name, s in sums.items()]
    (RESULTS / "plan_summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1, help="children per configuration (median reported)")
    parser.add_argument("--smollm2-repeats", type=int, default=3)
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--heldout-only", action="store_true",
                        help="run only the held-out rows, merged into the existing plan.json")
    args = parser.parse_args(argv)
    began = time.time()
    minilm, train, _ = demo_model()
    tmp = Path(tempfile.gettempdir())
    fitted_models = [("all-MiniLM-L6-v2", minilm, MINILM_POINTS, MINILM_MODES, args.repeats)]
    heldout_models = [("all-MiniLM-L6-v2", minilm, HELDOUT_MINILM_POINTS, MINILM_MODES, args.repeats),
                      (SCALED_TINY, scaled_tiny_model(tmp / "edgetune_plan_tiny_h512"), SCALED_TINY_POINTS,
                       MINILM_MODES, args.repeats)]
    if SMOLLM2.is_file():
        fitted_models.insert(0, ("SmolLM2-135M", SMOLLM2, SMOLLM2_POINTS, SMOLLM2_MODES, args.smollm2_repeats))
        heldout_models.insert(0, ("SmolLM2-135M", SMOLLM2, HELDOUT_SMOLLM2_POINTS, SMOLLM2_MODES, args.smollm2_repeats))
    else:
        print(f"note: {SMOLLM2} not found, SmolLM2 skipped (export it with `edgetune export --model smollm2`)")
    try:
        import torch  # noqa: F401
        has_torch = not args.skip_torch
    except ImportError:
        has_torch = False
        print("note: torch not importable, first-order rows skipped")

    records, seconds = [], 0.0
    if args.heldout_only:
        previous = json.loads((RESULTS / "plan.json").read_text())
        seconds = previous["seconds"]
        # rows of an earlier run get their set; its held-out rows are replaced by this run's
        records = [{**r, "set": fit_set(r["model"], r["batch"], r["length"])} for r in previous["rows"]]
        heldout = {(n, b, length) for n, _, points, _, _ in heldout_models for b, length in points}
        records = [r for r in records if (r["model"], r["batch"], r["length"]) not in heldout]
    else:
        for name, model, points, modes, repeats in fitted_models:
            records += run_model(name, model, points, modes, repeats, has_torch, train, tmp)
    for name, model, points, modes, repeats in heldout_models:
        records += run_model(name, model, points, modes, repeats, has_torch, train, tmp)
    write_plan(records, {"machine": machine(), "seconds": round(seconds + time.time() - began, 1),
                         "heldout_only_rerun": args.heldout_only})


if __name__ == "__main__":
    main()
