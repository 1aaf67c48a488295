"""The copy-batched graph of P-RGE: P perturbed copies of the trainable slice in one forward.

Every trainable input gets a leading copy dimension, ``W [in, out] → W [P, in, out]``, and the batch
is the P copies of the data stacked (rows ``[p·B, (p+1)·B)`` are evaluated with copy p). Activations
keep their usual layout ``[P·B, ...]``; only where a node combines an activation with a copied
tensor is the activation viewed as ``[P, rows, features]``:

    MatMul  X·W          X → [P, B·T, in] · W [P, in, out] → [P, B·T, out] → X's shape with out last
    Gemm    X·Wᵀ + c     the same batched MatMul, then the bias per copy
    Add/Sub/Mul/Div      X ∘ b with b [n] (broadcast on the last axis) → [P, B·T, n] ∘ b [P, 1, n]
    LayerNormalization   LN(X, γ, β) = LN(X, 1, 0)·γ + β, the scale and shift per copy as above

Transposes and Identities of a copied tensor (LoRA's ``Aᵀ``, ``Bᵀ``) stay copied. These cover LoRA and
LoRA-FA adapters and whole transformer blocks (linear weights, biases, LayerNorm scale and shift);
any other use of a trainable tensor (an embedding Gather, an RMSNorm weight of another rank) is
refused with the node that uses it. P is read from the copied tensors' shapes at run time, so one
graph (one session, one copy of the frozen weights) serves every P.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgetune.errors import ModelError

COPIES_DIM = "copies"
_PASS_THROUGH = ("Identity", "Transpose")
_BROADCAST_OPS = ("Add", "Sub", "Mul", "Div")


def copy_batched(suffix: onnx.ModelProto, trainable: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``suffix`` whose ``trainable`` inputs are ``[P, *shape]`` and whose batch is P·B rows."""
    model = onnx.ModelProto()
    model.CopyFrom(suffix)
    graph = model.graph
    wanted = list(dict.fromkeys(trainable))
    shapes: dict[str, tuple[int, ...]] = {}
    for value in graph.input:
        if value.name in wanted:
            dims = value.type.tensor_type.shape.dim
            shapes[value.name] = tuple(d.dim_value for d in dims)
            dims.insert(0, onnx.TensorShapeProto.Dimension(dim_param=COPIES_DIM))
    missing = [name for name in wanted if name not in shapes]
    if missing:
        raise ModelError(f"trainable tensor '{missing[0]}' is not an input of the tunable graph")
    rewriter = _Rewriter(shapes, wanted[0])
    for node in graph.node:
        rewriter.rewrite(node)
    del graph.node[:]
    graph.node.extend(rewriter.nodes)
    del graph.value_info[:]  # shapes inferred for the single-copy graph no longer hold
    return model


