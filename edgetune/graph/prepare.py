"""From a user's ONNX model to the graphs the engine runs.

load → inspect I/O → place weights in blocks → select the trainable slice → add the per-example
loss → lift the slice into inputs → split off the frozen prefix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgetune.graph.blocks import Param, find_params
from edgetune.graph.head_grad import HEAD_GRAD_B, HEAD_GRAD_W, LinearHead, add_head_grad, require_tuned
from edgetune.graph.lift import lift_to_inputs
from edgetune.graph.lora import add_lora
from edgetune.graph.loss import LOGITS_OUTPUT, LOSS_OUTPUT, TOKEN_LOGITS_OUTPUT, add_loss
from edgetune.graph.model import ModelInfo, inspect_model, load_model
from edgetune.graph.select import select_params
from edgetune.graph.sparse import add_sparse
from edgetune.graph.split import split_graph
from edgetune.graph.trainable import TrainableSpec


@dataclass
class PreparedModel:
    info: ModelInfo
    params: list[Param]  # the trainable slice, in arena order
    initial: Mapping[str, np.ndarray]  # their pretrained values (read lazily from the cache)
    prefix: onnx.ModelProto | str | None  # a graph, or the path of one prepared in the cache
    suffix: onnx.ModelProto | str
    boundary: list[str]
    total_params: int  # every weight of the model, for reporting
    head: LinearHead | None = None  # the last linear layer whose exact gradient the suffix outputs (head_grad)
    cached: list[str] = field(default_factory=list)  # what an activation cache keeps (graph/split.cache_cut)
    rest: onnx.ModelProto | str | None = None  # the rest of the boundary from the batch and ``cached``


def prepare(path: str | Path, trainable: TrainableSpec | None, task: str | None = None, split: bool = True,
            head_grad: bool = False) -> PreparedModel:
    """``trainable=None`` prepares for evaluation only: the loss is added, nothing is lifted.

    ``head_grad`` adds the exact gradient of the classifier's last linear layer as outputs
    (``graph/head_grad.py``); that layer must be in the slice.

    A ``lora:`` term inserts adapters first, a ``sparse:`` term δ slices of linear weights; their tensors
    join the slice in their base layer's block.
    """
    path = Path(path)
    model = load_model(path)
    info = inspect_model(model, path, task)
    all_params = find_params(model)
    selected = select_params(all_params, trainable) if trainable is not None else []
    total = sum(p.size for p in all_params)
    if trainable and trainable.lora:
        adapters, added = add_lora(model, trainable.lora, all_params, str(path))
        selected, total = selected + adapters, total + added
    if trainable and trainable.sparse:
        selected += add_sparse(model, trainable.sparse, all_params, str(path))
    selected.sort(key=_arena_order)
    add_loss(model, info.task)
    head = add_head_grad(model, str(path)) if head_grad else None
    if head is not None:
        require_tuned(head, [p.name for p in selected], trainable, str(path))
    initial = lift_to_inputs(model, [p.name for p in selected])
    kept = (LOSS_OUTPUT, LOGITS_OUTPUT, TOKEN_LOGITS_OUTPUT, HEAD_GRAD_W, HEAD_GRAD_B)
    outputs = [o.name for o in model.graph.output if o.name in kept]
    if split and selected:
        parts = split_graph(model, initial.keys(), outputs)
        prefix, suffix, boundary = parts.prefix, parts.suffix, parts.boundary
        cached, rest = parts.cached, parts.rest
    else:
        prefix, suffix, boundary, cached, rest = None, model, [], [], None
    return PreparedModel(
        info=info,
        params=selected,
        initial=initial,
        prefix=prefix,
        suffix=suffix,
        boundary=boundary,
        total_params=total,
        head=head,
        cached=cached,
        rest=rest,
    )


def _arena_order(param: Param) -> tuple[int, int]:
    """Embeddings, then blocks in order, then the head: a layer group is one contiguous range."""
    rank = {"embeddings": -1, "head": 1 << 30}.get(param.region, param.block)
    return (rank if rank is not None else 0, param.first_use)


def arena_group(param: Param) -> int:
    """Layer-group id in the arena: 0 embeddings, b+1 block b, a large id for the head."""
    if param.region == "embeddings":
        return 0
    if param.region == "head":
        return 1 << 20
    return int(param.block) + 1
