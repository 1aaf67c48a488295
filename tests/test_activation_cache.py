"""The frozen-prefix activation cache (engine/activation_cache.py): exact, within its budget, resumable."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from badinput import Snapshot, assert_rejected
from edgetune import Tuner
from edgetune.engine.activation_cache import ActivationCache

TRAINABLE = "last:1"  # the tiny classifier's last block: a split with a two-block frozen prefix
STEPS, BATCH = 40, 16  # 2.5 epochs of the 256 examples: the later ones run from the cache


class CountingPrefix:
    """The prefix session, counting its runs: after the first epoch a step must not run it."""

    def __init__(self, session):
        self.session, self.runs = session, 0

    def run(self, *args, **kwargs):
        self.runs += 1
        return self.session.run(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.session, name)


def fit(classifier, trainable=TRAINABLE, **options):
    head = {"head": "exact"} if options.get("head") == "exact" else {}  # its gradient is prepared in the graph
    tuner = Tuner.from_onnx(classifier["model"], trainable=trainable, **head)
    counter = tuner.engine.prefix = CountingPrefix(tuner.engine.prefix)
    records = []

    class Record:
        def on_start(self, start, total): ...
        def on_eval(self, step, metrics): ...
        def on_step(self, record):
            records.append((record.step, counter.runs, record.to_json()))

    result = tuner.fit(classifier["train"], steps=STEPS, batch_size=BATCH, lr=1e-2, progress=Record(), **options)
    return tuner, result, records


def assert_same_run(a, b):
    (tuner_a, _, records_a), (tuner_b, _, records_b) = a, b
    assert [r[2] for r in records_a] == [r[2] for r in records_b]  # every projected gradient, to the bit
    for name, value in tuner_a.weights.items():
        np.testing.assert_array_equal(value, tuner_b.weights[name])


def test_ragged_lengths_and_a_split(classifier):
    tuner = Tuner.from_onnx(classifier["model"], trainable=TRAINABLE)
    assert tuner.engine.cached and len(tuner.engine.cached) < len(tuner.engine.boundary)  # the mask is recomputed
    assert len({len(ids) for ids in tuner.load_data(classifier["train"]).ids}) > 3


def test_cached_run_is_bit_identical_and_skips_the_prefix_after_the_first_epoch(classifier):
    off = fit(classifier, activation_cache="off")
    on = fit(classifier, activation_cache="1MB")
    assert_same_run(off, on)
    summary = on[1].activation_cache
    assert summary["where"] == "ram" and summary["examples_cached"] == 256 and summary["dtype"] == "float32"
    assert summary["bytes_per_example"] == summary["total_bytes"] / 256 > 0
    assert off[1].activation_cache is None
    epoch = 256 // BATCH
    runs_after_first_epoch = on[2][-1][1] - on[2][epoch][1]
    assert runs_after_first_epoch == 0
    assert off[2][-1][1] - off[2][epoch][1] == STEPS - epoch - 1


@pytest.mark.parametrize("head", ["zo", "exact"])
def test_the_head_slice_keeps_the_token_rows_its_pooled_input_is_made_from(classifier, head):
    """The head's input is pooled, [batch, width]: the cache keeps the token rows under it (the pooling reads
    them in the batch's own shape, as the run without the cache does) and a step after the first epoch runs
    only the pooling and the head. ``auto``: in the file."""
    off = fit(classifier, "head", activation_cache="off", head=head)
    on = fit(classifier, "head", activation_cache="auto", head=head)
    assert_same_run(off, on)
    engine = on[0].engine
    assert engine.cached and not set(engine.cached) & set(engine.boundary)  # token rows, not the pooled vector
    assert on[1].activation_cache["where"] == "file" and on[1].activation_cache["examples_cached"] == 256
    epoch = 256 // BATCH
    assert on[2][-1][1] - on[2][epoch][1] == 0
    runs = np.diff([r[1] for r in on[2][:epoch]])  # per first-epoch step: 1 (the padded batch) or one per example
    assert {1, BATCH} <= set(runs.tolist())  # both ways of filling the cache gave these bits


def test_a_pooling_that_reads_the_padding_turns_the_cache_off(classifier, tmp_path):
    """A mean over every position, padding included (no mask): the cache's zeros at the padded positions
    are not what the prefix pooled there, and the first batch's check says so."""
    import shutil

    import onnx
    from onnx import helper

    folder = tmp_path / "unmasked"
    shutil.copytree(classifier["dir"], folder)
    model = onnx.load(str(classifier["model"]))
    at, gather = next((i, n) for i, n in enumerate(model.graph.node) if n.output[0] == "/bert/pooler/Gather_output_0")
    model.graph.node.remove(gather)
    model.graph.node.insert(at, helper.make_node("ReduceMean", [gather.input[0]], [gather.output[0]], axes=[1],
                                                 keepdims=0))
    path = folder / Path(classifier["model"]).name
    onnx.save(model, str(path))
    tuner = Tuner.from_onnx(path, trainable="head")
    data = tuner.load_data(classifier["train"])
    batch = data.batch(range(BATCH), tuner.info.data_inputs)
    batch.examples = np.arange(BATCH)
    cache = ActivationCache(tuner.engine.cached, [len(ids) for ids in data.ids], budget=2**20)
    assert tuner.engine.attach_cache(cache, batch) == "the loss from cached rows differs from the prefix's in the last bit"
    assert tuner.engine.activation_cache is None


