"""`edgetune bundle` and `tune --bundle` (issue 14 parts 1 and 6): the manifest, the graphs and arena as `tune`
prepares them, static shapes, the Gemm pass, the provider placement, and the output folder's rules."""

import importlib.util
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper
from safetensors.numpy import load_file

from badinput import Snapshot, assert_rejected
from conftest import run_cli
from edgetune import Tuner
from edgetune.bundle.build import BundleOptions, bundle
from edgetune.bundle.format import MANIFEST, parse_manifest, read_bundle
from edgetune.bundle.passes import gemm_to_matmul
from edgetune.bundle.placement import KEEP_MATMUL, check_placement
from edgetune.config import ModelOptions
from edgetune.engine.session import session_options
from edgetune.errors import EdgetuneError, ModelError

# The flags the C runtime's parity runs use (it has no --lr auto and no guard).
TUNE = ("--lr", "1e-3", "--eps", "1e-3", "--guard", "off", "--schedule", "constant", "--steps", "60",
        "--batch-size", "16", "--seed", "3")


def make_bundle(model, out, *flags):
    proc = run_cli("bundle", "--onnx", model, "--output", out, *flags)
    assert proc.returncode == 0, proc.stderr
    return proc


def bundle_here(model, out, trainable, max_length=None, **options):
    """The bundle made in this process (what the CLI calls; the CLI's own runs are the tests' other bundles)."""
    return bundle(BundleOptions(str(model), trainable, out, ModelOptions(max_length=max_length), **options))


