"""Every number and type a user gives is checked at the edge: one line, exit 2, nothing touched.

Each CLI case runs the real ``edgetune`` and asserts with :func:`tests.badinput.assert_rejected`; the
model's folder and the case's own folder (where an output folder would appear) must stay as they were.
The Python API refuses the same values with the same :class:`EdgetuneError` messages.
"""

import json
import math

import pytest

from edgetune import Tuner
from edgetune.errors import EdgetuneError, ModelError
from tests.badinput import Snapshot, assert_rejected

STEPS = ("--steps", "2", "--batch-size", "4")


def _tune_args(classifier, out, *extra):
    return ("tune", "--onnx", classifier["model"], "--data", classifier["train"], "--output-dir", out, *STEPS, *extra)


TUNE_CASES = [
    # (flags, fragments of the error line)
    (("--threads", "0"), ["tune: argument --threads: must be between 1 and 1024, got 0"]),
    (("--threads", "-3"), ["argument --threads", "got -3"]),
    (("--threads", "100000"), ["argument --threads", "got 100000"]),
    (("--seed", "-1"), ["--seed must be between 0 and 18446744073709551615, got -1"]),
    (("--seed", str(2**64)), ["--seed must be between 0 and", f"got {2**64}"]),
    (("--max-length", "1"), ["--max-length must be at least 2, got 1"]),
    (("--max-length", "0"), ["--max-length must be at least 2, got 0"]),
    (("--max-length", "65"), ["--max-length 65 is more than the 64 positions", "model.onnx"]),
    (("--queries", "1000000000"), ["--queries must be between 1 and 65535", "16 bits"]),
    (("--queries", "70000"), ["--queries must be between 1 and 65535, got 70000"]),
    (("--batch-size", "0"), ["--batch-size must be at least 1, got 0"]),
    (("--eval-batch-size", "-2"), ["--eval-batch-size must be at least 0, got -2 (0: the training --batch-size)"]),
    (("--trainable", "lora:r=100000"), ["lora r=100000 is more than layer", "r must be at most 32"]),
    (("--trainable", "last:99"), ["--trainable 'last:99': the model has only 3 blocks"]),
    (("--trainable", "blocks:1-99"), ["--trainable 'blocks:1-99': block 99 is beyond the model's last block"]),
    (("--warmup", "50"), ["--warmup 50 is more than --steps 2"]),
    (("--save-every", "-1"), ["--save-every must be at least 0, got -1"]),
    (("--eval-every", "-1"), ["--eval-every must be at least 0, got -1"]),
    (("--eval-every", "5"), ["--eval-every 5 needs --eval-data"]),
    (("--trainable", "importance:1", "--importance-probes", "0"), ["--importance-probes must be at least 1, got 0"]),
    (("--forward-budget", "-1"), ["--forward-budget must be at least 0"]),
    (("--lr", "inf"), ["tune: argument --lr: expected a finite number, got 'inf'"]),
    (("--lr", "nan"), ["argument --lr: expected a finite number, got 'nan'"]),
    (("--eps=-inf",), ["argument --eps: expected a finite number"]),
    (("--weight-decay", "nan"), ["argument --weight-decay: expected a finite number"]),
    (("--weight-decay", "-0.1"), ["--weight-decay must be at least 0, got -0.1"]),
    (("--query-threshold", "inf"), ["argument --query-threshold: expected a finite number"]),
    (("--dizo-eps", "nan"), ["argument --dizo-eps: expected a finite number"]),
    (("--beta1", "nan"), ["argument --beta1: expected a finite number"]),
    (("--lr", "1e39"), ["--lr 1e+39 does not fit the trajectory log's 32-bit float"]),
    (("--eps", "1e-50"), ["--eps 1e-50 does not fit the trajectory log's 32-bit float"]),
    (("--lr", "0"), ["--lr must be positive, got 0.0"]),
    (("--steps", "x"), ["edgetune: error: tune: argument --steps: invalid int value: 'x'"]),
    (("--steps", "1.5"), ["argument --steps: invalid int value: '1.5'"]),
    (("--steps", str(2**32 + 1)), ["--steps must be between 1 and 4294967296", "32 bits"]),
    (("--optimizer", "dizo", "--dizo-iters", "5000"), ["--dizo-iters 5000", "record extension"]),
]


@pytest.mark.parametrize("flags,fragments", TUNE_CASES, ids=[" ".join(c[0]) for c in TUNE_CASES])
def test_tune_refuses_a_bad_number(classifier, tmp_path, cli, flags, fragments):
    untouched = Snapshot(classifier["dir"], tmp_path)
    proc = cli(*_tune_args(classifier, tmp_path / "out", *flags), cwd=tmp_path)
    assert_rejected(proc, *fragments)
    untouched.assert_unchanged()


