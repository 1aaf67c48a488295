"""Tiny but realistic transformer ONNX models, tokenizers and tasks for tests.

The graphs are built with ``onnx.helper`` and numpy only (no torch) and imitate what the
TorchScript ONNX exporter (``torch.onnx.export`` / optimum) writes for Hugging Face models:

* node names carry the module scope (``/bert/encoder/layer.0/attention/self/query/MatMul``) and
  values are named ``<node name>_output_<k>``;
* initializers carry the parameter name (``bert.encoder.layer.0.attention.self.query.bias``);
  with ``mangle_names=True`` every MatMul weight becomes ``onnx::MatMul_<n>`` as the exporter
  does after it constant-folds the ``weight.T`` transpose; with ``strip_node_names=True`` node names
  are blanked and intermediate values renamed ``val_<n>``, so only topology tells blocks apart;
* scalars and shape vectors are ``Constant`` nodes, not initializers; the only float initializers
  that are not weights are real buffers (``model.rotary_emb.inv_freq``), as in real exports;
* linear layers are ``MatMul`` on a ``[in, out]`` weight followed by ``Add`` of the bias.

``build_classifier`` makes a BERT-like sequence classifier, ``build_causal_lm`` a Llama-like decoder
(RMSNorm, rotary embeddings, SwiGLU MLP, causal + padding mask). ``build_tokenizer`` writes a matching
WordLevel ``tokenizer.json`` and ``make_*_bundle`` writes model + tokenizer + train/dev JSONL.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "SPECIAL_TOKENS",
    "POSITIVE_WORDS",
    "NEGATIVE_WORDS",
    "NEUTRAL_WORDS",
    "LM_PHRASES",
    "TINY_VOCAB",
    "build_classifier",
    "build_causal_lm",
    "build_tokenizer",
    "make_sentiment_task",
    "make_lm_texts",
    "write_jsonl",
    "make_classifier_bundle",
    "make_lm_bundle",
]

BATCH = "batch_size"
SEQ = "sequence_length"

# ---------------------------------------------------------------------------------------------
# vocabulary and tasks
# ---------------------------------------------------------------------------------------------

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")  # ids 0, 1, 2, 3
POSITIVE_WORDS = ("good", "great", "excellent", "love", "wonderful")
NEGATIVE_WORDS = ("bad", "awful", "terrible", "hate", "boring")
NEUTRAL_WORDS = (
    "the", "a", "movie", "film", "story", "was", "is", "and", "this", "it",
    "plot", "actor", "scene", "very", "quite", "really", "my", "friend", "saw", "today",
)
# Fixed phrases for the causal-LM task: each is fully predictable once its first word is seen.
LM_PHRASES = (
    "the cat sat on the mat",
    "a dog ran in the park",
    "my friend saw the movie today",
    "one two three four five six",
)


def _unique(words: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for w in words:
        seen.setdefault(w, None)
    return list(seen)


# Every word the synthetic tasks use, in a fixed order (specials excluded).
TINY_VOCAB: tuple[str, ...] = tuple(
    _unique([*POSITIVE_WORDS, *NEGATIVE_WORDS, *NEUTRAL_WORDS, *(w for p in LM_PHRASES for w in p.split())])
)


def make_sentiment_task(n: int, seed: int = 0) -> list[dict]:
    """``n`` rows ``{"text", "label"}``; each text has 4-12 words, at least one cue word of its label.

    Cue words of only one polarity appear in a text, so the task is linearly separable from the
    bag of words; labels alternate-free but balanced in expectation.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        positive = bool(rng.integers(2))
        cues = POSITIVE_WORDS if positive else NEGATIVE_WORDS
        length = int(rng.integers(4, 13))
        n_cues = int(rng.integers(1, 3))
        words = [NEUTRAL_WORDS[i] for i in rng.integers(len(NEUTRAL_WORDS), size=length - n_cues)]
        for _ in range(n_cues):
            words.insert(int(rng.integers(len(words) + 1)), cues[int(rng.integers(len(cues)))])
        rows.append({"text": " ".join(words), "label": "positive" if positive else "negative"})
    return rows


