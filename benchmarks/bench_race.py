"""The race against first-order training: edgetune's defaults against ONNX Runtime on-device training (AdamW).

    python benchmarks/bench_race.py [--budget-s 300] [--datasets rt debates] [--peers ...] [--trainable/--head/--lr]

all-MiniLM-L6-v2 with a fresh head of the data set's class count (mean pooling, as the demo exports it), on
Rotten Tomatoes (2 classes) and on the 2016 presidential debates (3 classes: the speaker's party), with
bench_peers.py's data, batch (8), token ids, batch order, threads (2) and seed (0) for both peers:

- edgetune as ``edgetune tune`` runs with no flags (``peers_edgetune.EdgetuneDefaultsPeer``: --trainable auto,
  which is ``head`` for these fresh heads, --head auto, which tunes that head exactly (first-order from its
  in-graph gradient), --lr auto, the guard, the activation cache auto, which covers the head slice);
  --trainable/--head/--lr/--head-lr/--head-l2 change it (a lever: its name then says which; ``--head zo`` is the
  defaults before --head auto, "edgetune ZO head");
- with ``--peers`` naming it, the race's first edgetune peer, run before --trainable auto landed: the same
  defaults on ``last:2 + --head exact`` (the best recipe bench_exact_head.py measured);
- ORT on-device training, every weight, AdamW at lr 5e-5 (bench_peers.py's peer, in its own venv).

Each trains for ``--budget-s`` seconds (``--budget-clock`` wall, or the child's CPU seconds) in a fresh child
process, the dev rows scored every ``--every-s`` seconds up to 120 s and every twice that after, with the clocks
stopped (the scoring time is reported beside it). A curve point is (training wall s, training CPU s, steps, forward passes, dev accuracy);
ORT's forward passes are forward-equivalents, 3 a step (a backward ≈ 2 forwards). The peers of one data set
run back to back, their order alternating between data sets, and each records the load average around it.

From the curves (``summarise``): each one's accuracy at 60 s, 120 s and the budget (wall and CPU, interpolated
between points), the time each edgetune peer needs to reach ORT's 60-s accuracy (first point at or above it; the goal
is ≤ 120 s), and each whole-process peak RSS (VmHWM of the child; the goal is edgetune ≤ 0.35× ORT's).
Writes benchmarks/results/race.{json,md} (``--name``); ``python benchmarks/figures.py race`` draws the curves.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from bench_peers import PeerConfig, ort_training_python, prepare_data, run_child  # noqa: E402
from common import RESULTS, machine, write_results  # noqa: E402
from peers_ort_venv import VenvUnavailable  # noqa: E402

ORT_LR = 5e-5  # bench_peers' ORT training lr: the usual BERT fine-tuning step, not tuned here
TARGET_AT_S = 60.0  # the race: reach first-order's accuracy at this many seconds ...
GOAL_S, GOAL_PEAK = 120.0, 0.35  # ... within this many, at most this fraction of its peak RSS
SEED = 0
MAX_STEPS = 10_000_000  # beyond what the budget reaches, even for a head step served by the activation cache


@dataclass(frozen=True)
class Task:
    title: str
    folder: str  # under edgetune's work folder: the export and the splits
    labels: tuple[str, ...]
    n_train: int
    n_dev: int
    dev_size: int  # dev rows scored at each mark (the first of the dev file)

    def files(self) -> tuple[Path, Path, Path]:
        """The exported model (fresh head of len(labels) classes, as the demo exports it) and the splits."""
        from edgetune.data.datasets import write_presidential_debates_splits, write_rotten_tomatoes_splits
        from edgetune.data.resources import minilm_dir
        from edgetune.demo import RECIPE, default_workdir
        from edgetune.export import export_isolated

        work = default_workdir()
        model = export_isolated("classification", minilm_dir(), work / f"minilm-{self.folder}", labels=list(self.labels),
                                seed=SEED, pooling=RECIPE["pooling"])
        write = write_rotten_tomatoes_splits if self.folder == "rt" else write_presidential_debates_splits
        train, dev = write(work / f"splits-{self.folder}", n_train=self.n_train, n_dev=self.n_dev, seed=SEED)
        return Path(model), Path(train), Path(dev)


TASKS = {
    "rt": Task("MiniLM + Rotten Tomatoes (2 classes)", "rt", ("negative", "positive"), 4000, 1000, 500),
    "debates": Task("MiniLM + 2016 debates, party (3 classes)", "debates",
                    ("democratic", "moderator", "republican"), 600, 240, 240),
}
ORT = "ORT training (all, AdamW)"
EDGETUNE = "edgetune defaults"
RECIPE_OPTIONS = {"trainable": "last:2", "head": "exact"}  # the first race's edgetune (no default slice then)
LEVERS = ("trainable", "head", "lr", "head_lr", "head_l2")  # the flags an edgetune peer may be given


def edgetune_name(trainable: str = "auto", head: str = "auto", lr: float | None = None,
                  head_lr: float | None = None, head_l2: float | None = None) -> str:
    """An edgetune peer's name: "edgetune defaults", or the flags it was given instead of tune's defaults."""
    heads = {"exact": ["exact head"], "zo": ["ZO head"]}  # auto: exact for these heads, but tune's own choice
    slice_ = " + ".join(([] if trainable == "auto" else [trainable]) + heads.get(head, []))
    given = (("lr", lr), ("head lr", head_lr), ("head L2", head_l2))  # a head L2 of 0 is a lever too
    levers = "".join(f", {flag} {value:g}" for flag, value in given if value is not None)
    return f"edgetune {slice_ or 'defaults'}{levers}"


RECIPE = edgetune_name(**RECIPE_OPTIONS)  # "edgetune last:2 + exact head"


def _edgetune_peer(options: dict) -> PeerConfig:
    given = {k: v for k, v in options.items() if v is not None}
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in given.items()) or "no flags"
    return PeerConfig(edgetune_name(**given), "peers_edgetune.py",
                      f"tune with {flags}{'' if 'lr' in given else ' (lr auto)'}: ε 1e-3, guard on, "
                      "activation cache auto",
                      {"defaults": True, "trainable": "auto", "head": "auto", **given})


def peers(args) -> list[PeerConfig]:
    """The peers --peers names: ORT, edgetune (tune's defaults unless --trainable/--head/--lr/--head-lr) and
    the first race's recipe."""
    levers = {"trainable": None if args.trainable == "auto" else args.trainable,
              "head": None if args.head == "auto" else args.head, "lr": args.lr, "head_lr": args.head_lr,
              "head_l2": args.head_l2}
    chosen = {ORT: PeerConfig(ORT, "peers_ort_training.py", "1 forward + 1 backward (3 forward-equivalents)",
                              {"lr": ORT_LR}, venv=True),
              EDGETUNE: _edgetune_peer(levers), RECIPE: _edgetune_peer(RECIPE_OPTIONS)}
    return [chosen[name] for name in args.peers]


# -- the curves' arithmetic (tested on synthetic curves in tests/test_race.py) --

def accuracy_at(curve: list[dict], t: float, axis: str = "wall_s") -> float | None:
    """Dev accuracy at ``t`` seconds of ``axis`` (wall_s or cpu_s), linear between the scored points; None
    outside the curve (a run that stopped before ``t``)."""
    times = [p[axis] for p in curve]
    if not curve or t < times[0] or t > times[-1]:
        return None
    return float(np.interp(t, times, [p["accuracy"] for p in curve]))


def time_to_reach(curve: list[dict], target: float, axis: str = "wall_s") -> float | None:
    """The time on ``axis`` of the first scored point at or above ``target`` (an upper bound: it was reached
    at most one scoring interval earlier); None if never."""
    return next((p[axis] for p in curve if p["accuracy"] >= target - 1e-12), None)


def summarise(curves: dict[str, list[dict]], peaks: dict[str, float], budget_s: float, axis: str = "wall_s") -> dict:
    """The race's figures from ORT's curve and every edgetune peer's: ORT's 60-s accuracy on ``axis`` (the
    budget's clock) as the target; per peer, its accuracy at 60 s, at the goal's 120 s and at the budget on both
    clocks, its time to the target, its peak ÷ ORT's and, for edgetune's, whether each goal is met."""
    target = accuracy_at(curves[ORT], TARGET_AT_S, axis)
    clocks = ("wall_s", "cpu_s")
    at = {name: {f"{clock}@{t:g}": accuracy_at(curve, t, clock) for clock in clocks for t in _times(budget_s)}
          for name, curve in curves.items()}
    reach = {name: {clock: time_to_reach(curve, target, clock) if target is not None else None for clock in clocks}
             for name, curve in curves.items()}
    peak_ratio = {name: peaks[name] / peaks[ORT] if peaks.get(ORT) else None for name in curves}
    goals = {name: {"time": reach[name][axis] is not None and reach[name][axis] <= GOAL_S,
                    "peak": peak_ratio[name] is not None and peak_ratio[name] <= GOAL_PEAK}
             for name in curves if name != ORT}
    return {"target": target, "accuracy": at, "reaches_target": reach, "peak_ratio": peak_ratio, "axis": axis,
            "goals": goals}


def _times(budget_s: float) -> list[float]:
    """Where the accuracy is read: the target's time, the goal's (the race is decided there) and the budget."""
    return sorted({TARGET_AT_S, GOAL_S, budget_s})


def _summary(peers: dict[str, dict], budget_s: float, axis: str) -> dict | None:
    """summarise() over the peers that finished, where ORT and at least one edgetune peer did."""
    finished = {name: r for name, r in peers.items() if "curve" in r}
    if ORT not in finished or len(finished) < 2:
        return None
    return summarise({n: r["curve"] for n, r in finished.items()}, {n: r["peak_rss_mb"] for n, r in finished.items()},
                     budget_s, axis)


def marks(budget_s: float, every_s: float) -> list[float]:
    """The training seconds at which the dev rows are scored: every ``every_s`` up to the goal's time (where
    the race is decided), every twice that after, the budget last."""
    points, t = [], 0.0
    while t + 1e-9 < budget_s:
        t += every_s if t + 1e-9 < GOAL_S else 2 * every_s
        points.append(round(min(t, budget_s), 6))
    return points


# -- the run --

def race_task(task: Task, args, order: list[PeerConfig]) -> dict:
    onnx_path, train_path, dev_path = task.files()
    shared = {"threads": args.threads, "tokens": args.tokens, "seed": SEED, "onnx": str(onnx_path),
              "train_path": str(train_path), "batch_size": args.batch_size, "max_steps": MAX_STEPS,
              "marks": marks(args.budget_s, args.every_s), "budget_clock": args.budget_clock,
              "eval_batch_size": args.batch_size}  # scoring at the training batch: it cannot raise the peak
    results = {}
    with tempfile.TemporaryDirectory(prefix="edgetune_race_") as tmp:
        workdir = Path(tmp)
        prepare_data(workdir, onnx_path, train_path, dev_path, argparse.Namespace(**{**vars(args),
                                                                                     "dev_size": task.dev_size}))
        pythons = {False: sys.executable}
        try:
            pythons[True] = ort_training_python(workdir, onnx_path)
        except VenvUnavailable as exc:
            log(f"ORT training peer unavailable: {exc}")
        for peer in order:
            if peer.venv not in pythons:
                results[peer.name] = {"error": "the ORT training venv is unavailable"}
                continue
            load_before = os.getloadavg()
            log(f"{task.folder}: {peer.name} ...")
            got = run_child(peer, "race", pythons[peer.venv], workdir, shared)
            results[peer.name] = {**got, "load_before": load_before, "load_after": os.getloadavg(),
                                  "options": peer.options, "forwards_counted": peer.forwards}
            log(f"  {({k: v for k, v in got.items() if k != 'curve'})}")
    if ORT not in results and args.reference:  # a lever run: edgetune alone, judged against a full run's ORT
        reference = json.loads(args.reference.read_text())["datasets"][task.folder]["peers"][ORT]
        results[ORT] = {**reference, "reused_from": str(args.reference)}
    summary = _summary(results, args.budget_s, f"{args.budget_clock}_s")
    return {"title": task.title, "labels": list(task.labels), "n_train": task.n_train, "dev_size": task.dev_size,
            "peers": results, "summary": summary}


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def table(payload: dict) -> tuple[list[str], list[list]]:
    budget = payload["budget_s"]
    times = _times(budget)
    header = ["data set", "peer", "trainable weights", f"steps in {budget:g} s", "forward passes",
              *(f"acc @ {t:g} s" for t in times), *(f"acc @ {t:g} CPU-s" for t in times),
              f"to ORT's {TARGET_AT_S:g}-s acc (s / CPU-s)", "peak RSS (MB)",
              "peak ÷ ORT's", "scoring s (not counted)", "load avg (1 min, before → after)"]
    rows = []
    for key, task in payload["datasets"].items():
        summary = task["summary"] or {}
        for name, r in task["peers"].items():
            if "curve" not in r:
                rows.append([key, name, f"failed: {r.get('error', '?')}"] + [""] * (len(header) - 3))
                continue
            acc = summary.get("accuracy", {}).get(name, {})
            reach = summary.get("reaches_target", {}).get(name) or {}
            last = r["curve"][-1]
            peak_ratio = r["peak_rss_mb"] / task["peers"][ORT]["peak_rss_mb"] if "peak_rss_mb" in task["peers"].get(ORT, {}) else None
            rows.append([key, name, f"{r['trainable_params']:,}", r["steps"], f"{last['forwards']:,}",
                         *(_fmt(acc.get(f"{axis}@{t:g}")) for axis in ("wall_s", "cpu_s") for t in times),
                         f"{_fmt(reach.get('wall_s'), '.0f')} / {_fmt(reach.get('cpu_s'), '.0f')}",
                         f"{r['peak_rss_mb']:.0f}", _fmt(peak_ratio, ".2f") + "×", f"{r['eval_s']:.0f}",
                         f"{r['load_before'][0]:.1f} → {r['load_after'][0]:.1f}"])
    return header, rows


def verdicts(payload: dict) -> list[str]:
    """One line per data set and edgetune peer: the target, whether the peer met each goal, and by how much."""
    lines = []
    for key, task in payload["datasets"].items():
        s = task["summary"]
        if s is None or s["target"] is None:
            lines.append(f"- {key}: no verdict (a peer failed or stopped before {TARGET_AT_S:g} s)")
            continue
        unit = "s" if s["axis"] == "wall_s" else "CPU-s"
        for name, goals in s["goals"].items():
            reach = s["reaches_target"][name][s["axis"]]
            ours = task["peers"][name]["curve"][-1][s["axis"]]
            when = (f"reached it at {reach:.0f} {unit} ({'within' if goals['time'] else 'missing'} the "
                    f"{GOAL_S:g}-{unit} goal)" if reach is not None else f"did not reach it in {ours:.0f} {unit}")
            lines.append(f"- {key}: ORT's {TARGET_AT_S:g}-{unit} accuracy {s['target']:.3f}; {name} {when}; its peak "
                         f"is {s['peak_ratio'][name]:.2f}× ORT's (goal ≤ {GOAL_PEAK}×: "
                         f"{'met' if goals['peak'] else 'missed'}).")
    return lines


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--budget-s", type=float, default=300.0, help="training seconds per peer")
    parser.add_argument("--budget-clock", choices=["wall", "cpu"], default="wall",
                        help="what the budget and the marks count: elapsed time, or the child's CPU seconds")
    parser.add_argument("--every-s", type=float, default=20.0,
                        help="score the dev rows every this many seconds up to 120 s, every twice that after")
    parser.add_argument("--trainable", default="auto", help="edgetune's slice (default: auto, as tune's)")
    parser.add_argument("--head", default="auto", choices=["auto", "exact", "zo"],
                        help="edgetune's --head (default: auto, as tune's)")
    parser.add_argument("--head-lr", type=float, help="edgetune's --head-lr (a lever; default: edgetune's)")
    parser.add_argument("--head-l2", type=float, help="edgetune's --head-l2 (a lever; default: edgetune's)")
    parser.add_argument("--lr", type=float, help="edgetune's --lr (a lever; default: auto)")
    parser.add_argument("--peers", nargs="+", choices=[ORT, EDGETUNE, RECIPE], default=[ORT, EDGETUNE],
                        help=f"run these ({EDGETUNE!r}: with the levers above if given; a lever run: edgetune "
                             "alone with --reference)")
    parser.add_argument("--reference", type=Path, help="a full run's results JSON whose ORT curves judge this run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128, help="max_length")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="race", help="results file stem")
    parser.add_argument("--quick", action="store_true", help="a 20-s budget scored every 5 s: a smoke run")
    parser.add_argument("--combine", nargs="+", type=Path, metavar="JSON",
                        help="run nothing: write --name from these runs' results (a data set each)")
    parser.add_argument("--renamed", nargs="+", default=[], metavar="OLD=NEW",
                        help="with --combine: rename these peers of the first file (keeps an old row beside a rerun)")
    args = parser.parse_args(argv)
    if args.quick:
        args.budget_s, args.every_s = 20.0, 5.0
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def combine(paths: list[Path], renamed: dict[str, str] | None = None) -> dict:
    """One payload of runs made apart (a data set or a peer each, e.g. at once on a CPU-second clock): the
    first file's settings; per data set, the peers that finished in any file (a later file's wins), the
    summary computed again from them. The settings that decide every curve must agree; edgetune's flags are
    per peer (its name says them). ``renamed`` (old name: new name) renames peers of the first file, so that a
    rerun of one under the same name (the defaults, after they changed) keeps the old row beside the new."""
    payloads = [json.loads(p.read_text()) for p in paths]
    first = payloads[0]
    for path, other in zip(paths[1:], payloads[1:]):
        for key in ("batch_size", "tokens", "threads", "seed", "budget_clock", "every_s",
                    "ort_lr"):  # a shorter budget is fine: its curve just ends sooner
            if other.get(key) != first.get(key):
                raise SystemExit(f"{path}: {key} {other.get(key)!r} differs from {paths[0]}'s {first.get(key)!r}")
    budget = max(p["budget_s"] for p in payloads)
    datasets: dict[str, dict] = {}
    for path, payload in zip(paths, payloads):
        # a run from before the names said the flags called its edgetune peer "edgetune defaults" whatever they were
        rename = {EDGETUNE: edgetune_name(**{k: payload[k] for k in LEVERS if payload.get(k) is not None})}
        if payload is first and renamed:
            rename = {old: renamed.get(new, new) for old, new in rename.items()} | {
                old: new for old, new in renamed.items() if old not in rename}
        for key, task in payload["datasets"].items():
            kept = datasets.setdefault(key, {**task, "peers": {}})
            finished = {rename.get(name, name): {**r, "run": r.get("run", path.name) if "combined_from" in payload
                                                 else path.name} for name, r in task["peers"].items() if "curve" in r}
            kept["peers"] = {**kept["peers"], **finished}
    for task in datasets.values():
        task["summary"] = _summary(task["peers"], budget, f"{first['budget_clock']}_s")
    settings = {k: v for k, v in first.items() if k not in LEVERS}
    # a combined file among them lists the runs it came from
    runs = [name for path, p in zip(paths, payloads) for name in p.get("combined_from", [path.name])]
    return {**settings, "budget_s": budget, "combined_from": runs, "datasets": datasets}


def write(name: str, payload: dict) -> None:
    write_results(name, payload, *table(payload))
    with open(RESULTS / f"{name}.md", "a") as f:
        f.write("\n" + "\n".join(verdicts(payload)) + "\n")
    print("\n".join(verdicts(payload)))


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.combine:
        write(args.name, combine(args.combine, dict(pair.split("=", 1) for pair in args.renamed)))
        return
    ordered = peers(args)
    datasets = {}
    for i, key in enumerate(args.datasets):
        # alternate who goes first, so a drift in the machine's load does not always favour one peer
        datasets[key] = race_task(TASKS[key], args, ordered if i % 2 == 0 else ordered[::-1])
    payload = {"machine": machine(), "batch_size": args.batch_size, "tokens": args.tokens, "threads": args.threads,
               "seed": SEED, "budget_s": args.budget_s, "budget_clock": args.budget_clock, "every_s": args.every_s,
               "trainable": args.trainable, "head": args.head, "head_lr": args.head_lr, "head_l2": args.head_l2,
               "lr": args.lr, "ort_lr": ORT_LR,
               "reference": str(args.reference) if args.reference else None, "target_at_s": TARGET_AT_S,
               "goal_s": GOAL_S, "goal_peak": GOAL_PEAK, "datasets": datasets}
    write(args.name, payload)


if __name__ == "__main__":
    main()
