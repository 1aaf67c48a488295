"""edgetune against its peers in one run: the PyTorch MeZO reference and ORT on-device training.

    python benchmarks/bench_peers.py [--budget-s 120] [--batch-size 8 --tokens 128] [--quick]

Same model (all-MiniLM-L6-v2 + the demo's fresh 2-label head, mean pooling), same token ids, same
batch, same threads, for every peer:

- edgetune ZO-SGD with ``all``, ``last:2`` (+ prefix split) and ``head`` trainable;
- a PyTorch MeZO reference (peers_mezo.py: in-place seeded perturbation of nn.Parameters, as the
  MeZO paper's code does it), starting from the exported weights;
- ONNX Runtime on-device training (first-order, AdamW; onnxruntime-training-cpu 1.19.2 in its own
  venv, built once under ~/.cache/edgetune/venvs/ort-training).

Each peer runs twice in a fresh child process: once to time steps on a fixed batch × tokens batch
and read its peak RSS (VmHWM), once to train for ``--budget-s`` seconds of wall clock on Rotten
Tomatoes and score a fixed dev subset before and after. A peer that cannot run (no venv) is reported
as such in the table. Writes benchmarks/results/peers.{json,md} (peers_<B>x<T> for other shapes).

Every peak is compared with a framework-free floor for the same model and batch (``measure_floor``):
the VmHWM of a fresh process that imports only onnxruntime and numpy and runs one forward, minus the
VmHWM of one that only imports them. That is the weights as ORT holds them plus one forward's
activations; the PyTorch MeZO peer's peak also holds ``import torch`` + ``transformers``, ORT training's
``import torch`` (its training API imports it), and both the interpreter. ``--floor-only`` measures the
floor and rebuilds the table from the existing results JSON without rerunning the peers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from common import RESULTS, child_peak_rss, demo_model, long_texts_jsonl, machine, write_results  # noqa: E402
from peers_common import DATA_FILE, INPUTS, RESULT_MARK  # noqa: E402
from peers_mezo import HEAD_FILE  # noqa: E402  (a constant; torch is imported only in its child)
from peers_ort_venv import VenvUnavailable, ensure_venv  # noqa: E402

from edgetune import Tuner  # noqa: E402
from edgetune.data.batching import BatchStream  # noqa: E402
from edgetune.data.resources import minilm_dir  # noqa: E402

ZO_EPS = 1e-3
SEED = 0
MAX_STEPS = 20_000  # train order written for the budget run; far beyond what 10 minutes reach


@dataclass(frozen=True)
class PeerConfig:
    name: str
    script: str
    forwards: str  # what one step runs, for the table
    options: dict = field(default_factory=dict)
    venv: bool = False  # runs in the ORT training venv


# lr: full-parameter ZO needs a tiny step (the ZO estimate's variance grows with the parameter
# count); MeZO's reference runs at the same lr/ε as edgetune `all`, so their trajectories compare.
# Forward passes: a ZO query is 2 forwards; with a frozen prefix, the prefix runs once per step and
# only the suffix twice per query. A first-order step is 1 forward + 1 backward (about 2 forwards' work).
PEERS = [
    PeerConfig("edgetune all", "peers_edgetune.py", "2 × full model", {"trainable": "all", "split": True, "queries": 1, "lr": 1e-5}),
    PeerConfig("edgetune last:2 + split", "peers_edgetune.py", "1 × blocks 1-4, 2 × blocks 5-6 + head",
               {"trainable": "last:2", "split": True, "queries": 1, "lr": 5e-5}),
    PeerConfig("edgetune head, q=16", "peers_edgetune.py", "1 × encoder, 32 × head",
               {"trainable": "head", "split": True, "queries": 16, "lr": 1e-2}),
    PeerConfig("PyTorch MeZO (all)", "peers_mezo.py", "2 × full model", {"queries": 1, "lr": 1e-5}),
    PeerConfig("ORT training (all, AdamW)", "peers_ort_training.py", "1 forward + 1 backward", {"lr": 5e-5}, venv=True),
]
BASELINE, MEZO, ORT_TRAINING = PEERS[0].name, PEERS[3].name, PEERS[4].name


def prepare_data(workdir: Path, onnx_path: Path, train_path: Path, dev_path: Path, args) -> None:
    """Tokenise once with edgetune's tokenizer into ``workdir/data.npz`` (see peers_common.PeerData)."""
    tuner = Tuner.from_onnx(onnx_path, trainable=None, max_length=args.tokens, threads=args.threads)
    long_path = long_texts_jsonl(train_path, workdir / "long.jsonl", words=args.tokens)
    timing = tuner.load_data(long_path).batch(range(args.batch_size), INPUTS)
    train, dev = tuner.load_data(train_path), tuner.load_data(dev_path)
    stream = BatchStream(len(train), args.batch_size, SEED)
    arrays = {"order": np.stack([stream.indices(t) for t in range(MAX_STEPS)])}
    for prefix, batch in (("timing/", timing), ("train/", train.batch(range(len(train)), INPUTS)),
                          ("dev/", dev.batch(range(min(args.dev_size, len(dev))), INPUTS))):
        arrays.update({prefix + k: v for k, v in batch.inputs.items()})
        arrays[prefix + "labels"] = batch.labels
    first_dev = dev.batch(range(args.batch_size), INPUTS)
    arrays["reference_logits"] = tuner.engine.loss_and_logits(first_dev)[1]
    np.savez(workdir / DATA_FILE, **arrays)


