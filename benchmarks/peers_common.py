"""What every peer child of bench_peers.py shares: the pre-tokenised data, the two measurements, the result line.

A peer (edgetune, the PyTorch MeZO reference, ORT on-device training) runs in its own fresh process,
so its peak RSS is its own. This module imports only numpy and the standard library (plus
``common``, which loads nothing heavy at import): it must load unchanged in edgetune's environment,
in PyTorch's and in the ORT-training venv, and it must not add one framework to another's RSS.

The parent tokenises once with edgetune's tokenizer (``data.npz``), so every peer sees the same
token ids, in the same batch order, and is scored on the same dev rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import peak_rss_mb  # noqa: E402

DATA_FILE = "data.npz"
RESULT_MARK = "PEER_RESULT "
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class Split:
    """Right-padded token rows of one split; a batch is cut to its longest row, as edgetune pads."""

    arrays: dict[str, np.ndarray]  # INPUTS + "labels"

    def batch(self, rows: np.ndarray | range) -> dict[str, np.ndarray]:
        rows = np.asarray(rows)
        length = int(self.arrays["attention_mask"][rows].sum(axis=1).max())
        out = {name: np.ascontiguousarray(self.arrays[name][rows, :length]) for name in INPUTS}
        out["labels"] = self.arrays["labels"][rows]
        return out

    def __len__(self) -> int:
        return len(self.arrays["labels"])


@dataclass
class PeerData:
    timing: dict[str, np.ndarray]  # the fixed batch × tokens batch every peer's step is timed on
    train: Split
    order: np.ndarray  # steps × batch train row indices (edgetune's BatchStream order)
    dev: Split
    reference_logits: np.ndarray  # the export's logits on dev rows [0, batch): every peer must start there

    @classmethod
    def load(cls, workdir: Path) -> PeerData:
        with np.load(workdir / DATA_FILE) as f:
            a = {k: f[k] for k in f.files}
        pick = lambda prefix: {k[len(prefix):]: v for k, v in a.items() if k.startswith(prefix)}  # noqa: E731
        return cls(timing=pick("timing/"), train=Split(pick("train/")), order=a["order"], dev=Split(pick("dev/")),
                   reference_logits=a["reference_logits"])

    def dev_batches(self, batch_size: int):
        for start in range(0, len(self.dev), batch_size):
            yield self.dev.batch(range(start, min(start + batch_size, len(self.dev))))


class Peer(Protocol):
    def step(self, t: int, batch: dict[str, np.ndarray]) -> float:
        """One optimisation step on ``batch``; returns the training loss it saw."""

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Logits at the current weights (the peer leaves any perturbation undone first)."""

    def describe(self) -> dict:
        """``trainable_params`` and ``framework`` (name and version) for the table."""

    # for the race (bench_race.py): forwards(steps) -> the forward passes (or forward-equivalents) spent so far