def make_lm_texts(n: int, seed: int = 0) -> list[dict]:
    """``n`` rows ``{"text"}`` made of 1-3 fixed phrases from :data:`LM_PHRASES` in random order."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        k = int(rng.integers(1, 4))
        rows.append({"text": " ".join(LM_PHRASES[i] for i in rng.integers(len(LM_PHRASES), size=k))})
    return rows


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------


def build_tokenizer(path: str | Path | None, vocab: Sequence[str] = TINY_VOCAB, *, cls_sep: bool = True,
                    max_length: int | None = None):
    """A WordLevel tokenizer: specials ``[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3``, then ``vocab`` in order.

    Lowercase normalizer, Whitespace pre-tokenizer, ``[CLS] $A [SEP]`` template (``cls_sep``),
    padding with ``[PAD]``, optional truncation to ``max_length``. Saved to ``path`` if given.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    words = [w for w in _unique(vocab) if w not in SPECIAL_TOKENS]
    table = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *words])}
    tok = Tokenizer(models.WordLevel(vocab=table, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    if cls_sep:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", table["[CLS]"]), ("[SEP]", table["[SEP]"])],
        )
    tok.enable_padding(pad_id=table["[PAD]"], pad_token="[PAD]")
    if max_length is not None:
        tok.enable_truncation(max_length=max_length)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tok.save(str(path))
    return tok


# ---------------------------------------------------------------------------------------------
# graph building helpers
# ---------------------------------------------------------------------------------------------


class _GraphBuilder:
    """Collects nodes/initializers with torch-exporter naming, and applies the name options."""

    def __init__(self, seed: int, mangle_names: bool, strip_node_names: bool, init_std: float = 0.02):
        self.rng = np.random.default_rng(seed)
        self.init_std = init_std
        self.mangle_names = mangle_names
        self.strip_node_names = strip_node_names
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._init_names: set[str] = set()
        self._node_names: dict[str, int] = {}
        self._matmul_counter = 1000  # torch's numbering starts wherever its value counter is
        self._const_counter = 0

    # -- values --------------------------------------------------------------------------------
    def normal(self, *shape: int) -> np.ndarray:
        return (self.rng.standard_normal(shape) * self.init_std).astype(np.float32)

    def init(self, name: str, array: np.ndarray) -> str:
        assert name not in self._init_names, name
        self._init_names.add(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name: str, array: np.ndarray) -> str:
        """A MatMul weight: its torch name, or ``onnx::MatMul_<n>`` when mangling."""
        if self.mangle_names:
            self._matmul_counter += 1
            name = f"onnx::MatMul_{self._matmul_counter}"
        return self.init(name, array)

    # -- nodes ---------------------------------------------------------------------------------
    def node(self, op: str, inputs: Sequence[str], scope: str, n_out: int = 1, name: str | None = None,
             **attrs) -> str | list[str]:
        base = f"{scope}/{name or op}"
        k = self._node_names.get(base, 0)
        self._node_names[base] = k + 1
        node_name = base if k == 0 else f"{base}_{k}"
        outputs = [f"{node_name}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outputs, name=node_name, **attrs))
        return outputs[0] if n_out == 1 else outputs

    def const(self, value, scope: str, dtype=None) -> str:
        array = np.asarray(value, dtype=dtype)
        out = self.node("Constant", [], scope, value=numpy_helper.from_array(array))
        return out

    def linear(self, x: str, scope: str, param: str, n_in: int, n_out: int, bias: bool = True, plus=0.0) -> str:
        """``x @ W + b`` as the exporter writes ``nn.Linear`` on a 3-D input."""
        w = self.weight(f"{param}.weight", self.normal(n_in, n_out) + plus)
        y = self.node("MatMul", [x, w], scope)
        if bias:
            b = self.init(f"{param}.bias", self.normal(n_out))
            y = self.node("Add", [b, y], scope)  # torch exports bias + matmul in this order
        return y

    def layer_norm(self, x: str, scope: str, param: str, hidden: int, eps: float) -> str:
        g = self.init(f"{param}.weight", np.ones(hidden, np.float32))
        b = self.init(f"{param}.bias", np.zeros(hidden, np.float32))
        return self.node("LayerNormalization", [x, g, b], scope, axis=-1, epsilon=eps)

    # -- finishing -----------------------------------------------------------------------------
    def finish(self, name: str, inputs, outputs, opset: int, producer: str, metadata: dict[str, str]):
        nodes = self.nodes
        if self.strip_node_names:
            keep = {vi.name for vi in inputs} | {vi.name for vi in outputs} | self._init_names
            rename: dict[str, str] = {}
            for node in nodes:
                node.name = ""
                for i, out in enumerate(node.output):
                    if out not in keep:
                        rename[out] = f"val_{len(rename)}"
                        node.output[i] = rename[out]
                for i, inp in enumerate(node.input):
                    node.input[i] = rename.get(inp, inp)
        graph = helper.make_graph(nodes, name, inputs, outputs, initializer=self.initializers)
        opsets = [helper.make_opsetid("", opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name=producer,
                                  producer_version="0")
        model.ir_version = helper.find_min_ir_version_for(opsets)
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        return model


def _ids_input(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.INT64, [BATCH, SEQ])


def _save(model: onnx.ModelProto, path: str | Path | None) -> None:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))


def _check_dims(hidden: int, heads: int) -> int:
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    return hidden // heads


# ---------------------------------------------------------------------------------------------
# BERT-like classifier
# ---------------------------------------------------------------------------------------------


def build_classifier(
    path: str | Path | None = None,
    *,
    vocab_size: int = 64,
    hidden: int = 32,
    heads: int = 2,
    layers: int = 3,
    max_positions: int = 64,
    num_labels: int = 2,
    token_type_ids: bool = True,
    mangle_names: bool = False,
    strip_node_names: bool = False,
    seed: int = 0,
    opset: int = 17,
    labels: Sequence[str] | None = None,
    intermediate: int | None = None,
    mask_value: float = -10000.0,
    init_std: float = 0.02,
    cue_tokens: Mapping[int, int] | None = None,
    cue_strength: float = 0.5,
    fresh_head: bool = False,
) -> onnx.ModelProto:
    """A BertForSequenceClassification-shaped ONNX graph; ``logits`` is ``[batch_size, num_labels]``.

    ``fresh_head``: the classifier's bias is zeros, as Hugging Face initialises a head the checkpoint lacks
    (what ``--trainable auto`` tells a fresh head by); otherwise it is random like every other weight.

    ``cue_tokens`` ({token id: label index}) makes a *pretrained-like* model: those embedding rows get
    ``cue_strength`` times a per-label unit direction, and the value/output/pooler projections get an
    identity added, so the first token sees the bag of words. A random 0.02 init does not carry
    enough signal to the pooled first token for forward-only tuning of the head to find it.
    """
    if opset < 17:
        raise ValueError("opset >= 17 is needed for LayerNormalization")
    if labels is not None and len(labels) != num_labels:
        raise ValueError(f"{len(labels)} labels given for num_labels={num_labels}")
    head_dim = _check_dims(hidden, heads)
    intermediate = intermediate or 4 * hidden
    eps = 1e-12
    g = _GraphBuilder(seed, mangle_names, strip_node_names, init_std)

    inputs = [_ids_input("input_ids"), _ids_input("attention_mask")]
    if token_type_ids:
        inputs.append(_ids_input("token_type_ids"))

    # ---- embeddings: word + position (+ token type), LayerNorm --------------------------------
    s = "/bert/embeddings"
    g.init("bert.embeddings.position_ids", np.arange(max_positions, dtype=np.int64)[None, :])
    word = g.normal(vocab_size, hidden)
    eye = np.eye(hidden, dtype=np.float32) if cue_tokens else 0.0
    if cue_tokens:
        directions = np.linalg.qr(g.rng.standard_normal((hidden, num_labels)))[0].T.astype(np.float32)
        for token, label in cue_tokens.items():
            word[token] += cue_strength * directions[label]
    word_w = g.init("bert.embeddings.word_embeddings.weight", word)
    pos_w = g.init("bert.embeddings.position_embeddings.weight", g.normal(max_positions, hidden))
    type_w = g.init("bert.embeddings.token_type_embeddings.weight", g.normal(2, hidden)) if token_type_ids else None

    shape = g.node("Shape", ["input_ids"], s)
    seq_len = g.node("Gather", [shape, g.const(np.int64(1), s)], s, axis=0)
    seq_len1 = g.node("Unsqueeze", [seq_len, g.const([0], s, np.int64)], s)
    pos_ids = g.node("Slice", ["bert.embeddings.position_ids", g.const([0], s, np.int64), seq_len1,
                               g.const([1], s, np.int64), g.const([1], s, np.int64)], s)
    x = g.node("Gather", [word_w, "input_ids"], s + "/word_embeddings")
    if type_w is not None:
        t = g.node("Gather", [type_w, "token_type_ids"], s + "/token_type_embeddings")
        x = g.node("Add", [x, t], s)
    p = g.node("Gather", [pos_w, pos_ids], s + "/position_embeddings")
    x = g.node("Add", [x, p], s)
    x = g.layer_norm(x, s + "/LayerNorm", "bert.embeddings.LayerNorm", hidden, eps)

    # ---- extended attention mask: (1 - mask[:, None, None, :]) * mask_value ---------------------
    s = "/bert"
    m = g.node("Unsqueeze", ["attention_mask", g.const([1], s, np.int64)], s)
    m = g.node("Unsqueeze", [m, g.const([2], s, np.int64)], s)
    m = g.node("Cast", [m], s, to=TensorProto.FLOAT)
    m = g.node("Sub", [g.const(np.float32(1.0), s), m], s)
    ext_mask = g.node("Mul", [m, g.const(np.float32(mask_value), s)], s)

    # ---- encoder -------------------------------------------------------------------------------
    for i in range(layers):
        s = f"/bert/encoder/layer.{i}"
        pn = f"bert.encoder.layer.{i}"
        sa = s + "/attention/self"

        def heads_view(y: str, perm: list[int]) -> str:
            r = g.node("Reshape", [y, g.const([0, 0, heads, head_dim], sa, np.int64)], sa)
            return g.node("Transpose", [r], sa, perm=perm)

        q = g.linear(x, f"{sa}/query", f"{pn}.attention.self.query", hidden, hidden)
        k = g.linear(x, f"{sa}/key", f"{pn}.attention.self.key", hidden, hidden)
        v = g.linear(x, f"{sa}/value", f"{pn}.attention.self.value", hidden, hidden, plus=eye)
        q = heads_view(q, [0, 2, 1, 3])   # [B, h, S, d]
        k = heads_view(k, [0, 2, 3, 1])   # [B, h, d, S]
        v = heads_view(v, [0, 2, 1, 3])   # [B, h, S, d]
        scores = g.node("MatMul", [q, k], sa)
        scores = g.node("Div", [scores, g.const(np.float32(math.sqrt(head_dim)), sa)], sa)
        scores = g.node("Add", [scores, ext_mask], sa)
        probs = g.node("Softmax", [scores], sa, axis=-1)
        ctx = g.node("MatMul", [probs, v], sa)
        ctx = g.node("Transpose", [ctx], sa, perm=[0, 2, 1, 3])
        ctx = g.node("Reshape", [ctx, g.const([0, 0, hidden], sa, np.int64)], sa)

        so = s + "/attention/output"
        y = g.linear(ctx, f"{so}/dense", f"{pn}.attention.output.dense", hidden, hidden, plus=eye)
        y = g.node("Add", [y, x], so)
        x = g.layer_norm(y, f"{so}/LayerNorm", f"{pn}.attention.output.LayerNorm", hidden, eps)

        si = s + "/intermediate"
        h = g.linear(x, f"{si}/dense", f"{pn}.intermediate.dense", hidden, intermediate)
        # GELU (erf form), exactly as the TorchScript exporter writes it at opset < 20
        sg = si + "/intermediate_act_fn"
        e = g.node("Div", [h, g.const(np.float32(math.sqrt(2.0)), sg)], sg)
        e = g.node("Erf", [e], sg)
        e = g.node("Add", [e, g.const(np.float32(1.0), sg)], sg)
        h = g.node("Mul", [h, e], sg)
        h = g.node("Mul", [h, g.const(np.float32(0.5), sg)], sg)

        sout = s + "/output"
        y = g.linear(h, f"{sout}/dense", f"{pn}.output.dense", intermediate, hidden)
        y = g.node("Add", [y, x], sout)
        x = g.layer_norm(y, f"{sout}/LayerNorm", f"{pn}.output.LayerNorm", hidden, eps)

    # ---- pooler (first token) and classifier ------------------------------------------------------
    s = "/bert/pooler"
    first = g.node("Gather", [x, g.const(np.int64(0), s)], s, axis=1)  # [B, H]
    pooled = g.linear(first, s + "/dense", "bert.pooler.dense", hidden, hidden, plus=eye)
    pooled = g.node("Tanh", [pooled], s + "/activation")
    w = g.weight("classifier.weight", g.normal(hidden, num_labels))
    bias = g.normal(num_labels)  # drawn either way: the same seed gives the same other weights
    b = g.init("classifier.bias", np.zeros_like(bias) if fresh_head else bias)
    mm = g.node("MatMul", [pooled, w], "/classifier")
    g.nodes.append(helper.make_node("Add", [b, mm], ["logits"], name="/classifier/Add"))

    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [BATCH, num_labels])]
    metadata = {}
    if labels is not None:
        metadata["edgetune.labels"] = json.dumps([str(lbl) for lbl in labels])
    model = g.finish("main_graph", inputs, outputs, opset, "edgetune-tiny-bert", metadata)
    _save(model, path)
    return model