def test_a_tiny_budget_goes_to_a_file_that_is_gone_at_the_end(classifier, tmp_path):
    out = tmp_path / "run"
    off = fit(classifier, activation_cache="off")
    tuner = Tuner.from_onnx(classifier["model"], trainable=TRAINABLE)
    out.mkdir()
    result = tuner.fit(classifier["train"], steps=STEPS, batch_size=BATCH, lr=1e-2, activation_cache="1KB",
                       output_dir=out, overwrite=True)
    assert result.activation_cache["where"] == "file"
    for name, value in off[0].weights.items():
        np.testing.assert_array_equal(value, tuner.weights[name])
    assert not [p for p in out.rglob("*") if "activations" in p.name]


def test_the_file_is_unlinked_while_in_use(tmp_path):
    cache = ActivationCache(["h"], [3, 5], budget=0, spill_dir=tmp_path)
    hidden = np.arange(2 * 5 * 4, dtype=np.float32).reshape(2, 5, 4)
    cache.put(np.array([0, 1]), {"h": hidden}, 5)
    assert not list(tmp_path.iterdir())  # nothing to leave behind, whatever ends the process
    got = cache.get(np.array([1, 0]), 5)["h"]
    np.testing.assert_array_equal(got[0], hidden[1])
    np.testing.assert_array_equal(got[1, :3], hidden[0, :3])
    assert not got[1, 3:].any()  # padded positions zero
    cache.close()


def test_parallel_prge_with_the_cache(classifier):
    off = fit(classifier, activation_cache="off", parallel="on", queries=2)
    on = fit(classifier, activation_cache="1MB", parallel="on", queries=2)
    assert on[1].activation_cache["examples_cached"] == 256
    assert_same_run(off, on)


def test_fp16_is_close_and_half_the_size(classifier):
    fp32 = fit(classifier, activation_cache="1MB")
    fp16 = fit(classifier, activation_cache="1MB", activation_cache_dtype="fp16")
    assert fp16[1].activation_cache["bytes_per_token"] * 2 == fp32[1].activation_cache["bytes_per_token"]
    losses = lambda run: np.array([r[2]["loss"] for r in run[2]])  # noqa: E731
    np.testing.assert_allclose(losses(fp16), losses(fp32), rtol=1e-2)


@pytest.mark.parametrize("trainable", [TRAINABLE, "head"])
def test_resume_refills_the_cache_and_continues_bit_for_bit(classifier, tmp_path, kill_and_resume, trainable):
    whole = fit(classifier, trainable, activation_cache="off")
    resumed, result = kill_and_resume(classifier["model"], classifier["train"], tmp_path / "run",
                                      trainable=trainable, kill_at=25, save_every=20, steps=STEPS,
                                      batch_size=BATCH, lr=1e-2, activation_cache="1MB")
    assert result.activation_cache["examples_cached"] > 0
    for name, value in whole[0].weights.items():
        np.testing.assert_array_equal(value, resumed.weights[name])


