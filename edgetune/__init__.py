"""edgetune: fine-tune ONNX language models on the device, with forward passes only."""

# pyproject.toml holds the one version number; CMake compiles it into the core, so the package
# reports the version of the code actually loaded, in an editable, a regular or an uninstalled build
# (installed metadata could belong to another copy of edgetune on the path).
from edgetune._core import __version__
from edgetune.config import TrainConfig
from edgetune.tuner import FitResult, Tuner
from edgetune.zo import StepRecord

# what an embedding app needs: the façade, its options, and what fit and steps give back
__all__ = ["FitResult", "StepRecord", "TrainConfig", "Tuner", "__version__"]
