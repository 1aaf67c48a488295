"""Loading an ONNX model and checking it has the transformer I/O edgetune tunes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from edgetune.data.jsonl import TASK_CLASSIFICATION, TASK_LM
from edgetune.errors import ModelError

DATA_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
LABELS_KEY = "edgetune.labels"
TASK_KEY = "edgetune.task"


@dataclass
class ModelInfo:
    path: Path
    task: str
    data_inputs: list[str]
    input_types: dict[str, int]  # ONNX elem type per data input
    num_classes: int | None
    labels: list[str] | None
    embedding_rows: int | None
    metadata: dict[str, str] = field(default_factory=dict)


def load_model(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model not found")
    try:
        return onnx.load(str(path))
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{path}: not a readable ONNX model ({reason})") from None


def inspect_model(model: onnx.ModelProto, path: Path, task: str | None = None) -> ModelInfo:
    graph = model.graph
    initializer_names = {init.name for init in graph.initializer}
    inputs = {i.name: i for i in graph.input if i.name not in initializer_names}
    outputs = {o.name: o for o in graph.output}
    if "logits" not in outputs:
        raise ModelError(f"{path}: no output named 'logits' (outputs: {', '.join(outputs) or 'none'})")
    if "input_ids" not in inputs:
        raise ModelError(f"{path}: no input named 'input_ids' (inputs: {', '.join(inputs) or 'none'})")
    unknown = [name for name in inputs if name not in DATA_INPUTS]
    if unknown:
        raise ModelError(
            f"{path}: unsupported input '{unknown[0]}' (edgetune feeds {', '.join(DATA_INPUTS)}; "
            "export without past key values)"
        )
    logits_type = outputs["logits"].type.tensor_type
    rank = len(logits_type.shape.dim) if logits_type.HasField("shape") else None
    metadata = {p.key: p.value for p in model.metadata_props}
    task = task or metadata.get(TASK_KEY) or {2: TASK_CLASSIFICATION, 3: TASK_LM}.get(rank or 0)
    if task not in (TASK_CLASSIFICATION, TASK_LM):
        raise ModelError(f"{path}: cannot tell the task from 'logits' of rank {rank}; pass --task")
    num_classes = None
    if task == TASK_CLASSIFICATION and rank:
        last = logits_type.shape.dim[-1]
        num_classes = last.dim_value if last.HasField("dim_value") else None
    labels = None
    if LABELS_KEY in metadata:
        try:
            labels = [str(x) for x in json.loads(metadata[LABELS_KEY])]
        except (ValueError, TypeError):
            raise ModelError(f"{path}: metadata '{LABELS_KEY}' is not a JSON list") from None
    return ModelInfo(
        path=path,
        task=task,
        data_inputs=[name for name in DATA_INPUTS if name in inputs],
        input_types={name: inputs[name].type.tensor_type.elem_type for name in inputs},
        num_classes=num_classes,
        labels=labels,
        embedding_rows=_embedding_rows(model),
        metadata=metadata,
    )


def _embedding_rows(model: onnx.ModelProto) -> int | None:
    """Rows of the table that ``input_ids`` indexes (a Gather on an initializer)."""
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    frontier = {"input_ids"}
    for node in model.graph.node:  # nodes are topologically sorted; follow casts/reshapes from input_ids
        if not frontier.intersection(node.input):
            continue
        if node.op_type == "Gather" and node.input[0] in shapes and node.input[1] in frontier:
            return shapes[node.input[0]][0]
        if node.op_type in ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"):
            frontier.update(node.output)
    return None
