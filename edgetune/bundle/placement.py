"""Where ONNX Runtime would run each trainable node of a suffix graph, and which placements to refuse.

The placement is ORT's own: a session created with the provider and ``session.record_ep_graph_assignment_info``
reports, per provider, the nodes it was given (``InferenceSession.get_provider_graph_assignment_info``),
after the optimizers that run before partitioning (so a fused node shows under its new name and type).

A trainable weight is a graph input bound to the arena; a provider that copies or compiles it when the session
is created would keep computing with the initial values while the tuner updates the arena: the run would
report a loss that never moves for reasons no error explains. :data:`IGNORES_UPDATES` lists those placements
(from the providers' sources: XNNPACK prepacks MatMul/Gemm/Conv weights, CoreML's Gemm takes constant
weights, NNAPI compiles its model and is deprecated since Android 15); such a placement is refused.

QNN is a plugin provider: the separate package ``onnxruntime-qnn`` carries the library that ORT registers
(``register_execution_provider_library``) and the QNN backends; its sessions take it by device
(``add_provider_for_devices``). On x86-64 the wheel's HTP backend is the simulator, which takes the trainable
MatMuls of a static-shape bundle (``benchmarks/probe_qnn.py``); QNN needs static shapes, so ``--provider qnn``
needs ``--batch-size``.
"""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from edgetune.engine.session import session_options
from edgetune.errors import ModelError

CPU = "CPUExecutionProvider"
QNN = "QNNExecutionProvider"
SHORT_NAMES = {"cpu": CPU, "xnnpack": "XnnpackExecutionProvider", "coreml": "CoreMLExecutionProvider",
               "nnapi": "NnapiExecutionProvider", "qnn": "QNNExecutionProvider", "cuda": "CUDAExecutionProvider",
               "webgpu": "WebGpuExecutionProvider", "dml": "DmlExecutionProvider"}
ANY_OP = "*"
# plugin provider -> (its pip package, its Python module): a package that ORT loads the provider from
PLUGINS = {QNN: ("onnxruntime-qnn", "onnxruntime_qnn")}
# QNN's options for the placement: the HTP backend, fp32 run as fp16 (the HTP has no fp32), and the SoC the x86-64
# simulator emulates (an SM8650-class HTP v75, as the probe ran it); a device app names its own SoC
QNN_OPTIONS = {"enable_htp_fp16_precision": "1", "soc_model": "60", "htp_arch": "75"}
# provider -> {op type or ANY_OP: why an update of its weight input would be ignored there}
IGNORES_UPDATES: dict[str, dict[str, str]] = {
    "XnnpackExecutionProvider": {op: "XNNPACK prepacks its weight when the session is created"
                                 for op in ("MatMul", "Gemm", "Conv", "ConvTranspose")},
    "CoreMLExecutionProvider": {"Gemm": "CoreML takes a Gemm's weight as a constant of its compiled model"},
    "NnapiExecutionProvider": {ANY_OP: "NNAPI compiles the weights into its model (and is deprecated since "
                                       "Android 15)"},
}
# ORT fuses MatMul + Add back into Gemm before partitioning; the bundle's --gemm-to-matmul is undone
# unless an accelerator's session disables that fusion (CPU's Gemm reads its inputs at every run).
KEEP_MATMUL = ("optimization.disable_specified_optimizers", "MatMulAddFusion")
# ops that pass a weight on unchanged in value: their consumers compute with the trainable tensor
_PASS_THROUGH = {"Transpose", "Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze"}


def provider_name(name: str) -> str:
    """``xnnpack`` or ``XnnpackExecutionProvider`` -> ``XnnpackExecutionProvider``."""
    return SHORT_NAMES.get(name.lower(), name)


def require_provider(name: str) -> str:
    """The provider's full name, refused in one line when this onnxruntime does not have it (a plugin provider:
    registered from its package, refused in one line naming the package when it is not installed)."""
    provider = provider_name(name)
    if provider in PLUGINS:
        _plugin(provider)
        return provider
    available = ort.get_available_providers()
    if provider not in available:
        raise ModelError(f"--provider {provider}: not in this onnxruntime build (available: {', '.join(available)})")
    return provider


