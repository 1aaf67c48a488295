"""From a user's ONNX model to the graphs the engine runs.

load → inspect I/O → place weights in blocks → select the trainable slice → add the per-example
loss → lift the slice into inputs → split off the frozen prefix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgetune.graph.blocks import Param, find_params
from edgetune.graph.lift import lift_to_inputs
from edgetune.graph.lora import add_lora
from edgetune.graph.loss import LOGITS_OUTPUT, LOSS_OUTPUT, TOKEN_LOGITS_OUTPUT, add_loss
from edgetune.graph.model import ModelInfo, inspect_model, load_model
from edgetune.errors import ModelError
from edgetune.graph.select import select_params, split_lora
from edgetune.graph.sparse import add_sparse, split_sparse
from edgetune.graph.split import split_graph


@dataclass
class PreparedModel:
    info: ModelInfo
    params: list[Param]  # the trainable slice, in arena order
    initial: Mapping[str, np.ndarray]  # their pretrained values (read lazily from the cache)
    prefix: onnx.ModelProto | str | None  # a graph, or the path of one prepared in the cache
    suffix: onnx.ModelProto | str
    boundary: list[str]
    total_params: int  # every weight of the model, for reporting


def prepare(path: str | Path, trainable: str | None, task: str | None = None, split: bool = True) -> PreparedModel:
    """``trainable=None`` prepares for evaluation only: the loss is added, nothing is lifted.

    A ``lora:`` term inserts adapters first, a ``sparse:`` term δ slices of linear weights; their tensors
    join the slice in their base layer's block.
    """
    path = Path(path)
    model = load_model(path)
    info = inspect_model(model, path, task)
    all_params = find_params(model)
    plain, sparse = split_sparse(trainable) if trainable else ("", None)
    plain, lora = split_lora(plain) if plain else ("", None)
    if lora is not None and sparse is not None:
        raise ModelError(f"--trainable '{trainable}': a lora: and a sparse: term cannot be combined")
    only_added = (lora is not None or sparse is not None) and not plain.strip(", ")
    selected = select_params(all_params, plain) if trainable and not only_added else []
    total = sum(p.size for p in all_params)
    if lora is not None:
        adapters, added = add_lora(model, lora, all_params, str(path))
        selected, total = selected + adapters, total + added
    if sparse is not None:
        selected += add_sparse(model, sparse, all_params, str(path))
    selected.sort(key=_arena_order)
    add_loss(model, info.task)
    initial = lift_to_inputs(model, [p.name for p in selected])
    outputs = [o.name for o in model.graph.output if o.name in (LOSS_OUTPUT, LOGITS_OUTPUT, TOKEN_LOGITS_OUTPUT)]
    if split and selected:
        parts = split_graph(model, initial.keys(), outputs)
        prefix, suffix, boundary = parts.prefix, parts.suffix, parts.boundary
    else:
        prefix, suffix, boundary = None, model, []
    return PreparedModel(
        info=info,
        params=selected,
        initial=initial,
        prefix=prefix,
        suffix=suffix,
        boundary=boundary,
        total_params=total,
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
