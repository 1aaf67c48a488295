"""ONNX Runtime sessions set up for tuning."""

from __future__ import annotations

from collections.abc import Sequence

import onnx
import onnxruntime as ort

from edgetune.errors import ModelError

_shared_cpu_arena = False


def _use_shared_cpu_arena(options: ort.SessionOptions) -> None:
    """Let every session of this process draw CPU memory from one arena registered with ORT's env.

    A split run holds two sessions (frozen prefix, trainable suffix) and P-RGE a third; with an arena
    each, every session keeps its own high-water mark of activation memory, and the prefix's is never
    reused by the suffix. One env arena made `last:2` with the split peak at 235-249 MB against
    286-290 MB (MiniLM, 8 x 128; plain inference: 223-245 MB).
    """
    global _shared_cpu_arena
    if not _shared_cpu_arena:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        try:
            ort.create_and_register_allocator(info, None)
        except Exception:  # noqa: BLE001 - the embedding app registered one already: share that one
            pass
        _shared_cpu_arena = True
    options.add_session_config_entry("session.use_env_allocators", "1")


def session_options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    _use_shared_cpu_arena(options)
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning ORT workers steal the cores that the perturbation kernel needs between forwards
    # (docs/architecture.md: the kernel ran 2x slower with spinning on).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # Initializers straight from the CPU allocator, not the shared arena: loading a graph holds its
    # initializers' protobuf bytes, the tensors and their prepacked copies at once, and through the arena
    # that transient sometimes stayed as arena regions (SmolLM2 last:2 job peak 1136-1145 MB in 10 runs of
    # 17, 863-898 MB in the others; with this entry 6 of 6 at 888-897 MB, LoRA 3 of 3 at 868-882 MB).
    options.add_session_config_entry("session.use_device_allocator_for_initializers", "1")
    options.log_severity_level = 3
    return options


def default_providers() -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def create_session(
    model: onnx.ModelProto | str, threads: int | None, providers: Sequence[str] | None = None
) -> ort.InferenceSession:
    """``model`` is a path (ORT loads it as for inference) or a ModelProto (tests, small graphs)."""
    data = model if isinstance(model, str) else model.SerializeToString()
    try:
        return ort.InferenceSession(data, session_options(threads), providers=list(providers or default_providers()))
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"ONNX Runtime cannot load the prepared model ({reason})") from None
