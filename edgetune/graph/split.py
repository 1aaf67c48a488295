"""Splitting a graph into a frozen prefix (run once per step) and a trainable suffix.

A node belongs to the suffix iff it depends, transitively, on a trainable input. Everything else is
the same for every perturbation of a step, so it runs once; the tensors crossing the cut become the
suffix's inputs. This is exact (the suffix computes the same values) and needs no knowledge of the
architecture.

A crossing tensor computed from initializers alone (a tied LM head's Transpose of the embedding, a
Reshape or Cast of a weight) is the same for every batch too. Passed at run time, the prefix would
output a fresh copy of it on every batch, on top of the one the suffix keeps bound (SmolLM2-135M: 113 MB
each), where plain inference folds it into one initializer at load. So it is evaluated once here and
becomes an initializer of the suffix.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import onnx
from onnx import helper, numpy_helper

from edgetune.errors import ModelError


@dataclass
class SplitGraph:
    prefix: onnx.ModelProto | None
    suffix: onnx.ModelProto
    boundary: list[str]  # prefix outputs fed to the suffix
    # what an activation cache keeps per example: boundary tensors, or the token rows a pooled one is made from
    cached: list[str] = field(default_factory=list)
    rest: onnx.ModelProto | None = None  # the rest of the boundary from the batch and ``cached`` (cheap)


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Inputs including outer-scope names read by subgraphs (If/Loop/Scan bodies)."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        for graph in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
            for inner in graph.node:
                names.extend(n for n in node_inputs(inner) if n and n not in defined)
                defined.update(inner.output)
    return names


def partition(nodes: Iterable[onnx.NodeProto], trainable: Iterable[str],
              ) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto], set[str]]:
    """The frozen prefix's nodes, the suffix's (every node that depends on a trainable tensor), and the
    names that depend on one; ``edgetune plan`` predicts the split with it."""
    dirty = set(trainable)
    prefix_nodes, suffix_nodes = [], []
    for node in nodes:
        if dirty.intersection(node_inputs(node)):
            suffix_nodes.append(node)
            dirty.update(node.output)
        else:
            prefix_nodes.append(node)
    return prefix_nodes, suffix_nodes, dirty


def split_graph(model: onnx.ModelProto, trainable: Iterable[str], outputs: list[str]) -> SplitGraph:
    graph = model.graph
    prefix_nodes, suffix_nodes, dirty = partition(graph.node, trainable)
    for name in outputs:
        if name not in dirty:
            raise ModelError(f"output '{name}' does not depend on the trainable weights")

    produced_by_suffix = {o for n in suffix_nodes for o in n.output}
    constant_nodes = {o: n for n in prefix_nodes if n.op_type == "Constant" for o in n.output}
    needed = {n for node in suffix_nodes for n in node_inputs(node)} - produced_by_suffix
    moved = [constant_nodes[n] for n in needed if n in constant_nodes]  # cheap: recompute in the suffix
    prefix_outputs = {o for n in prefix_nodes for o in n.output}
    crossing = sorted(n for n in needed if n in prefix_outputs and n not in constant_nodes)
    constant = _constant_tensors(model, prefix_nodes)
    boundary = [n for n in crossing if n not in constant]
    if not boundary:
        return SplitGraph(prefix=None, suffix=model, boundary=[])

    types = _value_types(model)
    folded = _evaluate(model, prefix_nodes, [n for n in crossing if n in constant], types)
    untyped = [n for n in boundary if n not in types]
    if untyped:
        raise ModelError(f"cannot infer the type of '{untyped[0]}' where the graph is split; use --no-split")

    cached, rest = cache_cut(model, prefix_nodes, boundary, types)
    # the prefix also outputs the token rows a pooled boundary is computed from, for the cache to keep
    prefix_outputs = boundary + [n for n in cached if n not in boundary]
    prefix = _subgraph(model, "prefix", _producers(prefix_nodes, prefix_outputs), [types[n] for n in prefix_outputs])
    suffix_outputs = [o for o in graph.output if o.name in outputs]
    suffix = _subgraph(model, "suffix", moved + suffix_nodes, suffix_outputs,
                       extra_inputs=[types[n] for n in boundary], extra_initializers=folded)
    return SplitGraph(prefix=prefix, suffix=suffix, boundary=boundary, cached=cached, rest=rest)


# Ops that do a layer's work: a boundary tensor computed through one is worth keeping per example.
_HEAVY = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "FusedMatMul", "MatMulInteger", "QLinearMatMul",
          "MatMulNBits", "Attention", "MultiHeadAttention", "GroupQueryAttention", "EmbedLayerNormalization",
          "LSTM", "GRU", "RNN"}


def cache_cut(model: onnx.ModelProto, prefix_nodes: list[onnx.NodeProto], boundary: list[str],
              types: dict[str, onnx.ValueInfoProto]) -> tuple[list[str], onnx.ModelProto | None]:
    """The boundary tensors an activation cache keeps per example, and a graph computing the others.

    Kept: the float tensors that a layer (a matrix product, an embedding lookup) computes, such as the
    hidden states; their row for an example does not change while the prefix is frozen. A boundary tensor
    pooled to [batch, width] (a classifier head's input) is not kept itself: the token rows it is pooled
    from are, and ``rest`` pools them (:func:`_pooled_from`). The others (an
    attention mask, a shape) depend on the batch's padding, and are cheap: ``rest`` recomputes them from the
    batch's inputs and the kept tensors, so a batch whose rows are all cached never runs the prefix. Where
    one of the others needs a layer itself, there is no cache (``[], None``): ``rest`` would hold its weights.
    """
    initializers = {i.name for i in model.graph.initializer}

    def is_layer(node: onnx.NodeProto) -> bool:
        return node.op_type in _HEAVY or (node.op_type == "Gather" and node.input[0] in initializers)

    heavy: dict[str, bool] = {}
    for node in prefix_nodes:  # in topological order: a node is heavy, or reads a heavy tensor
        value = is_layer(node) or any(heavy.get(n, False) for n in node_inputs(node))
        heavy.update((o, value) for o in node.output)
    cached = [n for n in boundary if heavy.get(n) and n in types
              and types[n].type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    pooled = [n for n in cached if _rank(types[n]) == 2]
    if pooled:  # [batch, width]: kept as the token rows it is pooled from; rest pools them again (see _pooled_from)
        sources = _pooled_from(prefix_nodes, pooled, heavy, types, is_layer)
        if sources is None:
            return [], None
        cached = [n for n in cached if n not in pooled] + [n for n in sources if n not in cached]
    others = [n for n in boundary if n not in cached]
    if not cached or not others:
        return cached, None
    want, kept = set(others), []
    for node in reversed(prefix_nodes):  # the others' producers, stopping at the cached tensors
        if want.intersection(node.output) and not set(cached).intersection(node.output):
            if is_layer(node):  # e.g. a mask shaped from the embedding's output (Llama exports): rest would
                return [], None  # carry that layer's weights (113 MB for SmolLM2): no cache beats that cost
            kept.append(node)
            want.update(node_inputs(node))
    kept.reverse()
    rest = _subgraph(model, "rest", kept, [types[n] for n in others], extra_inputs=[types[n] for n in cached])
    return cached, rest


def _rank(value: onnx.ValueInfoProto) -> int | None:
    tensor = value.type.tensor_type
    return len(tensor.shape.dim) if tensor.HasField("shape") else None


def _pooled_from(prefix_nodes: list[onnx.NodeProto], pooled: list[str], heavy: dict[str, bool],
                 types: dict[str, onnx.ValueInfoProto], is_layer) -> list[str] | None:
    """The per-token tensors (heavy, of rank 3 or more) that the ``pooled`` vectors are computed from, through
    nodes that are not layers (a masked mean, a token Gather); None where a layer stands between them.

    Why not keep the pooled vector itself: a masked mean's ReduceSum adds in an order set by the batch's shape
    (MiniLM's mean of an example alone is not the bits of the same example in a batch of 16, even at the same
    padding), so a pooled row is not the same bits whichever batch computed it; a token row is, and pooling
    the cached rows (zeros at the padded positions, which the mask zeroes anyway) in the batch's own shape
    redoes the default run's arithmetic."""
    want, sources = set(pooled), []
    for node in reversed(prefix_nodes):
        outputs = want.intersection(node.output)
        if not outputs:
            continue
        for name in sorted(outputs):
            want.discard(name)
            rank = _rank(types[name]) if name in types else None
            if heavy.get(name) and name not in pooled and rank is not None and rank >= 3:
                sources.append(name)
                outputs.discard(name)
        if not outputs:
            continue
        if is_layer(node):
            return None
        want.update(node_inputs(node))
    return sources or None


def _producers(nodes: list[onnx.NodeProto], names: Iterable[str]) -> list[onnx.NodeProto]:
    """The nodes (in order) that ``names`` need: walking backwards, so a prefix keeps nothing only a
    folded constant needed."""
    want, kept = set(names), []
    for node in reversed(nodes):
        if want.intersection(node.output):
            kept.append(node)
            want.update(node_inputs(node))
    return kept[::-1]


# Ops whose output is not a function of their inputs: never evaluated ahead of time.
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                     "Bernoulli"}