@pytest.fixture(scope="module")
def clf_bundle(classifier, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "clf"
    proc = make_bundle(classifier["model"], out, "--trainable", "last:1", "--provider", "cpu")
    return out, proc.stderr


def test_manifest_round_trip_and_arena_image(classifier, clf_bundle):
    out, _ = clf_bundle
    manifest = read_bundle(out)
    assert manifest.to_json() == json.loads((out / MANIFEST).read_text())
    assert parse_manifest(manifest.to_json(), out / MANIFEST) == manifest
    on_disk = {p.name for p in out.iterdir()} - {MANIFEST}
    assert set(manifest.files) == on_disk == {"prefix.onnx", "suffix.onnx", "model.onnx", "arena.bin", "tokenizer.json"}
    assert manifest.to_json()["task"] == "classify" and manifest.labels == ["negative", "positive"]
    assert manifest.trainable == "last:1" and manifest.static_shapes is None
    assert [i["name"] for i in manifest.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    # arena.bin is the model's own initial values at the core arena's offsets
    arena = np.fromfile(out / "arena.bin", np.float32)
    assert arena.size == manifest.arena.count
    base = {init.name: numpy_helper.to_array(init) for init in onnx.load(classifier["model"]).graph.initializer}
    for t in manifest.arena.tensors:
        size = int(np.prod(t.shape))
        assert np.array_equal(arena[t.offset:t.offset + size].reshape(t.shape), base[t.name]), t.name
    suffix_inputs = {i.name for i in onnx.load(out / "suffix.onnx").graph.input}
    assert {t.name for t in manifest.arena.tensors} <= suffix_inputs and set(manifest.boundary) <= suffix_inputs


def test_lm_bundle_tunes(lm, tmp_path):
    out = tmp_path / "lm"
    bundle_here(lm["model"], out, "last:1")
    manifest = read_bundle(out)
    assert manifest.task == "lm" and manifest.labels_input["per_token"] is True
    proc = run_cli("tune", "--bundle", out, "--data", lm["train"], *TUNE[:-4], "--steps", "5", "--batch-size", "4",
                   "--output-dir", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "model.onnx").is_file()


def test_tune_from_bundle_matches_tune_from_onnx(classifier, clf_bundle, tmp_path):
    """The same flags and seed from the bundle and from the ONNX file: the same tuned slice, bit for bit, and
    tuned models that plain ONNX Runtime runs to the same outputs."""
    out, _ = clf_bundle
    data = ("--data", classifier["train"], "--eval-data", classifier["dev"])
    from_bundle = run_cli("tune", "--bundle", out, *data, *TUNE, "--output-dir", tmp_path / "b")
    from_onnx = run_cli("tune", "--onnx", classifier["model"], "--trainable", "last:1", *data, *TUNE,
                        "--output-dir", tmp_path / "o")  # both tune the head exactly (--head auto)
    assert from_bundle.returncode == 0 and from_onnx.returncode == 0, from_bundle.stderr + from_onnx.stderr
    tuned, reference = (load_file(tmp_path / d / "trainable.safetensors") for d in ("b", "o"))
    assert tuned.keys() == reference.keys() and all(np.array_equal(tuned[k], reference[k]) for k in tuned)
    result = json.loads((tmp_path / "b" / "summary.json").read_text())["result"]
    assert result["after"]["loss"] < result["before"]["loss"]  # it learned
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(5, 40, (4, 12)), "attention_mask": np.ones((4, 12), np.int64),
             "token_type_ids": np.zeros((4, 12), np.int64)}
    logits = [ort.InferenceSession(str(tmp_path / d / "model.onnx")).run(["logits"], feeds)[0] for d in ("b", "o")]
    base = ort.InferenceSession(str(classifier["model"])).run(["logits"], feeds)[0]
    assert np.array_equal(logits[0], logits[1]) and not np.array_equal(logits[0], base)
    evaluated = run_cli("eval", "--bundle", out, "--data", classifier["dev"])  # the bundle's untuned model
    metrics = json.loads(evaluated.stdout)
    assert metrics["accuracy"] == result["before"]["accuracy"] and metrics["loss"] == pytest.approx(
        result["before"]["loss"], abs=1e-6)  # other batches, other padding: the same up to rounding


def test_changed_file_and_unknown_version_refused(clf_bundle, tmp_path):
    out, _ = clf_bundle
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    args = ("--data", "unused.jsonl", "--output-dir", tmp_path / "run")
    with open(copy / "suffix.onnx", "r+b") as handle:  # one byte changed: the size is the same
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    assert_rejected(run_cli("tune", "--bundle", copy, *args), "suffix.onnx", "sha256")
    body = json.loads((out / MANIFEST).read_text())
    (copy / MANIFEST).write_text(json.dumps({**body, "format_version": 2}))
    assert_rejected(run_cli("tune", "--bundle", copy, *args), "manifest.json", "format_version 2")
    for key, problem in (("arena", "key 'arena' is missing"), ("trainable", "key 'trainable' must be str")):
        broken = {k: v for k, v in body.items() if k != key} if key == "arena" else {**body, key: 3}
        with pytest.raises(ModelError, match=problem):
            parse_manifest(broken, copy / MANIFEST)
    assert not (tmp_path / "run").exists()
    assert_rejected(run_cli("tune", "--bundle", out, "--trainable", "head", *args), "--trainable", "--bundle")
    assert_rejected(run_cli("eval", "--bundle", out, "--data", "unused.jsonl", "--max-length", "8"), "--max-length",
                    "--bundle")


def test_static_shape_bundle(classifier, tmp_path):
    """Every input of the graphs fixed; batches padded to the length, evaluation's last batch filled (128 dev
    examples in batches of 12), and the same metrics as the dynamic graphs within float rounding."""
    static, dynamic = tmp_path / "static", tmp_path / "dynamic"
    bundle_here(classifier["model"], static, "last:1", max_length=32, batch_size=12)
    bundle_here(classifier["model"], dynamic, "last:1", max_length=32)
    assert read_bundle(static).static_shapes == {"batch_size": 12, "max_length": 32}
    for name in ("prefix.onnx", "suffix.onnx", "model.onnx"):
        for graph_input in onnx.load(static / name).graph.input:
            dims = graph_input.type.tensor_type.shape.dim
            # a known rank (a scalar too: the exact head's row count crosses the cut), every dimension fixed
            assert graph_input.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims), \
                (name, graph_input.name)
    fixed, free = (Tuner.from_bundle(d).evaluate(classifier["dev"]) for d in (static, dynamic))
    assert fixed["examples"] == free["examples"] == 128 and fixed["accuracy"] == free["accuracy"]
    assert abs(fixed["loss"] - free["loss"]) < 1e-5
    run = ("--data", classifier["train"], "--output-dir", tmp_path / "run")
    assert_rejected(run_cli("tune", "--bundle", static, *run, "--batch-size", "16"), "--batch-size 16", "exactly 12")
    with pytest.raises(EdgetuneError, match="--parallel on"):
        Tuner.from_bundle(static).fit(classifier["train"], batch_size=12, parallel="on", steps=1)
    proc = run_cli("tune", "--bundle", static, *run, *TUNE[:-4], "--batch-size", "12", "--steps", "10")
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def gemm_model(classifier, tmp_path_factory):
    """The tiny classifier with its head as one Gemm on a [labels, hidden] weight (transB), as exporters write
    a PyTorch Linear on a 2-D input."""
    folder = tmp_path_factory.mktemp("gemm")
    model = onnx.load(classifier["model"])
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    matmul = next(n for n in graph.node if n.name == "/classifier/MatMul")
    add = next(n for n in graph.node if n.name == "/classifier/Add")
    weight = numpy_helper.to_array(weights[matmul.input[1]])  # [hidden, labels], under an exporter's name
    weights[matmul.input[1]].CopyFrom(numpy_helper.from_array(weight.T.copy(), "classifier.weight"))
    gemm = helper.make_node("Gemm", [matmul.input[0], "classifier.weight", "classifier.bias"], ["logits"],
                            name="/classifier/Gemm", transB=1)
    nodes = [n for n in graph.node if n not in (matmul, add)] + [gemm]
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, folder / "model.onnx")
    shutil.copy(classifier["tokenizer"], folder / "tokenizer.json")
    return folder / "model.onnx"


