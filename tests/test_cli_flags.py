"""What users run has a test: the CLI flags a user types, through the real `edgetune` in a fresh interpreter
(``run_cli``), on the suite's tiny models — what each flag promises, read back from what the run wrote
(steps.jsonl, summary.json, run.etlog, the checkpoint), not just exit 0."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgetune import __version__
from edgetune.artifacts.checkpoint import load_checkpoint
from edgetune.artifacts.trajectory import Trajectory
from models.tiny import write_jsonl
from tests.badinput import INTERNAL_ERROR
from tests.test_cli import assert_same_bits

TUNE = ("tune", "--batch-size", "8", "--lr", "0.01", "--steps", "3", "--queries", "2", "--threads", "1",
        "--trainable", "last:1", "--head", "zo")  # a fixed slice, all by ZO: the flags are what these tests vary


def tune(cli, classifier, out: Path, *flags: str) -> subprocess.CompletedProcess:
    proc = cli(*TUNE, "--onnx", classifier["model"], "--data", classifier["train"], "--output-dir", out, *flags)
    assert proc.returncode == 0, proc.stderr
    return proc


def steps_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def weights_of(out: Path) -> dict[str, np.ndarray]:
    return load_checkpoint(out / "checkpoint.safetensors")[0]


@pytest.fixture(scope="module")
def baseline(classifier, tmp_path_factory):
    """The reference run: TUNE's flags, defaults for everything else (split, rademacher, zo-sgd, off)."""
    from conftest import run_cli  # the `cli` fixture's function; a module-scoped fixture cannot request it

    out = tmp_path_factory.mktemp("baseline") / "out"
    tune(run_cli, classifier, out)
    return out


# ---------------------------------------------------------------------------------------------------------
# edgetune plan
# ---------------------------------------------------------------------------------------------------------

def test_plan_default_table_has_every_documented_row_in_order(classifier, cli):
    proc = cli("plan", "--onnx", classifier["model"], "--max-length", "32")
    assert proc.returncode == 0, proc.stderr
    lines = (proc.stdout + proc.stderr).splitlines()  # the table is the console's (stderr) output
    assert "43,458 weights" in lines[0] and "batch 16 x 32 tokens" in lines[1]
    rows = [re.fullmatch(r"\s+(.+?)\s+([\d,]+)\s+(\d+)", line) for line in lines[3:]]
    assert all(rows), lines
    modes = [row.group(1) for row in rows]
    # docs/planner.md: inference, the default edgetune modes (all, last:1, last:2, LoRA where the model has q/v
    # layers), then PyTorch first-order full, full + checkpointing, LoRA
    assert modes == ["inference", "edgetune all", "edgetune last:1", "edgetune last:2",
                     "edgetune lora:r=8,targets=q,v", "PyTorch first-order full",
                     "PyTorch first-order full + checkpointing", "PyTorch first-order lora (lora:r=8,targets=q,v)"]
    trainable = {mode: int(row.group(2).replace(",", "")) for mode, row in zip(modes, rows)}
    peak = {mode: int(row.group(3)) for mode, row in zip(modes, rows)}
    assert all(value > 0 for value in peak.values())
    assert trainable["inference"] == 0 and trainable["edgetune all"] == 43_458
    assert 0 < trainable["edgetune last:1"] < trainable["edgetune last:2"] < trainable["edgetune all"]
    assert trainable["PyTorch first-order full"] == trainable["edgetune all"]
    assert peak["inference"] < peak["edgetune all"] < peak["PyTorch first-order full"]


def test_plan_counts_what_tune_tunes(classifier, cli, baseline):
    proc = cli("plan", "--onnx", classifier["model"], "--max-length", "32", "--trainable", "last:1", "--json")
    assert proc.returncode == 0, proc.stderr
    row = next(r for r in json.loads(proc.stdout)["rows"] if r["mode"] == "last:1")
    assert row["trainable_params"] == sum(w.size for w in weights_of(baseline).values())


