"""The exact gradient of a classifier's last linear layer, computed in the graph.

For logits = h·W' + b over features h [B, H] and the per-example loss L_b = −log softmax(logits_b)[y_b],
∂L_b/∂logits_b = softmax(logits_b) − onehot(y_b), so the gradient of the batch's mean loss is

    ∂L/∂W' = hᵀ·δ,   ∂L/∂b = Σ_b δ_b,   δ = (softmax(logits) − onehot(labels)) / rows

with rows the examples whose label is not ignored. It needs the layer's input features, which the forward
computes anyway: no backward through the network. :func:`add_head_grad` adds it as two graph outputs in
the weight's and the bias's own layout (Gemm's transB, alpha and beta included), with opset-13 ops, so
any execution provider runs it and the features never leave the graph.

The head is found as ``graph/loss.py`` finds an LM head: by following the ``logits`` output back to the
node producing it (a Gemm, or an Add of a bias to a MatMul). The pass runs on the whole graph after
:func:`edgetune.graph.loss.add_loss` and before the split (``prepare(..., head_grad=True)``): what depends on
the labels alone (the one-hot, the row mask) then lands in the frozen prefix, and the features, when the
layers below are frozen, cross the cut as a suffix input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgetune.data.batching import IGNORE_INDEX
from edgetune.errors import ModelError
from edgetune.graph.loss import LABELS_INPUT, LOGITS_OUTPUT

HEAD_GRAD_W = "head_grad_W"
HEAD_GRAD_B = "head_grad_b"
_P = "et_head_grad_"


@dataclass(frozen=True)
class LinearHead:
    """The last linear layer: ``logits = alpha·op(features)·op(weight) + beta·bias``."""

    features: str
    weight: str
    weight_shape: tuple[int, ...]
    bias: str | None
    bias_shape: tuple[int, ...] | None
    trans_a: bool = False
    trans_b: bool = False  # weight stored [classes, hidden] (torch.nn.Linear's layout)
    alpha: float = 1.0
    beta: float = 1.0


def find_linear_head(graph: onnx.GraphProto, where: str = "the model") -> LinearHead:
    """The linear layer producing ``logits``, or one ModelError line saying why there is none."""
    producer = {o: n for n in graph.node for o in n.output}
    node = producer.get(LOGITS_OUTPUT)
    if node is None:
        raise ModelError(f"{where}: no node produces '{LOGITS_OUTPUT}'; the exact head needs a classifier")
    if node.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        return LinearHead(node.input[0], node.input[1], _shape(graph, node.input[1], where), bias,
                          _shape(graph, bias, where) if bias else None, bool(attrs.get("transA", 0)),
                          bool(attrs.get("transB", 0)), float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0)))
    matmul, bias = node, None
    if node.op_type == "Add":
        operands = [producer.get(name) for name in node.input]
        which = next((i for i, n in enumerate(operands) if n is not None and n.op_type == "MatMul"), None)
        if which is not None and _is_weight(graph, node.input[1 - which]):
            matmul, bias = operands[which], node.input[1 - which]
    if matmul.op_type != "MatMul" or not _is_weight(graph, matmul.input[1]):
        raise ModelError(f"{where}: '{LOGITS_OUTPUT}' comes from a {node.op_type} node ({node.name or 'unnamed'}), "
                         "not a linear layer (Gemm, or MatMul + Add) over a weight; the exact head needs one")
    return LinearHead(matmul.input[0], matmul.input[1], _shape(graph, matmul.input[1], where), bias,
                      _shape(graph, bias, where) if bias else None)


def find_exact_head(graph: onnx.GraphProto, where: str = "the model") -> LinearHead:
    """The linear head whose exact gradient :func:`add_head_grad` can add, or one ModelError line why not."""
    head = find_linear_head(graph, where)
    if len(head.weight_shape) != 2:
        raise ModelError(f"{where}: the head weight '{head.weight}' has shape {list(head.weight_shape)}, not 2-D")
    if head.bias_shape is not None and (len(head.bias_shape) > 2 or any(d != 1 for d in head.bias_shape[:-1])):
        raise ModelError(f"{where}: the head bias '{head.bias}' has shape {list(head.bias_shape)}; "
                         "the exact head takes a bias of one value per class")
    return head


def add_head_grad(model: onnx.ModelProto, where: str = "the model") -> LinearHead:
    """Add ``head_grad_W`` (and ``head_grad_b`` when the head has a bias) to ``model`` in place.

    ``model`` must already have the classification loss's ``labels`` input (one class id per example).
    """
    graph = model.graph
    labels = next((i for i in graph.input if i.name == LABELS_INPUT), None)
    if labels is None or len(labels.type.tensor_type.shape.dim) != 1:
        raise ModelError(f"{where}: the exact head needs a classifier's loss (one label per example)")
    head = find_exact_head(graph, where)
    graph.node.extend(_grad_nodes(head))
    graph.output.append(helper.make_tensor_value_info(HEAD_GRAD_W, TensorProto.FLOAT, list(head.weight_shape)))
    if head.bias is not None:
        graph.output.append(helper.make_tensor_value_info(HEAD_GRAD_B, TensorProto.FLOAT, list(head.bias_shape)))
    return head


def without_head_grad(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` less the head's gradient outputs, the nodes only they need and the inputs only those
    read: P-RGE's copy-batched graph serves a run that tunes the head by ZO (``--head auto`` on a graph prepared
    for the exact head), and the gradient's row count cannot be stacked as the batch is."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    kept_outputs = [o for o in graph.output if o.name not in (HEAD_GRAD_W, HEAD_GRAD_B)]
    needed = {o.name for o in kept_outputs}
    nodes = []
    for node in reversed(graph.node):  # topological order: a node's consumers come after it
        if any(name in needed for name in node.output):
            nodes.append(node)
            needed.update(name for name in node.input if name)
    del graph.output[:]
    graph.output.extend(kept_outputs)
    del graph.node[:]
    graph.node.extend(reversed(nodes))
    inputs = [i for i in graph.input if i.name in needed]
    del graph.input[:]
    graph.input.extend(inputs)
    return copy


def require_tuned(head: LinearHead, tuned: list[str], trainable: str | None, where: str) -> None:
    """One line unless the head's weight and bias are in the slice: the exact head updates them in the arena."""
    missing = [name for name in (head.weight, head.bias) if name is not None and name not in tuned]
    if missing:
        raise ModelError(f"{where}: --trainable '{trainable}' leaves the head's '{missing[0]}' frozen; "
                         "the exact head updates it, so select it too (e.g. add 'head')")


