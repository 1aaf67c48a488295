"""``edgetune tune``: fine-tune a model on a JSONL file, from flags and an optional YAML ``--config``."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgetune.cli.args import add_model_args, finite_float
from edgetune.cli.progress import ConsoleProgress, console
from edgetune.config import (DEFAULT_TRAINABLE, Bound, ModelOptions, TrainConfig, check_option, field_names,
                             read_yaml_config, typed_options)
from edgetune.errors import EdgetuneError


@dataclass
class _RunOptions:
    """Options of `tune` that are neither TrainConfig fields nor ModelOptions: flags and YAML keys, typed."""

    onnx: str | None = None
    data: str | None = None
    eval_data: str | None = None
    output_dir: str = "out"
    trainable: str = DEFAULT_TRAINABLE
    resume: bool = False
    overwrite: bool = False
    importance_probes: int = 8

    def validate(self) -> None:
        check_option("importance_probes", self.importance_probes, int, Bound(1))


# Options of `tune` that are not TrainConfig fields, with their defaults.
_RUN_DEFAULTS: dict[str, Any] = {**asdict(_RunOptions()), **asdict(ModelOptions())}


def add_parser(commands) -> None:
    tune = commands.add_parser("tune", help="fine-tune a model on a JSONL file")
    add_model_args(tune)
    tune.add_argument("--data", help="training JSONL")
    tune.add_argument("--eval-data", help="evaluation JSONL (accuracy/loss before, during and after)")
    tune.add_argument("--output-dir", help="where model.onnx, checkpoints and logs go (default out/)")
    tune.add_argument("--trainable", help=f"weights to tune: all, last:N, blocks:A-B, head, globs, and last "
                      f"lora:r=8,targets=q,v[,alpha=16][,fa] or sparse:density=0.01[,targets=q,v], "
                      f"or importance:K (the K blocks a forward-only sensitivity probe ranks highest) "
                      f"(default {DEFAULT_TRAINABLE})")
    tune.add_argument("--importance-probes", type=int, help="probes per block for importance:K (default 8)")
    tune.add_argument("--no-split", dest="split", action="store_const", const=False,
                      help="run the whole graph per evaluation instead of caching the frozen prefix")
    tune.add_argument("--config", help="YAML file whose keys mirror these flags")
    tune.add_argument("--resume", action="store_const", const=True, help="continue from OUTPUT_DIR/checkpoint")
    tune.add_argument("--overwrite", action="store_const", const=True,
                      help="replace the run OUTPUT_DIR already holds (without it, such a folder is refused)")
    for name, default in TrainConfig().to_dict().items():
        flag = "--" + name.replace("_", "-")
        tune.add_argument(flag, type=finite_float if isinstance(default, float) else type(default),
                          help=f"default {default}")



def _resolve_tune_options(args: argparse.Namespace) -> tuple[dict[str, Any], TrainConfig]:
    """Defaults < --config file < explicit flags, each value checked against its field's type and range
    before any work starts."""
    options = {**_RUN_DEFAULTS, **TrainConfig().to_dict()}
    if args.config:
        from_file = read_yaml_config(args.config)
        unknown = sorted(set(from_file) - set(options))
        if unknown:
            raise EdgetuneError(f"{args.config}: unknown option '{unknown[0]}'")
        for cls in (_RunOptions, ModelOptions, TrainConfig):
            options.update(typed_options(cls, _fields_of(cls, from_file), args.config))
    options.update({k: v for k, v in vars(args).items() if v is not None and k in options})
    for required in ("onnx", "data"):
        if not options[required]:
            raise EdgetuneError(f"--{required} is required (as a flag or in --config)")
    _RunOptions(**_fields_of(_RunOptions, options)).validate()
    ModelOptions(**_fields_of(ModelOptions, options)).validate()
    config = TrainConfig(**_fields_of(TrainConfig, options))
    config.validate()
    config.check_eval_data(options["eval_data"])
    return {k: v for k, v in options.items() if k not in field_names(TrainConfig)}, config


def _fields_of(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    names = field_names(cls)
    return {k: v for k, v in options.items() if k in names}


def run(args: argparse.Namespace) -> int:
    from edgetune.artifacts.outdir import claim_output

    run, config = _resolve_tune_options(args)
    inputs = [run["onnx"], run["tokenizer"] or Path(run["onnx"]).parent / "tokenizer.json"]
    # before the model loads, and held until the tuned model's last file is written
    with claim_output(run["output_dir"], inputs, run["resume"], run["overwrite"]):
        return _tune(run, config)


def _tune(run: dict[str, Any], config: TrainConfig) -> int:
    from edgetune.tuner import Tuner

    ranking = _rank_blocks_if_asked(run, config)
    tuner = Tuner.from_onnx(
        run["onnx"], trainable=run["trainable"], tokenizer=run["tokenizer"], task=run["task"],
        max_length=run["max_length"], threads=run["threads"], split=run["split"],
        verbalizer=run["verbalizer"], template=run["template"],
    )
    run["max_length"] = tuner.max_length  # the summary records the length used, a default resolved
    # announced once the data are read and checked: a bad file is then the only line on stderr
    with ConsoleProgress(announce=lambda: _announce(run, tuner)) as progress:
        result = tuner.fit(
            run["data"], eval_data=run["eval_data"], output_dir=run["output_dir"], resume=run["resume"],
            overwrite=run["overwrite"], progress=progress, **config.to_dict(),
        )
    summary = {"config": {**run, **config.to_dict()}, "result": result.to_json()}
    if ranking is not None:
        summary["importance"] = [score.to_json() for score in ranking]
    model_path = tuner.save(run["output_dir"], summary)
    result.peak_rss_mb = summary["result"]["peak_rss_mb"]  # save() re-read it: the peak includes the save
    _print_summary(result, model_path)
    _draw_curves(run["output_dir"])
    return 0


def _draw_curves(output_dir: str) -> None:
    """curves.png beside the tuned model, drawn in a child process: matplotlib's tens of MB never count in
    this process's peak RSS (summary.json's, the job's headline). Without matplotlib, one dim hint."""
    from edgetune.report import FIGURE, PLOT_HINT, draw_in_child, plot_available

    if not plot_available():
        console.print(f"{FIGURE}: {PLOT_HINT}", style="dim", markup=False)
        return
    try:
        console.print(f"curves: {draw_in_child(output_dir)}", markup=False)
    except EdgetuneError as exc:  # the tuned model is saved: a figure that could not be drawn fails no run
        console.print(f"{FIGURE} not drawn: {exc}", style="dim", markup=False)


