"""``edgetune`` command line: a thin layer over :class:`edgetune.Tuner`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from edgetune import __version__
from edgetune.config import DEFAULT_TRAINABLE, TrainConfig, field_names, read_yaml_config
from edgetune.errors import EdgetuneError
from edgetune.progress import ConsoleProgress, console

# Options of `tune` that are not TrainConfig fields, with their defaults.
_RUN_DEFAULTS: dict[str, Any] = {
    "onnx": None,
    "data": None,
    "eval_data": None,
    "output_dir": "out",
    "tokenizer": None,
    "task": None,
    "trainable": DEFAULT_TRAINABLE,
    "split": True,
    "max_length": 128,
    "threads": None,
    "resume": False,
}


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", help="ONNX model with input_ids/attention_mask inputs and a logits output")
    parser.add_argument("--tokenizer", help="tokenizer.json (default: beside the model)")
    parser.add_argument("--task", choices=["classification", "lm"], help="default: from the model")
    parser.add_argument("--max-length", type=int, help="truncate examples to this many tokens (default 128)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime and kernel threads (default: all cores)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgetune", description="Forward-only fine-tuning in ONNX Runtime.")
    parser.add_argument("--version", action="version", version=f"edgetune {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    tune = commands.add_parser("tune", help="fine-tune a model on a JSONL file")
    _add_model_args(tune)
    tune.add_argument("--data", help="training JSONL")
    tune.add_argument("--eval-data", help="evaluation JSONL (accuracy/loss before, during and after)")
    tune.add_argument("--output-dir", help="where model.onnx, checkpoints and logs go (default out/)")
    tune.add_argument("--trainable", help=f"weights to tune: all, last:N, blocks:A-B, head, globs (default {DEFAULT_TRAINABLE})")
    tune.add_argument("--no-split", dest="split", action="store_const", const=False,
                      help="run the whole graph per evaluation instead of caching the frozen prefix")
    tune.add_argument("--config", help="YAML file whose keys mirror these flags")
    tune.add_argument("--resume", action="store_const", const=True, help="continue from OUTPUT_DIR/checkpoint")
    for name, default in TrainConfig().to_dict().items():
        flag = "--" + name.replace("_", "-")
        tune.add_argument(flag, type=type(default), help=f"default {default}")

    evaluate = commands.add_parser("eval", help="accuracy / loss of a model on a JSONL file")
    _add_model_args(evaluate)
    evaluate.add_argument("--data", required=True, help="evaluation JSONL")
    evaluate.add_argument("--batch-size", type=int, default=64)

    demo = commands.add_parser("demo", help="tune all-MiniLM-L6-v2 on Rotten Tomatoes (needs the export extra)")
    demo.add_argument("--steps", type=int, default=None, help="tuning steps (default from the demo recipe)")
    demo.add_argument("--workdir", default=None, help="cache for the exported model and data")
    demo.add_argument("--output-dir", default="out/demo")
    demo.add_argument("--threads", type=int)
    return parser


def _resolve_tune_options(args: argparse.Namespace) -> tuple[dict[str, Any], TrainConfig]:
    """Defaults < --config file < explicit flags."""
    options = {**_RUN_DEFAULTS, **TrainConfig().to_dict()}
    if args.config:
        from_file = read_yaml_config(args.config)
        unknown = sorted(set(from_file) - set(options))
        if unknown:
            raise EdgetuneError(f"{args.config}: unknown option '{unknown[0]}'")
        options.update(from_file)
    options.update({k: v for k, v in vars(args).items() if v is not None and k in options})
    for required in ("onnx", "data"):
        if not options[required]:
            raise EdgetuneError(f"--{required} is required (as a flag or in --config)")
    train_keys = field_names(TrainConfig)
    try:
        config = TrainConfig(**{k: v for k, v in options.items() if k in train_keys})
    except TypeError as exc:
        raise EdgetuneError(f"bad option value ({exc})") from None
    config.validate()
    return {k: v for k, v in options.items() if k not in train_keys}, config


def cmd_tune(args: argparse.Namespace) -> int:
    from edgetune.tuner import Tuner

    run, config = _resolve_tune_options(args)
    tuner = Tuner.from_onnx(
        run["onnx"], trainable=run["trainable"], tokenizer=run["tokenizer"], task=run["task"],
        max_length=run["max_length"], threads=run["threads"], split=run["split"],
    )
    console.print(
        f"[bold]edgetune[/] {tuner.info.task} model {run['onnx']}: tuning {tuner.trainable_params:,} of "
        f"{tuner.total_params:,} weights ({run['trainable']}), "
        f"{'frozen prefix cached' if tuner.split else 'whole graph per evaluation'}"
    )
    with ConsoleProgress() as progress:
        result = tuner.fit(
            run["data"], eval_data=run["eval_data"], output_dir=run["output_dir"], resume=run["resume"],
            progress=progress, **config.to_dict(),
        )
    summary = {"config": {**run, **config.to_dict()}, "result": result.to_json()}
    model_path = tuner.save(run["output_dir"], summary)
    _print_summary(result, model_path)
    return 0


def _print_summary(result, model_path: Path) -> None:
    def fmt(metrics: dict[str, float] | None) -> str:
        if not metrics:
            return "-"
        key = "accuracy" if "accuracy" in metrics else "perplexity"
        return f"{key} {metrics[key]:.4f}, loss {metrics['loss']:.4f}"

    console.print(f"before: {fmt(result.before)}")
    console.print(f"after:  {fmt(result.after)}")
    console.print(
        f"{result.steps} steps ({result.forward_passes} forward passes) in {result.seconds:.1f} s, "
        f"peak RSS {result.peak_rss_mb:.0f} MB; tuned model: {model_path}"
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from edgetune.tuner import Tuner

    if not args.onnx:
        raise EdgetuneError("--onnx is required")
    tuner = Tuner.from_onnx(
        args.onnx, trainable=None, tokenizer=args.tokenizer, task=args.task,
        max_length=args.max_length or 128, threads=args.threads,
    )
    metrics = tuner.evaluate(args.data, batch_size=args.batch_size)
    print(json.dumps(metrics))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edgetune.demo import run_demo

    return run_demo(steps=args.steps, workdir=args.workdir, output_dir=args.output_dir, threads=args.threads)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {"tune": cmd_tune, "eval": cmd_eval, "demo": cmd_demo}[args.command]
    try:
        return handler(args)
    except EdgetuneError as exc:
        print(f"edgetune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edgetune: interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130
    except MemoryError:
        print("edgetune: error: out of memory; lower --batch-size or --max-length", file=sys.stderr)
        return 3
    except Exception as exc:  # a bug: still one line unless asked for the traceback
        if os.environ.get("EDGETUNE_DEBUG"):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else ""
        print(f"edgetune: internal error: {type(exc).__name__}: {reason} (EDGETUNE_DEBUG=1 shows a traceback)",
              file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
