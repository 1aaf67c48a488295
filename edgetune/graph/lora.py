"""Low-rank adapters (LoRA, LoRA-FA) on the linear layers of an ONNX graph, and merging them back.

A linear layer is a ``MatMul`` whose second input is an fp32 ``[in, out]`` initializer used by that
node only (an exporter's ``nn.Linear``). LoRA rewrites ``y = x W`` into

    y = x W + s · (x Aᵀ) Bᵀ,    A: [r, in],  B: [out, r],  s = alpha / r

A and B are stored in PEFT's orientation (``lora_A.weight``, ``lora_B.weight``), so a PEFT export is
a copy; the graph transposes them, which costs r·(in+out) values per run. W stays an initializer,
so ORT still prepacks it. Initialisation follows PEFT: B = 0, A Kaiming-uniform (a = √5), that is
U(±1/√in), from the spec's seed, so a spec always yields the same adapter.

Modules are named by the *node scope* the exporter writes (``/model/layers.3/self_attn/q_proj/MatMul``
→ ``model.layers.3.self_attn.q_proj``), because weight names are often mangled (``onnx::MatMul_12``);
that path is also the Hugging Face module path, which PEFT keys use.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgetune.errors import ModelError
from edgetune.graph.blocks import Param, block_of_name
from edgetune.graph.trainable import LoraSpec

# Short target names → module paths inside a block, per family (Llama/Mistral/Qwen, BERT).
ALIASES: dict[str, tuple[str, ...]] = {
    "q": ("self_attn.q_proj", "attention.self.query"),
    "k": ("self_attn.k_proj", "attention.self.key"),
    "v": ("self_attn.v_proj", "attention.self.value"),
    "o": ("self_attn.o_proj", "attention.output.dense"),
    "gate": ("mlp.gate_proj",),
    "up": ("mlp.up_proj", "intermediate.dense"),
    "down": ("mlp.down_proj", "output.dense"),
}
_IN_BLOCK = re.compile(r"(?:^|\.)(?:layers?|h|blocks?)\.\d+\.(.+)$")


@dataclass(frozen=True)
class Linear:
    module: str  # Hugging Face module path
    weight: str  # its [in, out] initializer
    in_features: int
    out_features: int

    @property
    def tail(self) -> str:
        """The path inside its transformer block (``self_attn.q_proj``), or the whole path outside one."""
        match = _IN_BLOCK.search(self.module)
        return match.group(1) if match else self.module


@dataclass(frozen=True)
class LoraLayer:
    linear: Linear
    rank: int
    scale: float

    @property
    def a_name(self) -> str:
        return f"{self.linear.module}.lora_A.weight"

    @property
    def b_name(self) -> str:
        return f"{self.linear.module}.lora_B.weight"

    @property
    def a_shape(self) -> tuple[int, int]:
        return (self.rank, self.linear.in_features)

    @property
    def b_shape(self) -> tuple[int, int]:
        return (self.linear.out_features, self.rank)


def _module_of(node: onnx.NodeProto, weight: str) -> str | None:
    scope = node.name.strip("/").split("/")[:-1]  # drop the op's own name (``MatMul``, ``MatMul_1``)
    if scope:
        return ".".join(scope)
    if weight.endswith(".weight") and not weight.startswith("onnx::"):
        return weight[: -len(".weight")]
    return None


def find_linears(model: onnx.ModelProto) -> list[Linear]:
    """Every LoRA-able linear layer, in graph order; modules that two MatMuls share are left out."""
    graph = model.graph
    weights = {
        init.name: init for init in graph.initializer
        if init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 2
    }
    uses = Counter(name for node in graph.node for name in node.input)
    found = []
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or node.input[0] in weights:
            continue
        init = weights.get(node.input[1])
        if init is None or uses[init.name] != 1:
            continue  # an activation, or a tied weight that a merge would change elsewhere too
        module = _module_of(node, init.name)
        if module:
            found.append(Linear(module, init.name, int(init.dims[0]), int(init.dims[1])))
    counts = Counter(linear.module for linear in found)
    return [linear for linear in found if counts[linear.module] == 1]


def describe_linears(linears: list[Linear]) -> str:
    tails = list(dict.fromkeys(linear.tail for linear in linears))
    return f"linear layers: {', '.join(tails)}" if tails else "no linear layers with a module scope found"


def match_targets(linears: list[Linear], targets: tuple[str, ...], where: str) -> list[Linear]:
    """Layers named by ``targets`` (aliases or module-path suffixes); each target must match one."""
    chosen: set[str] = set()
    for target in targets:
        if target in ALIASES:
            hits = [linear for linear in linears if linear.tail in ALIASES[target]]
        else:
            hits = [linear for linear in linears if linear.module == target or linear.module.endswith("." + target)]
        if not hits:
            raise ModelError(f"{where}: lora target '{target}' matches no linear layer ({describe_linears(linears)})")
        chosen.update(linear.module for linear in hits)
    return [linear for linear in linears if linear.module in chosen]


def plan_lora(model: onnx.ModelProto, spec: LoraSpec, where: str = "model") -> list[LoraLayer]:
    linears = find_linears(model)
    in_range = [linear for linear in linears if spec.covers(block_of_name(linear.module))]
    if not in_range:
        blocks = sorted({b for b in (block_of_name(linear.module) for linear in linears) if b is not None})
        span = f"blocks {blocks[0]}-{blocks[-1]}" if blocks else "no blocks found"
        first, last = spec.layers
        raise ModelError(f"{where}: lora layers={first}-{last} matches no linear layer ({span})")
    chosen = match_targets(in_range, spec.targets, where)
    narrowest = min(chosen, key=lambda linear: min(linear.in_features, linear.out_features))
    width = min(narrowest.in_features, narrowest.out_features)
    if spec.rank > width:  # BA could not have that rank, and A and B would outgrow the layer itself
        raise ModelError(f"{where}: lora r={spec.rank} is more than layer '{narrowest.module}' is wide "
                         f"({narrowest.in_features}→{narrowest.out_features}); r must be at most {width}")
    return [LoraLayer(linear, spec.rank, spec.scale) for linear in chosen]


def initial_values(layers: list[LoraLayer], seed: int) -> dict[str, np.ndarray]:
    """PEFT's initialisation: A ~ U(±1/√in) (Kaiming-uniform, a = √5), B = 0; same seed, same values."""
    rng = np.random.default_rng(seed)
    values = {}
    for layer in layers:
        bound = 1.0 / np.sqrt(layer.linear.in_features)
        values[layer.a_name] = rng.uniform(-bound, bound, layer.a_shape).astype(np.float32)
        values[layer.b_name] = np.zeros(layer.b_shape, np.float32)
    return values