# ---------------------------------------------------------------------------------------------
# Llama-like causal LM
# ---------------------------------------------------------------------------------------------


def build_causal_lm(
    path: str | Path | None = None,
    *,
    vocab_size: int = 64,
    hidden: int = 32,
    heads: int = 2,
    layers: int = 2,
    max_positions: int = 64,
    seed: int = 0,
    tie_embeddings: bool = False,
    mangle_names: bool = False,
    strip_node_names: bool = False,
    opset: int = 17,
    intermediate: int | None = None,
    rope_theta: float = 10000.0,
    init_std: float = 0.02,
) -> onnx.ModelProto:
    """A LlamaForCausalLM-shaped ONNX graph; ``logits`` is ``[batch_size, sequence_length, vocab_size]``.

    Pre-norm blocks with RMSNorm (decomposed: Pow/ReduceMean/Add/Sqrt/Div/Mul), rotary position
    embeddings computed in-graph from the ``model.rotary_emb.inv_freq`` buffer and Range position ids,
    a causal mask combined with the ``attention_mask`` padding mask (``finfo(float32).min`` where
    masked) and a SwiGLU MLP. ``max_positions`` is recorded for tokenizers but rotary embeddings
    work at any length. With ``tie_embeddings`` the LM head reuses ``model.embed_tokens.weight``
    through a Transpose.
    """
    head_dim = _check_dims(hidden, heads)
    if head_dim % 2:
        raise ValueError("rotary embeddings need an even head dimension")
    intermediate = intermediate or 3 * hidden
    eps = 1e-6
    neg = float(np.finfo(np.float32).min)
    g = _GraphBuilder(seed, mangle_names, strip_node_names, init_std)

    inputs = [_ids_input("input_ids"), _ids_input("attention_mask")]

    def rms_norm(x: str, scope: str, param: str) -> str:
        w = g.init(f"{param}.weight", np.ones(hidden, np.float32))
        sq = g.node("Pow", [x, g.const(np.float32(2.0), scope)], scope)
        if opset >= 18:
            var = g.node("ReduceMean", [sq, g.const([-1], scope, np.int64)], scope, keepdims=1)
        else:
            var = g.node("ReduceMean", [sq], scope, axes=[-1], keepdims=1)
        var = g.node("Add", [var, g.const(np.float32(eps), scope)], scope)
        std = g.node("Sqrt", [var], scope)
        inv = g.node("Div", [g.const(np.float32(1.0), scope), std], scope)
        y = g.node("Mul", [x, inv], scope)
        return g.node("Mul", [w, y], scope)

    # ---- embeddings -------------------------------------------------------------------------
    embed = g.init("model.embed_tokens.weight", g.normal(vocab_size, hidden))
    x = g.node("Gather", [embed, "input_ids"], "/model/embed_tokens")

    # ---- position ids, rotary tables --------------------------------------------------------
    s = "/model"
    shape = g.node("Shape", ["input_ids"], s)
    seq_len = g.node("Gather", [shape, g.const(np.int64(1), s)], s, axis=0)
    positions = g.node("Range", [g.const(np.int64(0), s), seq_len, g.const(np.int64(1), s)], s)  # [S]
    sr = "/model/rotary_emb"
    inv_freq = g.init("model.rotary_emb.inv_freq",
                      (1.0 / rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)).astype(np.float32))
    pf = g.node("Cast", [positions], sr, to=TensorProto.FLOAT)
    pf = g.node("Unsqueeze", [pf, g.const([1], sr, np.int64)], sr)  # [S, 1]
    freqs = g.node("Mul", [pf, inv_freq], sr)  # [S, d/2]
    emb = g.node("Concat", [freqs, freqs], sr, axis=-1)  # [S, d]
    cos = g.node("Cos", [emb], sr)
    sin = g.node("Sin", [emb], sr)

    # ---- mask: causal AND padding -> 0 / finfo.min, shape [B, 1, S, S] -------------------------
    key_pos = g.node("Unsqueeze", [positions, g.const([0], s, np.int64)], s)   # [1, S]
    query_pos = g.node("Unsqueeze", [positions, g.const([1], s, np.int64)], s)  # [S, 1]
    causal = g.node("LessOrEqual", [key_pos, query_pos], s)  # [S, S]: key <= query
    pad = g.node("Cast", ["attention_mask"], s, to=TensorProto.BOOL)
    pad = g.node("Unsqueeze", [pad, g.const([1, 2], s, np.int64)], s)  # [B, 1, 1, S]
    allowed = g.node("And", [causal, pad], s)  # [B, 1, S, S]
    mask = g.node("Where", [allowed, g.const(np.float32(0.0), s), g.const(np.float32(neg), s)], s)

    half = head_dim // 2

    def rotate(t: str, scope: str) -> str:
        """t * cos + rotate_half(t) * sin, t: [B, h, S, d]"""
        big = np.iinfo(np.int64).max
        x1 = g.node("Slice", [t, g.const([0], scope, np.int64), g.const([half], scope, np.int64),
                              g.const([3], scope, np.int64), g.const([1], scope, np.int64)], scope)
        x2 = g.node("Slice", [t, g.const([half], scope, np.int64), g.const([big], scope, np.int64),
                              g.const([3], scope, np.int64), g.const([1], scope, np.int64)], scope)
        rot = g.node("Concat", [g.node("Neg", [x2], scope), x1], scope, axis=-1)
        a = g.node("Mul", [t, cos], scope)
        b = g.node("Mul", [rot, sin], scope)
        return g.node("Add", [a, b], scope)

    # ---- decoder blocks ---------------------------------------------------------------------
    for i in range(layers):
        s = f"/model/layers.{i}"
        pn = f"model.layers.{i}"
        sa = s + "/self_attn"
        h = rms_norm(x, s + "/input_layernorm", f"{pn}.input_layernorm")
        q = g.linear(h, sa + "/q_proj", f"{pn}.self_attn.q_proj", hidden, hidden, bias=False)
        k = g.linear(h, sa + "/k_proj", f"{pn}.self_attn.k_proj", hidden, hidden, bias=False)
        v = g.linear(h, sa + "/v_proj", f"{pn}.self_attn.v_proj", hidden, hidden, bias=False)

        def heads_view(y: str) -> str:
            r = g.node("Reshape", [y, g.const([0, 0, heads, head_dim], sa, np.int64)], sa)
            return g.node("Transpose", [r], sa, perm=[0, 2, 1, 3])  # [B, h, S, d]

        q = rotate(heads_view(q), sa)
        k = rotate(heads_view(k), sa)
        v = heads_view(v)
        kt = g.node("Transpose", [k], sa, perm=[0, 1, 3, 2])
        scores = g.node("MatMul", [q, kt], sa)
        scores = g.node("Mul", [scores, g.const(np.float32(1.0 / math.sqrt(head_dim)), sa)], sa)
        scores = g.node("Add", [scores, mask], sa)
        probs = g.node("Softmax", [scores], sa, axis=-1)
        ctx = g.node("MatMul", [probs, v], sa)
        ctx = g.node("Transpose", [ctx], sa, perm=[0, 2, 1, 3])
        ctx = g.node("Reshape", [ctx, g.const([0, 0, hidden], sa, np.int64)], sa)
        y = g.linear(ctx, sa + "/o_proj", f"{pn}.self_attn.o_proj", hidden, hidden, bias=False)
        x = g.node("Add", [x, y], s)

        h = rms_norm(x, s + "/post_attention_layernorm", f"{pn}.post_attention_layernorm")
        sm = s + "/mlp"
        gate = g.linear(h, sm + "/gate_proj", f"{pn}.mlp.gate_proj", hidden, intermediate, bias=False)
        gate = g.node("Mul", [gate, g.node("Sigmoid", [gate], sm + "/act_fn")], sm + "/act_fn")  # SiLU
        up = g.linear(h, sm + "/up_proj", f"{pn}.mlp.up_proj", hidden, intermediate, bias=False)
        y = g.node("Mul", [gate, up], sm)
        y = g.linear(y, sm + "/down_proj", f"{pn}.mlp.down_proj", intermediate, hidden, bias=False)
        x = g.node("Add", [x, y], s)

    x = rms_norm(x, "/model/norm", "model.norm")
    if tie_embeddings:
        w = g.node("Transpose", [embed], "/lm_head", perm=[1, 0])
    else:
        w = g.weight("lm_head.weight", g.normal(hidden, vocab_size))
    g.nodes.append(helper.make_node("MatMul", [x, w], ["logits"], name="/lm_head/MatMul"))

    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [BATCH, SEQ, vocab_size])]
    model = g.finish("main_graph", inputs, outputs, opset, "edgetune-tiny-llama", {})
    _save(model, path)
    return model


