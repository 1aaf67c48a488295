"""The command line as a user meets it: a bad input corpus, configs, checkpoints that survive."""

import json
import resource
import signal
import subprocess
import sys

import onnx
import pytest

from edgetune.artifacts.checkpoint import load_checkpoint
from models.tiny import build_classifier, build_tokenizer
from tests.badinput import assert_rejected

TUNE = ("tune", "--steps", "6", "--lr", "0.01", "--batch-size", "8", "--trainable", "last:1")


def assert_failed_after_start(proc: subprocess.CompletedProcess, *fragments: str, code: int) -> None:
    """A run that started (its one banner line on stderr) and then failed: after the banner, stderr is the
    bad-input corpus's one ``edgetune: error:`` line, with the error class's exit code."""
    banner, _, rest = proc.stderr.partition("\n")
    assert banner.startswith("edgetune ") and " model " in banner, proc.stderr
    assert_rejected(subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout, rest), *fragments, code=code)


def assert_same_bits(got: dict, expected: dict) -> None:
    """Two runs' tensors (``load_checkpoint``'s dicts) hold the same names and the same bits."""
    assert got.keys() == expected.keys() and expected
    for name, value in expected.items():
        assert got[name].tobytes() == value.tobytes(), name


def test_tune_then_eval_reports_before_and_after(classifier, tmp_path, cli):
    out = tmp_path / "out"
    proc = cli(*TUNE, "--onnx", classifier["model"], "--data", classifier["train"], "--eval-data",
               classifier["dev"], "--output-dir", out)
    assert proc.returncode == 0, proc.stderr
    assert "before: accuracy" in proc.stderr and "after:  accuracy" in proc.stderr
    for name in ("model.onnx", "tokenizer.json", "trainable.safetensors", "checkpoint.safetensors",
                 "steps.jsonl", "summary.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    evaluated = cli("eval", "--onnx", out / "model.onnx", "--data", classifier["dev"])
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(summary["result"]["after"]["accuracy"])


def test_config_file_keys_mirror_flags_and_flags_win(classifier, tmp_path, cli):
    config = tmp_path / "tune.yaml"
    config.write_text(f"onnx: {classifier['model']}\ndata: {classifier['train']}\nsteps: 3\nbatch-size: 4\n"
                      f"output_dir: {tmp_path / 'o'}\nlr: 0.5\n")
    proc = cli("tune", "--config", config, "--lr", "0.01")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["config"]["steps"] == 3 and summary["config"]["batch_size"] == 4
    assert summary["config"]["lr"] == 0.01

    config.write_text("onnx: x.onnx\ndata: y.jsonl\nlearning_rate: 3\n")
    assert_rejected(cli("tune", "--config", config), "unknown option 'learning_rate'")
    config.write_text("onnx: [unclosed\n")
    assert_rejected(cli("tune", "--config", config), "tune.yaml", "invalid YAML")


@pytest.fixture(scope="module")
def bad(tmp_path_factory, classifier):
    """The bad-input corpus of the issue, each file next to a valid model."""
    d = tmp_path_factory.mktemp("bad")
    (d / "broken.jsonl").write_text('{"text": "good film", "label": "positive"}\n{"text": "oops\n')
    (d / "nolabel.jsonl").write_text('{"text": "good film", "label": "positive"}\n{"text": "bad film"}\n')
    (d / "unknown.jsonl").write_text('{"text": "good film", "label": "positive"}\n{"text": "meh", "label": "neutral"}\n')
    (d / "empty.jsonl").write_text("")
    no_logits = build_classifier(None)
    no_logits.graph.output[0].name = "scores"
    for node in no_logits.graph.node:
        node.output[:] = ["scores" if o == "logits" else o for o in node.output]
    onnx.save(no_logits, str(d / "nologits.onnx"))
    build_tokenizer(d / "big_tokenizer.json", [f"word{i}" for i in range(200)])
    (d / "garbage.onnx").write_bytes(b"\x00not a model" * 10)
    return d


@pytest.mark.parametrize("case, fragments", [
    ("broken", ["broken.jsonl:2:", "invalid JSON"]),
    ("nolabel", ["nolabel.jsonl:2:", '"label" is missing']),
    ("unknown", ["unknown.jsonl:2:", 'unknown label "neutral"']),
    ("empty", ["empty.jsonl", "no examples"]),
])
def test_bad_data_files(bad, classifier, cli, case, fragments):
    assert_rejected(cli(*TUNE, "--onnx", classifier["model"], "--data", bad / f"{case}.jsonl",
                        "--output-dir", bad / "out"), *fragments)


def test_bad_models_and_tokenizers(bad, classifier, cli):
    data = classifier["train"]
    assert_rejected(cli(*TUNE, "--onnx", bad / "nologits.onnx", "--tokenizer", classifier["tokenizer"],
                        "--data", data), "nologits.onnx", "no output named 'logits'")
    assert_rejected(cli(*TUNE, "--onnx", classifier["model"], "--tokenizer", bad / "big_tokenizer.json",
                        "--data", data), "big_tokenizer.json", "does not belong to the model")
    assert_rejected(cli(*TUNE, "--onnx", bad / "garbage.onnx", "--tokenizer", classifier["tokenizer"],
                        "--data", data), "garbage.onnx", "not a valid ONNX model")
    assert_rejected(cli(*TUNE, "--onnx", bad / "missing.onnx", "--data", data), "missing.onnx: model not found")
    assert_rejected(cli(*TUNE, "--onnx", classifier["model"], "--data", data, "--trainable", "nothing.*"),
                    "--trainable term 'nothing.*' selects no weights")


def test_nan_loss_stops_with_one_line_and_keeps_the_checkpoint(classifier, tmp_path, cli):
    # lr 1e30 on last:1: step 0's loss is finite and its update sends the weights to ~1e29; step 1's loss is NaN
    # (the block's LayerNorm overflows). The guard would roll that back (test_auto_lr): off here, as a run whose
    # guard cannot recover stops
    run = ("tune", "--onnx", classifier["model"], "--data", classifier["train"], "--lr", "1e30", "--save-every", "1",
           "--guard", "off", "--trainable", "last:1")
    proc = cli(*run, "--steps", "50", "--output-dir", tmp_path / "out")
    assert_failed_after_start(proc, "non-finite loss at step 1", "train.jsonl:", code=3)  # a TrainingError
    one_step = cli(*run, "--steps", "1", "--output-dir", tmp_path / "one")
    assert one_step.returncode == 0, one_step.stderr
    kept, state = load_checkpoint(tmp_path / "out" / "checkpoint.safetensors")
    expected, _ = load_checkpoint(tmp_path / "one" / "checkpoint.safetensors")
    assert state["step"] == 1  # step 0's checkpoint, as a 1-step run ends
    assert_same_bits(kept, expected)


def _limit_file_size(limit):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_full_disk_during_save_keeps_the_last_checkpoint(classifier, tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "edgetune.cli", *TUNE, "--onnx", classifier["model"], "--data",
            classifier["train"], "--output-dir", out]
    assert subprocess.run(args, capture_output=True, timeout=300).returncode == 0
    good = (out / "checkpoint.safetensors").read_bytes()
    # Writes past the limit fail with EFBIG, as a full disk fails with ENOSPC.
    proc = subprocess.run([*args[:-2], "--steps", "12", "--output-dir", out, "--resume"], capture_output=True,
                          text=True, timeout=300, preexec_fn=_limit_file_size(len(good) // 2))
    assert_failed_after_start(proc, "checkpoint.safetensors", "the previous one is kept", code=2)
    assert (out / "checkpoint.safetensors").read_bytes() == good
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


# Runs the CLI with os.replace patched to SIGKILL the process at the third checkpoint save: the new checkpoint's
# temporary file is complete and fsynced, the rename has not happened. A kill from outside would land at a
# random moment, mostly between writes, and prove nothing about the write itself.
KILL_AT_THIRD_CHECKPOINT_RENAME = """
import os, signal, sys
from pathlib import Path
rename, saves = os.replace, []
def replace(src, dst, *args, **kwargs):
    if Path(dst).name == "checkpoint.safetensors":
        saves.append(src)
        if len(saves) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
    return rename(src, dst, *args, **kwargs)
os.replace = replace
from edgetune.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_during_a_checkpoint_write_keeps_the_previous_one_and_resume_finishes_the_run(classifier, tmp_path,
                                                                                         cli):
    run = (*TUNE, "--onnx", classifier["model"], "--data", classifier["train"], "--save-every", "1")
    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", KILL_AT_THIRD_CHECKPOINT_RENAME, *map(str, run), "--output-dir",
                             str(out)], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    written = [p for p in out.iterdir() if p.name.startswith(".checkpoint.safetensors.tmp-")]
    assert len(written) == 1, "the kill did not land between the write and the rename"
    _, pending = load_checkpoint(written[0])
    tensors, state = load_checkpoint(out / "checkpoint.safetensors")
    assert tensors and state["step"] == 2 and pending["step"] == 3  # the second save is intact, the third pending

    resumed = cli(*run, "--output-dir", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    whole = cli(*run, "--output-dir", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    final, state = load_checkpoint(out / "checkpoint.safetensors")
    expected, _ = load_checkpoint(tmp_path / "whole" / "checkpoint.safetensors")
    assert state["step"] == 6
    assert_same_bits(final, expected)
