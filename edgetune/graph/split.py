"""Splitting a graph into a frozen prefix (run once per step) and a trainable suffix.

A node belongs to the suffix iff it depends, transitively, on a trainable input. Everything else is
the same for every perturbation of a step, so it runs once; the tensors crossing the cut become the
suffix's inputs. This is exact (the suffix computes the same values) and needs no knowledge of the
architecture.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import onnx
from onnx import helper

from edgetune.errors import ModelError


@dataclass
class SplitGraph:
    prefix: onnx.ModelProto | None
    suffix: onnx.ModelProto
    boundary: list[str]  # prefix outputs fed to the suffix


def _node_inputs(node: onnx.NodeProto) -> list[str]:
    """Inputs including outer-scope names read by subgraphs (If/Loop/Scan bodies)."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        for graph in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
            for inner in graph.node:
                names.extend(n for n in _node_inputs(inner) if n and n not in defined)
                defined.update(inner.output)
    return names


def split_graph(model: onnx.ModelProto, trainable: Iterable[str], outputs: list[str]) -> SplitGraph:
    graph = model.graph
    dirty = set(trainable)
    suffix_nodes, prefix_nodes = [], []
    for node in graph.node:
        if dirty.intersection(_node_inputs(node)):
            suffix_nodes.append(node)
            dirty.update(node.output)
        else:
            prefix_nodes.append(node)
    for name in outputs:
        if name not in dirty:
            raise ModelError(f"output '{name}' does not depend on the trainable weights")

    produced_by_suffix = {o for n in suffix_nodes for o in n.output}
    constant_nodes = {o: n for n in prefix_nodes if n.op_type == "Constant" for o in n.output}
    needed = {n for node in suffix_nodes for n in _node_inputs(node)} - produced_by_suffix
    moved = [constant_nodes[n] for n in needed if n in constant_nodes]  # cheap: recompute in the suffix
    prefix_outputs = {o for n in prefix_nodes for o in n.output}
    boundary = sorted(n for n in needed if n in prefix_outputs and n not in constant_nodes)
    if not boundary:
        return SplitGraph(prefix=None, suffix=model, boundary=[])

    types = _value_types(model)
    untyped = [n for n in boundary if n not in types]
    if untyped:
        raise ModelError(f"cannot infer the type of '{untyped[0]}' where the graph is split; use --no-split")

    # Keep only prefix nodes the boundary needs (walk backwards).
    want = set(boundary)
    kept_prefix = []
    for node in reversed(prefix_nodes):
        if want.intersection(node.output):
            kept_prefix.append(node)
            want.update(_node_inputs(node))
    kept_prefix.reverse()

    prefix = _subgraph(model, "prefix", kept_prefix, [types[n] for n in boundary])
    suffix_outputs = [o for o in graph.output if o.name in outputs]
    suffix = _subgraph(model, "suffix", moved + suffix_nodes, suffix_outputs, extra_inputs=[types[n] for n in boundary])
    return SplitGraph(prefix=prefix, suffix=suffix, boundary=boundary)


def _subgraph(model, label, nodes, outputs, extra_inputs=()):
    used = {n for node in nodes for n in _node_inputs(node)}
    graph = model.graph
    inputs = [i for i in graph.input if i.name in used] + list(extra_inputs)
    initializers = [i for i in graph.initializer if i.name in used]
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
