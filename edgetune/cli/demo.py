"""``edgetune demo``: all-MiniLM-L6-v2 tuned on Rotten Tomatoes, the README's first command."""

from __future__ import annotations

import argparse

from edgetune.cli.args import int_in
from edgetune.config import THREADS, Bound


def add_parser(commands) -> None:
    demo = commands.add_parser("demo", help="tune all-MiniLM-L6-v2 on Rotten Tomatoes (needs the export extra)")
    demo.add_argument("--steps", type=int_in(Bound(1)), default=None, help="tuning steps (default from the demo recipe)")
    demo.add_argument("--workdir", default=None, help="cache for the exported model and data")
    demo.add_argument("--output-dir", default="out/demo")
    demo.add_argument("--threads", type=int_in(THREADS))
    demo.add_argument("--overwrite", action="store_true",
                      help="replace the run OUTPUT_DIR holds (default: use the next free OUTPUT_DIR-2, -3, ...)")


def run(args: argparse.Namespace) -> int:
    from edgetune.demo import run_demo

    return run_demo(steps=args.steps, workdir=args.workdir, output_dir=args.output_dir, threads=args.threads,
                    overwrite=args.overwrite)
