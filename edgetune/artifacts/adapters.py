"""LoRA outputs of a tuning run, and merging an adapter into a plain ONNX model (``edgetune apply``).

A LoRA run writes, next to the usual files:

* ``model.onnx``: the base graph with every adapter merged into its weight, W + s·(BA)ᵀ; no LoRA nodes.
* ``model_lora.onnx`` + ``adapter.onnx_adapter``: ONNX Runtime's multi-LoRA form. Every adapter tensor
  is a graph input whose default initializer is empty (rank 0), so the model alone is the base model;
  ``ort.LoraAdapter`` + ``RunOptions.add_active_adapter`` feed the tuned tensors. The adapter file
  holds A and s·B (the file format has no place for s), plus any other tuned tensor under its
  initializer name (those are inputs of ``model_lora.onnx`` defaulting to their base values).
* ``peft/``: ``adapter_model.safetensors`` + ``adapter_config.json`` for ``peft.PeftModel.from_pretrained``
  (written when every tuned tensor maps onto a Hugging Face module: LoRA pairs, linear weights/biases).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from safetensors.numpy import load_file
from safetensors.numpy import save as safetensors_bytes

from edgetune.artifacts.checkpoint import load_checkpoint
from edgetune.errors import EdgetuneError, ModelError
from edgetune.artifacts.finite import require_finite_tensors
from edgetune.graph.lift import fold_weights, save_model
from edgetune.graph.lora import (
    Linear,
    LoraLayer,
    describe_linears,
    find_linears,
    initial_values,
    insert_lora,
    merge_lora,
    merged_weight,
    plan_lora,
)
from edgetune.graph.model import load_model
from edgetune.graph.trainable import LoraSpec, TrainableSpec
from edgetune.graph.stream import ModelFile, Tensor
from edgetune.artifacts.io import atomic_write_bytes, atomic_write_text
from edgetune.artifacts.outdir import refuse_input_file
from edgetune.artifacts.sparse_diff import apply_sparse_diff

log = logging.getLogger(__name__)

DIFF_SUFFIX = ".etdiff"

ORT_ADAPTER = "adapter.onnx_adapter"
LORA_GRAPH = "model_lora.onnx"
PEFT_DIR = "peft"
_PEFT_PREFIX = "base_model.model."
_PEFT_TASKS = {"lm": "CAUSAL_LM", "classification": "SEQ_CLS"}
_RANK_DIM = "lora_rank"


@dataclass
class Adapter:
    """An adapter in edgetune's terms, whatever file it came from."""

    lora: dict[str, tuple[np.ndarray, np.ndarray, float]] = field(default_factory=dict)  # module → (A, B, s)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)  # base initializer name → new value
    metadata: dict[str, str] = field(default_factory=dict)  # ONNX metadata the merged model gets (a run's labels)

    def require_finite(self, where: Path) -> None:
        """Refuse NaN or infinite values (a scale too): merged, they would make every output NaN."""
        tensors = dict(self.tensors)
        for module, (a, b, scale) in self.lora.items():
            tensors.update({f"{module}.lora_A": a, f"{module}.lora_B": b, f"{module} scale": np.float64(scale)})
        require_finite_tensors(tensors, str(where))


# -- writing a LoRA run's outputs -------------------------------------------------------------