# ---------------------------------------------------------------------------------------------------------
# edgetune tune: optimizers, noise, schedules
# ---------------------------------------------------------------------------------------------------------

def listed_optimizers(cli, classifier) -> list[str]:
    """The optimizers the CLI names when refusing an unknown one."""
    proc = cli("tune", "--onnx", classifier["model"], "--data", classifier["train"], "--optimizer",
               "no-such-optimizer")
    assert proc.returncode == 2, proc.stderr
    names = re.search(r"--optimizer must be one of (.+), not 'no-such-optimizer'", proc.stderr)
    assert names, proc.stderr
    return names.group(1).split(", ")


def test_every_listed_optimizer_runs_three_steps_with_a_finite_loss(classifier, cli, tmp_path):
    optimizers = listed_optimizers(cli, classifier)
    assert {"zo-sgd", "dizo", "zo-adam"} <= set(optimizers)
    for name in optimizers:
        out = tmp_path / name
        needs = {"dizo": ("--dizo-interval", "2"), "hizoo": ("--noise", "gaussian")}  # a projection in 3 steps; its noise
        tune(cli, classifier, out, "--optimizer", name, *needs.get(name, ()))
        steps = steps_of(out)
        assert [s["step"] for s in steps] == [0, 1, 2], name
        assert all(math.isfinite(s["loss"]) for s in steps), name
        assert summary_of(out)["config"]["optimizer"] == name
        assert Trajectory.read(out / "run.etlog").header["config"]["optimizer"] == name


def test_noise_gaussian_moves_the_weights_by_gaussian_noise(classifier, cli, tmp_path):
    """One zo-sgd step with one query moves θ by -lr·g·z: z = Δθ / (-lr·g) must be ±1 for rademacher (the
    default) and a standard normal sample for gaussian."""
    base = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(classifier["model"])).graph.initializer}
    z = {}
    for noise in ("rademacher", "gaussian"):
        out = tmp_path / noise
        tune(cli, classifier, out, "--steps", "1", "--queries", "1", "--noise", noise)
        (step,) = steps_of(out)
        assert step["noise"] == noise and summary_of(out)["config"]["noise"] == noise
        moved = np.concatenate([(w - base[name]).ravel().astype(np.float64) for name, w in weights_of(out).items()])
        z[noise] = moved / (-step["lr"] * step["grads"][0])
    np.testing.assert_allclose(np.abs(z["rademacher"]), 1, atol=1e-2)
    gauss = z["gaussian"]
    assert gauss.size > 10_000 and abs(np.mean(gauss ** 2) - 1) < 0.1 and abs(np.mean(gauss)) < 0.05
    assert np.mean(np.abs(np.abs(gauss) - 1) > 0.1) > 0.5  # not ±1
    assert np.mean(np.abs(gauss) > 2) == pytest.approx(0.0455, abs=0.01)  # a normal's two-sided 2σ tail


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_lr_schedule_in_steps_jsonl(classifier, cli, tmp_path, schedule):
    out = tmp_path / "out"
    tune(cli, classifier, out, "--schedule", schedule, "--steps", "5")
    lrs = [s["lr"] for s in steps_of(out)]
    progress = [t / 5 for t in range(5)]  # decays from --lr at step 0 to 0 at --steps
    if schedule == "linear":
        expected = [0.01 * (1 - p) for p in progress]
    else:
        expected = [0.01 * 0.5 * (1 + math.cos(math.pi * p)) for p in progress]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)  # steps.jsonl holds the float32 lr
    assert summary_of(out)["config"]["schedule"] == schedule


# ---------------------------------------------------------------------------------------------------------
# edgetune tune: how the work is done gives the same result
# ---------------------------------------------------------------------------------------------------------

def test_threads_1_and_2_give_bit_identical_weights(classifier, cli, tmp_path, baseline):
    tune(cli, classifier, tmp_path / "out", "--threads", "2")
    assert_same_bits(weights_of(tmp_path / "out"), weights_of(baseline))