def _constant_tensors(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> set[str]:
    """Outputs of ``nodes`` computed from initializers and Constant nodes alone (no graph input on their path)."""
    constant = {init.name for init in model.graph.initializer}
    for node in nodes:
        inputs = node_inputs(node)
        deterministic = node.op_type not in _NONDETERMINISTIC and (inputs or node.op_type == "Constant")
        if deterministic and all(n in constant for n in inputs):
            constant.update(o for o in node.output if o)
    return constant - {init.name for init in model.graph.initializer}


def _evaluate(model: onnx.ModelProto, nodes: list[onnx.NodeProto], names: list[str],
              types: dict[str, onnx.ValueInfoProto]) -> list[onnx.TensorProto]:
    """``names`` (constant tensors of ``nodes``) as initializers, computed by ONNX Runtime's CPU kernels: the
    ones that computed them in the prefix, and that fold them at load in plain inference, so the values
    are the same bits."""
    if not names:
        return []
    import onnxruntime as ort  # only a split with constant crossings needs it, in the preparing child

    outputs = [types.get(n) or helper.make_empty_tensor_value_info(n) for n in names]
    graph = _subgraph(model, "constants", _producers(nodes, names), outputs)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
        values = session.run(names, {})
    except Exception as exc:  # noqa: BLE001 - ORT's errors have no common base class
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"cannot evaluate the constant '{names[0]}' where the graph is split ({reason}); "
                         "use --no-split") from None
    return [numpy_helper.from_array(value, name) for name, value in zip(names, values)]


def _subgraph(model, label, nodes, outputs, extra_inputs=(), extra_initializers=()):
    used = {n for node in nodes for n in node_inputs(node)}
    graph = model.graph
    inputs = [i for i in graph.input if i.name in used] + list(extra_inputs)
    initializers = [i for i in graph.initializer if i.name in used] + list(extra_initializers)
    sub = helper.make_graph(nodes, f"{graph.name}_{label}", inputs, list(outputs), initializer=initializers)
    out = helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    out.producer_name = "edgetune"
    return out


def _value_types(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=False)
    except Exception:  # a model onnx cannot infer still runs in ORT; fall back to what is declared
        inferred = model
    graph = inferred.graph
    return {
        v.name: v
        for v in list(graph.value_info) + list(graph.output) + list(graph.input)
        if v.type.tensor_type.elem_type
    }
