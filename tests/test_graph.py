"""Graph surgery: weights placed in blocks by topology, selection, loss heads, lifting and the split."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgetune.data.batching import IGNORE_INDEX
from edgetune.errors import ModelError
from edgetune.graph import prepare
from edgetune.graph.blocks import find_params
from edgetune.graph.loss import add_loss, labelled_positions
from edgetune.graph.select import select_params
from edgetune.graph.trainable import TrainableSpec
from models.tiny import build_causal_lm, build_classifier, wrap_lm_head


def placement(model):
    return {p.name: (p.region, p.block) for p in find_params(model)}


def test_mangled_and_stripped_names_are_placed_like_plain_ones():
    """Same weights, same blocks, whether names are readable, mangled, or all node names are blank."""
    plain = find_params(build_classifier(None, layers=3))
    for variant in (dict(mangle_names=True), dict(mangle_names=True, strip_node_names=True)):
        other = find_params(build_classifier(None, layers=3, **variant))
        assert [(p.region, p.block, p.shape) for p in other] == [(p.region, p.block, p.shape) for p in plain]
    by_name = {p.name: p for p in plain}
    assert by_name["bert.embeddings.LayerNorm.weight"].region == "embeddings"
    assert by_name["bert.encoder.layer.2.attention.self.query.weight"].block == 2
    assert by_name["classifier.weight"].region == "head"
    assert sorted({p.block for p in plain if p.block is not None}) == [0, 1, 2]


def test_llama_like_decoder_blocks_and_buffers():
    names = placement(build_causal_lm(None, layers=2))
    assert names["model.layers.1.mlp.down_proj.weight"] == ("block", 1)
    assert names["model.norm.weight"] == ("head", None)
    assert "model.rotary_emb.inv_freq" not in names, "rotary buffers are not weights"
    tied = placement(build_causal_lm(None, layers=2, tie_embeddings=True))
    assert tied["model.embed_tokens.weight"] == ("embeddings", None)


def test_selection_grammar():
    params = find_params(build_classifier(None, layers=3, mangle_names=True))
    names = lambda spec: {p.name for p in select_params(params, TrainableSpec.parse(spec))}  # noqa: E731
    last1 = names("last:1")
    assert {p.name for p in params if p.block == 2 or p.region == "head"} == last1
    assert names("blocks:1-2") == {p.name for p in params if p.block in (1, 2)}
    assert names("head") | names("embeddings") | names("blocks:0-2") == names("all")
    assert names("*.bias") == {p.name for p in params if p.name.endswith(".bias")}
    assert names("re:LayerNorm") and all("LayerNorm" in n for n in names("re:LayerNorm"))
    assert names("head,blocks:0") == names("head") | names("blocks:0")
    for bad, message in [("last:0", "not a valid block count"), ("blocks:x", "not a valid"),
                         ("nothing*", "selects no weights"), ("re:(", "bad regular expression")]:
        with pytest.raises(ModelError, match=message):
            select_params(params, TrainableSpec.parse(bad))


def _log_softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def test_classification_loss_is_per_example_cross_entropy():
    model = build_classifier(None, num_labels=3)
    add_loss(model, "classification")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(4, 60, (4, 9)), "attention_mask": np.ones((4, 9), np.int64),
             "token_type_ids": np.zeros((4, 9), np.int64), "labels": np.array([0, 2, 1, 2])}
    loss, logits = session.run(["loss", "logits"], feeds)
    expected = -_log_softmax(logits)[np.arange(4), feeds["labels"]]
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)


def _lm_feeds(seed: int = 1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, 60, (3, 8))
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    labels = np.where(mask == 1, ids, IGNORE_INDEX)
    labels[2, 1:4] = IGNORE_INDEX  # e.g. a prompt that is not scored
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _expected_lm_loss(logits, labels):
    logp = _log_softmax(logits[:, :-1])
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    picked = np.take_along_axis(logp, np.where(keep, target, 0)[..., None], axis=-1)[..., 0]
    return -(picked * keep).sum(1) / np.maximum(keep.sum(1), 1)


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _without_labels(feeds):
    return {k: v for k, v in feeds.items() if k != "labels"}


def test_causal_lm_loss_shifts_ignores_masked_tokens_and_runs_the_head_on_scored_positions_only():
    model = build_causal_lm(None)
    logits = _session(model).run(["logits"], _without_labels(_lm_feeds()))[0]
    add_loss(model, "lm")
    assert [o.name for o in model.graph.output] == ["token_logits", "loss"], "no full logits are computed"
    feeds = _lm_feeds()
    loss, token_logits = _session(model).run(["loss", "token_logits"], feeds)
    np.testing.assert_allclose(loss, _expected_lm_loss(logits, feeds["labels"]), rtol=1e-5, atol=1e-6)
    scored = labelled_positions(feeds["labels"])
    assert token_logits.shape == (scored.sum(), logits.shape[-1])
    np.testing.assert_allclose(token_logits, logits[scored], rtol=1e-5, atol=1e-5)


def test_causal_lm_loss_keeps_full_logits_when_the_head_is_not_a_lone_matmul():
    """E.g. a soft-capped or cast head: the loss reads the model's logits as they are."""
    model = wrap_lm_head(build_causal_lm(None))
    logits = _session(model).run(["logits"], _without_labels(_lm_feeds()))[0]
    add_loss(model, "lm")
    assert "logits" in [o.name for o in model.graph.output] and "token_logits" not in [o.name for o in model.graph.output]
    feeds = _lm_feeds()
    loss = _session(model).run(["loss"], feeds)[0]
    np.testing.assert_allclose(loss, _expected_lm_loss(logits, feeds["labels"]), rtol=1e-5, atol=1e-6)


