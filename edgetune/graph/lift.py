"""Moving trainable weights out of the graph into inputs, and folding tuned values back.

A lifted weight becomes a graph input bound zero-copy to the core's arena; everything else stays an
initializer so ORT still constant-folds and prepacks it (docs/architecture.md: editing initializers in
place is silently ignored by prepacking, inputs are not).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgetune.errors import ModelError
from edgetune.artifacts.io import atomic_write_bytes, temporary_path

_EXTERNAL_DATA_THRESHOLD = 1 << 30  # protobuf cannot serialise past 2 GiB; stay well clear


def lift_to_inputs(model: onnx.ModelProto, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Turn initializers ``names`` into float inputs; return their current values."""
    wanted = set(names)
    graph = model.graph
    values: dict[str, np.ndarray] = {}
    kept = []
    for init in graph.initializer:
        if init.name in wanted:
            values[init.name] = numpy_helper.to_array(init).astype(np.float32, copy=False)
        else:
            kept.append(init)
    missing = wanted - values.keys()
    if missing:
        raise ModelError(f"weight '{sorted(missing)[0]}' is not an initializer of the model")
    del graph.initializer[:]
    graph.initializer.extend(kept)
    existing_inputs = {i.name for i in graph.input}
    for name, value in values.items():
        if name not in existing_inputs:  # IR < 4 models also list initializers as inputs
            graph.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(value.shape)))
    return values


def fold_weights(
    model: onnx.ModelProto,
    weights: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """Replace initializers by tuned values (in place) and record ``metadata``; returns ``model``."""
    index = {init.name: i for i, init in enumerate(model.graph.initializer)}
    for name, value in weights.items():
        if name not in index:
            raise ModelError(f"tuned weight '{name}' is not an initializer of the base model")
        model.graph.initializer[index[name]].CopyFrom(numpy_helper.from_array(np.asarray(value, np.float32), name))
    update_metadata(model, metadata)
    return model


def update_metadata(model: onnx.ModelProto, metadata: Mapping[str, str] | None) -> None:
    """Set ``metadata`` in ``model.metadata_props`` (in place): a key it has keeps its place, new keys follow."""
    if metadata:
        props = {p.key: p.value for p in model.metadata_props}
        props.update(metadata)
        del model.metadata_props[:]
        for key, value in props.items():
            model.metadata_props.add(key=key, value=value)


def save_model(model: onnx.ModelProto, path: str | Path) -> None:
    """Write ``model`` atomically; large models get their weights in a ``.data`` file beside it."""
    path = Path(path)
    if model.ByteSize() < _EXTERNAL_DATA_THRESHOLD:
        atomic_write_bytes(path, model.SerializeToString())
        return
    data_name = path.name + ".data"
    onnx.external_data_helper.convert_model_to_external_data(model, all_tensors_to_one_file=True, location=data_name)
    tmp = temporary_path(path)  # named as io's temporaries, so a killed save is cleaned like theirs
    try:
        onnx.save_model(model, str(tmp))  # writes the .data file next to it first
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