def save_lora_outputs(out: Path, base_path: Path, spec: LoraSpec, weights: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str], task: str) -> None:
    """Write ``model.onnx`` (merged), ``model_lora.onnx`` + ``adapter.onnx_adapter`` and ``peft/``."""
    base = ModelFile(base_path)  # the graph without its weights; each weight is read when written
    linears = find_linears(base.skeleton)
    layers = plan_lora(base.skeleton, spec, str(base_path))
    values = initial_values(layers, spec.seed)  # LoRA-FA's frozen A is not among the tuned weights
    values.update({name: np.asarray(w) for name, w in weights.items() if name in values})
    others = {name: np.asarray(w) for name, w in weights.items() if name not in values}
    peft_tensors = _peft_tensors(base.skeleton, layers, values, others)

    merged: dict[str, Tensor] = dict(others)
    for layer in layers:  # one merged weight in memory at a time, computed as it is written
        merged[layer.linear.weight] = functools.partial(_merged, base, layer, values, others.get(layer.linear.weight))
    base.write(out / "model.onnx", merged, metadata)

    graph = onnx.ModelProto()
    graph.CopyFrom(base.skeleton)
    _declare_adapter_inputs(graph, layers, others)
    base.write(out / LORA_GRAPH, {}, metadata, skeleton=graph)
    del graph
    params = dict(others)
    for layer in layers:
        params[layer.a_name] = values[layer.a_name]
        params[layer.b_name] = np.float32(layer.scale) * values[layer.b_name]
    _write_ort_adapter(out / ORT_ADAPTER, params)

    if peft_tensors is not None:
        tensors, modules_to_save = peft_tensors
        config = {
            "peft_type": "LORA",
            "task_type": _PEFT_TASKS.get(task),
            "base_model_name_or_path": _base_model_name(base_path),
            "r": spec.rank,
            "lora_alpha": spec.alpha,
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": False,
            "target_modules": _target_modules(linears, layers),
            "modules_to_save": modules_to_save or None,
            "inference_mode": True,
        }
        peft = out / PEFT_DIR
        peft.mkdir(exist_ok=True)
        atomic_write_bytes(peft / "adapter_model.safetensors", safetensors_bytes(tensors, metadata={"format": "pt"}))
        atomic_write_text(peft / "adapter_config.json", json.dumps(config, indent=2) + "\n")


def _merged(base: ModelFile, layer: LoraLayer, values: Mapping[str, np.ndarray], tuned: np.ndarray | None) -> np.ndarray:
    """The layer's weight with its adapter merged, over its tuned value when it was tuned too."""
    return merged_weight(base.array(layer.linear.weight) if tuned is None else tuned, layer, values)


def _declare_adapter_inputs(model: onnx.ModelProto, layers: list[LoraLayer], others: Mapping[str, np.ndarray]) -> None:
    """Adapter tensors become inputs with defaults: empty for A/B (no adapter = base), base values else."""
    insert_lora(model, layers, scaled=False)
    graph = model.graph
    declared = {i.name for i in graph.input}
    for layer in layers:
        n_in, n_out = layer.linear.in_features, layer.linear.out_features
        graph.initializer.extend([
            numpy_helper.from_array(np.zeros((0, n_in), np.float32), layer.a_name),
            numpy_helper.from_array(np.zeros((n_out, 0), np.float32), layer.b_name),
        ])
        graph.input.extend([
            helper.make_tensor_value_info(layer.a_name, onnx.TensorProto.FLOAT, [_RANK_DIM, n_in]),
            helper.make_tensor_value_info(layer.b_name, onnx.TensorProto.FLOAT, [n_out, _RANK_DIM]),
        ])
    for name, value in others.items():
        if name not in declared:
            graph.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(value.shape)))
    if model.ir_version < 4:  # inputs with initializer defaults need IR 4
        model.ir_version = 4