def head_weights(onnx_path: Path) -> dict[str, np.ndarray]:
    """The classifier Gemm that produces ``logits``, as torch.nn.Linear's (out, in) weight and bias."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    gemm = next(n for n in model.graph.node if "logits" in n.output and n.op_type == "Gemm")
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name in gemm.input[1:]}
    trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0)
    weight = inits[gemm.input[1]]
    return {"weight": weight if trans_b else weight.T.copy(), "bias": inits[gemm.input[2]]}


def run_child(peer: PeerConfig, mode: str, python: str, workdir: Path, options: dict) -> dict:
    command = [python, str(HERE / peer.script), "--mode", mode, "--workdir", str(workdir),
               "--config", json.dumps({**options, **peer.options})]
    # PyTorch's OpenMP pool: as many threads as ORT's, and like ORT's (spinning off) they sleep when idle
    env = {**os.environ, "OMP_NUM_THREADS": str(options["threads"]), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode != 0 or not lines:
        errors = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
        return {"error": errors[-1]}
    return json.loads(lines[-1][len(RESULT_MARK):])


def ort_training_python(workdir: Path, onnx_path: Path) -> str:
    """The ORT training venv's python, with the training artifacts generated into ``workdir``."""
    python = str(ensure_venv(log))
    generated = subprocess.run([python, str(HERE / "peers_ort_training.py"), "--generate", str(onnx_path), str(workdir)],
                               capture_output=True, text=True)
    if generated.returncode != 0:
        raise VenvUnavailable("generating the training artifacts failed: "
                              + (generated.stderr.strip().splitlines() or ["?"])[-1])
    return python


def measure_all(workdir: Path, onnx_path: Path, args) -> dict[str, dict]:
    """Time every peer first (adjacent in time, so drift hits all alike; ``--rounds`` times, the
    fastest kept), then train each for the budget."""
    shared = {"threads": args.threads, "tokens": args.tokens, "seed": SEED, "eps": ZO_EPS, "onnx": str(onnx_path),
              "hf_dir": str(minilm_dir()), "timed_steps": args.timed_steps, "budget_s": args.budget_s,
              "budget_clock": args.budget_clock, "eval_batch_size": args.eval_batch_size}
    pythons, results = {False: sys.executable}, {p.name: {} for p in PEERS}
    try:
        pythons[True] = ort_training_python(workdir, onnx_path)
    except VenvUnavailable as exc:
        log(f"ORT training peer unavailable: {exc}")
        for peer in PEERS:
            if peer.venv:
                results[peer.name]["error"] = f"unavailable: {exc}"
    runnable = [p for p in PEERS if p.venv in pythons]
    for mode in ["time"] * args.rounds + ["train"]:
        for peer in runnable:
            log(f"{mode:5s} {peer.name} ...")
            got = run_child(peer, mode, pythons[peer.venv], workdir, shared)
            log(f"      {got}")
            kept = results[peer.name]
            if mode == "time" and "step_ms" in kept and "step_ms" in got and got["step_ms"] > kept["step_ms"]:
                continue  # an earlier round was faster
            kept.update(got)
    return results


FLOOR_REPEATS = 3  # fresh processes per floor figure; the median is kept


def measure_floor(onnx_path: Path, args) -> dict:
    """The framework-free floor (MB) for this model and batch, and what the frameworks' imports cost.

    Medians of fresh processes (``common.child_peak_rss``, VmHWM at exit); see the module docstring.
    The planner's prediction for the same inference is kept beside it as a cross-check.
    """
    from statistics import median

    from edgetune.plan import Planner

    def peak(function: str, *call) -> float:
        return median(child_peak_rss("peers_common", function, list(call), FLOOR_REPEATS))

    numpy_only = peak("import_only", "numpy")
    ort_only = peak("import_only", "onnxruntime")
    forward = peak("inference_forward", str(onnx_path), args.batch_size, args.tokens, args.threads)
    planned = Planner(onnx_path).inference(args.batch_size, args.tokens)
    return {"floor_mb": forward - ort_only, "forward_process_mb": forward, "import_onnxruntime_mb": ort_only,
            "import_numpy_mb": numpy_only, "import_torch_mb": peak("import_only", "torch"),
            "import_transformers_mb": peak("import_only", "transformers"),
            "planner_inference": planned.to_json(), "repeats": FLOOR_REPEATS}


