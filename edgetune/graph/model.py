"""Loading an ONNX model and checking it has the transformer I/O edgetune tunes."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from edgetune.data.jsonl import TASK_CLASSIFICATION, TASK_LM
from edgetune.errors import ModelError

DATA_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
LABELS_KEY = "edgetune.labels"
TASK_KEY = "edgetune.task"
DEFAULT_MAX_LENGTH = 128  # tokens per example when --max-length is not given


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
    max_positions: int | None = None  # rows of a learned position table (None: rotary or none found)


def max_length_for(info: ModelInfo, max_length: int | None) -> int:
    """--max-length as given, refused beyond the model's position table (which ONNX Runtime would index
    past); None: :data:`DEFAULT_MAX_LENGTH`, or the table's rows where it has fewer."""
    if max_length is None:
        return min(DEFAULT_MAX_LENGTH, info.max_positions or DEFAULT_MAX_LENGTH)
    if info.max_positions is not None and max_length > info.max_positions:
        raise ModelError(f"--max-length {max_length} is more than the {info.max_positions} positions "
                         f"{info.path} has (its position table's rows)")
    return max_length


def check_model_file(path: str | Path) -> None:
    """Refuse a model path that is missing, unreadable or empty, before anything hashes or loads it."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model not found")
    try:
        with open(path, "rb") as handle:
            empty = not handle.read(1)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model ({exc.strerror})") from None
    if empty:
        raise ModelError(f"{path}: not a valid ONNX model (the file is empty)")


def load_model(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    check_model_file(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        what = "valid" if type(exc).__name__ == "DecodeError" else "readable"  # cut or corrupt: not protobuf
        raise ModelError(f"{path}: not a {what} ONNX model ({reason})") from None
    return check_parsed(model, path)


def check_parsed(model: onnx.ModelProto, path: str | Path) -> onnx.ModelProto:
    """``model`` as parsed from ``path``, refused when it lacks a graph or an opset: protobuf parses a
    file cut between two fields, or an empty one, without complaint."""
    if not model.opset_import or not model.graph.node:
        raise ModelError(f"{path}: not a valid ONNX model (no graph or no opset: truncated?)")
    return model


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
    by_rank = {2: TASK_CLASSIFICATION, 3: TASK_LM}
    if task is not None and rank in by_rank and by_rank[rank] != task:  # it would fail inside ORT, or later
        raise ModelError(f"{path}: --task {task} does not fit this model: its 'logits' have rank {rank}, "
                         f"as a{' causal LM' if rank == 3 else ' classifier'}'s do; leave --task out")
    task = task or metadata.get(TASK_KEY) or by_rank.get(rank or 0)
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
        max_positions=_position_rows(model),
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


_POSITION_TABLE = re.compile(r"position_embeddings|embed_positions|\bwpe\b")


def _position_rows(model: onnx.ModelProto) -> int | None:
    """Rows of the learned position table (BERT's ``position_embeddings``, GPT-2's ``wpe``): the most
    tokens an example may have. Found by a Gather on a 2-D initializer whose name, or its node's scope,
    says so (exporters keep the module path in node names even where they mangle weight names)."""
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Gather" or len(shapes.get(node.input[0], ())) != 2:
            continue
        if _POSITION_TABLE.search(node.input[0].replace(".", " ")) or _POSITION_TABLE.search(node.name.replace("/", " ")):
            return shapes[node.input[0]][0]
    return None
