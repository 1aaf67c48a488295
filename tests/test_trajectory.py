"""Trajectory logs (.etlog): a run's steps rebuild its tuned model bit for bit; bad logs are refused."""

import struct

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgetune import Tuner
from edgetune.errors import EdgetuneError
from edgetune.artifacts.trajectory import MAGIC, Trajectory, record_size
from badinput import assert_rejected

RUN = dict(steps=24, lr=1e-2, eps=1e-3, queries=3, weight_decay=0.1, seed=7, save_every=10)
PREAMBLE = len(MAGIC) + 8  # magic, u32 version, u32 header length


def tune(model, data, out, trainable="last:1", **options):
    tuner = Tuner.from_onnx(model, trainable=trainable)
    tuner.fit(data, output_dir=out, **{**RUN, **options})
    tuner.save(out)
    return tuner


def plain_logits(path, batch):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], batch.inputs)[0]


@pytest.fixture(scope="module")
def run(classifier, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    tuner = tune(classifier["model"], classifier["train"], out)
    return {"out": out, "log": out / "run.etlog", "tuner": tuner}


@pytest.mark.parametrize("trainable", ["last:1", "head,lora:r=2,targets=q,v", "sparse:density=0.05"])
def test_replay_rebuilds_the_tuned_model_bit_for_bit(classifier, tmp_path, cli, trainable):
    tuner = tune(classifier["model"], classifier["train"], tmp_path / "run", trainable=trainable)
    result = cli("replay", "--onnx", classifier["model"], "--log", tmp_path / "run" / "run.etlog",
                 "--output", tmp_path / "replayed")
    assert result.returncode == 0, result.stderr
    assert f"replayed {RUN['steps']} steps" in result.stderr  # the console writes to stderr

    batch = next(tuner.load_data(classifier["dev"]).batches(32, tuner.info.data_inputs))
    tuned = plain_logits(tmp_path / "run" / "model.onnx", batch)
    np.testing.assert_array_equal(plain_logits(tmp_path / "replayed" / "model.onnx", batch), tuned)
    assert not np.allclose(plain_logits(classifier["model"], batch), tuned, atol=1e-4), "the run changed nothing"
    assert (tmp_path / "replayed" / "model.onnx").read_bytes() == (tmp_path / "run" / "model.onnx").read_bytes()


def test_log_is_a_header_and_fixed_size_step_records(run):
    data = run["log"].read_bytes()
    header_len = struct.unpack_from("<I", data, len(MAGIC) + 4)[0]
    body = len(data) - PREAMBLE - header_len - 32  # a sha256 ends the file
    per_step = record_size(RUN["queries"])  # 28 + 12 q bytes
    # the exact head's values (--head auto on last:1) ride on the last record of each write: at 10, 20 and 24
    head = run["tuner"].head
    head_bytes = 4 * sum(run["tuner"].weights[n].size for n in (head.weight, head.bias))
    writes = -(-RUN["steps"] // RUN["save_every"])
    # StepRecord fields beyond the core ones (an optimizer's extension) may add a few bytes per step
    assert RUN["steps"] * per_step + writes * head_bytes <= body <= RUN["steps"] * (per_step + 32) + writes * head_bytes
    assert header_len < 2048
    assert len(data) * 1000 < run["out"].joinpath("model.onnx").stat().st_size * 100  # under 10 % of the model


def test_log_round_trips_the_step_records(run):
    log = Trajectory.read(run["log"])
    steps = (run["out"] / "steps.jsonl").read_text().splitlines()
    assert len(log.records) == len(steps) == RUN["steps"]
    first = log.records[0]
    assert first.step == 0 and len(first.seeds) == RUN["queries"] and first.weight_decay == np.float32(0.1)
    assert log.header["trainable"] == "last:1" and log.header["config"]["seed"] == RUN["seed"]
    assert [name for name, _ in log.header["arena"]] == [p.name for p in run["tuner"].params]


def test_resumed_run_writes_the_same_log_as_an_uninterrupted_one(classifier, run, tmp_path, kill_at_step):
    kill_at_step(classifier["model"], classifier["train"], tmp_path, trainable="last:1", kill_at=15, **RUN)
    assert len(Trajectory.read(tmp_path / "run.etlog").records) == 10  # the checkpoint at step 10
    Tuner.from_onnx(classifier["model"], trainable="last:1").fit(
        classifier["train"], output_dir=tmp_path, resume=True, **RUN)
    assert (tmp_path / "run.etlog").read_bytes() == run["log"].read_bytes()


def test_replay_refuses_a_log_of_another_base_model(classifier, run, tmp_path, cli):
    other = tmp_path / "other.onnx"
    model = onnx.load(str(classifier["model"]))
    model.doc_string = "the same graph, another file"
    onnx.save(model, str(other))
    result = cli("replay", "--onnx", other, "--log", run["log"], "--output", tmp_path / "out",
                 "--tokenizer", classifier["tokenizer"])
    assert result.returncode == 2
    assert result.stderr.startswith("edgetune: error: ") and result.stderr.count("\n") == 1
    assert "recorded on another base model" in result.stderr and str(other) in result.stderr


def test_replay_refuses_a_truncated_log_in_one_line(classifier, run, tmp_path, cli):
    truncated = tmp_path / "run.etlog"
    truncated.write_bytes(run["log"].read_bytes()[:-5])
    result = cli("replay", "--onnx", classifier["model"], "--log", truncated, "--output", tmp_path / "out")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "truncated or corrupt" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("damage, message", [
    (lambda b: b"ETLOX" + b[5:], "not an edgetune trajectory log"),
    (lambda b: b[:5] + struct.pack("<I", 99) + b[9:], "version 99 is not supported"),
    (lambda b: b[:PREAMBLE + 2] + b"#" + b[PREAMBLE + 3:], "truncated or corrupt"),  # the header is checked too
    (lambda b: b[:-40] + bytes([b[-40] ^ 1]) + b[-39:], "truncated or corrupt"),
    (lambda b: b[:PREAMBLE - 4], "not an edgetune trajectory log"),
])
def test_damaged_logs_are_refused(run, tmp_path, damage, message):
    path = tmp_path / "damaged.etlog"
    path.write_bytes(damage(run["log"].read_bytes()))
    with pytest.raises(EdgetuneError, match=message):
        Trajectory.read(path)


def test_a_version_1_log_still_replays_and_a_newer_one_is_one_line(classifier, run, tmp_path, cli):
    from edgetune.artifacts import framed
    from edgetune.artifacts.trajectory import _extra_bytes

    zo = tmp_path / "zo"  # version 1 logs are of ZO-head runs
    tune(classifier["model"], classifier["train"], zo, head="zo")
    log = Trajectory.read(zo / "run.etlog")
    assert struct.unpack_from("<I", (zo / "run.etlog").read_bytes(), len(MAGIC))[0] == 2
    # version 1: the same records without the head length (and segment) that version 2 added
    old = [struct.pack("<IHHffff", r.step, len(r.seeds), len(_extra_bytes(r)), r.lr, r.eps, r.weight_decay, r.loss)
           + b"".join(struct.pack("<Qf", s, g) for s, g in zip(r.seeds, r.grads)) + _extra_bytes(r)
           for r in log.records]
    v1 = tmp_path / "v1.etlog"
    v1.write_bytes(framed.pack(MAGIC, 1, {**log.header, "records": len(old)}, old))
    assert Trajectory.read(v1).records == log.records
    result = cli("replay", "--onnx", classifier["model"], "--log", v1, "--output", tmp_path / "replayed")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "replayed" / "model.onnx").read_bytes() == (zo / "model.onnx").read_bytes()
    newer = tmp_path / "v3.etlog"
    newer.write_bytes(framed.pack(MAGIC, 3, {**log.header, "records": 0}, []))
    proc = cli("replay", "--onnx", classifier["model"], "--log", newer, "--output", tmp_path / "out")
    assert_rejected(proc, "v3.etlog", "version 3 is not supported", "a newer edgetune wrote it")
