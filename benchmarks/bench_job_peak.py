"""Peak RSS of a whole `edgetune tune` job ÷ plain ONNX Runtime inference of the same model and batch.

    python benchmarks/bench_job_peak.py [--steps 20] [--models minilm,smollm2] [--threads 2]

The job is the CLI as a user runs it, in a fresh process: start-up (tokenizer, prepared graph, sessions),
tokenising the data, evaluation before and after, the steps, and the save (model.onnx and, for LoRA, the
adapter files). Its peak is that process's VmHWM at exit; summary.json's ``peak_rss_mb`` is shown beside
it (it must equal it: the save is part of the job). Inference is a fresh process that loads the model into
an ONNX Runtime session, tokenises the job's first B training texts (truncated to T tokens) and runs them. Rows:

* all-MiniLM-L6-v2 with a 2-label head, Rotten Tomatoes (``edgetune.data.datasets``), 16 x 64 tokens;
* SmolLM2-135M (``edgetune export --model smollm2``) classifying Rotten Tomatoes by verbaliser, 8 x 64;

each with ``--trainable all``, ``last:2`` and ``lora:r=8,targets=q,v``. Evaluation runs at the training batch
size (``--eval-batch-size`` = ``--batch-size``), so both sides see the same batch. Writes
benchmarks/results/job_peak.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import child_peak_rss, demo_model, long_texts_jsonl, machine, write_results  # noqa: E402

TRAINABLES = ("all", "last:2", "lora:r=8,targets=q,v")
VERBALIZER = "negative=bad,positive=good"
TEMPLATE = "Review: {text}\nSentiment (good or bad):"
TARGET = 1.1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--models", default="minilm,smollm2")
    parser.add_argument("--trainables", default=";".join(TRAINABLES), help="';'-separated --trainable specs")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def setups(names: list[str], work: Path) -> list[dict]:
    """Model, data and batch shape of each model row; the data's texts are long enough to fill T tokens."""
    found = []
    if "minilm" in names:
        model, train, _ = demo_model()
        data = long_texts_jsonl(train, work / "minilm_long.jsonl", words=64)
        found.append({"name": "all-MiniLM-L6-v2 (classification)", "model": model, "data": data, "batch": 16,
                      "tokens": 64, "flags": []})
    if "smollm2" in names:
        from bench_smollm2_rt import smollm2_model

        _, train, _ = demo_model()
        data = long_texts_jsonl(train, work / "smollm2_long.jsonl", words=56)
        found.append({"name": "SmolLM2-135M (causal LM, verbaliser)", "model": smollm2_model(), "data": data,
                      "batch": 8, "tokens": 64, "flags": ["--verbalizer", VERBALIZER, "--template", TEMPLATE]})
    return found


# -- the two sides, each in a fresh process (common.child_peak_rss prints its VmHWM at exit) ------


def child_job(argv: list[str]) -> None:
    from edgetune.cli import main

    code = main(argv)
    if code:
        raise SystemExit(f"edgetune {' '.join(argv)} exited {code}")


def child_inference(model: str, texts: list[str], tokens: int, threads: int) -> None:
    """Load the model and its tokenizer, tokenise ``texts`` (truncated to ``tokens``) and run them, 3 times."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(model).parent / "tokenizer.json"))
    tokenizer.enable_truncation(tokens)
    tokenizer.enable_padding()
    encoded = tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encoded], np.int64)
    mask = np.array([e.attention_mask for e in encoded], np.int64)
    options = ort.SessionOptions()  # plain ORT, as an app would run it (edgetune is not imported here)
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    available = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
                 "position_ids": np.broadcast_to(np.arange(ids.shape[1]), ids.shape).copy()}
    inputs = {i.name: available[i.name] for i in session.get_inputs()}
    for _ in range(3):
        session.run(["logits"], inputs)
    if ids.shape != (len(texts), tokens):
        raise SystemExit(f"the texts make a {list(ids.shape)} batch, not {[len(texts), tokens]}: make them longer")


def batch_texts(setup: dict) -> list[str]:
    """The first B texts of the training data, as the job's model sees them (the verbaliser's template applied)."""
    rows = [json.loads(line) for line in Path(setup["data"]).read_text().splitlines() if line.strip()]
    template = dict(zip(setup["flags"][::2], setup["flags"][1::2])).get("--template", "{text}")
    return [template.format(text=row["text"]) for row in rows[:setup["batch"]]]


def measure(setup: dict, trainable: str, args, work: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=work, prefix="job-"))
    argv = ["tune", "--onnx", str(setup["model"]), "--data", str(setup["data"]), "--eval-data", str(setup["data"]),
            "--trainable", trainable, "--steps", str(args.steps), "--batch-size", str(setup["batch"]),
            "--eval-batch-size", str(setup["batch"]), "--max-length", str(setup["tokens"]),
            "--threads", str(args.threads), "--output-dir", str(out), *setup["flags"]]
    job = child_peak_rss("bench_job_peak", "child_job", (argv,))[0]
    summary = json.loads((out / "summary.json").read_text())["result"]["peak_rss_mb"]
    return {"job_mb": job, "summary_mb": summary}


def main(argv=None) -> None:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="edgetune-job-peak-"))
    payload = {"machine": machine(), "steps": args.steps, "threads": args.threads, "target": TARGET, "rows": []}
    rows = []
    for setup in setups(args.models.split(","), work):
        shape = [setup["batch"], setup["tokens"]]
        infer = child_peak_rss("bench_job_peak", "child_inference", (str(setup["model"]), batch_texts(setup),
                                                                     setup["tokens"], args.threads))[0]
        for trainable in args.trainables.split(";"):
            result = measure(setup, trainable, args, work) | {"inference_mb": infer}
            result |= {"model": setup["name"], "trainable": trainable, "batch": shape,
                       "ratio": result["job_mb"] / infer}
            payload["rows"].append(result)
            print(json.dumps(result), flush=True)
            rows.append([setup["name"], f"`{trainable}`", "x".join(map(str, shape)), f"{result['job_mb']:.0f}",
                         f"{result['summary_mb']:.0f}", f"{infer:.0f}", f"{result['ratio']:.2f}×"])
    write_results("job_peak", payload, ["model", "--trainable", "batch", "job peak (MB)", "summary.json (MB)",
                                        "inference peak (MB)", "job ÷ inference"], rows)


if __name__ == "__main__":
    main()
