"""``edgetune tune``: fine-tune a model on a JSONL file, from flags and an optional YAML ``--config``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgetune.cli.args import add_model_args, add_option_flags, options_of, refuse_bundle_fixed
from edgetune.cli.progress import ConsoleProgress, console
from edgetune.config import (Bound, ModelOptions, TrainConfig, cli_fields, option, read_config_options,
                             validate_fields)
from edgetune.errors import EdgetuneError
from edgetune.graph.trainable import AUTO, DEFAULT_TRAINABLE, TrainableSpec


@dataclass
class _RunOptions:
    """Options of `tune` that are neither TrainConfig fields nor ModelOptions: flags and YAML keys, typed."""

    onnx: str | None = option(None, "ONNX model with input_ids/attention_mask inputs and a logits output")
    bundle: str | None = option(None, "tune from a bundle (edgetune bundle) instead of --onnx: its graphs, arena, "
                                "tokenizer, slice and length as they are")
    data: str | None = option(None, "training JSONL")
    eval_data: str | None = option(None, "evaluation JSONL (accuracy/loss before, during and after)")
    output_dir: str = option("out", "where model.onnx, checkpoints and logs go (default out/)")
    trainable: str = option(DEFAULT_TRAINABLE, "weights to tune: auto (the slice for the model's kind: a classifier "
                            "with a fresh or a trained head, a causal LM by verbaliser or on text), all, last:N, "
                            "blocks:A-B, head, globs, and last "
                            "lora:r=8,targets=q,v[,alpha=16][,fa] or sparse:density=0.01[,targets=q,v], or "
                            "importance:K (the K blocks a forward-only sensitivity probe ranks highest)")
    importance_probes: int = option(8, "probes per block for importance:K", bound=Bound(1))
    resume: bool = option(False, "continue from OUTPUT_DIR/checkpoint")
    overwrite: bool = option(False, "replace the run OUTPUT_DIR already holds (without it, such a folder is refused)")

    def validate(self) -> None:
        for required in ("onnx" if not self.bundle else "bundle", "data"):
            if not getattr(self, required):
                raise EdgetuneError(f"--{required} is required (as a flag or in --config)")
        validate_fields(self)

    @property
    def model(self) -> str:
        """The model as the user named it: the ONNX file, or the bundle."""
        return self.bundle or self.onnx


_OPTIONS = (_RunOptions, ModelOptions, TrainConfig)  # where each flag and --config key of `tune` goes


def add_parser(commands) -> None:
    tune = commands.add_parser("tune", help="fine-tune a model on a JSONL file")
    add_model_args(tune)  # --onnx first, as in `eval`
    add_option_flags(tune, _RunOptions, ("bundle", "data", "eval_data", "output_dir", "trainable",
                                         "importance_probes"))
    add_option_flags(tune, ModelOptions, ("split",))
    tune.add_argument("--config", help="YAML file whose keys mirror these flags")
    add_option_flags(tune, _RunOptions, ("resume", "overwrite"))
    for title, names in TrainConfig.groups():
        add_option_flags(tune.add_argument_group(title), TrainConfig, names)


def _resolve_tune_options(args: argparse.Namespace) -> tuple[_RunOptions, ModelOptions, TrainConfig]:
    """Defaults < --config file < explicit flags: each object built once from them and validated once,
    before any work starts."""
    given = read_config_options(args.config, _OPTIONS) if args.config else {}
    given.update({k: v for k, v in vars(args).items() if v is not None})
    run, model, config = (options_of(cls, given) for cls in _OPTIONS)
    for options in (run, model, config):
        options.validate()
    config.refuse_ignored(given)
    config.check_eval_data(run.eval_data)
    if run.bundle:  # the bundle fixed the model's side when it was written
        refuse_bundle_fixed(given)
    return run, model, config


def run(args: argparse.Namespace) -> int:
    from edgetune.artifacts.outdir import claim_output

    run, model, config = _resolve_tune_options(args)
    # a bad term is refused before any folder or model is touched; auto is resolved when the model is read
    trainable = run.trainable if run.trainable.strip() == AUTO else TrainableSpec.parse(run.trainable)
    inputs = [run.bundle] if run.bundle else [run.onnx, model.tokenizer or Path(run.onnx).parent / "tokenizer.json"]
    # before the model loads, and held until the tuned model's last file is written
    with claim_output(run.output_dir, inputs, run.resume, run.overwrite):
        return _tune(run, trainable, model, config)


def _tune(run: _RunOptions, trainable: TrainableSpec | str, model: ModelOptions, config: TrainConfig) -> int:
    from edgetune.tuner import Tuner

    trainable, ranking = _rank_blocks_if_asked(run, trainable, model, config)
    if run.bundle:
        tuner = Tuner.from_bundle(run.bundle, threads=model.threads)
    else:  # --head exact changes the prepared graph: decided at load time, which the config knows before
        tuner = Tuner.from_onnx(run.onnx, trainable=trainable, head=config.graph_head(), **model.keywords())
    head = _head_text(config, tuner)
    config = replace(config, head=config.resolved_head(tuner.head is not None))  # summary.json: what auto chose
    run.trainable = str(tuner.trainable_spec)  # auto resolved: the summary and the console name the slice
    model.max_length = tuner.max_length  # the summary records the length used, a default resolved
    # announced once the data are read and checked: a bad file is then the only line on stderr
    with ConsoleProgress(announce=lambda: _announce(run, tuner, head)) as progress:
        result = tuner.fit(
            run.data, eval_data=run.eval_data, output_dir=run.output_dir, resume=run.resume,
            overwrite=run.overwrite, progress=progress, config=config,
        )
    summary = {"config": _summary_config(run, model, config), "result": result.to_json()}
    if ranking is not None:
        summary["importance"] = [score.to_json() for score in ranking]
    model_path = tuner.save(run.output_dir, summary)
    result.peak_rss_mb = summary["result"]["peak_rss_mb"]  # save() re-read it: the peak includes the save
    _print_summary(result, model_path)
    _draw_curves(run.output_dir)
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


def _summary_config(run: _RunOptions, model: ModelOptions, config: TrainConfig) -> dict[str, Any]:
    """Every option of the run as summary.json records it: the flags' values, by their YAML keys."""
    return {f.name: getattr(options, f.name) for options in (run, model, config) for f in cli_fields(type(options))}