def _announce(run: dict[str, Any], tuner) -> None:
    console.print(
        f"[bold]edgetune[/] {tuner.info.task} model {run['onnx']}: tuning {tuner.trainable_params:,} of "
        f"{tuner.total_params:,} weights ({run['trainable']}), "
        f"{'frozen prefix cached' if tuner.split else 'whole graph per evaluation'}"
    )
    if tuner.verbalizer is not None:
        console.print(f"classifying by the next word after {tuner.verbalizer.template!r}: {tuner.verbalizer.describe()}",
                      markup=False)


def _rank_blocks_if_asked(run: dict[str, Any], config: TrainConfig):
    """Resolve an ``importance:K`` term of --trainable in place; the ranking, or None without one."""
    from edgetune.zo.importance import importance_count, rank_blocks, resolve_importance

    if importance_count(run["trainable"]) is None:
        return None
    ranking = rank_blocks(
        run["onnx"], run["data"], probes=run["importance_probes"], batch_size=config.batch_size, eps=config.eps,
        seed=config.seed, noise=config.noise, tokenizer=run["tokenizer"], task=run["task"],
        max_length=run["max_length"], threads=run["threads"], verbalizer=run["verbalizer"], template=run["template"],
    )
    resolved = resolve_importance(run["trainable"], ranking)
    scores = ", ".join(f"{s.block}: {s.score:.3g}" for s in ranking)
    console.print(f"block importance (mean g² per weight, {run['importance_probes']} probes): {scores}", markup=False)
    console.print(f"--trainable {run['trainable']} -> {resolved}", markup=False)
    run["trainable"] = resolved
    return ranking


def _print_summary(result, model_path: Path) -> None:
    def fmt(metrics: dict[str, float] | None) -> str:
        if not metrics:
            return "-"
        key = "accuracy" if "accuracy" in metrics else "perplexity"
        return f"{key} {metrics[key]:.4f}, loss {metrics['loss']:.4f}"

    console.print(f"before: {fmt(result.before)}")
    console.print(f"after:  {fmt(result.after)}")
    if result.parallel:  # what --parallel auto measured at start-up
        console.print(result.parallel["choice"], markup=False)
    console.print(
        f"{result.steps} steps ({result.forward_passes} forward passes) in {result.seconds:.1f} s, "
        f"peak RSS {result.peak_rss_mb:.0f} MB; tuned model: {model_path}"
    )
