"""In-graph losses that return one value per example.

A per-example loss (rather than the batch mean) lets the estimator weight, mask and log examples,
and lets several perturbations share one forward in later work. Both heads use standard ONNX ops
(opset 13+), so any execution provider runs them.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from edgetune.data.batching import IGNORE_INDEX
from edgetune.data.jsonl import TASK_CLASSIFICATION
from edgetune.errors import ModelError

LOSS_OUTPUT = "loss"
LABELS_INPUT = "labels"
MIN_OPSET = 13


def add_loss(model: onnx.ModelProto, task: str) -> None:
    """Add a ``labels`` input and a per-example ``loss`` output to ``model`` in place."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ModelError(f"model opset {opset} is older than {MIN_OPSET}; re-export with a newer opset")
    graph = model.graph
    if task == TASK_CLASSIFICATION:
        nodes, labels_shape = _classification_nodes()
    else:
        nodes, labels_shape = _causal_lm_nodes(opset)
    graph.node.extend(nodes)
    graph.input.append(helper.make_tensor_value_info(LABELS_INPUT, TensorProto.INT64, labels_shape))
    graph.output.append(helper.make_tensor_value_info(LOSS_OUTPUT, TensorProto.FLOAT, ["batch_size"]))


def _const(name: str, values: list[int]) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], name=f"/edgetune/loss/{name}",
        value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values),
    )


def _node(op: str, inputs: list[str], outputs: list[str], **attrs) -> onnx.NodeProto:
    return helper.make_node(op, inputs, outputs, name=f"/edgetune/loss/{outputs[0]}", **attrs)


def _classification_nodes():
    """loss_b = -log_softmax(logits_b)[labels_b]"""
    p = "et_loss_"
    nodes = [
        _const(p + "axis1", [1]),
        _node("LogSoftmax", ["logits"], [p + "logp"], axis=-1),
        _node("Unsqueeze", [LABELS_INPUT, p + "axis1"], [p + "labels2d"]),
        _node("GatherElements", [p + "logp", p + "labels2d"], [p + "picked"], axis=1),
        _node("Squeeze", [p + "picked", p + "axis1"], [p + "logp_label"]),
        _node("Neg", [p + "logp_label"], [LOSS_OUTPUT]),
    ]
    return nodes, ["batch_size"]


def _causal_lm_nodes(opset: int):
    """loss_b = mean over t with labels_b,t+1 != -100 of logsumexp(logits_b,t) - logits_b,t[labels_b,t+1]

    Labels are shifted rather than logits, and the log-softmax is never materialised: a causal LM's
    logits are batch x sequence x vocabulary (200 MB for SmolLM2 at 16 x 64), and slicing them and
    taking LogSoftmax would hold two more copies of that at the step's peak.
    """
    p = "et_loss_"
    if opset >= 18:  # ReduceLogSumExp took its axes as an attribute before opset 18
        logsumexp = _node("ReduceLogSumExp", ["logits", p + "axis2"], [p + "lse"], keepdims=0)
    else:
        logsumexp = _node("ReduceLogSumExp", ["logits"], [p + "lse"], axes=[2], keepdims=0)
    nodes = [
        _const(p + "zero", [0]),
        _const(p + "one", [1]),
        _const(p + "big", [2**62]),
        _const(p + "axis2", [2]),
        _const(p + "ignore", [IGNORE_INDEX]),
        # position t predicts labels[:, t+1]; the last position predicts nothing (-100)
        _node("Slice", [LABELS_INPUT, p + "one", p + "big", p + "one"], [p + "labels_s"]),
        _node("Slice", [LABELS_INPUT, p + "zero", p + "one", p + "one"], [p + "first_col"]),
        _node("Mul", [p + "first_col", p + "zero"], [p + "zero_col"]),
        _node("Add", [p + "zero_col", p + "ignore"], [p + "ignore_col"]),
        _node("Concat", [p + "labels_s", p + "ignore_col"], [p + "labels_next"], axis=1),
        _node("Equal", [p + "labels_next", p + "ignore"], [p + "ignored"]),
        _node("Not", [p + "ignored"], [p + "keep"]),
        _node("Where", [p + "keep", p + "labels_next", p + "zero"], [p + "safe"]),
        logsumexp,
        _node("Unsqueeze", [p + "safe", p + "axis2"], [p + "safe3d"]),
        _node("GatherElements", ["logits", p + "safe3d"], [p + "picked"], axis=2),
        _node("Squeeze", [p + "picked", p + "axis2"], [p + "logit_tok"]),
        _node("Sub", [p + "logit_tok", p + "lse"], [p + "logp_tok"]),
        _node("Cast", [p + "keep"], [p + "keep_f"], to=TensorProto.FLOAT),
        _node("Mul", [p + "logp_tok", p + "keep_f"], [p + "logp_kept"]),
        _node("ReduceSum", [p + "logp_kept", p + "one"], [p + "sum"], keepdims=0),
        _node("ReduceSum", [p + "keep_f", p + "one"], [p + "count"], keepdims=0),
        _node("Constant", [], [p + "one_f"], value=helper.make_tensor(p + "one_f", TensorProto.FLOAT, [], [1.0])),
        _node("Max", [p + "count", p + "one_f"], [p + "count_safe"]),
        _node("Div", [p + "sum", p + "count_safe"], [p + "mean_logp"]),
        _node("Neg", [p + "mean_logp"], [LOSS_OUTPUT]),
    ]
    return nodes, ["batch_size", "sequence_length"]
