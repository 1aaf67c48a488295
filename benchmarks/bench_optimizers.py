"""Optimizers at an equal forward-pass budget (issue 5): dev accuracy against forward passes.

    python benchmarks/bench_optimizers.py --task minilm --forwards 4000 \\
        --config "zo-sgd lr=3e-3" --config "dizo lr=3e-3" \\
        [--config "zo-adam lr=1e-3"] [--config "zo-sgd trainable=sparse:density=0.01"] [--seeds 2]

Each ``--config`` is an optimizer name (``edgetune.zo.OPTIMIZERS``) followed by ``key=value`` pairs:
TrainConfig fields (``lr``, ``queries``, ``dizo_interval`` ...) or ``trainable=SPEC``; the task's
recipe fills the rest. Every run stops at the first step that reaches the budget. The first config
is the reference: the table gives each config's final dev accuracy (mean over seeds) and the forward
passes at which its mean curve first reached the reference's final accuracy ("-": never within the
budget). Forward passes are the runs' own counts (``StepRecord.forwards``: 2 per query, plus DiZO's
projection probes), so an optimizer that spends forwards elsewhere pays for them here.

Tasks: ``minilm`` (all-MiniLM-L6-v2 + fresh head, Rotten Tomatoes; default slice ``last:1``, 18
tensors, where a layer-wise projection has layers to weigh) and ``smollm2`` (SmolLM2-135M by
verbaliser, LoRA q,v; ~8 s per step on 2 cores: give it a small ``--forwards``).
Writes benchmarks/results/optimizers_<task>.{json,md} (``--name`` for another file).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_smollm2_rt import TEMPLATE, VERBALIZER, smollm2_model  # noqa: E402
from common import demo_model, machine, write_results  # noqa: E402

from edgetune import Tuner  # noqa: E402
from edgetune.config import TrainConfig, field_names  # noqa: E402
from edgetune.data.datasets import write_rotten_tomatoes_splits  # noqa: E402
from edgetune.demo import default_workdir  # noqa: E402


@dataclass(frozen=True)
class Task:
    model: Any  # () -> onnx path
    trainable: str
    options: dict[str, Any]  # TrainConfig fields of the recipe
    max_length: int
    verbalizer: str | None = None
    template: str | None = None


TASKS = {
    "minilm": Task(lambda: demo_model()[0], "last:1", dict(batch_size=16, eps=1e-3, queries=1), max_length=64),
    "smollm2": Task(smollm2_model, "lora:r=8,targets=q,v", dict(batch_size=16, eps=1e-3, queries=1), max_length=64,
                    verbalizer=VERBALIZER, template=TEMPLATE),
}


@dataclass
class RunSpec:
    label: str
    trainable: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> RunSpec:
        """``"dizo lr=3e-3 dizo_interval=25"`` or ``"zo-sgd trainable=sparse:density=0.01"``."""
        name, *pairs = shlex.split(text)
        spec = cls(label=text, options={"optimizer": name})
        for pair in pairs:
            key, sep, value = pair.partition("=")
            key = key.replace("-", "_")
            if not sep:
                raise SystemExit(f"--config {text!r}: expected key=value, got {pair!r}")
            if key == "trainable":
                spec.trainable = value
            elif key in field_names(TrainConfig):
                kind = type(getattr(TrainConfig(), key))
                spec.options[key] = kind(float(value)) if kind is int else kind(value)
            else:
                raise SystemExit(f"--config {text!r}: {key!r} is neither trainable nor a TrainConfig field")
        return spec


class PrintEvals:
    """Progress that prints each dev evaluation: long runs (SmolLM2) show their curve as it grows."""

    def __init__(self, label: str):
        self.label = label

    def on_start(self, start: int, total: int) -> None: ...

    def on_step(self, record) -> None: ...

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        print(f"  {self.label} step {step}: {metrics.get('forwards', 0)} forwards, dev accuracy {metrics['accuracy']:.3f}",
              flush=True)


def tune(task: Task, spec: RunSpec, train: Path, dev: Path, budget: int, seed: int, evals: int,
         threads: int) -> dict[str, Any]:
    """One run to the budget: its curve as (forward passes, dev accuracy, dev loss) points."""
    tuner = Tuner.from_onnx(task.model(), trainable=spec.trainable or task.trainable, max_length=task.max_length,
                            threads=threads, verbalizer=task.verbalizer, template=task.template)
    options = {**task.options, **spec.options, "seed": seed, "forward_budget": budget}
    per_step = 2 * options["queries"]
    options |= {"steps": budget // per_step + 1, "eval_every": max(1, budget // (per_step * evals))}
    began = time.perf_counter()
    result = tuner.fit(train, eval_data=dev, progress=PrintEvals(spec.label), **options)
    curve = [{"forwards": 0, **result.before}] + result.history
    return {"seed": seed, "seconds": time.perf_counter() - began, "trainable_params": tuner.trainable_params,
            "curve": [{k: p[k] for k in ("forwards", "accuracy", "loss")} for p in curve]}


def mean_curve(runs: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Seeds evaluate at the same steps, so their points align by index (forwards from the first seed)."""
    length = min(len(r["curve"]) for r in runs)
    return [{"forwards": runs[0]["curve"][i]["forwards"],
             "accuracy": float(np.mean([r["curve"][i]["accuracy"] for r in runs]))} for i in range(length)]


