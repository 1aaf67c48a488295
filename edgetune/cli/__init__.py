"""``edgetune`` command line: a thin layer over :class:`edgetune.Tuner`."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgetune import __version__
from edgetune.config import (DEFAULT_TRAINABLE, SEED, THREADS, Bound, ModelOptions, TrainConfig, check_option,
                             field_names, read_yaml_config, typed_options)
from edgetune.errors import EdgetuneError
from edgetune.process.interrupt import Interrupted
from edgetune.cli.progress import ConsoleProgress, console


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


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as the one ``edgetune: error:`` line every other error gets (not the usage block)."""

    def error(self, message: str) -> None:
        command = self.prog.partition(" ")[2]
        self.exit(2, f"edgetune: error: {command + ': ' if command else ''}{message}\n")


def _int_in(bound: Bound):
    """An int flag's parser that refuses values outside ``bound`` as it parses (one argparse error line)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: '{text}'") from None
        if not bound.holds(value):
            raise argparse.ArgumentTypeError(f"must be {bound.describe()}, got {value}")
        return value
    return parse


def _opset(text: str) -> int:
    """From the oldest opset edgetune's loss nodes need to the newest the installed onnx knows."""
    from onnx.defs import onnx_opset_version

    from edgetune.graph.loss import MIN_OPSET

    return _int_in(Bound(MIN_OPSET, onnx_opset_version()))(text)


