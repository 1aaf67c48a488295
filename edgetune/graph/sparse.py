"""Sparse δ slices (after SpIEL, arXiv 2401.16405): tune a chosen few entries of frozen linear weights.

``sparse:density=0.01[,score=magnitude][,targets=q,v]`` picks, in each targeted linear layer's
``[in, out]`` weight W, the ``ceil(density · size)`` entries of largest |W| and rewrites the layer as

    W' = Reshape(ScatterElements(Flatten(W), idx, Gather(Flatten(W), idx) + δ), shape(W))

with ``δ`` (zeros at the start) lifted into the arena: only δ is perturbed and updated, so a ZO
estimate perturbs k values instead of the layer's in·out. ``Flatten(W)`` and the ``Gather`` of an
initializer are constant-folded by ONNX Runtime; the ``ScatterElements`` makes one transient copy of
W per run (the layer loses weight prepacking, as a lifted weight does). Folding back computes the
same float32 sum ``W[idx] + δ``, so the merged model and an ``.etdiff`` applied to the base hold the
graph's weights bit for bit.

The score is magnitude only: it needs nothing but the base weights, so the index set is a pure
function of (model, spec) that ``save`` and ``apply`` recompute instead of storing it in the graph
cache. A data-driven sensitivity score would need the training data at prepare time (not done).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgetune.errors import ModelError
from edgetune.graph.blocks import Param, block_of_name
from edgetune.graph.lora import Linear, find_linears, match_targets
from edgetune.graph.trainable import SparseSpec


@dataclass(frozen=True)
class SparseSlice:
    """The tuned entries of one linear weight: flat indices (ascending) into its ``[in, out]`` values."""

    linear: Linear
    indices: np.ndarray  # int64

    @property
    def delta_name(self) -> str:
        return f"{self.linear.module}.sparse_delta"

    @property
    def index_name(self) -> str:
        return f"{self.linear.module}.sparse_index"


def plan_sparse(model: onnx.ModelProto, spec: SparseSpec, where: str = "model",
                read: Callable[[str], np.ndarray] | None = None) -> list[SparseSlice]:
    """The index set of every targeted linear layer; the same model and spec give the same indices.
    ``read`` gives a weight's values by name (default: from ``model``'s initializers; a skeleton has none)."""
    linears = find_linears(model)
    if spec.targets is not None:
        linears = match_targets(linears, spec.targets, where)
    if not linears:
        raise ModelError(f"{where}: the sparse: term finds no linear layer (a MatMul on a [in, out] weight) to tune")
    weights = {init.name: init for init in model.graph.initializer}
    read = read or (lambda name: numpy_helper.to_array(weights[name]))
    slices = []
    for linear in linears:
        magnitude = np.abs(read(linear.weight).reshape(-1))
        count = max(1, math.ceil(spec.density * magnitude.size))
        # stable: equal magnitudes are broken by position, so prepare, save and apply agree on ties
        top = np.argsort(-magnitude, kind="stable")[:count]
        slices.append(SparseSlice(linear, np.sort(top).astype(np.int64)))
    return slices


def insert_sparse(model: onnx.ModelProto, slices: list[SparseSlice]) -> None:
    """Rewrite each sliced layer's MatMul to use W with δ added at its indices (in place).

    The indices become int64 initializers; δ is left for the caller to add (as an initializer or input).
    """
    graph = model.graph
    by_weight = {piece.linear.weight: piece for piece in slices}
    nodes = []
    for node in graph.node:
        piece = by_weight.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if piece is not None:
            p = "/" + piece.linear.module.replace(".", "/") + "/sparse"
            shape = [piece.linear.in_features, piece.linear.out_features]
            graph.initializer.extend([
                numpy_helper.from_array(piece.indices, piece.index_name),
                numpy_helper.from_array(np.array([-1], np.int64), f"{p}/flat_shape"),
                numpy_helper.from_array(np.array(shape, np.int64), f"{p}/shape"),
            ])
            nodes += [
                helper.make_node("Reshape", [node.input[1], f"{p}/flat_shape"], [f"{p}/flat"], name=f"{p}/Flatten"),
                helper.make_node("Gather", [f"{p}/flat", piece.index_name], [f"{p}/base"], name=f"{p}/Gather", axis=0),
                helper.make_node("Add", [f"{p}/base", piece.delta_name], [f"{p}/tuned"], name=f"{p}/Add"),
                helper.make_node("ScatterElements", [f"{p}/flat", piece.index_name, f"{p}/tuned"], [f"{p}/scattered"],
                                 name=f"{p}/ScatterElements", axis=0),
                helper.make_node("Reshape", [f"{p}/scattered", f"{p}/shape"], [f"{p}/weight"], name=f"{p}/Reshape"),
            ]
            node.input[1] = f"{p}/weight"
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def add_sparse(model: onnx.ModelProto, spec: SparseSpec, params: list[Param], where: str) -> list[Param]:
    """Insert the δ slices of ``spec`` (δ = 0 as initializers); returns δ as trainable tensors placed in
    their layer's block, so selection, arena layer groups and the prefix split treat them like the layer."""
    slices = plan_sparse(model, spec, where)
    insert_sparse(model, slices)
    placed = {p.name: p for p in params}
    trainable = []
    for piece in slices:
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(piece.indices.size, np.float32), piece.delta_name))
        base = placed.get(piece.linear.weight)
        block = base.block if base else block_of_name(piece.linear.module)
        trainable.append(Param(piece.delta_name, (piece.indices.size,), block, base.region if base else "block",
                               base.first_use if base else 0))
    return trainable


def add_deltas(model: onnx.ModelProto, deltas: dict[str, tuple[np.ndarray, np.ndarray]], where: str) -> None:
    """W.flat[indices] += δ for each ``{weight name: (indices, δ)}`` (in place), in float32 as the graph adds."""
    index = {init.name: i for i, init in enumerate(model.graph.initializer)}
    for name, (indices, delta) in deltas.items():
        if name not in index:
            raise ModelError(f"{where}: tensor '{name}' is not a weight of the model")
        init = model.graph.initializer[index[name]]
        init.CopyFrom(numpy_helper.from_array(add_delta(numpy_helper.to_array(init), indices, delta, name, where), name))


def add_delta(weight: np.ndarray, indices: np.ndarray, delta: np.ndarray, name: str, where: str) -> np.ndarray:
    """``weight`` (float32, a copy) with ``weight.flat[indices] += δ``, in float32 as the graph adds."""
    flat = weight.astype(np.float32).reshape(-1)
    if indices.size != delta.size or (indices.size and (indices.min() < 0 or indices.max() >= flat.size)):
        raise ModelError(f"{where}: the entries of '{name}' lie outside its {flat.size} values")
    flat[indices] = flat[indices] + delta
    return flat.reshape(weight.shape)