def table(results: dict[str, dict], floor_mb: float) -> list[list]:
    base = results[BASELINE]
    rows = []
    for peer in PEERS:
        r = results[peer.name]
        if not {"step_ms", "accuracy_after"} <= set(r) or "step_ms" not in base:
            rows.append([peer.name, "-", "-", "-", "-", "-", f"{floor_mb:.0f}", "-", f"failed: {r.get('error', '?')}"])
            continue
        rows.append([peer.name, f"{r['trainable_params']:,}", peer.forwards, f"{r['step_ms']:.0f}",
                     f"{r['step_ms'] / base['step_ms']:.2f}×", f"{r['peak_rss_mb']:.0f}", f"{floor_mb:.0f}",
                     f"{r['peak_rss_mb'] / floor_mb:.2f}×",
                     f"{r['accuracy_before']:.3f} → {r['accuracy_after']:.3f} ({r['budget_steps']} steps)"])
    for peer in (MEZO, ORT_TRAINING):
        other = results[peer]
        if "step_ms" in other and "step_ms" in base:
            rows.append([f"edgetune all ÷ {peer}", "", "", "", f"{base['step_ms'] / other['step_ms']:.2f}×",
                         f"{base['peak_rss_mb'] / other['peak_rss_mb']:.2f}×", "", "", ""])
    return rows


def floor_note(floor: dict, rerun: bool) -> str:
    """The table's note (kept in the .md below the table; update_readme.py copies only the table)."""
    note = (f"Floor: one onnxruntime forward at this batch in a process importing only onnxruntime + numpy, "
            f"{floor['forward_process_mb']:.0f} MB, minus that interpreter's {floor['import_onnxruntime_mb']:.0f} MB "
            f"(median of {floor['repeats']} fresh processes). A process that only imports peaks at: numpy "
            f"{floor['import_numpy_mb']:.0f} MB, torch {floor['import_torch_mb']:.0f} MB, transformers "
            f"{floor['import_transformers_mb']:.0f} MB (system Python; MeZO imports both).")
    if not rerun:
        note += (" The peers were not rerun: their figures are the existing results JSON's, the floor "
                 "columns were measured now (bench_peers.py --floor-only).")
    return note


def header(args) -> list[str]:
    return ["configuration", "trainable weights", "forward passes / step", f"ms / step ({args.batch_size}×{args.tokens})",
            "÷ edgetune all", "peak RSS (MB)", "framework-free floor (MB)", "peak ÷ floor",
            f"dev accuracy, {args.budget_s:.0f} s {args.budget_clock} budget"]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128, help="timing batch length; max_length of the budget run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=120.0, help="training wall clock per peer")
    parser.add_argument("--budget-clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: count each peer's own CPU seconds (fair on a machine others load)")
    parser.add_argument("--timed-steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1, help="timing rounds over all peers; fastest kept")
    parser.add_argument("--dev-size", type=int, default=256, help="dev rows scored before and after")
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="20 s budget, 3 timed steps, 64 dev rows")
    parser.add_argument("--floor-only", action="store_true",
                        help="measure the framework-free floor and rebuild the table from the existing results JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.budget_s, args.timed_steps, args.dev_size, args.rounds = 20.0, 2, 64, 1
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def floor_only(name: str, onnx_path: Path, args) -> None:
    """Add the floor to an existing run: the peers' figures stay, the run's own settings name the table."""
    payload = json.loads((RESULTS / f"{name}.json").read_text())
    for key in ("batch_size", "tokens", "threads", "budget_s", "budget_clock"):
        setattr(args, key, payload[key])
    payload["floor"] = {**measure_floor(onnx_path, args), "load_average": os.getloadavg(), "peers_rerun": False}
    results = {p.name: payload["peers"][p.name] for p in PEERS}
    write_results(name, payload, header(args), table(results, payload["floor"]["floor_mb"]))
    with open(RESULTS / f"{name}.md", "a") as f:
        f.write("\n" + floor_note(payload["floor"], rerun=False) + "\n")


def main(argv=None):
    args = parse_args(argv)
    default_shape = (args.batch_size, args.tokens) == (8, 128)
    name = "peers" if default_shape else f"peers_{args.batch_size}x{args.tokens}"
    onnx_path, train_path, dev_path = demo_model()
    if args.floor_only:
        floor_only(name, onnx_path, args)
        return
    with tempfile.TemporaryDirectory(prefix="edgetune_peers_") as tmp:
        workdir = Path(tmp)
        prepare_data(workdir, onnx_path, train_path, dev_path, args)
        np.savez(workdir / HEAD_FILE, **head_weights(onnx_path))  # the PyTorch peer's starting head
        results = measure_all(workdir, onnx_path, args)
    floor = {**measure_floor(onnx_path, args), "peers_rerun": True}
    payload = {"machine": machine(), "load_average": os.getloadavg(), "batch_size": args.batch_size,
               "tokens": args.tokens, "threads": args.threads, "budget_s": args.budget_s,
               "budget_clock": args.budget_clock, "dev_size": args.dev_size, "zo_eps": ZO_EPS, "floor": floor,
               "peers": {p.name: {"options": p.options, "forwards": p.forwards, **results[p.name]} for p in PEERS}}
    write_results(name, payload, header(args), table(results, floor["floor_mb"]))
    with open(RESULTS / f"{name}.md", "a") as f:
        f.write("\n" + floor_note(floor, rerun=True) + "\n")


if __name__ == "__main__":
    main()
