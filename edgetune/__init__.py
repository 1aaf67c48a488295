"""edgetune: fine-tune ONNX language models on the device, with forward passes only."""

# pyproject.toml holds the one version number; CMake compiles it into the core, so the package
# reports the version of the code actually loaded, in an editable, a regular or an uninstalled build
# (installed metadata could belong to another copy of edgetune on the path).
from edgetune._core import __version__
from edgetune.tuner import FitResult, Tuner

__all__ = ["FitResult", "Tuner", "__version__"]