class _Rewriter:
    """Emits the rewritten nodes in order; ``copied`` maps each copy-carrying tensor to its per-copy shape."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], first: str):
        self.copied = dict(shapes)
        self.nodes: list[onnx.NodeProto] = []
        self._counter = 0
        # P, read once from a trainable input: every copied tensor has the same leading dimension
        shape = self._emit("Shape", [first], "prge/copies/shape")
        self.copies = self._emit("Slice", [shape, self._const([0]), self._const([1])], "prge/copies")

    def rewrite(self, node: onnx.NodeProto) -> None:
        inputs = [name for name in node.input if name in self.copied]
        op = node.op_type
        if not inputs:
            self.nodes.append(node)
        elif op in _PASS_THROUGH and len(node.input) == 1:
            self._pass_through(node)
        elif op == "MatMul" and node.input[1] in self.copied and node.input[0] not in self.copied:
            self._matmul(node)
        elif op == "Gemm" and node.input[1] in self.copied and node.input[0] not in self.copied:
            self._gemm(node)
        elif op in _BROADCAST_OPS and len(node.input) == 2 and len(inputs) == 1:
            self._broadcast(node.op_type, node.input[0], node.input[1], node.output[0], node.name)
        elif op == "LayerNormalization" and node.input[0] not in self.copied:
            self._layer_norm(node)
        else:
            raise ModelError(
                f"P-RGE cannot batch trainable tensor '{inputs[0]}' through {op} node '{node.name}' "
                "(it batches LoRA adapters, linear weights, biases and LayerNorm); use --parallel off"
            )

    # -- rules --------------------------------------------------------------------------------

    def _pass_through(self, node: onnx.NodeProto) -> None:
        shape = self.copied[node.input[0]]
        if node.op_type == "Transpose":
            attr = next((a for a in node.attribute if a.name == "perm"), None)
            perm = list(attr.ints) if attr else list(reversed(range(len(shape))))
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("perm", [0] + [p + 1 for p in perm]))
            shape = tuple(shape[p] for p in perm)
        self.copied[node.output[0]] = shape
        self.nodes.append(node)

    def _matmul(self, node: onnx.NodeProto) -> None:
        x, w = node.input[0], node.input[1]
        width_in, width_out = self._matrix_shape(w, node)
        y = self._emit("MatMul", [self._rows_per_copy(x, width_in), w], node.name + "/batched")
        self._emit("Reshape", [y, self._shape_with_last(x, width_out)], node.name + "/rows", node.output[0])

    def _gemm(self, node: onnx.NodeProto) -> None:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0):
            raise ModelError(f"P-RGE cannot batch Gemm node '{node.name}' with transA=1; use --parallel off")
        x, w = node.input[0], node.input[1]
        rows, cols = self._matrix_shape(w, node)
        if attrs.get("transB", 0):
            w = self._emit("Transpose", [w], node.name + "/W_t", perm=[0, 2, 1])
            rows, cols = cols, rows
        y = self._emit("MatMul", [self._rows_per_copy(x, rows), w], node.name + "/batched")
        if float(attrs.get("alpha", 1.0)) != 1.0:
            y = self._emit("Mul", [y, self._const(np.float32(attrs["alpha"]))], node.name + "/alpha")
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None:
            beta = float(attrs.get("beta", 1.0))
            b = bias if beta == 1.0 else self._emit("Mul", [bias, self._const(np.float32(beta))], node.name + "/beta")
            if bias in self.copied:
                b = self._emit("Unsqueeze", [b, self._const([1])], node.name + "/bias_per_copy")
            y = self._emit("Add", [y, b], node.name + "/bias")
        self._emit("Reshape", [y, self._const([-1, cols])], node.name + "/rows", node.output[0])

    def _broadcast(self, op: str, a: str, b: str, out: str, scope: str) -> None:
        """``a op b`` where one side is a copied 1-D tensor broadcast over the other's last axis."""
        first_copied = a in self.copied
        c, x = (a, b) if first_copied else (b, a)
        shape = self.copied[c]
        if len(shape) != 1:
            raise ModelError(
                f"P-RGE batches only 1-D tensors through {op} (biases, norm scales); "
                f"'{c}' in node '{scope}' has shape {list(shape)}; use --parallel off"
            )
        x3 = self._rows_per_copy(x, shape[0])
        c3 = self._emit("Unsqueeze", [c, self._const([1])], scope + "/per_copy_view")
        y = self._emit(op, [c3, x3] if first_copied else [x3, c3], scope + "/per_copy")
        self._emit("Reshape", [y, self._emit("Shape", [x], scope + "/x_shape")], scope + "/rows", out)

    def _layer_norm(self, node: onnx.NodeProto) -> None:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("axis", -1) != -1 or any(node.output[1:]):
            raise ModelError(f"P-RGE batches LayerNormalization over the last axis with one output only "
                             f"(node '{node.name}'); use --parallel off")
        x, scale = node.input[0], node.input[1]
        shift = node.input[2] if len(node.input) > 2 and node.input[2] else None
        width = (self.copied.get(scale) or self.copied[shift])[0]
        normed = self._emit("LayerNormalization", [x, self._const(np.ones(width, np.float32))],
                            node.name + "/normalized", **attrs)
        scaled = self._name(node.name + "/scaled") if shift else node.output[0]
        self._apply("Mul", normed, scale, scaled, node.name + "/scale")
        if shift:
            self._apply("Add", scaled, shift, node.output[0], node.name + "/shift")

    # -- helpers ------------------------------------------------------------------------------

    def _apply(self, op: str, x: str, c: str, out: str, scope: str) -> None:
        """``x op c``, per copy when ``c`` is copied."""
        if c in self.copied:
            self._broadcast(op, x, c, out, scope)
        else:
            self._emit(op, [x, c], scope, out)

    def _rows_per_copy(self, x: str, width: int) -> str:
        """Activation ``x`` ([P·B, ..., width]) viewed as ``[P, rows, width]``."""
        target = self._emit("Concat", [self.copies, self._const([-1, width])], x + "/copies_shape", axis=0)
        return self._emit("Reshape", [x, target], x + "/per_copy")

    def _shape_with_last(self, x: str, width: int) -> str:
        """``x``'s shape with its last axis replaced by ``width``."""
        shape = self._emit("Shape", [x], x + "/shape")
        lead = self._emit("Slice", [shape, self._const([0]), self._const([-1])], x + "/lead")
        return self._emit("Concat", [lead, self._const([width])], x + "/out_shape", axis=0)

    def _matrix_shape(self, w: str, node: onnx.NodeProto) -> tuple[int, int]:
        shape = self.copied[w]
        if len(shape) != 2:
            raise ModelError(f"P-RGE batches 2-D weights in {node.op_type} node '{node.name}'; "
                             f"'{w}' has shape {list(shape)}; use --parallel off")
        return shape

    def _emit(self, op: str, inputs: list[str], scope: str, out: str | None = None, **attrs) -> str:
        out = out or self._name(scope)
        self.nodes.append(helper.make_node(op, inputs, [out], name=self._name(scope), **attrs))
        return out

    def _const(self, value) -> str:
        array = np.asarray(value, np.int64) if isinstance(value, list) else np.asarray(value)
        name = self._name("prge/const")
        value = numpy_helper.from_array(array, name)
        self.nodes.append(helper.make_node("Constant", [], [name], name=name, value=value))
        return name

    def _name(self, scope: str) -> str:
        self._counter += 1
        return f"/edgetune/prge/{scope.strip('/')}_{self._counter}"