def _finite_float(text: str) -> float:
    """A float flag's value; NaN and infinity are refused here, before numpy could warn about them."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: '{text}'") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got '{text}'")
    return value


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", help="ONNX model with input_ids/attention_mask inputs and a logits output")
    parser.add_argument("--tokenizer", help="tokenizer.json (default: beside the model)")
    parser.add_argument("--task", choices=["classification", "lm"], help="default: from the model")
    parser.add_argument("--max-length", type=int, help="truncate examples to this many tokens (default 128, "
                        "or the model's positions where it has fewer)")
    parser.add_argument("--threads", type=_int_in(THREADS), help="ONNX Runtime and kernel threads (default: all cores)")
    parser.add_argument("--verbalizer", help='classify {"text","label"} data with a causal LM by the word it says '
                        'after the prompt: "negative=terrible,positive=great" (default: from the model\'s metadata)')
    parser.add_argument("--template", help='prompt for --verbalizer, with {text} where the text goes (default "{text}")')


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgetune", description="Forward-only fine-tuning in ONNX Runtime.")
    parser.add_argument("--version", action="version", version=f"edgetune {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    tune = commands.add_parser("tune", help="fine-tune a model on a JSONL file")
    _add_model_args(tune)
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
        tune.add_argument(flag, type=_finite_float if isinstance(default, float) else type(default),
                          help=f"default {default}")

    evaluate = commands.add_parser("eval", help="accuracy / loss of a model on a JSONL file")
    _add_model_args(evaluate)
    evaluate.add_argument("--data", required=True, help="evaluation JSONL")
    evaluate.add_argument("--batch-size", type=_int_in(Bound(1)), default=64)

    _add_apply_parser(commands)
    _add_replay_parser(commands)
    _add_export_parser(commands)
    _add_generate_parser(commands)
    _add_plan_parser(commands)
    _add_cache_parser(commands)

    demo = commands.add_parser("demo", help="tune all-MiniLM-L6-v2 on Rotten Tomatoes (needs the export extra)")
    demo.add_argument("--steps", type=_int_in(Bound(1)), default=None, help="tuning steps (default from the demo recipe)")
    demo.add_argument("--workdir", default=None, help="cache for the exported model and data")
    demo.add_argument("--output-dir", default="out/demo")
    demo.add_argument("--threads", type=_int_in(THREADS))
    demo.add_argument("--overwrite", action="store_true",
                      help="replace the run OUTPUT_DIR holds (default: use the next free OUTPUT_DIR-2, -3, ...)")
    return parser


def _add_apply_parser(commands) -> None:
    apply = commands.add_parser("apply", help="merge a LoRA adapter or a sparse diff into a plain ONNX model")
    apply.add_argument("--onnx", required=True, help="the base model the adapter was tuned on")
    apply.add_argument("--adapter", required=True,
                       help="an .onnx_adapter file, a PEFT folder, a LoRA run's trainable.safetensors, "
                       "or a sparse run's sparse.etdiff")
    apply.add_argument("--output", required=True, help="where the merged model.onnx goes")
    apply.add_argument("--overwrite", action="store_true", help="replace --output if it exists")


def cmd_apply(args: argparse.Namespace) -> int:
    from edgetune.artifacts.adapters import apply_adapter

    path = apply_adapter(args.onnx, args.adapter, args.output, overwrite=args.overwrite)
    console.print(f"merged {args.adapter} into {args.onnx}: {path}")
    return 0


def _add_replay_parser(commands) -> None:
    replay = commands.add_parser("replay", help="rebuild a tuned model from its base model and the run's run.etlog")
    replay.add_argument("--onnx", required=True, help="the base model the run tuned")
    replay.add_argument("--log", required=True, help="the run's trajectory log (run.etlog in its output dir)")
    replay.add_argument("--output", required=True, help="folder for the rebuilt model.onnx, tokenizer, ...")
    replay.add_argument("--tokenizer", help="tokenizer.json (default: beside the base model)")
    replay.add_argument("--threads", type=_int_in(THREADS), help="kernel threads (default: all cores)")
    replay.add_argument("--overwrite", action="store_true", help="replace the run or replay --output already holds")


def cmd_replay(args: argparse.Namespace) -> int:
    from edgetune.replay import replay_run

    path, log = replay_run(args.onnx, args.log, args.output, tokenizer=args.tokenizer, threads=args.threads,
                           overwrite=args.overwrite)
    console.print(f"replayed {len(log.records)} steps of {args.log} onto {args.onnx}: {path}", markup=False)
    return 0


def _add_export_parser(commands) -> None:
    export = commands.add_parser("export", help="Hugging Face folder or .gguf -> ONNX (needs the export extra)")
    export.add_argument("--model", required=True,
                        help="Hugging Face model folder, .gguf file, or an installed shorthand: minilm, smollm2")
    export.add_argument("--task", choices=["classification", "causal-lm"], help="required unless --model is a shorthand")
    export.add_argument("--output", required=True, help="folder for model.onnx, tokenizer.json, ...")
    export.add_argument("--labels", help="classification: comma-separated label names (default negative,positive)")
    export.add_argument("--pooling", choices=["cls", "mean"], help="classification: head on the first token or the mean")
    export.add_argument("--seed", type=_int_in(SEED), help="classification: seed of a new head (default 0)")
    export.add_argument("--eos-token", help="causal-lm: the token that ends a reply (smollm2: <|im_end|>)")
    export.add_argument("--no-past", dest="with_past", action="store_false",
                        help="causal-lm: skip model_with_past.onnx (the KV-cache graph for generate)")
    export.add_argument("--opset", type=_opset, default=17)


def cmd_export(args: argparse.Namespace) -> int:
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


def _add_generate_parser(commands) -> None:
    generate = commands.add_parser("generate", help="generate text with a causal LM (exported or tuned)")
    generate.add_argument("--onnx", required=True, help="model.onnx of an export or a tuning run")
    generate.add_argument("--tokenizer", help="tokenizer.json (default: beside the model)")
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--chat", action="store_true", help="wrap the prompt as a user message in the chat template")
    generate.add_argument("--max-new-tokens", type=_int_in(Bound(1)), default=64)
    generate.add_argument("--temperature", type=_finite_float, default=0.0, help="0 = greedy (default)")
    generate.add_argument("--top-p", type=_finite_float, default=1.0, help="nucleus sampling mass (default 1.0)")
    generate.add_argument("--seed", type=_int_in(SEED), default=0)
    generate.add_argument("--no-past", dest="use_past", action="store_const", const=False,
                          help="rerun the whole sequence per token even if a KV-cache graph is there")
    generate.add_argument("--threads", type=_int_in(THREADS))


def cmd_generate(args: argparse.Namespace) -> int:
    from edgetune.generate import GenerationConfig, Generator, run_generation

    config = GenerationConfig(args.max_new_tokens, args.temperature, args.top_p, args.seed)
    config.validate()  # before the model loads
    generator = Generator(args.onnx, args.tokenizer, args.threads, use_past=args.use_past)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    stats = run_generation(generator, args.prompt, args.chat, config, write)
    print()
    print(f"{stats['new_tokens']} new tokens after {stats['prompt_tokens']} prompt tokens in {stats['seconds']:.2f} s "
          f"({stats['tokens_per_second']:.1f} tokens/s, {'KV cache' if generator.uses_past else 'recompute'}: "
          f"{generator.path.name})", file=sys.stderr)
    return 0


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


def cmd_tune(args: argparse.Namespace) -> int:
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
    return 0


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


def cmd_eval(args: argparse.Namespace) -> int:
    from edgetune.artifacts.finite import dumps_finite
    from edgetune.tuner import Tuner

    if not args.onnx:
        raise EdgetuneError("--onnx is required")
    tuner = Tuner.from_onnx(
        args.onnx, trainable=None, tokenizer=args.tokenizer, task=args.task,
        max_length=args.max_length, threads=args.threads,
        verbalizer=args.verbalizer, template=args.template,
    )
    metrics = tuner.evaluate(args.data, batch_size=args.batch_size)
    print(dumps_finite(metrics))  # evaluate refuses non-finite losses; NaN is no JSON any reader parses
    return 0


def _add_plan_parser(commands) -> None:
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


def cmd_plan(args: argparse.Namespace) -> int:
    from edgetune.graph.model import inspect_model, max_length_for
    from edgetune.plan import Planner, parse_budget, suggest

    budget = parse_budget(args.budget) if args.budget is not None else None  # before reading the model
    if any(n is not None and n < 1 for n in (args.batch, args.max_length, args.scored_tokens)):
        raise EdgetuneError("--batch, --max-length and --scored-tokens must be at least 1")
    planner = Planner(args.onnx, args.task, args.scored_tokens)
    # the length tune would take: a plan for more tokens than the model has positions is one tune refuses
    args.max_length = max_length_for(inspect_model(planner.model, planner.path, args.task), args.max_length)
    modes = args.trainable or planner.default_modes()
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


def _add_cache_parser(commands) -> None:
    cache = commands.add_parser(
        "cache", help="list or empty the prepared-graph cache (EDGETUNE_CACHE)",
        description="Tuning prepares a model's graphs once per model and --trainable and keeps them in "
        "$EDGETUNE_CACHE/prepared (default ~/.cache/edgetune/prepared), capped at EDGETUNE_CACHE_MAX "
        "(default 2GB) by evicting the least recently used entries.")
    cache.add_argument("--clear", action="store_true", help="delete every entry")


def cmd_cache(args: argparse.Namespace) -> int:
    import time

    from edgetune.graph.cache import cache_entries, cache_limit, clear_cache, default_cache_root

    root = default_cache_root()
    limit = cache_limit()  # a bad EDGETUNE_CACHE_MAX is reported before anything is deleted
    if args.clear:
        count, size = clear_cache(root)
        print(f"removed {count} entries ({size / 2**20:.1f} MB) from {root}")
        return 0
    entries = cache_entries(root)
    print(f"prepared-graph cache {root} (EDGETUNE_CACHE):")
    for entry in reversed(entries):  # most recently used first
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used))
        print(f"  {entry.bytes / 2**20:9.1f} MB  last used {used}  {entry.model}  --trainable {entry.trainable}")
    print(f"{len(entries)} entries, {sum(e.bytes for e in entries) / 2**20:.1f} MB of "
          f"{limit / 2**20:.0f} MB (EDGETUNE_CACHE_MAX)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from edgetune.demo import run_demo

    return run_demo(steps=args.steps, workdir=args.workdir, output_dir=args.output_dir, threads=args.threads,
                    overwrite=args.overwrite)


def main(argv: list[str] | None = None) -> int:
    from edgetune.process.malloc import pin_mmap_threshold

    pin_mmap_threshold()  # the job's peak must not depend on the order glibc saw blocks freed in
    args = build_parser().parse_args(argv)
    # the library's warnings (e.g. an adapter format it could not write) as one plain line each
    logging.basicConfig(format="edgetune: warning: %(message)s", level=logging.WARNING, stream=sys.stderr)
    handler = {"tune": cmd_tune, "eval": cmd_eval, "demo": cmd_demo, "apply": cmd_apply,
               "export": cmd_export, "generate": cmd_generate, "plan": cmd_plan,
               "replay": cmd_replay, "cache": cmd_cache}[args.command]
    try:
        return handler(args)
    except EdgetuneError as exc:
        print(f"edgetune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Interrupted as exc:  # a run stopped between steps: the message says what it saved
        print(f"edgetune: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # outside a run's steps: claim nothing about what was saved
        print("edgetune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`edgetune plan --json | head`), as with `cat`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit-time flush stays quiet
        return 128 + signal.SIGPIPE
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