OTHER_CASES = [
    (("eval", "--batch-size", "0"), ["eval: argument --batch-size: must be at least 1, got 0"]),
    (("eval", "--batch-size", "-5"), ["argument --batch-size: must be at least 1, got -5"]),
    (("eval", "--max-length", "0"), ["--max-length must be at least 2, got 0"]),
    (("eval", "--threads", "0"), ["eval: argument --threads: must be between 1 and 1024"]),
    (("generate", "--max-new-tokens", "0"), ["generate: argument --max-new-tokens: must be at least 1"]),
    (("generate", "--top-p", "nan"), ["argument --top-p: expected a finite number, got 'nan'"]),
    (("generate", "--top-p", "2"), ["--top-p must be in (0, 1], got 2.0"]),
    (("generate", "--temperature", "inf"), ["argument --temperature: expected a finite number"]),
    (("generate", "--seed", "-1"), ["argument --seed: must be between 0 and"]),
    (("plan", "--batch", "0"), ["--batch, --max-length and --scored-tokens must be at least 1"]),
    (("plan", "--max-length", "-4"), ["--batch, --max-length and --scored-tokens must be at least 1"]),
    (("plan", "--max-length", "65"), ["--max-length 65 is more than the 64 positions"]),
    (("export", "--opset", "5"), ["export: argument --opset: must be between 13 and"]),
    (("export", "--seed", "-1"), ["export: argument --seed: must be between 0 and"]),
    (("replay", "--threads", "0"), ["replay: argument --threads: must be between 1 and 1024"]),
]


def _other_args(classifier, tmp_path, command, *flags):
    model, data = classifier["model"], classifier["dev"]
    return {
        "eval": ("eval", "--onnx", model, "--data", data),
        "generate": ("generate", "--onnx", model, "--prompt", "hello"),
        "plan": ("plan", "--onnx", model),
        "export": ("export", "--model", "minilm", "--output", tmp_path / "exported"),
        "replay": ("replay", "--onnx", model, "--log", tmp_path / "run.etlog", "--output", tmp_path / "re"),
    }[command] + flags


@pytest.mark.parametrize("flags,fragments", OTHER_CASES, ids=[" ".join(c[0]) for c in OTHER_CASES])
def test_other_commands_refuse_a_bad_number(classifier, tmp_path, cli, flags, fragments):
    untouched = Snapshot(classifier["dir"], tmp_path)
    proc = cli(*_other_args(classifier, tmp_path, *flags), cwd=tmp_path)
    assert_rejected(proc, *fragments)
    untouched.assert_unchanged()


YAML_CASES = [
    # (YAML lines after onnx/data/output_dir, fragments)
    ("steps: true", ["tune.yaml: key 'steps': expected an integer, got true"]),
    ("steps: 1.5", ["tune.yaml: key 'steps': expected an integer, got 1.5"]),
    ("steps: [1, 2]", ["tune.yaml: key 'steps': expected an integer, got a list"]),
    ("resume: \"yes\"", ["tune.yaml: key 'resume': expected true or false, got 'yes'"]),
    ("split: \"no\"", ["tune.yaml: key 'split': expected true or false, got 'no'"]),
    ("lr: abc", ["tune.yaml: key 'lr': expected a number or auto, got 'abc'"]),
    ("lr: .nan", ["tune.yaml: key 'lr': expected a finite number, got nan"]),
    ("lr: 1e400", ["tune.yaml: key 'lr': expected a finite number, got inf"]),
    ("trainable: {last: 1}", ["tune.yaml: key 'trainable': expected a string, got a mapping"]),
    ("optimizer: 5", ["tune.yaml: key 'optimizer': expected a string, got 5"]),
    ("threads: 0", ["--threads must be between 1 and 1024, got 0"]),
    ("max_length: 1", ["--max-length must be at least 2, got 1"]),
    ("importance_probes: true", ["tune.yaml: key 'importance_probes': expected an integer, got true"]),
    ("seed: -5", ["--seed must be between 0 and"]),
]


@pytest.mark.parametrize("line,fragments", YAML_CASES, ids=[c[0] for c in YAML_CASES])
def test_config_values_are_typed(classifier, tmp_path, cli, line, fragments):
    config = tmp_path / "tune.yaml"
    config.write_text(f"onnx: {classifier['model']}\ndata: {classifier['train']}\noutput_dir: {tmp_path / 'out'}\n"
                      f"steps: 2\n{line}\n")
    untouched = Snapshot(classifier["dir"], tmp_path)
    assert_rejected(cli("tune", "--config", config, cwd=tmp_path), *fragments)
    untouched.assert_unchanged()


