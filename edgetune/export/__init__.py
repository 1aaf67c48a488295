"""Hugging Face → ONNX export (the ``export`` extra: torch, transformers, optimum-onnx).

Never needed at tune time: a device only needs the exported ``model.onnx`` and ``tokenizer.json``.
Importing this package is cheap; torch and optimum are imported by the export functions themselves.
"""

from edgetune.export.hf import EXPORT_EXTRA_HINT, ExportError, export_causal_lm, export_classifier

__all__ = ["EXPORT_EXTRA_HINT", "ExportError", "export_causal_lm", "export_classifier"]