def _plugin(provider: str) -> Any:
    """The plugin provider's package, its library registered with ORT once per process."""
    package, module = PLUGINS[provider]
    try:
        plugin = importlib.import_module(module)
    except ImportError:
        raise ModelError(f"--provider {provider}: it comes in the separate package {package}, which is not "
                         f"installed (pip install {package})") from None
    if not any(device.ep_name == provider for device in ort.get_ep_devices()):
        try:
            ort.register_execution_provider_library(provider, plugin.get_library_path())
        except Exception as exc:  # noqa: BLE001 - ORT raises its own classes with multi-line text
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelError(f"--provider {provider}: {package} does not load into onnxruntime {ort.__version__} "
                             f"({reason})") from None
    return plugin


def trainable_nodes(model: onnx.ModelProto, trainable: Collection[str]) -> dict[str, list[str]]:
    """The nodes that compute with a trainable tensor (through pass-through ops such as the Gemm pass's
    Transpose), by name, with the trainable tensors each reads."""
    reads = {name: name for name in trainable}  # value -> the trainable tensor it carries
    found: dict[str, list[str]] = {}
    for node in model.graph.node:
        carried = [reads[i] for i in node.input if i in reads]
        if not carried:
            continue
        if node.op_type in _PASS_THROUGH:
            reads.update({o: carried[0] for o in node.output})
        else:
            found[node.name or node.output[0]] = carried
    return found


def placement_report(suffix: str, provider: str, trainable: Collection[str]) -> list[dict[str, Any]]:
    """One row per trainable node of the graph at ``suffix``: its name, op type, weights and the provider ORT
    assigns it; raises a one-line ModelError for a placement in :data:`IGNORES_UPDATES`."""
    provider = require_provider(provider)
    options = _options(provider)
    options.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    if provider in PLUGINS:  # by device, with the backend's options; what it does not take falls back to the CPU
        devices = [device for device in ort.get_ep_devices() if device.ep_name == provider]
        options.add_provider_for_devices(devices, {"backend_path": _plugin(provider).get_qnn_htp_path(),
                                                   **QNN_OPTIONS})
        session = _session(suffix, options, None)
    else:
        session = _session(suffix, options, [provider, CPU])
    assigned = {node.name: (sub.ep_name, node.op_type) for sub in session.get_provider_graph_assignment_info()
                for node in sub.get_nodes()}
    rows = []
    for name, weights in trainable_nodes(_partitioned_graph(suffix, provider), trainable).items():
        ep, op = assigned.get(name, (None, None))
        rows.append({"node": name, "op": op, "provider": ep, "weights": weights})
    check_placement(rows)
    return rows


def _options(provider: str) -> ort.SessionOptions:
    """The tuner's session options (``engine/session.py``); an accelerator's keep MatMul + Add as they are."""
    options = session_options(None)
    if provider != CPU:
        options.add_session_config_entry(*KEEP_MATMUL)
    return options


def _session(path: str, options: ort.SessionOptions, providers: list[str] | None) -> ort.InferenceSession:
    """A session on ``providers`` (None: the providers the options were given by device)."""
    try:
        return ort.InferenceSession(path, options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own classes with multi-line text
        who = providers[0] if providers else "the provider"
        raise ModelError(f"{path}: {who} cannot load the graph ({str(exc).splitlines()[0]})") from None


def _partitioned_graph(path: str, provider: str) -> onnx.ModelProto:
    """The graph as ORT partitions it: after the basic optimizers, which run before the providers are asked
    and fuse nodes under new names (``NAME/MatMulAddFusion``): the names the assignment reports. Those
    optimizers use standard ops only, so the CPU provider's result is every provider's."""
    options = _options(provider)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with tempfile.TemporaryDirectory(prefix="edgetune-placement-") as folder:
        options.optimized_model_filepath = str(Path(folder) / "basic.onnx")
        _session(path, options, [CPU])
        return onnx.load(options.optimized_model_filepath, load_external_data=False)


def check_placement(rows: Iterable[dict[str, Any]]) -> None:
    """Refuse, in one line, a trainable node placed where updates to its weight would be ignored."""
    for row in rows:
        rules = IGNORES_UPDATES.get(row["provider"] or "", {})
        why = rules.get(row["op"]) or rules.get(ANY_OP)
        if why:
            raise ModelError(f"trainable node '{row['node']}' ({row['op']}, weight {row['weights'][0]}) would run on "
                             f"{row['provider']}: {why}, so tuning would silently ignore its updates; "
                             "bundle for another --provider")


def describe(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The report as lines: ``node (op): provider``."""
    return [f"{row['node']} ({row['op']}, {', '.join(row['weights'])}): {row['provider']}" for row in rows]