@pytest.mark.parametrize("value", ["lots", "0MB", "-1"])
def test_bad_budget_is_one_line(cli, classifier, tmp_path, value):
    snapshot = Snapshot(classifier["dir"])
    proc = cli("tune", "--onnx", classifier["model"], "--data", classifier["train"], "--output-dir", tmp_path / "out",
               "--activation-cache", value)
    assert_rejected(proc, "--activation-cache", value)
    snapshot.assert_unchanged()


def test_a_sub_batch_keeps_its_padding(classifier):
    """P-RGE reads roles from rows of a batch (Batch.select), padded as the whole batch is."""
    tuner = Tuner.from_onnx(classifier["model"], trainable=TRAINABLE)
    data = tuner.load_data(classifier["train"])
    batch = data.batch(range(BATCH), tuner.info.data_inputs)
    batch.examples = np.arange(BATCH)
    shortest = int(np.argmin([len(data.ids[i]) for i in range(BATCH)]))
    cache = ActivationCache(tuner.engine.cached, [len(ids) for ids in data.ids], budget=2**20)
    assert tuner.engine.attach_cache(cache, batch) is None
    expected = tuner.engine.data_feeds(replace(batch, examples=None).select([shortest, shortest]))
    got = tuner.engine.data_feeds(batch.select([shortest, shortest]))
    assert cache.has_all(np.array([shortest]))
    for name, value in expected.items():
        if name in tuner.engine.cached:  # the padded positions are zero, the real ones the prefix's bits
            n = len(data.ids[shortest])
            np.testing.assert_array_equal(got[name][:, :n], value[:, :n])
            assert got[name].shape == value.shape
        else:
            np.testing.assert_array_equal(got[name], value)


def test_a_causal_lm_is_exact_too(lm):
    """Token labels, a residual stream and a normed copy of it crossing the cut, rotary tables recomputed."""
    weights = []
    for setting in ("off", "1MB"):
        tuner = Tuner.from_onnx(lm["model"], trainable=TRAINABLE)
        result = tuner.fit(lm["train"], steps=20, batch_size=8, lr=1e-3, activation_cache=setting)
        weights.append(tuner.weights)
    assert result.activation_cache["examples_cached"] == 64
    for name, value in weights[0].items():
        np.testing.assert_array_equal(value, weights[1][name])


def test_a_tensor_not_laid_out_by_example_turns_the_cache_off(classifier):
    tuner = Tuner.from_onnx(classifier["model"], trainable=TRAINABLE)
    data = tuner.load_data(classifier["train"])
    batch = data.batch(range(BATCH), tuner.info.data_inputs)
    batch.examples = np.arange(BATCH)
    feeds = tuner.engine.data_feeds(batch)
    mask = next(n for n in tuner.engine.boundary if n in feeds and feeds[n].ndim == 4)  # [batch, 1, 1, sequence]
    cache = ActivationCache([mask], [len(ids) for ids in data.ids], budget=2**20)
    reason = tuner.engine.attach_cache(cache, batch)
    assert "not [batch, sequence" in reason and mask in reason
    assert tuner.engine.activation_cache is None
    np.testing.assert_array_equal(tuner.engine.data_feeds(batch)[mask], feeds[mask])