def test_no_split_gives_the_split_runs_weights(classifier, cli, tmp_path, baseline):
    proc = tune(cli, classifier, tmp_path / "out", "--no-split")
    assert "whole graph per evaluation" in proc.stderr + proc.stdout
    assert summary_of(tmp_path / "out")["config"]["split"] is False
    assert_same_bits(weights_of(tmp_path / "out"), weights_of(baseline))


def test_parallel_on_evaluates_the_queries_as_copies_in_one_forward(classifier, cli, tmp_path, baseline):
    out = tmp_path / "out"
    tune(cli, classifier, out, "--parallel", "on")
    assert Trajectory.read(out / "run.etlog").header["config"]["parallel"] == "on"
    assert Trajectory.read(baseline / "run.etlog").header["config"]["parallel"] == "off"
    # the same seeds and forwards; every copy sees this step's θ, where the sequential estimator applies
    # each query's update before the next query, so only the first estimate of the first step is shared
    got, want = steps_of(out), steps_of(baseline)
    assert [(s["seeds"], s["forwards"]) for s in got] == [(s["seeds"], s["forwards"]) for s in want]
    assert got[0]["grads"][0] == pytest.approx(want[0]["grads"][0], rel=1e-3)
    assert all(math.isfinite(s["loss"]) for s in got)


def test_parallel_auto_prints_what_it_measured_and_chose(classifier, cli, tmp_path):
    out = tmp_path / "out"
    proc = tune(cli, classifier, out, "--parallel", "auto", "--queries", "4")
    chosen = summary_of(out)["result"]["parallel"]
    assert set(chosen) >= {"choice", "queries_per_forward", "sequential_s", "batched_s", "speedups"}
    assert chosen["sequential_s"] > 0 and all(v > 0 for v in chosen["batched_s"].values())
    printed = [line for line in (proc.stderr + proc.stdout).splitlines() if "speed-up per evaluation" in line]
    assert printed == [chosen["choice"]]
    for copies, speedup in chosen["speedups"].items():  # each measured width is in the printout
        assert f"{2 * int(copies)} copies {speedup:.2f}x" in printed[0]
    mode = Trajectory.read(out / "run.etlog").header["config"]["parallel"]
    assert mode == ("on" if chosen["queries_per_forward"] > 1 else "off")


# ---------------------------------------------------------------------------------------------------------
# edgetune tune: when it stops and evaluates
# ---------------------------------------------------------------------------------------------------------

def test_forward_budget_ends_the_run_after_the_step_that_reaches_it(classifier, cli, tmp_path):
    out = tmp_path / "out"
    tune(cli, classifier, out, "--steps", "50", "--forward-budget", "10")  # 2 queries: 4 forwards a step
    forwards = np.cumsum([s["forwards"] for s in steps_of(out)])
    assert forwards[-1] >= 10 > forwards[-2]
    assert len(forwards) == 3 and summary_of(out)["result"]["forward_passes"] == forwards[-1]


def test_eval_every_evaluates_at_those_steps(classifier, cli, tmp_path):
    out = tmp_path / "out"
    tune(cli, classifier, out, "--steps", "6", "--eval-every", "2", "--eval-data", classifier["dev"])
    history = summary_of(out)["result"]["history"]
    assert [h["step"] for h in history] == [2, 4, 6]
    assert all(0 <= h["accuracy"] <= 1 and math.isfinite(h["loss"]) for h in history)
    assert history[-1]["loss"] == summary_of(out)["result"]["after"]["loss"]


# ---------------------------------------------------------------------------------------------------------
# edgetune export, generate, --version
# ---------------------------------------------------------------------------------------------------------

WORDS = ["good", "bad", "film", "great", "awful", "movie", "the", "was", "it"]


def tiny_hf_classifier(folder: Path):
    """A two-layer BERT with a classification head and its fast tokenizer, saved as Hugging Face saves them."""
    torch = pytest.importorskip("torch", reason="export extra not installed: pip install 'edgetune[export]'")
    transformers = pytest.importorskip("transformers")
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    config = transformers.BertConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return torch, model, tokenizer


