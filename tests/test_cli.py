"""The command line as a user meets it: a bad input corpus, configs, checkpoints that survive."""

import json
import resource
import signal
import subprocess
import sys
import time

import onnx
import pytest

from edgetune.checkpoint import load_checkpoint
from models.tiny import build_classifier, build_tokenizer, write_jsonl

TUNE = ("tune", "--steps", "6", "--lr", "0.01", "--batch-size", "8")


def assert_one_line_error(proc, *fragments):
    assert proc.returncode not in (0, None), proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("edgetune:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


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
    assert_one_line_error(cli("tune", "--config", config), "unknown option 'learning_rate'")
    config.write_text("onnx: [unclosed\n")
    assert_one_line_error(cli("tune", "--config", config), "tune.yaml", "invalid YAML")


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
    assert_one_line_error(cli(*TUNE, "--onnx", classifier["model"], "--data", bad / f"{case}.jsonl",
                              "--output-dir", bad / "out"), *fragments)


def test_bad_models_and_tokenizers(bad, classifier, cli):
    data = classifier["train"]
    assert_one_line_error(cli(*TUNE, "--onnx", bad / "nologits.onnx", "--tokenizer", classifier["tokenizer"],
                              "--data", data), "nologits.onnx", "no output named 'logits'")
    assert_one_line_error(cli(*TUNE, "--onnx", classifier["model"], "--tokenizer", bad / "big_tokenizer.json",
                              "--data", data), "big_tokenizer.json", "does not belong to the model")
    assert_one_line_error(cli(*TUNE, "--onnx", bad / "garbage.onnx", "--tokenizer", classifier["tokenizer"],
                              "--data", data), "garbage.onnx", "not a readable ONNX model")
    assert_one_line_error(cli(*TUNE, "--onnx", bad / "missing.onnx", "--data", data), "missing.onnx: model not found")
    assert_one_line_error(cli(*TUNE, "--onnx", classifier["model"], "--data", data, "--trainable", "nothing.*"),
                          "--trainable term 'nothing.*' selects no weights")


def test_nan_loss_stops_with_one_line_and_keeps_the_checkpoint(classifier, tmp_path, cli):
    out = tmp_path / "out"
    ok = cli(*TUNE, "--onnx", classifier["model"], "--data", classifier["train"], "--output-dir", out)
    assert ok.returncode == 0, ok.stderr
    before = (out / "checkpoint.safetensors").read_bytes()
    proc = cli("tune", "--onnx", classifier["model"], "--data", classifier["train"], "--output-dir", out,
               "--steps", "50", "--lr", "1e30")
    assert_one_line_error(proc, "non-finite loss at step", "train.jsonl:")
    assert proc.returncode == 3
    assert (out / "checkpoint.safetensors").read_bytes() == before


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
    assert_one_line_error(proc, "checkpoint.safetensors", "the previous one is kept")
    assert (out / "checkpoint.safetensors").read_bytes() == good
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_kill_during_frequent_saves_never_leaves_a_torn_checkpoint(classifier, tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "edgetune.cli", "tune", "--onnx", classifier["model"], "--data",
            classifier["train"], "--output-dir", out, "--steps", "100000", "--save-every", "1", "--lr", "0.01"]
    for delay in (2.5, 3.1, 3.7):
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while not (out / "checkpoint.safetensors").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(delay - 2.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        tensors, state = load_checkpoint(out / "checkpoint.safetensors")
        assert state["step"] >= 1 and tensors
