"""Saving streams the base file (graph.stream.ModelFile): the output equals the in-memory fold it replaced,
tensor for tensor, metadata and ORT outputs; a failed write leaves the old file; summary.json's peak RSS
is read after the save."""

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from edgetune import Tuner
from edgetune.artifacts.adapters import LORA_GRAPH, _declare_adapter_inputs
from edgetune.errors import ModelError
from edgetune.graph.lift import fold_weights
from edgetune.graph.lora import initial_values, merge_lora, plan_lora
from edgetune.graph.model import load_model
from edgetune.graph.trainable import TrainableSpec
from edgetune.graph import stream
from edgetune.graph.stream import ModelFile
from edgetune.artifacts.sparse_diff import FILE_NAME as SPARSE_DIFF, SparseDiff

CPU = ["CPUExecutionProvider"]


def _tune_randomly(tuner: Tuner, seed: int = 0) -> None:
    """Give every tuned tensor new values (as a run would), so that nothing equals the base by accident."""
    rng = np.random.default_rng(seed)
    for value in tuner.weights.values():
        value[...] = value + rng.standard_normal(value.shape).astype(np.float32) * 0.05


def _logits(path, feeds):
    return ort.InferenceSession(str(path), providers=CPU).run(["logits"], feeds)[0]


def assert_same_model(path, expected: onnx.ModelProto, feeds=None) -> None:
    """``path`` holds ``expected``: same graph, initializers (values and types), metadata, ORT outputs."""
    got = onnx.load(str(path))
    onnx.checker.check_model(got)
    assert [(t.name, t.data_type, list(t.dims)) for t in got.graph.initializer] == \
        [(t.name, t.data_type, list(t.dims)) for t in expected.graph.initializer]
    for mine, theirs in zip(got.graph.initializer, expected.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(mine), numpy_helper.to_array(theirs), err_msg=mine.name)
    for part in ("node", "input", "output", "value_info"):
        assert list(getattr(got.graph, part)) == list(getattr(expected.graph, part)), part
    assert {p.key: p.value for p in got.metadata_props} == {p.key: p.value for p in expected.metadata_props}
    assert (got.ir_version, list(got.opset_import)) == (expected.ir_version, list(expected.opset_import))
    if feeds is not None:
        reference = path.with_name("expected.onnx")
        onnx.save(expected, str(reference))
        np.testing.assert_array_equal(_logits(path, feeds), _logits(reference, feeds))


@pytest.fixture(scope="module")
def feeds(classifier):
    tuner = Tuner.from_onnx(classifier["model"], trainable=None, max_length=32)
    return next(tuner.load_data(classifier["dev"]).batches(16, tuner.info.data_inputs)).inputs


def test_plain_slice_equals_the_fold(classifier, feeds, tmp_path):
    tuner = Tuner.from_onnx(classifier["model"], trainable="all", max_length=32)
    _tune_randomly(tuner)
    tuner.save(tmp_path)
    expected = fold_weights(load_model(classifier["model"]), tuner.weights, tuner.output_metadata())
    assert_same_model(tmp_path / "model.onnx", expected, feeds)
    assert {p.key for p in expected.metadata_props} >= {"edgetune.task", "edgetune.labels"}


def test_lora_merge_and_lora_graph_equal_the_fold(classifier, feeds, tmp_path):
    trainable = "head,lora:r=4,targets=q,v"
    tuner = Tuner.from_onnx(classifier["model"], trainable=trainable, max_length=32)
    _tune_randomly(tuner)  # B leaves zero, so the merge changes the weights
    tuner.save(tmp_path)

    spec = TrainableSpec.parse(trainable).lora
    base, metadata = load_model(classifier["model"]), tuner.output_metadata()
    layers = plan_lora(base, spec)
    values = initial_values(layers, spec.seed)
    values.update({n: w for n, w in tuner.weights.items() if n in values})
    others = {n: w for n, w in tuner.weights.items() if n not in values}
    lora_graph = fold_weights(load_model(classifier["model"]), {}, metadata)
    _declare_adapter_inputs(lora_graph, layers, others)
    fold_weights(base, others, metadata)
    merge_lora(base, layers, values)
    assert_same_model(tmp_path / "model.onnx", base, feeds)
    assert_same_model(tmp_path / LORA_GRAPH, lora_graph)