def _is_weight(graph: onnx.GraphProto, name: str) -> bool:
    """An initializer, or a graph input (a weight lifted for tuning), rather than a computed tensor."""
    return any(i.name == name for i in graph.initializer) or any(i.name == name for i in graph.input)


def _shape(graph: onnx.GraphProto, name: str, where: str) -> tuple[int, ...]:
    for init in graph.initializer:
        if init.name == name:
            return tuple(int(d) for d in init.dims)
    for value in graph.input:
        if value.name == name:
            dims = value.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                return tuple(int(d.dim_value) for d in dims)
    raise ModelError(f"{where}: the head's '{name}' is not a weight of known shape (an initializer or an input)")


def _node(op: str, inputs: list[str], output: str, **attrs) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [output], name=f"/edgetune/head_grad/{output}", **attrs)


def _const(name: str, value, dtype) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"/edgetune/head_grad/{name}",
                            value=numpy_helper.from_array(np.asarray(value, dtype=dtype), name))


def _grad_nodes(head: LinearHead) -> list[onnx.NodeProto]:
    """δ = (softmax − onehot)·valid / rows, then the weight's and the bias's gradients in their layouts."""
    p = _P
    nodes = [
        _const(p + "ignore", IGNORE_INDEX, np.int64),
        _const(p + "zero_i", 0, np.int64),
        _const(p + "axis0", [0], np.int64),
        _const(p + "axis1", [1], np.int64),
        _const(p + "two", [2], np.int64),
        _const(p + "off_on", [0.0, 1.0], np.float32),
        _const(p + "one_f", 1.0, np.float32),
        _node("Equal", [LABELS_INPUT, p + "ignore"], p + "ignored"),
        _node("Not", [p + "ignored"], p + "valid"),
        # an ignored row's class is any in range: its δ row is zeroed below
        _node("Where", [p + "valid", LABELS_INPUT, p + "zero_i"], p + "labels_safe"),
        _node("Shape", [LOGITS_OUTPUT], p + "logits_shape"),
        _node("Slice", [p + "logits_shape", p + "axis1", p + "two"], p + "classes"),
        _node("OneHot", [p + "labels_safe", p + "classes", p + "off_on"], p + "onehot", axis=-1),
        _node("Softmax", [LOGITS_OUTPUT], p + "probs", axis=-1),
        _node("Sub", [p + "probs", p + "onehot"], p + "residual"),
        _node("Cast", [p + "valid"], p + "valid_f", to=TensorProto.FLOAT),
        _node("Unsqueeze", [p + "valid_f", p + "axis1"], p + "valid_col"),
        _node("Mul", [p + "residual", p + "valid_col"], p + "residual_kept"),
        _node("ReduceSum", [p + "valid_f", p + "axis0"], p + "count", keepdims=0),
        _node("Max", [p + "count", p + "one_f"], p + "rows"),
        _node("Div", [p + "residual_kept", p + "rows"], p + "delta"),  # ∂(mean loss)/∂logits [B, C]
    ]
    features = head.features
    if head.trans_a:  # Gemm reads features stored [H, B]
        nodes.append(_node("Transpose", [features], p + "features", perm=[1, 0]))
        features = p + "features"
    # transB: weight [C, H] → δᵀ·h; otherwise weight [H, C] → hᵀ·δ
    left, right = (p + "delta", features) if head.trans_b else (features, p + "delta")
    nodes.append(_node("Transpose", [left], p + "left_t", perm=[1, 0]))
    nodes += _scaled(p + "left_t", right, head.alpha, HEAD_GRAD_W)
    if head.bias is not None:
        keep = len(head.bias_shape) == 2  # a [1, C] bias keeps its leading axis
        summed = HEAD_GRAD_B if head.beta == 1.0 else p + "bias_sum"
        nodes.append(_node("ReduceSum", [p + "delta", p + "axis0"], summed, keepdims=int(keep)))
        if head.beta != 1.0:
            nodes += [_const(p + "beta", head.beta, np.float32), _node("Mul", [summed, p + "beta"], HEAD_GRAD_B)]
    return nodes


def _scaled(left: str, right: str, alpha: float, output: str) -> list[onnx.NodeProto]:
    """output = alpha·left·right (Gemm's alpha; no Mul when it is 1)."""
    if alpha == 1.0:
        return [_node("MatMul", [left, right], output)]
    product = _P + "product"
    return [_node("MatMul", [left, right], product), _const(_P + "alpha", alpha, np.float32),
            _node("Mul", [product, _P + "alpha"], output)]
