"""``edgetune export``: a Hugging Face folder or a GGUF file as ONNX (needs the export extra)."""

from __future__ import annotations

import argparse
import json
import os

from edgetune.cli.args import int_in
from edgetune.cli.progress import console
from edgetune.config import SEED, Bound
from edgetune.errors import EdgetuneError


def add_parser(commands) -> None:
    export = commands.add_parser("export", help="Hugging Face folder or .gguf -> ONNX (needs the export extra)")
    export.add_argument("--model", required=True,
                        help="Hugging Face model folder, .gguf file, or an installed shorthand: minilm, smollm2")
    export.add_argument("--task", choices=["classification", "causal-lm"], help="required unless --model is a shorthand")
    export.add_argument("--output", required=True, help="folder for model.onnx, tokenizer.json, ...")
    export.add_argument("--labels", help="classification: comma-separated label names (default negative,positive)")
    export.add_argument("--pooling", choices=["cls", "mean"], help="classification: head on the first token or the mean")
    export.add_argument("--seed", type=int_in(SEED), help="classification: seed of a new head (default 0)")
    export.add_argument("--eos-token", help="causal-lm: the token that ends a reply (smollm2: <|im_end|>)")
    export.add_argument("--no-past", dest="with_past", action="store_false",
                        help="causal-lm: skip model_with_past.onnx (the KV-cache graph for generate)")
    export.add_argument("--opset", type=_opset, default=17)


def _opset(text: str) -> int:
    """From the oldest opset edgetune's loss nodes need to the newest the installed onnx knows."""
    from onnx.defs import onnx_opset_version

    from edgetune.graph.loss import MIN_OPSET

    return int_in(Bound(MIN_OPSET, onnx_opset_version()))(text)


def run(args: argparse.Namespace) -> int:
    import time

    os.environ["HF_HUB_OFFLINE"] = os.environ["TRANSFORMERS_OFFLINE"] = "1"
    from edgetune.export import MANIFEST, export_model
    from edgetune.artifacts.outdir import refuse_input_folder
    from edgetune.data.resources import resolve_model

    source, defaults = resolve_model(args.model)
    if not source.exists():
        raise EdgetuneError(f"{source}: not found (give a Hugging Face folder, a .gguf file, minilm or smollm2)")
    if source.is_dir():  # the export's config.json, tokenizer.json, ... would replace the Hugging Face folder's
        refuse_input_folder(args.output, [source], "--output")
    task = args.task or defaults.get("task")
    if task is None:
        raise EdgetuneError(f"--task is required for {source} (classification or causal-lm)")
    not_for = {"classification": {"--eos-token": args.eos_token, "--no-past": not args.with_past},
               "causal-lm": {"--labels": args.labels, "--pooling": args.pooling, "--seed": args.seed is not None}}
    wrong = [flag for flag, given in not_for[task].items() if given]
    if wrong:
        raise EdgetuneError(f"{wrong[0]} does not apply to --task {task}")
    if task == "classification":
        options = {"labels": (args.labels or "negative,positive").split(","), "pooling": args.pooling or "cls",
                   "seed": args.seed or 0}
    else:
        options = {"eos_token": args.eos_token or defaults.get("eos_token"), "with_past": args.with_past}
    began = time.time()
    path = export_model(task, source, args.output, opset=args.opset, **options)
    manifest = json.loads((path.parent / MANIFEST).read_text())
    cached = (path.parent / MANIFEST).stat().st_mtime < began
    console.print(f"{'cached export (nothing to do)' if cached else 'exported'} {source} as {task} to {path.parent}/:")
    for file in sorted(path.parent.iterdir()):
        console.print(f"  {file.name:<24} {file.stat().st_size / 1e6:10.2f} MB")
    console.print(f"ONNX vs PyTorch logits: max |diff| {manifest['max_abs_logit_diff']:.2g}; "
                  f"the export took {manifest['export_seconds']:.1f} s")
    return 0
