"""``edgetune replay``: rebuild a tuned model from its base and the run's trajectory log."""

from __future__ import annotations

import argparse

from edgetune.cli.args import int_in
from edgetune.cli.progress import console
from edgetune.config import THREADS


def add_parser(commands) -> None:
    replay = commands.add_parser("replay", help="rebuild a tuned model from its base model and the run's run.etlog")
    replay.add_argument("--onnx", required=True, help="the base model the run tuned")
    replay.add_argument("--log", required=True, help="the run's trajectory log (run.etlog in its output dir)")
    replay.add_argument("--output", required=True, help="folder for the rebuilt model.onnx, tokenizer, ...")
    replay.add_argument("--tokenizer", help="tokenizer.json (default: beside the base model)")
    replay.add_argument("--threads", type=int_in(THREADS), help="kernel threads (default: all cores)")
    replay.add_argument("--overwrite", action="store_true", help="replace the run or replay --output already holds")


def run(args: argparse.Namespace) -> int:
    from edgetune.replay import replay_run

    path, log = replay_run(args.onnx, args.log, args.output, tokenizer=args.tokenizer, threads=args.threads,
                           overwrite=args.overwrite)
    console.print(f"replayed {log.count} steps of {args.log} onto {args.onnx}: {path}", markup=False)
    return 0
