"""A causal LM's head on the scored positions only, against the full logits, in one run.

    python benchmarks/bench_lm_head.py [--batch-size 16 --max-length 64 --repeats 7]
    python benchmarks/bench_lm_head.py --batch-size 8 --max-length 256 --words 256 --name lm_head_long

SmolLM2-135M-Instruct, LoRA r=8 on q,v (the verbaliser recipe of bench_smollm2_rt.py), three kinds
of training data: a verbaliser (one scored token per example), chats (the assistant turns of
examples/personalise_smollm2.py) and plain text (every token scored). For each, the tuning graph
edgetune builds (``token_logits``: the LM head on the scored positions' hidden states) against the
same graph with full ``logits`` [batch, sequence, vocabulary]. The full variant is the same model
with a second, free reader of its logits (a Shape), which makes edgetune keep them (graph/loss.py),
so the two differ in that one rewrite. Per data kind: ms per forward of the tuning graph (median, the variants
interleaved), tuning peak RSS (3 ZO steps, each variant in fresh processes, median VmHWM), and plain ORT
inference of the model on the same batch for scale. Writes benchmarks/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "examples"))
from bench_smollm2_rt import TEMPLATE, VERBALIZER, smollm2_model  # noqa: E402
from common import child_peak_rss, long_texts_jsonl, machine, write_results  # noqa: E402

from edgetune.data.tokenizer import SIDECARS  # noqa: E402
from edgetune.data.datasets import write_rotten_tomatoes_splits  # noqa: E402
from edgetune.graph.loss import labelled_positions  # noqa: E402
from edgetune.demo import default_workdir  # noqa: E402

TRAINABLE = "lora:r=8,targets=q,v"


def full_logits_variant(model: Path, folder: Path) -> Path:
    """``model`` with one more reader of its logits, a Shape whose output nothing uses.

    edgetune gathers before the head only when nothing but the loss reads the logits
    (``graph.loss.lm_head``), so this variant's tuning graph is the full-logits one; a Shape costs
    nothing and keeps no tensor alive, where an Identity may copy the logits.
    """
    import onnx

    graph_model = onnx.load(str(model))
    graph_model.graph.node.append(onnx.helper.make_node("Shape", ["logits"], ["logits_shape_unused"]))
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(graph_model, str(folder / "model.onnx"))
    for name in ("tokenizer.json", *SIDECARS):
        if (model.parent / name).is_file():
            shutil.copy(model.parent / name, folder / name)
    return folder / "model.onnx"


def data_kinds(folder: Path, args) -> dict[str, dict]:
    """Training files and the Tuner options each needs."""
    from personalise_smollm2 import write_data

    rt_train, _ = write_rotten_tomatoes_splits(default_workdir() / "rt_400_400", n_train=400, n_dev=400, seed=0)
    if args.words:  # snippets joined into long reviews, so batches reach --max-length
        rt_train = long_texts_jsonl(rt_train, folder / "long.jsonl", words=args.words)
    chat_train, _ = write_data(folder / "chat", n_train=64, n_dev=8)
    text = folder / "text.jsonl"
    rows = [json.loads(line) for line in rt_train.read_text().splitlines()[:64]]
    text.write_text("".join(json.dumps({"text": row["text"]}) + "\n" for row in rows))
    return {
        "verbaliser": {"data": str(rt_train), "verbalizer": VERBALIZER, "template": TEMPLATE},
        "chat": {"data": str(chat_train)},
        "plain text": {"data": str(text)},
    }


def tuner_for(model: Path, kind: dict, args):
    from edgetune import Tuner

    return Tuner.from_onnx(model, trainable=TRAINABLE, max_length=args.max_length, threads=args.threads,
                           verbalizer=kind.get("verbalizer"), template=kind.get("template"))


# -- peak memory, each in a fresh process --------------------------------------------------------

def child_tune(model: str, kind: dict, options: dict) -> None:
    args = argparse.Namespace(**options)
    tuner_for(Path(model), kind, args).fit(kind["data"], steps=3, batch_size=args.batch_size, lr=1e-3, eps=1e-3)


# -- time per forward ----------------------------------------------------------------------------

def forward_ms(models: dict[str, Path], kind: dict, args) -> tuple[dict[str, float], int, dict]:
    """Median ms of one tuning-graph forward per variant (interleaved), scored tokens, the batch."""
    tuners = {name: tuner_for(path, kind, args) for name, path in models.items()}
    batch = None
    for tuner in tuners.values():
        batch = tuner.load_data(kind["data"]).batch(range(args.batch_size), tuner.info.data_inputs)
        tuner.engine.set_batch(batch)
        tuner.engine.loss()  # warm-up: first-run allocations
    assert [tuner.engine.token_logits for tuner in tuners.values()] == [True, False], "variants not as meant"
    losses = {name: tuner.engine.loss() for name, tuner in tuners.items()}
    first, second = losses.values()
    np.testing.assert_allclose(first, second, rtol=1e-4, atol=1e-4)  # the same loss, computed two ways
    times: dict[str, list[float]] = {name: [] for name in tuners}
    for _ in range(args.repeats):
        for name, tuner in tuners.items():
            began = time.perf_counter()
            tuner.engine.loss()
            times[name].append(time.perf_counter() - began)
    scored = int(labelled_positions(batch.labels).sum())
    return {name: 1000 * statistics.median(t) for name, t in times.items()}, scored, batch.inputs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rss-repeats", type=int, default=3, help="children per peak-RSS figure (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--words", type=int, default=0,
                        help="join the review snippets into texts of this many words (long sequences)")
    parser.add_argument("--name", default="lm_head", help="results file name in benchmarks/results/")
    args = parser.parse_args(argv)

    model = smollm2_model()
    results, rows = {}, []
    with tempfile.TemporaryDirectory(prefix="lm-head-") as tmp:
        folder = Path(tmp)
        models = {"token_logits": model, "full logits": full_logits_variant(model, folder / "full")}
        for label, kind in data_kinds(folder, args).items():
            ms, scored, inputs = forward_ms(models, kind, args)
            batch_file = folder / "batch.npz"
            np.savez(batch_file, **inputs)
            # the median of fresh children: glibc's mmap threshold moves a single figure by ±15 %
            memory = {name: statistics.median(child_peak_rss("bench_lm_head", "child_tune", (str(path), kind, vars(args)),
                                                             args.rss_repeats)) for name, path in models.items()}
            inference = statistics.median(child_peak_rss("bench_smollm2_rt", "child_inference",
                                                         (str(model), str(batch_file), args.threads), args.rss_repeats))
            tokens = int(np.prod(inputs["input_ids"].shape))
            results[label] = {"ms_per_forward": ms, "tune_peak_rss_mb": memory, "inference_peak_rss_mb": inference,
                              "scored_tokens": scored, "batch_tokens": tokens}
            full, gathered = ms["full logits"], ms["token_logits"]
            rows.append([label, f"{scored} of {tokens}", f"{full:.0f}", f"{gathered:.0f}", f"{full / gathered:.2f}×",
                         f"{memory['full logits']:.0f}", f"{memory['token_logits']:.0f}", f"{inference:.0f}",
                         f"{memory['token_logits'] / inference:.2f}×"])
            print(f"{label}: {full:.0f} → {gathered:.0f} ms per forward, tune peak RSS "
                  f"{memory['full logits']:.0f} → {memory['token_logits']:.0f} MB (inference {inference:.0f})", flush=True)
    header = ["data", "scored tokens per batch", "ms/forward, full logits", "ms/forward, token_logits", "speed-up",
              "tune peak RSS, full logits (MB)", "tune peak RSS, token_logits (MB)", "inference peak RSS (MB)",
              "tune ÷ inference"]
    payload = {"machine": machine(), "config": {**vars(args), "trainable": TRAINABLE}, "results": results}
    write_results(args.name, payload, header, rows)


if __name__ == "__main__":
    main()
