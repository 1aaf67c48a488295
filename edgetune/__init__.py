"""edgetune: fine-tune ONNX language models on the device, with forward passes only."""

__version__ = "0.1.0"

from edgetune.tuner import FitResult, Tuner  # noqa: E402

__all__ = ["FitResult", "Tuner", "__version__"]