def test_a_file_that_cannot_grow_turns_the_cache_off_and_the_batch_is_still_served(classifier, tmp_path):
    """A full disk or a file-size limit (here RLIMIT_FSIZE, which fails writes with EFBIG) costs the speed-up only."""
    resource = pytest.importorskip("resource")
    signal = pytest.importorskip("signal")
    tuner = Tuner.from_onnx(classifier["model"], trainable=TRAINABLE)
    data = tuner.load_data(classifier["train"])
    first = data.batch(range(BATCH), tuner.info.data_inputs)
    first.examples = np.arange(BATCH)
    cache = ActivationCache(tuner.engine.cached, [len(ids) for ids in data.ids], budget=0, spill_dir=tmp_path)
    assert tuner.engine.attach_cache(cache, first) is None and cache.describe()["where"] == "file"
    second = data.batch(range(BATCH, 2 * BATCH), tuner.info.data_inputs)
    second.examples = np.arange(BATCH, 2 * BATCH)
    expected = tuner.engine.data_feeds(replace(second, examples=None))
    limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, limits[1]))
    try:
        got = tuner.engine.data_feeds(second)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert tuner.engine.activation_cache is None
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value)


def test_no_cache_where_the_batch_dependent_rest_needs_a_layer():
    """A mask shaped from the embedding's output (as Llama exports build it): recomputing it would put the
    embedding table in the rest graph (113 MB on SmolLM2, +16 % of the job's peak), so there is no cache."""
    from onnx import TensorProto, helper

    from edgetune.graph.split import cache_cut

    table = helper.make_tensor("E", TensorProto.FLOAT, [10, 4], np.arange(40, dtype=np.float32))
    one = helper.make_tensor("one", TensorProto.INT64, [1], [1])

    def prefix(shape_of: str):
        nodes = [helper.make_node("Gather", ["E", "ids"], ["embedded"]),
                 helper.make_node("Relu", ["embedded"], ["hidden"]),
                 helper.make_node("Shape", [shape_of], ["shape"]),
                 helper.make_node("ConstantOfShape", ["shape"], ["mask"], value=one)]
        types = {"hidden": helper.make_tensor_value_info("hidden", TensorProto.FLOAT, None),
                 "mask": helper.make_tensor_value_info("mask", TensorProto.INT64, None)}
        graph = helper.make_graph(nodes, "prefix", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])],
                                  list(types.values()), [table])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        return cache_cut(model, list(model.graph.node), ["hidden", "mask"], types)

    assert prefix("embedded") == ([], None)
    cached, rest = prefix("ids")  # the mask from the ids: a rest graph of two small nodes, no weights
    assert cached == ["hidden"] and [n.op_type for n in rest.graph.node] == ["Shape", "ConstantOfShape"]
    assert not rest.graph.initializer


def test_a_pooled_boundary_is_kept_as_the_token_rows_it_is_pooled_from():
    """[batch, width] from [batch, tokens, width] through a sum: the rows are kept and rest sums them; a dense
    layer between the rows and the pooled vector (a pooler the slice leaves frozen) leaves no cache."""
    from onnx import TensorProto, helper

    from edgetune.graph.split import cache_cut

    table = helper.make_tensor("E", TensorProto.FLOAT, [10, 4], np.arange(40, dtype=np.float32))
    weight = helper.make_tensor("W", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel())
    axis = helper.make_tensor("axis", TensorProto.INT64, [1], [1])

    def prefix(dense: bool):
        nodes = [helper.make_node("Gather", ["E", "ids"], ["hidden"]),
                 helper.make_node("ReduceSum", ["hidden", "axis"], ["summed"], keepdims=0)]
        nodes += [helper.make_node("MatMul", ["summed", "W"], ["pooled"])] if dense else \
            [helper.make_node("Relu", ["summed"], ["pooled"])]
        graph = helper.make_graph(nodes, "prefix", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, 3])],
                                  [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [2, 4])],
                                  [table, weight, axis])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        types = {"hidden": helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [2, 3, 4]),
                 "summed": helper.make_tensor_value_info("summed", TensorProto.FLOAT, [2, 4]),
                 "pooled": helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [2, 4])}
        return cache_cut(model, list(model.graph.node), ["pooled"], types)

    cached, rest = prefix(dense=False)
    assert cached == ["hidden"] and [n.op_type for n in rest.graph.node] == ["ReduceSum", "Relu"]
    assert [i.name for i in rest.graph.input] == ["hidden"] and not {i.name for i in rest.graph.initializer} - {"axis"}
    assert prefix(dense=True) == ([], None)