def test_gemm_pass(gemm_model, classifier, tmp_path):
    rewritten, kept = tmp_path / "matmul", tmp_path / "gemm"
    assert bundle_here(gemm_model, rewritten, "head").rewritten == ["/classifier/Gemm"]
    assert bundle_here(gemm_model, kept, "head", gemm_to_matmul=False).rewritten == []
    ops = {d: [n.op_type for n in onnx.load(d / "suffix.onnx").graph.node] for d in (rewritten, kept)}
    assert "Gemm" not in ops[rewritten] and {"Transpose", "MatMul", "Add"} <= set(ops[rewritten])
    assert "Gemm" in ops[kept]
    # outputs with the MatMul kept as one (ORT would fuse it back into a Gemm on the CPU): equal to 1e-6
    tuner = Tuner.from_bundle(rewritten)
    batch = tuner.load_data(classifier["dev"]).batch(range(16), tuner.info.data_inputs)
    feeds = {**tuner.engine.data_feeds(batch), **tuner.weights}
    options = session_options(None)
    options.add_session_config_entry(*KEEP_MATMUL)
    as_matmul = ort.InferenceSession(str(rewritten / "suffix.onnx"), options, providers=["CPUExecutionProvider"])
    as_gemm = ort.InferenceSession(str(kept / "suffix.onnx"), providers=["CPUExecutionProvider"])
    logits = [s.run(["logits"], feeds)[0] for s in (as_matmul, as_gemm)]
    assert np.abs(logits[0] - logits[1]).max() <= 1e-6
    # the step works on the rewritten graph, and tunes what the Gemm model tunes
    data = ("--data", classifier["train"], "--eval-data", classifier["dev"], *TUNE)
    runs = [run_cli("tune", "--bundle", rewritten, *data, "--output-dir", tmp_path / "rb"),
            run_cli("tune", "--onnx", gemm_model, "--trainable", "head", *data, "--output-dir", tmp_path / "ro")]
    assert all(p.returncode == 0 for p in runs), runs[0].stderr + runs[1].stderr
    result = json.loads((tmp_path / "rb" / "summary.json").read_text())["result"]
    assert result["after"]["loss"] < result["before"]["loss"]
    tuned, reference = (load_file(tmp_path / d / "trainable.safetensors") for d in ("rb", "ro"))
    assert all(np.array_equal(tuned[k], reference[k]) for k in tuned)


