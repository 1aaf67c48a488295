"""``edgetune eval``: accuracy / loss (or perplexity) of a model on a JSONL file."""

from __future__ import annotations

import argparse

from edgetune.cli.args import add_model_args, int_in, options_of, refuse_bundle_fixed
from edgetune.config import Bound, ModelOptions
from edgetune.errors import EdgetuneError


def add_parser(commands) -> None:
    evaluate = commands.add_parser("eval", help="accuracy / loss of a model on a JSONL file")
    add_model_args(evaluate)
    evaluate.add_argument("--bundle", help="evaluate a bundle's model (edgetune bundle) instead of --onnx")
    evaluate.add_argument("--data", required=True, help="evaluation JSONL")
    evaluate.add_argument("--batch-size", type=int_in(Bound(1)), default=64, help="examples per run (default 64)")



def run(args: argparse.Namespace) -> int:
    from edgetune.artifacts.finite import dumps_finite
    from edgetune.tuner import Tuner

    options = options_of(ModelOptions, vars(args))
    if args.bundle:  # its graphs and arena as they are: what a device tuning from it starts at
        refuse_bundle_fixed(vars(args))
        tuner = Tuner.from_bundle(args.bundle, threads=options.threads)
    elif not args.onnx:
        raise EdgetuneError("--onnx or --bundle is required")
    else:
        tuner = Tuner.from_onnx(args.onnx, trainable=None, **options.keywords())
    metrics = tuner.evaluate(args.data, batch_size=args.batch_size)
    print(dumps_finite(metrics))  # evaluate refuses non-finite losses; NaN is no JSON any reader parses
    return 0
