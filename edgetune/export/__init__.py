"""Hugging Face → ONNX export (the ``export`` extra: torch, transformers, optimum-onnx).

Never needed at tune time: a device only needs the exported ``model.onnx`` and ``tokenizer.json``.
Importing this package is cheap; torch and optimum are imported by the export functions themselves.
A process that must stay small (the demo, benchmarks, anything that tunes afterwards) exports with
:func:`export_isolated`, so torch is only ever loaded by a short-lived child.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from edgetune.export.hf import (
    EXPORT_EXTRA_HINT,
    MANIFEST,
    ExportError,
    _cached,
    causal_lm_manifest,
    classifier_manifest,
    export_causal_lm,
    export_classifier,
)

__all__ = ["EXPORT_EXTRA_HINT", "MANIFEST", "ExportError", "export_causal_lm", "export_classifier",
           "export_isolated", "export_model"]

_EXPORTERS = {"classification": export_classifier, "causal-lm": export_causal_lm}


def export_model(task: str, source: str | Path, out_dir: str | Path, **options: Any) -> Path:
    """:func:`export_classifier` or :func:`export_causal_lm` by ``task``; returns ``out_dir/model.onnx``."""
    return _exporter(task)(source, out_dir, **options)


def export_isolated(task: str, source: str | Path, out_dir: str | Path, **options: Any) -> Path:
    """:func:`export_model` in a child interpreter; its one-line error is raised here unchanged.

    A cached export is recognised here, without starting the child (or importing torch anywhere).
    """
    from edgetune.process.child import run_child

    if _cached(Path(out_dir), _manifest(task, Path(source), out_dir, options)):
        return Path(out_dir) / "model.onnx"
    result = run_child("edgetune.export", [task, str(source), str(out_dir), options], f"exporting {source}",
                       fallback=ExportError)
    return Path(result)


def _exporter(task: str):
    if task not in _EXPORTERS:
        raise ExportError(f"unknown export task '{task}' (choose {' or '.join(_EXPORTERS)})")
    return _EXPORTERS[task]


def _manifest(task: str, source: Path, out_dir: str | Path, options: dict[str, Any]) -> dict:
    """The manifest the export would write, from the exporter's own defaults (no torch needed)."""
    try:
        bound = inspect.signature(_exporter(task)).bind(source, out_dir, **options)
    except TypeError as exc:
        raise ExportError(f"bad export option ({exc})") from None
    bound.apply_defaults()
    a = bound.arguments
    if task == "classification":
        return classifier_manifest(source, [str(x) for x in a["labels"]], a["seed"], a["opset"], a["pooling"])
    return causal_lm_manifest(source, a["opset"], a["eos_token"], a["with_past"])