def test_gemm_pass_refuses_alpha_and_folds_beta():
    def model(alpha, beta, bias_is_input):
        inputs = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in (("x", [2, 4]), ("w", [4, 3]))]
        init = [numpy_helper.from_array(np.arange(3, dtype=np.float32), "c")]
        if bias_is_input:
            inputs.append(helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [3]))
            init = []
        node = helper.make_node("Gemm", ["x", "w", "c"], ["y"], name="g", alpha=alpha, beta=beta)
        graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT,
                                                                                       [2, 3])], init)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    with pytest.raises(ModelError, match="alpha 0.5"):
        gemm_to_matmul(model(0.5, 1.0, False), {"w"}, "m.onnx")
    with pytest.raises(ModelError, match="beta 2.0 on a trainable bias"):
        gemm_to_matmul(model(1.0, 2.0, True), {"w", "c"}, "m.onnx")
    folded, original = model(1.0, 2.0, False), model(1.0, 2.0, False)
    assert gemm_to_matmul(folded, {"w"}, "m.onnx") == ["g"]
    feeds = {"x": np.ones((2, 4), np.float32), "w": np.full((4, 3), 0.5, np.float32)}
    outs = [ort.InferenceSession(m.SerializeToString()).run(["y"], feeds)[0] for m in (folded, original)]
    assert np.array_equal(outs[0], outs[1])


def test_placement_report_and_refusals(clf_bundle, classifier, tmp_path):
    out, report = clf_bundle
    placed = [line for line in report.splitlines() if line.startswith("placement: ")]
    # every trainable node of last:1 (the block's linears and norms, the pooler and the head) on the CPU
    assert len(placed) >= 10 and all(line.endswith(": CPUExecutionProvider") for line in placed)
    assert any("/classifier/" in line for line in placed)

    def row(provider, op):
        return {"node": "n", "op": op, "provider": provider, "weights": ["w"]}

    for provider, op in (("XnnpackExecutionProvider", "MatMul"), ("XnnpackExecutionProvider", "Gemm"),
                         ("CoreMLExecutionProvider", "Gemm"), ("NnapiExecutionProvider", "Add")):
        with pytest.raises(ModelError, match=f"would run on {provider}.*silently ignore"):
            check_placement([row(provider, op)])
    check_placement([row("CoreMLExecutionProvider", "MatMul"), row("QNNExecutionProvider", "MatMul"),
                     row("CPUExecutionProvider", "Gemm")])
    # XNNPACK is not in the PyPI wheel: asking for it is one line, and nothing is left behind
    if "XnnpackExecutionProvider" not in ort.get_available_providers():
        target = tmp_path / "xnnpack"
        proc = run_cli("bundle", "--onnx", classifier["model"], "--trainable", "last:1", "--output", target,
                       "--provider", "xnnpack")
        assert_rejected(proc, "--provider XnnpackExecutionProvider", "not in this onnxruntime build")
        assert not target.exists()