def child_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="one peer of bench_peers.py (started by it)")
    parser.add_argument("--mode", choices=["time", "train", "race"], required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--config", type=json.loads, required=True, help="the peer's options as JSON")
    return parser.parse_args(argv)


def measure(peer_factory, argv: list[str] | None = None) -> None:
    """Build the peer and run the measurement ``--mode`` asks for; print one result line for the parent."""
    args = child_args(argv)
    config, data = args.config, PeerData.load(args.workdir)
    peer: Peer = peer_factory(config, args.workdir)
    if args.mode == "time":
        result = _time_steps(peer, data, config["timed_steps"])
    elif args.mode == "race":
        result = race(peer, data, config["marks"], config["budget_clock"], config["eval_batch_size"],
                      config.get("max_steps"))
    else:
        result = _train_for_budget(peer, data, config["budget_s"], config["budget_clock"], config["eval_batch_size"],
                                   config.get("max_steps"))
    print(RESULT_MARK + json.dumps({**peer.describe(), **result}), flush=True)


def _time_steps(peer: Peer, data: PeerData, steps: int) -> dict:
    """Wall and CPU time of ``steps`` steps on the fixed timing batch, after a warm-up step.

    The fastest step is the figure compared: on a shared machine other load only ever adds time.
    """
    peer.step(0, data.timing)
    wall, cpu = [], []
    for t in range(1, steps + 1):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        peer.step(t, data.timing)
        wall.append(time.perf_counter() - wall_start)
        cpu.append(time.process_time() - cpu_start)
    return {"step_ms": min(wall) * 1e3, "step_ms_median": float(np.median(wall)) * 1e3,
            "step_cpu_ms": float(np.median(cpu)) * 1e3, "peak_rss_mb": peak_rss_mb()}


def _train_for_budget(peer: Peer, data: PeerData, budget_s: float, clock: str, eval_batch_size: int,
                      max_steps: int | None = None) -> dict:
    """Dev accuracy before, and after as many steps as fit in ``budget_s`` seconds of training (and at most
    ``max_steps``: a test's fixed count, which a loaded machine cannot shorten).

    ``clock`` "wall" counts elapsed time; "cpu" counts this process's CPU time, which other load on
    a shared machine does not eat into. Evaluation is outside the budget. The first logits are
    compared with the exported model's, so the table shows that every peer started from the same weights.
    """
    now = time.perf_counter if clock == "wall" else time.process_time
    start_diff = float(np.max(np.abs(peer.logits(data.dev.batch(range(len(data.reference_logits))))
                                     - data.reference_logits)))
    before = _accuracy(peer, data, eval_batch_size)
    steps, losses, began, wall_began = 0, [], now(), time.perf_counter()
    limit = len(data.order) if max_steps is None else min(max_steps, len(data.order))
    while now() - began < budget_s and steps < limit:
        losses.append(peer.step(steps, data.train.batch(data.order[steps])))
        steps += 1
    wall = time.perf_counter() - wall_began
    tail = losses[-max(1, steps // 10):]  # the last tenth: where the run ended, less noisy than one step
    return {"start_logit_diff": start_diff, "accuracy_before": before, "accuracy_after": _accuracy(peer, data, eval_batch_size),
            "budget_steps": steps, "budget_wall_s": wall, "final_train_loss": float(np.mean(tail))}


def race(peer: Peer, data: PeerData, marks: list[float], clock: str, eval_batch_size: int,
         max_steps: int | None = None) -> dict:
    """Train until the last of ``marks`` (seconds of training on ``clock``: wall or this process's CPU),
    scoring the dev rows at each mark with every clock stopped: the curve of (wall s, CPU s, steps,
    forwards, dev accuracy) the race is judged on, and the scoring's own time beside it.

    At most ``max_steps`` steps (default: the order's length); past the order's end its batches come round
    again: a head step served by the activation cache is so cheap that edgetune's defaults run through
    bench_peers' 20,000 batches in well under the race's budget (that peer draws its own batches anyway).

    Building the peer (sessions, graphs) happens before and is not counted; everything a step does is
    (edgetune's --lr auto calibration runs in its first step). The peak RSS is the whole process's.
    """
    now = time.perf_counter if clock == "wall" else time.process_time
    forwards = getattr(peer, "forwards", None)
    wall = cpu = 0.0
    steps, losses, curve = 0, [], []

    def point(eval_began: float) -> dict:
        accuracy = _accuracy(peer, data, eval_batch_size)
        return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "steps": steps,
                "forwards": forwards(steps) if forwards else None, "accuracy": accuracy,
                "train_loss": float(np.mean(losses)) if losses else None,
                "eval_s": round(time.perf_counter() - eval_began, 3)}

    curve.append(point(time.perf_counter()))
    for mark in marks:
        trained = wall if clock == "wall" else cpu
        began, wall_began, cpu_began = now(), time.perf_counter(), time.process_time()
        losses = []
        while trained + (now() - began) < mark and steps < (max_steps or len(data.order)):
            losses.append(peer.step(steps, data.train.batch(data.order[steps % len(data.order)])))
            steps += 1
        wall += time.perf_counter() - wall_began
        cpu += time.process_time() - cpu_began
        curve.append(point(time.perf_counter()))
    return {"curve": curve, "steps": steps, "peak_rss_mb": peak_rss_mb(), "eval_s": sum(p["eval_s"] for p in curve)}


def _accuracy(peer: Peer, data: PeerData, batch_size: int) -> float:
    correct = sum(int(np.sum(np.argmax(peer.logits(b), axis=-1) == b["labels"])) for b in data.dev_batches(batch_size))
    return correct / len(data.dev)


# -- the framework-free floor: children of bench_peers.measure_floor (through common.child_peak_rss) --

def import_only(module: str) -> None:
    """Import ``module`` and nothing else: the interpreter baseline a child's peak is compared with."""
    __import__(module)


def inference_forward(onnx_path: str, batch: int, tokens: int, threads: int) -> None:
    """One ONNX Runtime forward of ``onnx_path`` on a batch × tokens batch, importing only onnxruntime.

    Peak RSS minus ``import_only("onnxruntime")``'s is what inference of this model at this shape needs
    (weights as ORT holds them + the activations of one forward), with no training framework loaded.
    Token values do not change the memory, so the batch is id 1 everywhere with a full attention mask.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.ones((batch, tokens), dtype=np.int64) for i in session.get_inputs()}
    if "token_type_ids" in feeds:
        feeds["token_type_ids"][:] = 0
    session.run(None, feeds)