@pytest.mark.parametrize("kind", ["folder", "binary"])
def test_config_that_is_not_a_yaml_file(classifier, tmp_path, cli, kind):
    config = tmp_path / "tune.yaml"
    if kind == "folder":
        config.mkdir()
    else:
        config.write_bytes(b"\xff\xfe\x00\x81binary")
    untouched = Snapshot(classifier["dir"], tmp_path)
    proc = cli("tune", "--config", config, "--onnx", classifier["model"], "--data", classifier["train"], cwd=tmp_path)
    assert_rejected(proc, str(config), "folder" if kind == "folder" else "not UTF-8")
    untouched.assert_unchanged()


def test_yaml_exponent_is_a_number_and_a_batch_beyond_the_data_is_capped(classifier, tmp_path, cli):
    """PyYAML reads ``1e-3`` as a string; the flag parser would take it, so the config does. A batch larger
    than the training set uses all of it each step, with one warning line, instead of allocating repeats."""
    config = tmp_path / "tune.yaml"
    out = tmp_path / "out"
    config.write_text(f"onnx: {classifier['model']}\ndata: {classifier['train']}\noutput_dir: {out}\n"
                      "steps: 1\nlr: 1e-3\nbatch_size: 1000000000\n")
    proc = cli("tune", "--config", config, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "edgetune: warning: --batch-size 1000000000 is more than the 256 training examples" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["lr"] == 0.001 and isinstance(summary["config"]["lr"], float)
    assert summary["config"]["max_length"] == 64  # the default 128, capped to the model's 64 positions


# -- the Python API: the same checks, the same error classes and messages ---------------------------------

FIT_CASES = [
    ({"steps": "10"}, "--steps: expected an integer, got '10'"),
    ({"steps": True}, "--steps: expected an integer, got true"),
    ({"lr": float("nan")}, "--lr: expected a finite number, got nan"),
    ({"lr": math.inf}, "--lr: expected a finite number, got inf"),
    ({"lr": "1e-3"}, "--lr: expected a number or auto, got '1e-3'"),
    ({"queries": 70000}, "--queries must be between 1 and 65535, got 70000 (the trajectory log stores q in 16 bits)"),
    ({"seed": -1}, "--seed must be between 0 and 18446744073709551615, got -1"),
    ({"warmup": 5, "steps": 2}, "--warmup 5 is more than --steps 2"),
    ({"save_every": -1}, "--save-every must be at least 0, got -1"),
    ({"eval_every": 3}, "--eval-every 3 needs --eval-data"),
    ({"stpes": 10}, "unknown option 'stpes'"),
    ({"resume": "yes"}, "--resume: expected true or false, got 'yes'"),
]


@pytest.fixture(scope="module")
def tuner(classifier):
    return Tuner.from_onnx(classifier["model"], trainable="head")


@pytest.mark.parametrize("options,message", FIT_CASES, ids=[str(c[0]) for c in FIT_CASES])
def test_fit_refuses_bad_options_before_any_work(tuner, classifier, tmp_path, options, message):
    untouched = Snapshot(classifier["dir"], tmp_path)
    with pytest.raises(EdgetuneError) as info:
        tuner.fit(classifier["train"], output_dir=tmp_path / "out", **options)
    assert str(info.value).startswith(message), info.value
    untouched.assert_unchanged()


def test_evaluate_refuses_a_batch_size_below_one(tuner, classifier):
    with pytest.raises(EdgetuneError, match=r"^--batch-size must be at least 1, got 0$"):
        tuner.evaluate(classifier["dev"], batch_size=0)


FROM_ONNX_CASES = [
    ({"max_length": 0}, EdgetuneError, "--max-length must be at least 2, got 0"),
    ({"max_length": 65}, ModelError, "--max-length 65 is more than the 64 positions"),
    ({"threads": -1}, EdgetuneError, "--threads must be between 1 and 1024, got -1"),
    ({"threads": 2.5}, EdgetuneError, "--threads: expected an integer, got 2.5"),
    ({"split": "no"}, EdgetuneError, "--split: expected true or false, got 'no'"),
    ({"task": "regression"}, EdgetuneError, "--task must be classification or lm, not 'regression'"),
    ({"trainable": 5}, EdgetuneError, "--trainable: expected a string, got 5"),
    ({"trainable": "last:99"}, ModelError, "--trainable 'last:99': the model has only 3 blocks"),
    ({"trainable": "lora:r=100000"}, ModelError, "lora r=100000 is more than layer"),
]


@pytest.mark.parametrize("options,error,message", FROM_ONNX_CASES, ids=[str(c[0]) for c in FROM_ONNX_CASES])
def test_from_onnx_refuses_bad_model_options(classifier, options, error, message):
    with pytest.raises(error) as info:
        Tuner.from_onnx(classifier["model"], **options)
    assert message in str(info.value)
    assert info.type is error