def test_qnn_comes_from_its_package_with_static_shapes(classifier, tmp_path):
    """--provider qnn: static shapes only; without onnxruntime-qnn one line naming the package; with it (its
    wheel unzipped on PYTHONPATH here: benchmarks/probe_qnn.py) the trainable MatMuls are placed on its HTP."""
    args = ("bundle", "--onnx", classifier["model"], "--trainable", "last:1", "--provider", "qnn")
    assert_rejected(run_cli(*args, "--output", tmp_path / "dynamic"), "--provider qnn needs static shapes",
                    "--batch-size")
    proc = run_cli(*args, "--output", tmp_path / "static", "--batch-size", 8, "--max-length", 16)
    if importlib.util.find_spec("onnxruntime_qnn") is None:
        assert_rejected(proc, "--provider QNNExecutionProvider", "package onnxruntime-qnn", "pip install onnxruntime-qnn")
        assert not (tmp_path / "static").exists()
    else:
        assert proc.returncode == 0, proc.stderr
        matmuls = [line for line in proc.stderr.splitlines() if line.startswith("placement: ") and "(MatMul" in line]
        assert matmuls and all(line.endswith(": QNNExecutionProvider") for line in matmuls)
        assert "head: zo (--provider qnn" in proc.stderr and read_bundle(tmp_path / "static").head == "zo"
    assert_rejected(run_cli(*args, "--head", "exact", "--output", tmp_path / "exact", "--batch-size", 8),
                    "--head exact is not for --provider qnn", "--head zo")


def test_the_manifest_says_how_the_head_is_tuned(classifier, clf_bundle, tmp_path):
    """--head auto (the default) prepares the exact head where tune would choose it, and the manifest says so with
    the head's tensors; --head zo, and a manifest without the key (an older bundle), tune it by ZO."""
    out, _ = clf_bundle
    manifest = read_bundle(out)
    weight = manifest.head_tensors["weight"]  # the tiny model's head is a MatMul over an exported weight name
    assert manifest.head == "exact" and manifest.head_tensors["bias"] == "classifier.bias"
    assert weight in {t.name for t in manifest.arena.tensors} and Tuner.from_bundle(out).head.weight == weight
    zo = bundle_here(classifier["model"], tmp_path / "zo", "last:1", head="zo").manifest
    assert zo.head == "zo" and zo.head_tensors is None and Tuner.from_bundle(tmp_path / "zo").head is None
    assert_rejected(run_cli("tune", "--bundle", tmp_path / "zo", "--data", classifier["train"], "--head", "exact",
                            "--steps", 1), "--head exact: the bundle", "bundle the model with --head exact")
    body = manifest.to_json()
    del body["head"], body["head_tensors"]
    assert parse_manifest(body, out / MANIFEST).head == "zo"
    body.update(head="exact", head_tensors={"weight": "nowhere", "bias": None})
    with pytest.raises(ModelError, match="key 'head_tensors.weight' names 'nowhere'"):
        parse_manifest(body, out / MANIFEST)


def test_output_folder_rules(classifier, clf_bundle, tmp_path):
    out, _ = clf_bundle
    before = Snapshot(out, classifier["dir"])
    again = ("--onnx", classifier["model"], "--trainable", "last:1")
    assert_rejected(run_cli("bundle", *again, "--output", out), "already holds a bundle", "--force")
    assert_rejected(run_cli("bundle", *again, "--output", classifier["dir"]), "--output", "holds the input")
    before.assert_unchanged()
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert_rejected(run_cli("bundle", *again, "--output", foreign), "notes.txt", "not a bundle's")
    replaced = tmp_path / "replaced"
    shutil.copytree(out, replaced)
    with pytest.raises(ModelError, match="model not found"):  # a replacement that fails leaves the old bundle whole
        bundle_here(tmp_path / "missing.onnx", replaced, "head", force=True)
    assert read_bundle(replaced).trainable == "last:1"
    bundle_here(classifier["model"], replaced, "head", force=True)
    assert read_bundle(replaced).trainable == "head"
    assert not (replaced / "prefix.onnx").exists() or "prefix.onnx" in read_bundle(replaced).files