def test_causal_lm_loss_of_a_batch_with_nothing_scored_is_zero():
    model = build_causal_lm(None)
    add_loss(model, "lm")
    feeds = _lm_feeds()
    feeds["labels"] = np.full_like(feeds["labels"], IGNORE_INDEX)
    loss, token_logits = _session(model).run(["loss", "token_logits"], feeds)
    np.testing.assert_array_equal(loss, np.zeros(3, np.float32))
    assert token_logits.shape[0] == 0


@pytest.mark.parametrize("builder, task", [(build_classifier, "classification"), (build_causal_lm, "lm")])
def test_split_graphs_compute_what_the_whole_graph_computes(tmp_path, builder, task):
    path = tmp_path / "model.onnx"
    builder(path, layers=3, mangle_names=True)
    prepared = prepare(path, TrainableSpec.parse("last:1"))
    whole = prepare(path, TrainableSpec.parse("last:1"), split=False)
    assert prepared.prefix is not None and prepared.boundary
    lifted = {name for name in prepared.initial}
    assert lifted.isdisjoint({i.name for i in prepared.suffix.graph.initializer})
    assert lifted.isdisjoint({i.name for i in prepared.prefix.graph.initializer})
    rng = np.random.default_rng(2)
    ids = rng.integers(4, 60, (2, 6))
    data = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if task == "classification":
        data["token_type_ids"] = np.zeros_like(ids)
        data["labels"] = np.array([0, 1])
    else:
        data["labels"] = ids
    cpu = ["CPUExecutionProvider"]
    pre = ort.InferenceSession(prepared.prefix.SerializeToString(), providers=cpu)
    suf = ort.InferenceSession(prepared.suffix.SerializeToString(), providers=cpu)
    full = ort.InferenceSession(whole.suffix.SerializeToString(), providers=cpu)
    pre_feeds = {i.name: data[i.name] for i in pre.get_inputs()}
    boundary = dict(zip(prepared.boundary, pre.run(prepared.boundary, pre_feeds)))
    available = {**data, **boundary, **prepared.initial}
    split_loss = suf.run(["loss"], {i.name: available[i.name] for i in suf.get_inputs()})[0]
    full_loss = full.run(["loss"], {i.name: {**data, **whole.initial}[i.name] for i in full.get_inputs()})[0]
    np.testing.assert_allclose(split_loss, full_loss, rtol=1e-6, atol=1e-6)
    onnx.checker.check_model(prepared.prefix)
    onnx.checker.check_model(prepared.suffix)


def test_old_opset_is_rejected_clearly(tmp_path):
    model = build_classifier(None)
    model.opset_import[0].version = 11
    with pytest.raises(ModelError, match="opset 11 is older than 13"):
        add_loss(model, "classification")