def _write_ort_adapter(path: Path, params: Mapping[str, np.ndarray]) -> None:
    import onnxruntime as ort

    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    # An OrtValue made from numpy borrows the array's memory: keep every array alive until the export.
    arrays = {n: np.ascontiguousarray(v, np.float32) for n, v in params.items()}
    adapter.set_parameters({n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in arrays.items()})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        adapter.export_adapter(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _peft_tensors(model, layers, values, others):
    """PEFT's state dict (and modules_to_save), or None (with a warning) when a tuned tensor has no
    Hugging Face name: PEFT could not load a folder that leaves it out."""
    tensors = {}
    for layer in layers:
        tensors[_PEFT_PREFIX + layer.a_name] = np.ascontiguousarray(values[layer.a_name])
        tensors[_PEFT_PREFIX + layer.b_name] = np.ascontiguousarray(values[layer.b_name])
    hf_names = {onnx_name: (hf, transpose) for hf, (onnx_name, transpose) in _hf_params(model).items()}
    modules = set()
    for name, value in others.items():
        if name not in hf_names:
            log.warning("no peft/ folder: tuned tensor '%s' is not a linear layer's weight or bias, which PEFT's "
                        "modules_to_save needs (model.onnx and the ORT adapter hold it)", name)
            return None
        hf, transpose = hf_names[name]
        tensors[_PEFT_PREFIX + hf] = np.ascontiguousarray(value.T if transpose else value)
        modules.add(hf.rsplit(".", 1)[0])
    return tensors, sorted(modules)


def _hf_params(model: onnx.ModelProto) -> dict[str, tuple[str, bool]]:
    """Hugging Face parameter name → (ONNX initializer, stored transposed) for linear weights and biases."""
    graph = model.graph
    shapes = {init.name: list(init.dims) for init in graph.initializer}
    out_of = {node.input[1]: node.output[0] for node in graph.node if node.op_type == "MatMul" and len(node.input) == 2}
    params = {}
    for linear in find_linears(model):
        params[f"{linear.module}.weight"] = (linear.weight, True)
        matmul_out = out_of[linear.weight]
        for node in graph.node:
            if node.op_type == "Add" and matmul_out in node.input:
                bias = [n for n in node.input if n != matmul_out and shapes.get(n) == [linear.out_features]]
                if bias:
                    params[f"{linear.module}.bias"] = (bias[0], False)
    return params


def _target_modules(linears: list[Linear], layers: list[LoraLayer]) -> list[str]:
    """Short names (``q_proj``) when they select exactly the adapted layers, else full module paths."""
    chosen = {layer.linear.module for layer in layers}
    short = sorted({module.rsplit(".", 1)[-1] for module in chosen})
    if {linear.module for linear in linears if linear.module.rsplit(".", 1)[-1] in short} == chosen:
        return short
    return sorted(chosen)


def _base_model_name(base_path: Path) -> str | None:
    """The Hugging Face source of an ``edgetune export``, from its manifest."""
    try:
        manifest = json.loads((base_path.parent / "edgetune_export.json").read_text())
        return manifest["key"]["source"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- edgetune apply ---------------------------------------------------------------------------


def apply_adapter(base_path: str | Path, adapter_path: str | Path, output: str | Path,
                  overwrite: bool = False) -> Path:
    """Merge an ``.onnx_adapter``, a PEFT folder, a LoRA run's ``trainable.safetensors`` or a sparse run's
    ``.etdiff`` into ``base_path``. An existing ``output`` file is replaced only with ``overwrite``."""
    base_path, adapter_path, output = Path(base_path), Path(adapter_path), Path(output)
    refuse_input_file(output, [base_path, adapter_path])
    if output.exists() and not overwrite:
        raise EdgetuneError(f"--output {output} already exists: choose another file or replace it with --overwrite")
    if not adapter_path.exists():
        raise EdgetuneError(f"{adapter_path}: adapter not found")
    if adapter_path.suffix == DIFF_SUFFIX:
        model = apply_sparse_diff(base_path, adapter_path)
    else:
        model = load_model(base_path)
        adapter = read_adapter(adapter_path, model)
        adapter.require_finite(adapter_path)
        merge_adapter(model, adapter, base_path)
    try:
        save_model(model, output)
    except OSError as exc:
        raise EdgetuneError(f"{output}: could not write the merged model ({exc.strerror})") from None
    return output


def read_adapter(path: Path, model: onnx.ModelProto) -> Adapter:
    if path.is_dir():
        return read_peft(path, model)
    if path.suffix == ".onnx_adapter":
        return read_ort_adapter(path)
    if path.suffix == ".safetensors":
        return read_trainable(path, model)
    raise EdgetuneError(f"{path}: not an .onnx_adapter, a PEFT folder, an edgetune trainable.safetensors or {DIFF_SUFFIX}")


def merge_adapter(model: onnx.ModelProto, adapter: Adapter, where: Path) -> None:
    linears = {linear.module: linear for linear in find_linears(model)}
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    for name, value in adapter.tensors.items():
        if name not in shapes:
            raise ModelError(f"adapter tensor '{name}' is not a weight of {where}")
        if tuple(value.shape) != shapes[name]:
            raise ModelError(f"adapter tensor '{name}' has shape {list(value.shape)}, {where} has {list(shapes[name])}")
    fold_weights(model, adapter.tensors, adapter.metadata)
    layers, values = [], {}
    for module, (a, b, scale) in adapter.lora.items():
        if module not in linears:
            raise ModelError(f"adapter tensor '{module}.lora_A.weight': {where} has no linear layer '{module}' "
                             f"({describe_linears(list(linears.values()))})")
        if a.ndim != 2:
            raise ModelError(f"adapter tensor '{module}.lora_A.weight' has shape {list(a.shape)}, not [r, in]")
        layer = LoraLayer(linears[module], int(a.shape[0]), scale)
        layers.append(layer)
        values[layer.a_name], values[layer.b_name] = a, b
    merge_lora(model, layers, values)


def _pairs(tensors: Mapping[str, np.ndarray], source: Path) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Split ``<module>.lora_A.weight`` / ``.lora_B.weight`` pairs from the other tensors."""
    pairs: dict[str, dict[str, np.ndarray]] = {}
    rest = {}
    for name, value in tensors.items():
        for part in ("lora_A", "lora_B"):
            if name.endswith(f".{part}.weight"):
                pairs.setdefault(name[: -len(f".{part}.weight")], {})[part] = np.asarray(value, np.float32)
                break
        else:
            rest[name] = np.asarray(value, np.float32)
    for module, pair in pairs.items():
        if len(pair) != 2:
            missing = "lora_B" if "lora_A" in pair else "lora_A"
            raise ModelError(f"{source}: adapter tensor '{module}.{missing}.weight' is missing")
    return pairs, rest


def read_ort_adapter(path: Path) -> Adapter:
    import onnxruntime as ort

    try:
        adapter = ort.AdapterFormat.read_adapter(str(path))
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EdgetuneError(f"{path}: not a readable ONNX Runtime adapter ({reason})") from None
    # The parameters' OrtValues point into the adapter object's buffer: copy them out while it lives.
    tensors = {name: np.array(value.numpy(), copy=True) for name, value in adapter.get_parameters().items()}
    del adapter
    pairs, rest = _pairs(tensors, path)
    return Adapter({m: (p["lora_A"], p["lora_B"], 1.0) for m, p in pairs.items()}, rest)  # B carries s


def read_peft(folder: Path, model: onnx.ModelProto) -> Adapter:
    config_path, weights_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise EdgetuneError(f"{folder}: not a PEFT adapter folder (needs adapter_config.json and adapter_model.safetensors)")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as exc:
        raise EdgetuneError(f"{config_path}: not valid JSON ({exc})") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise EdgetuneError(f"{config_path}: peft_type {config.get('peft_type')} is not supported (LORA only)")
    for unsupported in ("use_dora", "fan_in_fan_out", "rank_pattern", "alpha_pattern"):
        if config.get(unsupported):
            raise EdgetuneError(f"{config_path}: '{unsupported}' is not supported by edgetune apply")
    rank, alpha = config.get("r", 8), config.get("lora_alpha", 8)
    scale = alpha / (np.sqrt(rank) if config.get("use_rslora") else rank)
    try:
        tensors = load_file(str(weights_path))
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EdgetuneError(f"{weights_path}: not a readable safetensors file ({reason})") from None
    stripped = {n[len(_PEFT_PREFIX):] if n.startswith(_PEFT_PREFIX) else n: v for n, v in tensors.items()}
    pairs, rest = _pairs(stripped, weights_path)
    adapter = Adapter({m: (p["lora_A"], p["lora_B"], float(scale)) for m, p in pairs.items()})
    onnx_names = _hf_params(model)
    for name, value in rest.items():
        if name not in onnx_names:
            raise ModelError(f"{weights_path}: adapter tensor '{_PEFT_PREFIX}{name}' names no linear weight or bias of the model")
        onnx_name, transpose = onnx_names[name]
        adapter.tensors[onnx_name] = value.T if transpose else value
    return adapter


def read_trainable(path: Path, model: onnx.ModelProto) -> Adapter:
    """A LoRA run's ``trainable.safetensors``: its spec rebuilds LoRA-FA's frozen A deterministically."""
    tensors, state = load_checkpoint(path)
    text = state.get("trainable") if isinstance(state, dict) else None
    try:  # the run's canonical spec, written by Tuner.save
        lora = TrainableSpec.parse(text).lora if isinstance(text, str) and text else None
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    if lora is None:
        raise EdgetuneError(f"{path}: not from a LoRA run (its tuned weights are already folded into model.onnx)")
    layers = plan_lora(model, lora, str(path))
    values = initial_values(layers, lora.seed)
    values.update({name: v for name, v in tensors.items() if name in values})
    adapter = Adapter({layer.linear.module: (values[layer.a_name], values[layer.b_name], layer.scale) for layer in layers})
    adapter.tensors = {name: np.asarray(v, np.float32) for name, v in tensors.items() if name not in values}
    adapter.metadata = {str(k): str(v) for k, v in (state.get("metadata") or {}).items()}  # labels, verbaliser
    return adapter