def insert_lora(model: onnx.ModelProto, layers: list[LoraLayer], scaled: bool = True) -> None:
    """Add the adapter branch after each layer's MatMul (in place). A and B are *not* added as tensors.

    ``scaled=False`` leaves out the multiplication by s, for adapters whose B already carries it.
    """
    graph = model.graph
    by_weight = {layer.linear.weight: layer for layer in layers}
    nodes = []
    for node in graph.node:
        nodes.append(node)
        layer = by_weight.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if layer is None:
            continue
        scope = node.name.rsplit("/", 1)[0] if "/" in node.name else "/" + layer.linear.module.replace(".", "/")
        p = f"{scope}/lora"
        x, out = node.input[0], node.output[0]
        base = f"{p}/base_output"
        node.output[0] = base
        low = f"{p}/A_output"
        branch = [
            helper.make_node("Transpose", [layer.a_name], [f"{p}/A_t"], name=f"{p}/A_Transpose", perm=[1, 0]),
            helper.make_node("MatMul", [x, f"{p}/A_t"], [low], name=f"{p}/A_MatMul"),
            helper.make_node("Transpose", [layer.b_name], [f"{p}/B_t"], name=f"{p}/B_Transpose", perm=[1, 0]),
        ]
        if scaled:
            scale = numpy_helper.from_array(np.array(layer.scale, np.float32), f"{p}/scale")
            branch += [
                helper.make_node("Constant", [], [f"{p}/scale"], name=f"{p}/scale", value=scale),
                helper.make_node("Mul", [low, f"{p}/scale"], [f"{p}/A_scaled"], name=f"{p}/Mul"),
            ]
            low = f"{p}/A_scaled"
        branch += [
            helper.make_node("MatMul", [low, f"{p}/B_t"], [f"{p}/B_output"], name=f"{p}/B_MatMul"),
            helper.make_node("Add", [base, f"{p}/B_output"], [out], name=f"{p}/Add"),
        ]
        nodes.extend(branch)
    del graph.node[:]
    graph.node.extend(nodes)


def add_lora(model: onnx.ModelProto, spec: LoraSpec, params: list[Param], where: str) -> tuple[list[Param], int]:
    """Insert adapters for ``spec`` with their initial values as initializers.

    Returns the trainable adapter tensors (A and B; B only for LoRA-FA), placed in their base layer's
    block so that selection, arena layer groups and the prefix split treat them like that layer,
    and the number of adapter values added to the model.
    """
    layers = plan_lora(model, spec, where)
    values = initial_values(layers, spec.seed)
    insert_lora(model, layers)
    model.graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in values.items())
    placed = {p.name: p for p in params}
    trainable = []
    for layer in layers:
        base = placed.get(layer.linear.weight)
        block = base.block if base else block_of_name(layer.linear.module)
        region = base.region if base else "block"
        first_use = base.first_use if base else 0
        names = [layer.b_name] if spec.frozen_a else [layer.a_name, layer.b_name]
        trainable += [Param(n, values[n].shape, block, region, first_use) for n in names]
    return trainable, sum(v.size for v in values.values())


def merge_lora(model: onnx.ModelProto, layers: list[LoraLayer], values: Mapping[str, np.ndarray]) -> None:
    """Fold each adapter into its base weight: W ← W + s·(BA)ᵀ (in place)."""
    index = {init.name: i for i, init in enumerate(model.graph.initializer)}
    for layer in layers:
        init = model.graph.initializer[index[layer.linear.weight]]
        init.CopyFrom(numpy_helper.from_array(merged_weight(numpy_helper.to_array(init), layer, values), init.name))


def merged_weight(w: np.ndarray, layer: LoraLayer, values: Mapping[str, np.ndarray]) -> np.ndarray:
    """One layer's W + s·(BA)ᵀ in float32, from its base weight ``w`` and the adapter ``values``."""
    a = check_shape(values, layer.a_name, layer.a_shape, layer)
    b = check_shape(values, layer.b_name, layer.b_shape, layer)
    delta = (np.float32(layer.scale) * (b.astype(np.float64) @ a.astype(np.float64)).T).astype(np.float32)
    return w.astype(np.float32) + delta


def check_shape(values: Mapping[str, np.ndarray], name: str, shape: tuple[int, int], layer: LoraLayer) -> np.ndarray:
    if name not in values:
        raise ModelError(f"adapter tensor '{name}' is missing")
    value = np.asarray(values[name], np.float32)
    if value.shape != shape:
        raise ModelError(
            f"adapter tensor '{name}' has shape {list(value.shape)}, layer '{layer.linear.module}' "
            f"({layer.linear.in_features}→{layer.linear.out_features}, r={layer.rank}) needs {list(shape)}"
        )
    return value