def test_export_a_classifier_through_the_cli_and_eval_it(cli, tmp_path):
    torch, model, tokenizer = tiny_hf_classifier(tmp_path / "hf")
    proc = cli("export", "--model", tmp_path / "hf", "--task", "classification", "--output", tmp_path / "onnx")
    assert proc.returncode == 0, proc.stderr
    assert {"model.onnx", "tokenizer.json"} <= {p.name for p in (tmp_path / "onnx").iterdir()}
    rows = [{"text": "good film", "label": "positive"}, {"text": "the movie was awful", "label": "negative"},
            {"text": "it was great", "label": "positive"}, {"text": "bad", "label": "negative"}]
    dev = write_jsonl(tmp_path / "dev.jsonl", rows)
    evaluated = cli("eval", "--onnx", tmp_path / "onnx" / "model.onnx", "--data", dev)
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    # the same examples through PyTorch: edgetune's tokenisation and the exported graph give its loss
    with torch.no_grad():
        logits = torch.cat([model(**tokenizer(r["text"], return_tensors="pt")).logits for r in rows])
    labels = torch.tensor([["negative", "positive"].index(r["label"]) for r in rows])
    loss = float(torch.nn.functional.cross_entropy(logits, labels))
    accuracy = float((logits.argmax(-1) == labels).float().mean())
    assert metrics["loss"] == pytest.approx(loss, abs=1e-4) and metrics["accuracy"] == accuracy


def test_generate_same_seed_same_text(lm, cli):
    def generate(seed: int) -> str:
        proc = cli("generate", "--onnx", lm["model"], "--prompt", "the", "--max-new-tokens", "8",
                   "--temperature", "1.5", "--seed", str(seed))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip()
        return proc.stdout

    first = generate(1)
    assert generate(1) == first
    assert len({first, generate(2), generate(3)}) > 1  # sampling at 1.5: another seed says something else


def test_version(cli):
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"edgetune {__version__}"


# ---------------------------------------------------------------------------------------------------------
# exit codes of what is not the user's fault
# ---------------------------------------------------------------------------------------------------------

def run_with_failing_plan(exception: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`edgetune plan` in a fresh Python whose plan command raises ``exception`` (a bug, or Ctrl-C)."""
    code = (f"import sys, edgetune.cli as cli, edgetune.cli.plan as plan\n"
            f"def broken(args):\n    raise {exception}\n"
            f"plan.run = broken\n"
            f"sys.exit(cli.main(['plan', '--onnx', 'model.onnx']))\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)


def test_an_internal_error_exits_70_with_one_line(monkeypatch):
    monkeypatch.delenv("EDGETUNE_DEBUG", raising=False)
    proc = run_with_failing_plan("ZeroDivisionError('the bug')")
    assert proc.returncode == INTERNAL_ERROR
    assert proc.stderr.splitlines() == [
        "edgetune: internal error: ZeroDivisionError: the bug (EDGETUNE_DEBUG=1 shows a traceback)"]
    debug = run_with_failing_plan("ZeroDivisionError('the bug')", env={**__import__("os").environ,
                                                                       "EDGETUNE_DEBUG": "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "the bug" in debug.stderr


def test_keyboard_interrupt_exits_130_with_one_line():
    proc = run_with_failing_plan("KeyboardInterrupt")
    assert proc.returncode == 130
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgetune:") and "Traceback" not in proc.stderr


def test_a_closed_stdout_ends_quietly_with_the_sigpipe_code(classifier):
    """`edgetune plan --json | head -1`: the reader leaves first; no internal error, no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "edgetune.cli", "plan", "--onnx", str(classifier["model"]), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the child has imported anything, so its first write finds no reader
    stderr = proc.stderr.read()
    assert proc.wait(timeout=300) == 141, stderr
    assert stderr == ""