def forwards_to_reach(curve: list[dict[str, float]], target: float) -> int | None:
    return next((p["forwards"] for p in curve if p["accuracy"] >= target), None)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=sorted(TASKS), default="minilm")
    parser.add_argument("--config", action="append", dest="configs", metavar="'OPTIMIZER [key=value ...]'",
                        help="a configuration to compare (repeat; the first is the reference)")
    parser.add_argument("--forwards", type=int, default=4000, help="forward-pass budget of every run")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--evals", type=int, default=10, help="dev evaluations per run (the curve's points)")
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-dev", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", help="results file name in benchmarks/results/ (default optimizers_<task>)")
    args = parser.parse_args(argv)
    specs = [RunSpec.parse(text) for text in args.configs or ["zo-sgd lr=1e-3", "dizo lr=1e-3"]]
    task = TASKS[args.task]
    train, dev = write_rotten_tomatoes_splits(default_workdir() / f"rt_{args.n_train}_{args.n_dev}",
                                              n_train=args.n_train, n_dev=args.n_dev, seed=0)

    results = []
    for spec in specs:
        runs = [tune(task, spec, train, dev, args.forwards, seed, args.evals, args.threads) for seed in range(args.seeds)]
        curve = mean_curve(runs)
        results.append({"config": spec.label, "runs": runs, "mean_curve": curve})
        print(f"{spec.label}: dev accuracy {curve[0]['accuracy']:.3f} -> {curve[-1]['accuracy']:.3f} "
              f"at {curve[-1]['forwards']} forwards ({np.mean([r['seconds'] for r in runs]):.0f} s per run)")

    target = results[0]["mean_curve"][-1]["accuracy"]
    # 0 when the reference ended at or below its start: then no ratio means anything
    reference = forwards_to_reach(results[0]["mean_curve"], target)
    rows = []
    for result in results:
        curve = result["mean_curve"]
        reached = forwards_to_reach(curve, target)
        result |= {"final_accuracy": curve[-1]["accuracy"], "forwards": curve[-1]["forwards"],
                   "forwards_to_reference": reached}
        rows.append([result["config"], f"{curve[-1]['accuracy']:.3f}", curve[-1]["forwards"],
                     reached if reached is not None else "-",
                     f"{reached / reference:.2f}" if reached is not None and reference else "-",
                     f"{result['runs'][0]['trainable_params']:,}"])
    payload = {"machine": machine(), "task": args.task, "forward_budget": args.forwards, "seeds": args.seeds,
               "n_train": args.n_train, "n_dev": args.n_dev, "reference_accuracy": target, "results": results}
    header = ["config", "final dev accuracy", "forward passes", f"forwards to reach {target:.3f}",
              "÷ reference", "trainable weights"]
    write_results(args.name or f"optimizers_{args.task}", payload, header, rows)


if __name__ == "__main__":
    main()
