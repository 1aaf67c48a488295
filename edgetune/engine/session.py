"""ONNX Runtime sessions set up for tuning."""

from __future__ import annotations

from collections.abc import Sequence

import onnx
import onnxruntime as ort

from edgetune.errors import ModelError


def session_options(threads: int | None) -> ort.SessionOptions:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning ORT workers steal the cores that the perturbation kernel needs between forwards
    # (DESIGN.md: the kernel ran 2x slower with spinning on).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
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
