"""The tiny test-model generators in models/tiny.py build valid, well-behaved transformer graphs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models import tiny


def _session(model: onnx.ModelProto, optimize: bool = True) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _feeds(sess, ids: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    mask = np.ones_like(ids) if mask is None else mask
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in {i.name for i in sess.get_inputs()}:
        feeds["token_type_ids"] = np.zeros_like(ids)
    return feeds


def _random_ids(rng, batch: int, seq: int, vocab: int = 64) -> np.ndarray:
    return rng.integers(4, vocab, size=(batch, seq), dtype=np.int64)


@pytest.fixture(scope="module")
def classifier():
    return tiny.build_classifier(labels=["negative", "positive"])


@pytest.fixture(scope="module")
def causal_lm():
    return tiny.build_causal_lm()


CLASSIFIER_VARIANTS = {
    "plain": {},
    "no_token_types": {"token_type_ids": False},
    "mangled": {"mangle_names": True},
    "stripped": {"mangle_names": True, "strip_node_names": True},
    "opset18": {"opset": 18},
    "planted": {"cue_tokens": {4: 1, 9: 0}},
}
LM_VARIANTS = {
    "plain": {},
    "tied": {"tie_embeddings": True},
    "mangled": {"mangle_names": True},
    "stripped": {"mangle_names": True, "strip_node_names": True},
    "opset18": {"opset": 18},
}


@pytest.mark.parametrize("variant", CLASSIFIER_VARIANTS)
def test_classifier_is_valid_and_runs(variant):
    model = tiny.build_classifier(**CLASSIFIER_VARIANTS[variant])
    onnx.checker.check_model(model, full_check=True)
    sess = _session(model)
    rng = np.random.default_rng(0)
    for batch, seq in ((3, 7), (1, 20)):
        (logits,) = sess.run(["logits"], _feeds(sess, _random_ids(rng, batch, seq)))
        assert logits.shape == (batch, 2) and logits.dtype == np.float32
        assert np.isfinite(logits).all()


@pytest.mark.parametrize("variant", LM_VARIANTS)
def test_causal_lm_is_valid_and_runs(variant):
    model = tiny.build_causal_lm(**LM_VARIANTS[variant])
    onnx.checker.check_model(model, full_check=True)
    sess = _session(model)
    rng = np.random.default_rng(0)
    for batch, seq in ((3, 7), (1, 20)):
        (logits,) = sess.run(["logits"], _feeds(sess, _random_ids(rng, batch, seq)))
        assert logits.shape == (batch, seq, 64) and logits.dtype == np.float32
        assert np.isfinite(logits).all()


def test_io_signature(classifier, causal_lm):
    for model, out_dims in ((classifier, ["batch_size", 2]), (causal_lm, ["batch_size", "sequence_length", 64])):
        for vi in model.graph.input:
            assert vi.type.tensor_type.elem_type == onnx.TensorProto.INT64
            assert [d.dim_param for d in vi.type.tensor_type.shape.dim] == ["batch_size", "sequence_length"]
        (out,) = model.graph.output
        assert out.name == "logits"
        dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
        assert dims == out_dims
    assert [i.name for i in classifier.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [i.name for i in causal_lm.graph.input] == ["input_ids", "attention_mask"]
    meta = {p.key: p.value for p in classifier.metadata_props}
    assert json.loads(meta["edgetune.labels"]) == ["negative", "positive"]


def test_exporter_style_names(classifier, causal_lm):
    inits = {i.name for i in classifier.graph.initializer}
    nodes = {n.name for n in classifier.graph.node}
    assert "bert.encoder.layer.2.attention.self.query.bias" in inits
    assert "bert.encoder.layer.0.attention.self.query.weight" in inits
    assert {"classifier.weight", "classifier.bias", "bert.embeddings.word_embeddings.weight"} <= inits
    assert "/bert/encoder/layer.0/attention/self/query/MatMul" in nodes
    assert "/bert/encoder/layer.2/output/LayerNorm/LayerNormalization" in nodes
    assert not any(n.startswith("/bert/encoder/layer.3/") for n in nodes)
    lm_inits = {i.name for i in causal_lm.graph.initializer}
    assert {"model.layers.1.self_attn.q_proj.weight", "lm_head.weight", "model.embed_tokens.weight"} <= lm_inits
    assert "/model/layers.1/self_attn/q_proj/MatMul" in {n.name for n in causal_lm.graph.node}


def test_mangled_names_keep_node_scopes():
    model = tiny.build_classifier(mangle_names=True)
    inits = {i.name: i for i in model.graph.initializer}
    mangled = [n for n in inits if n.startswith("onnx::MatMul_")]
    assert len(mangled) == 3 * 6 + 2  # q k v o ffn1 ffn2 per layer, pooler, classifier
    assert not any(n.endswith(".weight") and "LayerNorm" not in n and "embeddings" not in n for n in inits)
    by_output = {n.input[1]: n.name for n in model.graph.node if n.op_type == "MatMul"}
    scopes = {by_output[n] for n in mangled}
    assert "/bert/encoder/layer.1/attention/self/query/MatMul" in scopes
    assert "bert.encoder.layer.1.attention.self.query.bias" in inits  # biases keep their names

    stripped = tiny.build_classifier(mangle_names=True, strip_node_names=True)
    assert all(n.name == "" for n in stripped.graph.node)
    io = {"input_ids", "attention_mask", "token_type_ids", "logits"}
    values = {o for n in stripped.graph.node for o in n.output} - io
    assert all(v.startswith("val_") for v in values)


@pytest.mark.parametrize("builder, variants", [(tiny.build_classifier, CLASSIFIER_VARIANTS),
                                                (tiny.build_causal_lm, LM_VARIANTS)])
def test_name_variants_compute_the_same_function(builder, variants):
    rng = np.random.default_rng(1)
    ids = _random_ids(rng, 3, 9)
    outs = []
    for kw in ({}, {"mangle_names": True}, {"mangle_names": True, "strip_node_names": True}):
        sess = _session(builder(seed=5, **kw))
        outs.append(sess.run(["logits"], _feeds(sess, ids))[0])
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
    other = _session(builder(seed=6))
    assert not np.allclose(other.run(["logits"], _feeds(other, ids))[0], outs[0])


@pytest.mark.parametrize("optimize", [True, False])
def test_classifier_padding_invariance(classifier, optimize):
    sess = _session(classifier, optimize)
    rng = np.random.default_rng(2)
    ids = _random_ids(rng, 3, 7)
    (base,) = sess.run(["logits"], _feeds(sess, ids))
    for extra in (1, 5, 13):
        padded = np.concatenate([ids, _random_ids(rng, 3, extra)], axis=1)  # garbage ids under mask 0
        mask = np.concatenate([np.ones_like(ids), np.zeros((3, extra), np.int64)], axis=1)
        (logits,) = sess.run(["logits"], _feeds(sess, padded, mask))
        assert np.abs(logits - base).max() < 1e-4
    # and a mixed-length batch agrees with running each example alone
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], np.int64)
    (batched,) = sess.run(["logits"], _feeds(sess, ids, mask))
    for b, n in enumerate((7, 4, 2)):
        (alone,) = sess.run(["logits"], _feeds(sess, ids[b:b + 1, :n]))
        assert np.abs(batched[b] - alone[0]).max() < 1e-4


@pytest.mark.parametrize("tie", [False, True])
def test_causal_lm_is_causal_and_ignores_right_padding(tie):
    sess = _session(tiny.build_causal_lm(tie_embeddings=tie))
    rng = np.random.default_rng(3)
    ids = _random_ids(rng, 2, 12)
    (base,) = sess.run(["logits"], _feeds(sess, ids))
    for t in (0, 4, 10):
        changed = ids.copy()
        changed[:, t + 1:] = _random_ids(rng, 2, 12 - t - 1)
        (logits,) = sess.run(["logits"], _feeds(sess, changed))
        assert np.abs(logits[:, : t + 1] - base[:, : t + 1]).max() < 1e-5
        assert not np.allclose(logits[:, t + 1:], base[:, t + 1:])
    padded = np.concatenate([ids, _random_ids(rng, 2, 5)], axis=1)
    mask = np.concatenate([np.ones_like(ids), np.zeros((2, 5), np.int64)], axis=1)
    (logits,) = sess.run(["logits"], _feeds(sess, padded, mask))
    assert np.isfinite(logits).all()
    assert np.abs(logits[:, :12] - base).max() < 1e-5


def test_tied_embeddings_share_one_initializer():
    model = tiny.build_causal_lm(tie_embeddings=True)
    names = [i.name for i in model.graph.initializer]
    assert "lm_head.weight" not in names
    users = [n for n in model.graph.node if "model.embed_tokens.weight" in n.input]
    assert sorted(n.op_type for n in users) == ["Gather", "Transpose"]
    transpose = next(n for n in users if n.op_type == "Transpose")
    assert any(transpose.output[0] in n.input and n.output[0] == "logits" for n in model.graph.node)


def test_tokenizer_round_trips_task_vocabulary(tmp_path):
    tok = tiny.build_tokenizer(tmp_path / "tokenizer.json", tiny.TINY_VOCAB)
    from tokenizers import Tokenizer

    loaded = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert [loaded.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]")] == [0, 1, 2, 3]
    assert loaded.get_vocab_size() == 4 + len(tiny.TINY_VOCAB) <= 64
    texts = [r["text"] for r in tiny.make_sentiment_task(50, 0)] + [r["text"] for r in tiny.make_lm_texts(20, 0)]
    for enc, text in zip(loaded.encode_batch(texts), texts):
        assert 1 not in enc.ids
        words = text.lower().split()
        n = len(words)
        assert enc.tokens[0] == "[CLS]" and enc.tokens[n + 1] == "[SEP]"
        assert enc.tokens[1:n + 1] == words
        assert loaded.decode(enc.ids) == text
        assert all(t == "[PAD]" for t in enc.tokens[n + 2:])  # padding to the batch's longest
    assert tok.encode("GOOD Movie").tokens == ["[CLS]", "good", "movie", "[SEP]"]
    assert 1 in tok.encode("unknownword").ids


def test_tasks_are_deterministic_and_well_formed():
    rows = tiny.make_sentiment_task(200, seed=7)
    assert rows == tiny.make_sentiment_task(200, seed=7)
    assert rows != tiny.make_sentiment_task(200, seed=8)
    labels = [r["label"] for r in rows]
    assert 0.3 < labels.count("positive") / len(rows) < 0.7
    vocab = set(tiny.TINY_VOCAB)
    for r in rows:
        words = r["text"].split()
        assert 4 <= len(words) <= 12 and set(words) <= vocab
        pos = set(words) & set(tiny.POSITIVE_WORDS)
        neg = set(words) & set(tiny.NEGATIVE_WORDS)
        assert (pos and not neg) if r["label"] == "positive" else (neg and not pos)
    lm = tiny.make_lm_texts(30, seed=1)
    assert lm == tiny.make_lm_texts(30, seed=1)
    assert all(set(r["text"].split()) <= vocab and set(r) == {"text"} for r in lm)


def test_bundles(tmp_path):
    from tokenizers import Tokenizer

    paths = tiny.make_classifier_bundle(tmp_path / "cls", n_train=20, n_dev=10)
    for key in ("model", "tokenizer", "train", "dev"):
        assert paths[key].is_file()
    train = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    assert len(train) == 20 and set(train[0]) == {"text", "label"}
    model = onnx.load(str(paths["model"]))
    onnx.checker.check_model(model, full_check=True)
    tok = Tokenizer.from_file(str(paths["tokenizer"]))
    emb = next(i for i in model.graph.initializer if i.name == "bert.embeddings.word_embeddings.weight")
    assert tok.get_vocab_size() <= emb.dims[0]
    sess = _session(model)
    tok.no_truncation()
    encs = tok.encode_batch([r["text"] for r in train])
    ids = np.array([e.ids for e in encs], np.int64)
    mask = np.array([e.attention_mask for e in encs], np.int64)
    (logits,) = sess.run(["logits"], _feeds(sess, ids, mask))
    assert logits.shape == (20, 2) and np.isfinite(logits).all()

    lm_paths = tiny.make_lm_bundle(tmp_path / "lm", n_train=8, n_dev=4, tie_embeddings=True)
    lm = onnx.load(str(lm_paths["model"]))
    onnx.checker.check_model(lm, full_check=True)
    assert [json.loads(line) for line in lm_paths["dev"].read_text().splitlines()] == tiny.make_lm_texts(4, 1000)

    with pytest.raises(ValueError):
        tiny.make_classifier_bundle(tmp_path / "small", vocab_size=16)


def test_planted_bundle_separates_the_task_in_the_pooled_features(tmp_path):
    """The bundle's encoder carries the sentiment signal to the first token: a linear probe on the
    pooled output separates the classes, which is what makes head-only ZO tuning succeed."""
    from tokenizers import Tokenizer

    paths = tiny.make_classifier_bundle(tmp_path, n_train=4, n_dev=4)
    model = onnx.load(str(paths["model"]))
    model.graph.output.append(onnx.helper.make_tensor_value_info(
        "/bert/pooler/activation/Tanh_output_0", onnx.TensorProto.FLOAT, None))
    sess = _session(model)
    tok = Tokenizer.from_file(str(paths["tokenizer"]))
    rows = tiny.make_sentiment_task(300, seed=3)
    encs = tok.encode_batch([r["text"] for r in rows])
    ids = np.array([e.ids for e in encs], np.int64)
    mask = np.array([e.attention_mask for e in encs], np.int64)
    pooled = sess.run(["/bert/pooler/activation/Tanh_output_0"], _feeds(sess, ids, mask))[0]
    y = np.array([1.0 if r["label"] == "positive" else -1.0 for r in rows])
    x = np.c_[pooled, np.ones(len(rows))]
    w = np.linalg.lstsq(x[:200], y[:200], rcond=None)[0]
    assert np.mean(np.sign(x[200:] @ w) == y[200:]) > 0.95