# ---------------------------------------------------------------------------------------------
# bundles
# ---------------------------------------------------------------------------------------------


def wrap_lm_head(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (in place) with an Identity after its LM head, so ``logits`` do not come straight from a
    MatMul, as with a soft-capped or cast head."""
    head = next(n for n in model.graph.node if "logits" in n.output)
    head.output[0] = "raw_logits"
    model.graph.node.append(helper.make_node("Identity", ["raw_logits"], ["logits"]))
    return model


def _bundle_vocab(vocab_size: int) -> list[str]:
    if vocab_size < len(SPECIAL_TOKENS) + len(TINY_VOCAB):
        raise ValueError(
            f"vocab_size={vocab_size} is smaller than the tokenizer's "
            f"{len(SPECIAL_TOKENS) + len(TINY_VOCAB)} tokens"
        )
    return list(TINY_VOCAB)


def make_classifier_bundle(directory: str | Path, *, n_train: int = 64, n_dev: int = 32, data_seed: int = 0,
                           labels: Sequence[str] | None = ("negative", "positive"), plant_cues: bool = True,
                           **kw) -> dict[str, Path]:
    """Write ``model.onnx``, ``tokenizer.json``, ``train.jsonl``, ``dev.jsonl``; return their paths.

    ``kw`` goes to :func:`build_classifier`. ``labels`` (order = logit index) is stored in the model's
    metadata; pass ``labels=None`` to leave the model without label names. With ``plant_cues`` the
    encoder is *pretrained-like* (see ``cue_tokens`` in :func:`build_classifier`) so that tuning only the
    head can learn the sentiment task; the head itself stays random (chance accuracy at step 0).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    vocab_size = kw.get("vocab_size", 64)
    max_positions = kw.get("max_positions", 64)
    paths = {
        "dir": d, "model": d / "model.onnx", "tokenizer": d / "tokenizer.json",
        "train": d / "train.jsonl", "dev": d / "dev.jsonl",
    }
    tok = build_tokenizer(paths["tokenizer"], _bundle_vocab(vocab_size), max_length=max_positions)
    if plant_cues and "cue_tokens" not in kw:
        names = list(labels) if labels is not None else ["negative", "positive"]
        cues = {}
        for polarity, words in (("positive", POSITIVE_WORDS), ("negative", NEGATIVE_WORDS)):
            if polarity in names:
                cues.update({tok.token_to_id(w): names.index(polarity) for w in words})
        kw["cue_tokens"] = cues
    if labels is not None:
        kw.setdefault("num_labels", len(labels))
    build_classifier(paths["model"], labels=labels, **kw)
    write_jsonl(paths["train"], make_sentiment_task(n_train, data_seed))
    write_jsonl(paths["dev"], make_sentiment_task(n_dev, data_seed + 1000))
    return paths


def make_lm_bundle(directory: str | Path, *, n_train: int = 64, n_dev: int = 16, data_seed: int = 0,
                   **kw) -> dict[str, Path]:
    """Like :func:`make_classifier_bundle` for :func:`build_causal_lm` and :func:`make_lm_texts`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    vocab_size = kw.get("vocab_size", 64)
    max_positions = kw.get("max_positions", 64)
    paths = {
        "dir": d, "model": d / "model.onnx", "tokenizer": d / "tokenizer.json",
        "train": d / "train.jsonl", "dev": d / "dev.jsonl",
    }
    build_tokenizer(paths["tokenizer"], _bundle_vocab(vocab_size), max_length=max_positions)
    build_causal_lm(paths["model"], **kw)
    write_jsonl(paths["train"], make_lm_texts(n_train, data_seed))
    write_jsonl(paths["dev"], make_lm_texts(n_dev, data_seed + 1000))
    return paths
