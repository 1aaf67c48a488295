"""``edgetune report``: a run's curves.png and a few lines on how it went, from its output folder."""

from __future__ import annotations

import argparse

from edgetune.cli.progress import console


def add_parser(commands) -> None:
    report = commands.add_parser(
        "report", help="draw a run's curves.png (loss and metric against forward passes) and summarise it",
        description="Reads OUT_DIR/steps.jsonl (enough for a run in progress or interrupted) and summary.json or "
                    "the checkpoint when present. Needs matplotlib: pip install 'edgetune[plot]'.")
    report.add_argument("run_dir", metavar="OUT_DIR", help="the --output-dir of an edgetune tune run")
    report.add_argument("--output", help="where to write the PNG (default OUT_DIR/curves.png)")


def run(args: argparse.Namespace) -> int:
    from edgetune.artifacts.curves import read_curves
    from edgetune.report import check_output, render_curves, summary_lines

    check_output(args.run_dir, args.output)
    curves = read_curves(args.run_dir)
    path = render_curves(curves, args.output)
    for line in summary_lines(curves):
        console.print(line, markup=False)
    console.print(f"curves: {path}", markup=False)
    return 0