def test_sparse_delta_equals_the_fold(classifier, feeds, tmp_path):
    tuner = Tuner.from_onnx(classifier["model"], trainable="head,sparse:density=0.05,targets=q,v", max_length=32)
    _tune_randomly(tuner)
    tuner.save(tmp_path)
    expected = load_model(classifier["model"])
    SparseDiff.read(tmp_path / SPARSE_DIFF).apply(expected, "test")
    fold_weights(expected, {}, tuner.output_metadata())
    assert_same_model(tmp_path / "model.onnx", expected, feeds)


def test_a_base_with_external_data_is_streamed_from_its_data_file(classifier, feeds, tmp_path):
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    shutil.copyfile(classifier["tokenizer"], base_dir / "tokenizer.json")
    onnx.save(load_model(classifier["model"]), str(base_dir / "model.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    assert (base_dir / "model.onnx").stat().st_size < 50_000  # the weights really are outside
    tuner = Tuner.from_onnx(base_dir / "model.onnx", trainable="head,last:1", max_length=32)
    _tune_randomly(tuner)
    tuner.save(tmp_path / "out")
    expected = fold_weights(load_model(base_dir / "model.onnx"), tuner.weights, tuner.output_metadata())
    assert_same_model(tmp_path / "out" / "model.onnx", expected, feeds)
    assert sorted(p.name for p in (tmp_path / "out").glob("model.onnx*")) == ["model.onnx"]  # self-contained
    assert not (tmp_path / "out" / "weights.bin").exists()


def test_a_large_output_gets_its_weights_in_a_data_file(classifier, feeds, tmp_path, monkeypatch):
    """Past the threshold (1 GiB; here lowered) the tensors go to model.onnx.data, as lift.save_model does."""
    monkeypatch.setattr(stream, "_EXTERNAL_DATA_THRESHOLD", 1)
    tuner = Tuner.from_onnx(classifier["model"], trainable="head", max_length=32)
    _tune_randomly(tuner)
    tuner.save(tmp_path)
    assert (tmp_path / "model.onnx").stat().st_size < 50_000 < (tmp_path / "model.onnx.data").stat().st_size
    expected = fold_weights(load_model(classifier["model"]), tuner.weights, tuner.output_metadata())
    assert_same_model(tmp_path / "model.onnx", expected, feeds)


def test_tensors_in_typed_fields_are_kept_or_rewritten(classifier, tmp_path):
    """float_data tensors have no byte range to copy: untouched, they keep their values; tuned, they
    are written as raw_data."""
    model = load_model(classifier["model"])
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT][:2]
    for tensor in floats:
        value = numpy_helper.to_array(tensor)
        tensor.CopyFrom(helper.make_tensor(tensor.name, onnx.TensorProto.FLOAT, value.shape, value.reshape(-1)))
        assert len(tensor.float_data) and not tensor.raw_data
    onnx.save(model, str(tmp_path / "typed.onnx"))
    tuned = {floats[0].name: numpy_helper.to_array(floats[0]) + 1.0}
    ModelFile(tmp_path / "typed.onnx").write(tmp_path / "out.onnx", tuned, {"k": "v"})
    assert_same_model(tmp_path / "out.onnx", fold_weights(model, tuned, {"k": "v"}))
    np.testing.assert_array_equal(ModelFile(tmp_path / "typed.onnx").array(floats[1].name),
                                  numpy_helper.to_array(floats[1]))


def test_a_failed_write_leaves_the_old_file_and_no_temporary(classifier, tmp_path):
    base = ModelFile(classifier["model"])
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the previous run's model")
    names = [t.name for t in base.skeleton.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]

    def fails():  # the last tensor: everything before it is already in the temporary file
        raise RuntimeError("disk pulled")

    with pytest.raises(RuntimeError, match="disk pulled"):
        base.write(target, {names[-1]: fails})
    with pytest.raises(ModelError, match="holds"):  # a computed value of the wrong size
        base.write(target, {names[-1]: lambda: np.zeros(3, np.float32)})
    with pytest.raises(ModelError, match="not an initializer"):
        base.write(target, {"no such tensor": np.zeros(3, np.float32)})
    assert target.read_bytes() == b"the previous run's model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_summary_peak_rss_is_read_after_the_save(classifier, tmp_path):
    """The peak in summary.json covers what happened after fit() (here 300 MB allocated before save())."""
    script = f"""
import json, sys, numpy as np
from edgetune import Tuner
from edgetune.tuner import peak_rss_mb
tuner = Tuner.from_onnx({str(classifier['model'])!r}, trainable="head", max_length=32)
result = tuner.fit({str(classifier['train'])!r}, steps=2)
block = np.ones(300 << 18, np.float32)  # 300 MB, touched
del block
before_save = peak_rss_mb()
tuner.save({str(tmp_path)!r}, {{"result": result.to_json()}})
print(json.dumps([result.peak_rss_mb, before_save, peak_rss_mb()]))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    at_fit, before_save, at_exit = json.loads(proc.stdout.splitlines()[-1])
    recorded = json.loads((tmp_path / "summary.json").read_text())["result"]["peak_rss_mb"]
    assert before_save > at_fit + 250
    # VmHWM readings may lag by the kernel's per-thread RSS counter batches (64 pages): 1 MB of slack
    assert before_save - 1 <= recorded <= at_exit + 1


def test_tensor_locations_point_at_each_tensors_bytes(classifier):
    """The windowed file reader behind tensor_locations finds every raw_data byte range (used to copy them)."""
    from edgetune.graph.wire import tensor_locations

    model = load_model(classifier["model"])
    locations = tensor_locations(classifier["model"])
    data = classifier["model"].read_bytes()
    assert set(locations) == {t.name for t in model.graph.initializer if t.HasField("raw_data")}
    for tensor in model.graph.initializer:
        file, offset, length = locations[tensor.name]
        assert file == classifier["model"].name and data[offset:offset + length] == tensor.raw_data


def test_checkpoints_are_written_in_the_safetensors_layout(tmp_path):
    """save_checkpoint writes tensor by tensor; safetensors' own reader gets the tensors and metadata back."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    from edgetune.artifacts.checkpoint import load_checkpoint, save_checkpoint

    rng = np.random.default_rng(1)
    tensors = {"w": rng.standard_normal((5, 3)).astype(np.float32), "empty": np.zeros((0, 4), np.float32),
               "b": rng.standard_normal(7).astype(np.float32)[::2]}  # a strided view is written contiguous
    save_checkpoint(tmp_path / "c.safetensors", tensors, {"step": 4})
    read = load_file(str(tmp_path / "c.safetensors"))
    assert read.keys() == tensors.keys()
    for name, value in tensors.items():
        np.testing.assert_array_equal(read[name], value)
    with safe_open(str(tmp_path / "c.safetensors"), framework="numpy") as handle:
        assert handle.metadata()["format"] == "edgetune.artifacts.checkpoint"
    assert load_checkpoint(tmp_path / "c.safetensors")[1] == {"step": 4}


def test_summary_peak_rss_is_the_jobs_own_not_its_parents(classifier, tmp_path):
    """Linux carries ru_maxrss over exec: a tune started by a process that once held 400 MB must not report it."""
    script = f"""
import subprocess, sys, numpy as np
block = np.ones(400 << 18, np.float32)  # 400 MB, touched, then freed: the parent's peak
del block
subprocess.run([sys.executable, "-m", "edgetune.cli", "tune", "--onnx", {str(classifier['model'])!r},
                "--data", {str(classifier['train'])!r}, "--steps", "2", "--trainable", "head",
                "--output-dir", {str(tmp_path / 'out')!r}], check=True, capture_output=True)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    recorded = json.loads((tmp_path / "out" / "summary.json").read_text())["result"]["peak_rss_mb"]
    assert 50 < recorded < 350
