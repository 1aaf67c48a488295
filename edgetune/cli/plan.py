"""``edgetune plan``: predicted peak memory of inference, edgetune modes and first-order tuning."""

from __future__ import annotations

import argparse
import json

from edgetune.cli.progress import console
from edgetune.errors import EdgetuneError


def add_parser(commands) -> None:
    plan = commands.add_parser(
        "plan", help="predict peak memory of inference, edgetune modes and first-order fine-tuning",
        description="Predicts peak RSS (MB = 2^20 bytes) from the model's shapes, without loading its weights. "
        "With --budget it suggests the edgetune mode with the fewest trainable weights that fits at batch 1 "
        "(a zeroth-order estimate is the less noisy the fewer weights it perturbs), at the largest batch "
        "<= --batch that fits; exit code 2 when no mode fits.")
    plan.add_argument("--onnx", required=True, help="the model to plan for")
    plan.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    plan.add_argument("--max-length", type=int,
                      help="tokens per example (default 128, or the model's positions where it has fewer)")
    plan.add_argument("--trainable", action="append",
                      help="an edgetune mode as for tune --trainable; repeat for several "
                      "(default: all, last:1, last:2 and lora:r=8,targets=q,v where the model has q/v layers)")
    plan.add_argument("--task", choices=["classification", "lm"], help="default: from the model")
    plan.add_argument("--scored-tokens", type=int,
                      help="tokens per example a causal LM's loss scores (a verbaliser: 1; default: every token)")
    plan.add_argument("--budget", help="memory budget: 800MB, 1.5GB, 2GiB or a number of MB")
    plan.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from edgetune.graph.model import inspect_model, max_length_for
    from edgetune.graph.trainable import TrainableSpec
    from edgetune.graph.units import parse_size_mb
    from edgetune.plan import Planner, suggest

    budget = parse_size_mb(args.budget, "--budget") if args.budget is not None else None  # before reading the model
    modes = [TrainableSpec.parse(text) for text in args.trainable or ()]
    if any(n is not None and n < 1 for n in (args.batch, args.max_length, args.scored_tokens)):
        raise EdgetuneError("--batch, --max-length and --scored-tokens must be at least 1")
    planner = Planner(args.onnx, args.task, args.scored_tokens)
    # the length tune would take: a plan for more tokens than the model has positions is one tune refuses
    args.max_length = max_length_for(inspect_model(planner.model, planner.path, args.task), args.max_length)
    modes = modes or planner.default_modes()
    rows = planner.table(args.batch, args.max_length, modes)
    suggestion = suggest(planner, args.batch, args.max_length, modes, budget) if budget is not None else None
    if args.json:
        print(json.dumps({
            "onnx": args.onnx, "batch": args.batch, "max_length": args.max_length,
            "architecture": planner.arch.__dict__, "budget_mb": budget, "rows": [r.to_json() for r in rows],
            "suggestion": {"mode": suggestion.mode, "batch": suggestion.batch,
                           "peak_mb": round(suggestion.prediction.peak_mb, 1)} if suggestion else None,
        }, indent=2))
        return 0
    arch = planner.arch
    console.print(f"{args.onnx}: {arch.task}, {arch.total_params:,} weights ({arch.weight_mb:.0f} MB), {arch.blocks} "
                  f"blocks, hidden {arch.hidden}, {arch.heads} heads, MLP {arch.intermediate}, vocabulary {arch.vocab}",
                  markup=False)
    console.print(f"predicted peak RSS at batch {args.batch} x {args.max_length} tokens:")
    console.print(f"  {'mode':<52} {'trainable':>12} {'peak MB':>9}" + ("  fits" if budget is not None else ""))
    for row in rows:
        label = {"edgetune": "edgetune ", "first-order": "PyTorch first-order "}.get(row.kind, "") + row.mode
        fits = ("   yes" if row.peak_mb <= budget else "    no") if budget is not None else ""
        console.print(f"  {label:<52} {row.trainable_params:>12,} {row.peak_mb:>9.0f}{fits}", markup=False)
    if suggestion:
        console.print(f"suggested within {budget:.0f} MB: edgetune tune --trainable {suggestion.mode} "
                      f"--batch-size {suggestion.batch} --max-length {args.max_length} "
                      f"(predicted {suggestion.prediction.peak_mb:.0f} MB)", markup=False)
    return 0
