"""Graph passes for bundles: trainable ``Gemm`` as ``MatMul + Add``, and static input shapes.

Accelerator providers take ``Gemm`` only with a constant weight (XNNPACK and CoreML prepack it; QNN maps it
to a fully connected layer), while ``MatMul`` with a non-constant B runs there (CoreML's ML Program, QNN).
A lifted weight is a graph input, so its ``Gemm`` would fall back to the CPU; as ``MatMul + Add`` it can
stay on the accelerator. NPUs also need every input's shape fixed (QNN compiles for one shape).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgetune.errors import ModelError

GEMM_SUFFIX = "/edgetune_matmul"  # the rewritten nodes' names: the Gemm's, with this appended


def gemm_to_matmul(model: onnx.ModelProto, trainable: Collection[str], where: str) -> list[str]:
    """Rewrite in place every ``Gemm`` that reads a tensor of ``trainable`` as ``[Transpose] MatMul [Add]``;
    returns the rewritten nodes' names.

    ``alpha`` must be 1 (folding it into a trainable weight would change what the arena holds, and a ``Mul``
    would change the rounding); ``beta`` is folded into a constant bias, and must be 1 on a trainable one.
    """
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    rewritten, nodes = [], []
    for node in graph.node:
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or not trainable.intersection(node.input):
            nodes.append(node)
            continue
        nodes.extend(_as_matmul(node, trainable, initializers, graph, where))
        rewritten.append(node.name)
    del graph.node[:]
    graph.node.extend(nodes)
    return rewritten


def _as_matmul(node: onnx.NodeProto, trainable: Collection[str], initializers: dict, graph: onnx.GraphProto,
               where: str) -> list[onnx.NodeProto]:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    name = node.name or node.output[0]
    if alpha != 1.0:
        raise ModelError(f"{where}: Gemm '{name}' on a trainable weight has alpha {alpha}; --gemm-to-matmul "
                         "rewrites only alpha 1 (bundle with --no-gemm-to-matmul)")
    a, b = node.input[0], node.input[1]
    c = node.input[2] if len(node.input) > 2 and node.input[2] else None
    out: list[onnx.NodeProto] = []
    base = name + GEMM_SUFFIX
    for flag, operand, index in (("transA", a, 0), ("transB", b, 1)):
        if attrs.get(flag, 0):
            transposed = f"{base}/{flag}"
            out.append(helper.make_node("Transpose", [operand], [transposed], name=transposed, perm=[1, 0]))
            a, b = (transposed, b) if index == 0 else (a, transposed)
    product = node.output[0] if c is None else f"{base}/product"
    out.append(helper.make_node("MatMul", [a, b], [product], name=base))
    if c is not None:
        if beta != 1.0:
            c = _scaled_bias(c, beta, trainable, initializers, graph, name, where)
        out.append(helper.make_node("Add", [product, c], [node.output[0]], name=f"{base}/bias"))
    return out


def _scaled_bias(c: str, beta: float, trainable: Collection[str], initializers: dict, graph: onnx.GraphProto,
                 name: str, where: str) -> str:
    """beta x C as a new initializer, for a constant C; a trainable or computed C with beta != 1 is refused."""
    if c in trainable or c not in initializers:
        raise ModelError(f"{where}: Gemm '{name}' has beta {beta} on a {'trainable' if c in trainable else 'computed'}"
                         " bias; --gemm-to-matmul folds beta only into a constant one (bundle with --no-gemm-to-matmul)")
    value = numpy_helper.to_array(initializers[c]) * np.asarray(beta, numpy_helper.to_array(initializers[c]).dtype)
    scaled = numpy_helper.from_array(value, f"{c}/beta_{name}")
    graph.initializer.append(scaled)
    return scaled.name


def fix_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], where: str) -> None:
    """Give the graph inputs named in ``shapes`` those static dims (in place); a dim the graph already fixes
    to another value is refused in one line (the model cannot run at that shape)."""
    for graph_input in model.graph.input:
        if graph_input.name not in shapes:
            continue
        wanted = list(shapes[graph_input.name])
        tensor_type = graph_input.type.tensor_type
        dims = tensor_type.shape.dim
        if len(dims) and len(dims) != len(wanted):
            raise ModelError(f"{where}: input '{graph_input.name}' has rank {len(dims)}, not {len(wanted)}")
        for i, value in enumerate(wanted):
            if i < len(dims) and dims[i].HasField("dim_value") and dims[i].dim_value not in (0, value):
                raise ModelError(f"{where}: input '{graph_input.name}' has dim {i} fixed to {dims[i].dim_value}; "
                                 f"static shapes need {value}")
        tensor_type.shape.ClearField("dim")
        for value in wanted:
            tensor_type.shape.dim.add().dim_value = int(value)
