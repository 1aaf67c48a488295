"""In-graph losses that return one value per example.

A per-example loss (rather than the batch mean) lets the estimator weight, mask and log examples,
and lets several perturbations share one forward in later work. Both heads use standard ONNX ops
(opset 13+), so any execution provider runs them.

A causal LM's loss reads the logits only where a label is scored, and ONNX Runtime runs every node
of a graph whatever outputs are fetched. So when the logits come straight from one MatMul (the LM
head), the training graph gathers the scored positions' hidden states *before* that MatMul and
computes ``token_logits`` [labelled tokens, vocabulary] instead of ``logits`` [batch, sequence,
vocabulary]: a verbaliser or a completion scores a few tokens per example, and the head is a fifth
of a small LM's forward (SmolLM2-135M: 576 × 49152) and its logits its largest activation.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgetune.data.batching import IGNORE_INDEX
from edgetune.data.jsonl import TASK_CLASSIFICATION
from edgetune.errors import ModelError

LOSS_OUTPUT = "loss"
LABELS_INPUT = "labels"
LOGITS_OUTPUT = "logits"
TOKEN_LOGITS_OUTPUT = "token_logits"  # [labelled tokens, vocabulary], row-major over (example, position)
MIN_OPSET = 13


def add_loss(model: onnx.ModelProto, task: str) -> None:
    """Add a ``labels`` input and a per-example ``loss`` output to ``model`` in place.

    A causal LM whose logits come from one MatMul loses its ``logits`` output for ``token_logits``
    (see the module's docstring); :func:`labelled_positions` says which row is which.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ModelError(f"model opset {opset} is older than {MIN_OPSET}; re-export with a newer opset")
    graph = model.graph
    if task == TASK_CLASSIFICATION:
        nodes, labels_shape = _classification_nodes()
    else:
        head = lm_head(graph)
        nodes, labels_shape = _causal_lm_nodes(opset, head)
        if head is not None:
            graph.node.remove(head)
            graph.output.remove(next(o for o in graph.output if o.name == LOGITS_OUTPUT))
            graph.output.append(helper.make_tensor_value_info(
                TOKEN_LOGITS_OUTPUT, TensorProto.FLOAT, ["labelled_tokens", "vocabulary"]))
    graph.node.extend(nodes)
    graph.input.append(helper.make_tensor_value_info(LABELS_INPUT, TensorProto.INT64, labels_shape))
    graph.output.append(helper.make_tensor_value_info(LOSS_OUTPUT, TensorProto.FLOAT, ["batch_size"]))


def labelled_positions(labels: np.ndarray) -> np.ndarray:
    """[batch, sequence] bool: the positions whose next label is scored, the rows of ``token_logits``."""
    keep = np.zeros(labels.shape, bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def lm_head(graph: onnx.GraphProto) -> onnx.NodeProto | None:
    """The MatMul that alone produces ``logits`` and nothing else reads, or None (keep full logits)."""
    head = next((n for n in graph.node if LOGITS_OUTPUT in n.output), None)
    if head is None or head.op_type != "MatMul":
        return None
    if any(LOGITS_OUTPUT in n.input for n in graph.node):
        return None
    return head


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
        _node("LogSoftmax", [LOGITS_OUTPUT], [p + "logp"], axis=-1),
        _node("Unsqueeze", [LABELS_INPUT, p + "axis1"], [p + "labels2d"]),
        _node("GatherElements", [p + "logp", p + "labels2d"], [p + "picked"], axis=1),
        _node("Squeeze", [p + "picked", p + "axis1"], [p + "logp_label"]),
        _node("Neg", [p + "logp_label"], [LOSS_OUTPUT]),
    ]
    return nodes, ["batch_size"]


def _causal_lm_nodes(opset: int, head: onnx.NodeProto | None):
    """loss_b = mean over t with labels_b,t+1 != -100 of logsumexp(logits_b,t) - logits_b,t[labels_b,t+1]

    Labels are shifted rather than logits, and the log-softmax is never materialised: a causal LM's
    logits are batch x sequence x vocabulary (200 MB for SmolLM2 at 16 x 64), and slicing them and
    taking LogSoftmax would hold two more copies of that at the step's peak. With the LM ``head``
    given, the per-token log-probabilities come from :func:`_gathered_token_nodes` instead.
    """
    p = "et_loss_"
    nodes = [
        _const(p + "zero", [0]),
        _const(p + "one", [1]),
        _const(p + "big", [2**62]),
        _const(p + "ignore", [IGNORE_INDEX]),
        # position t predicts labels[:, t+1]; the last position predicts nothing (-100)
        _node("Slice", [LABELS_INPUT, p + "one", p + "big", p + "one"], [p + "labels_s"]),
        _node("Slice", [LABELS_INPUT, p + "zero", p + "one", p + "one"], [p + "first_col"]),
        _node("Mul", [p + "first_col", p + "zero"], [p + "zero_col"]),
        _node("Add", [p + "zero_col", p + "ignore"], [p + "ignore_col"]),
        _node("Concat", [p + "labels_s", p + "ignore_col"], [p + "labels_next"], axis=1),
        _node("Equal", [p + "labels_next", p + "ignore"], [p + "ignored"]),
        _node("Not", [p + "ignored"], [p + "keep"]),
        *(_full_token_nodes(opset) if head is None else _gathered_token_nodes(opset, head)),
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


def _logsumexp(opset: int, source: str, axis: int, output: str) -> onnx.NodeProto:
    if opset >= 18:  # ReduceLogSumExp took its axes as an attribute before opset 18
        return _node("ReduceLogSumExp", [source, f"et_loss_axis{axis}"], [output], keepdims=0)
    return _node("ReduceLogSumExp", [source], [output], axes=[axis], keepdims=0)


def _full_token_nodes(opset: int) -> list[onnx.NodeProto]:
    """logp_tok [B, T] from the full ``logits`` (zero where a position is not scored)."""
    p = "et_loss_"
    return [
        _const(p + "axis2", [2]),
        _node("Where", [p + "keep", p + "labels_next", p + "zero"], [p + "safe"]),
        _logsumexp(opset, LOGITS_OUTPUT, 2, p + "lse"),
        _node("Unsqueeze", [p + "safe", p + "axis2"], [p + "safe3d"]),
        _node("GatherElements", [LOGITS_OUTPUT, p + "safe3d"], [p + "picked"], axis=2),
        _node("Squeeze", [p + "picked", p + "axis2"], [p + "logit_tok"]),
        _node("Sub", [p + "logit_tok", p + "lse"], [p + "logp_tok"]),
    ]


def _gathered_token_nodes(opset: int, head: onnx.NodeProto) -> list[onnx.NodeProto]:
    """logp_tok [B, T] with the LM ``head`` run on the scored positions' hidden states only.

    hidden [B, T, H] → [B·T, H] → the N kept rows → token_logits [N, V] → log p of each row's label
    → scattered back to [B, T] (zeros elsewhere), which the masked mean after it expects.
    """
    p = "et_loss_"
    hidden, weight = head.input
    return [
        _const(p + "axis1", [1]),
        _const(p + "minus_one", [-1]),
        _node("Shape", [hidden], [p + "hidden_shape"]),
        _node("Slice", [p + "hidden_shape", p + "zero", p + "minus_one"], [p + "hidden_lead"]),
        # keep viewed as hidden's [B, T] (the same values): the row indices then depend on a tensor of
        # the trainable suffix, so a split computes them there. Computed in the frozen prefix they
        # would cross the cut as indices into B·T rows, which P-RGE's stacked batch would invalidate.
        _node("Reshape", [p + "keep", p + "hidden_lead"], [p + "keep_rows"]),
        _node("Reshape", [p + "keep_rows", p + "minus_one"], [p + "keep_flat"]),
        _node("NonZero", [p + "keep_flat"], [p + "kept_2d"]),
        _node("Squeeze", [p + "kept_2d", p + "zero"], [p + "kept"]),
        _node("Slice", [p + "hidden_shape", p + "minus_one", p + "big"], [p + "hidden_width"]),
        _node("Concat", [p + "minus_one", p + "hidden_width"], [p + "rows_shape"], axis=0),
        _node("Reshape", [hidden, p + "rows_shape"], [p + "hidden_rows"]),
        _node("Gather", [p + "hidden_rows", p + "kept"], [p + "hidden_kept"], axis=0),
        helper.make_node("MatMul", [p + "hidden_kept", weight], [TOKEN_LOGITS_OUTPUT], name=head.name or None),
        _logsumexp(opset, TOKEN_LOGITS_OUTPUT, 1, p + "lse"),
        _node("Reshape", [p + "labels_next", p + "minus_one"], [p + "labels_flat"]),
        _node("Gather", [p + "labels_flat", p + "kept"], [p + "target"], axis=0),
        _node("Unsqueeze", [p + "target", p + "axis1"], [p + "target_2d"]),
        _node("GatherElements", [TOKEN_LOGITS_OUTPUT, p + "target_2d"], [p + "picked"], axis=1),
        _node("Squeeze", [p + "picked", p + "axis1"], [p + "logit_kept"]),
        _node("Sub", [p + "logit_kept", p + "lse"], [p + "logp_kept_rows"]),
        _node("Shape", [p + "keep_flat"], [p + "flat_shape"]),
        _node("ConstantOfShape", [p + "flat_shape"], [p + "zeros_flat"],
              value=helper.make_tensor(p + "zero_f", TensorProto.FLOAT, [1], [0.0])),
        _node("ScatterElements", [p + "zeros_flat", p + "kept", p + "logp_kept_rows"], [p + "logp_flat"], axis=0),
        _node("Shape", [p + "keep"], [p + "keep_shape"]),
        _node("Reshape", [p + "logp_flat", p + "keep_shape"], [p + "logp_tok"]),
    ]