def _announce(run: _RunOptions, tuner, head: str) -> None:
    console.print(
        f"[bold]edgetune[/] {tuner.info.task} model {run.model}: tuning {tuner.trainable_params:,} of "
        f"{tuner.total_params:,} weights ({_slice_text(run, tuner)}){head}, "
        f"{'frozen prefix cached' if tuner.split else 'whole graph per evaluation'}"
    )
    if tuner.verbalizer is not None:
        console.print(f"classifying by the next word after {tuner.verbalizer.template!r}: {tuner.verbalizer.describe()}",
                      markup=False)


def _head_text(config: TrainConfig, tuner) -> str:
    """What --head auto chose, for the banner (nothing where --head was given)."""
    if config.head != "auto":
        return ""
    if config.resolved_head(tuner.head is not None) == "exact":
        return "; head: exact (--head auto: the slice holds the classifier's linear head; --head zo to tune it by ZO)"
    return "; head: zo (--head auto: no classifier's linear head the exact head can take in this slice or optimizer)"


def _slice_text(run: _RunOptions, tuner) -> str:
    """The slice as the banner names it: with why, where --trainable auto chose it."""
    auto = tuner.auto_slice
    return f"{run.trainable}; {auto.reason}" if auto is not None else run.trainable


def _rank_blocks_if_asked(run: _RunOptions, trainable: TrainableSpec | str, model: ModelOptions,
                          config: TrainConfig) -> tuple[TrainableSpec | str, list | None]:
    """``trainable`` with an ``importance:K`` term resolved (``run.trainable``, the summary's, too) and the
    ranking, or None without one."""
    from edgetune.tuner import Tuner

    if isinstance(trainable, str) or trainable.importance is None:  # auto: resolved from the model alone
        return trainable, None
    ranking = Tuner.rank_blocks(run.onnx, run.data, probes=run.importance_probes, batch_size=config.batch_size,
                                eps=config.eps, seed=config.seed, noise=config.noise, **model.keywords())
    resolved = trainable.resolve([s.block for s in ranking])
    scores = ", ".join(f"{s.block}: {s.score:.3g}" for s in ranking)
    console.print(f"block importance (mean g² per weight, {run.importance_probes} probes): {scores}", markup=False)
    console.print(f"--trainable {trainable.text} -> {resolved}", markup=False)
    run.trainable = resolved.text
    return resolved, ranking


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
