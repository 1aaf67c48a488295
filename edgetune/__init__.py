"""edgetune: fine-tune ONNX language models on the device, with forward passes only."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# pyproject.toml holds the one version number; CMake compiles it into the core, so the package
# reports the version of the code actually loaded, in an editable, a regular or an uninstalled build
# (installed metadata could belong to another copy of edgetune on the path).
from edgetune._core import __version__

if TYPE_CHECKING:
    from edgetune.config import TrainConfig
    from edgetune.loop import FitResult
    from edgetune.tuner import Tuner
    from edgetune.zo import StepRecord

# What an embedding app needs: the façade, its options, and what fit and steps give back. Imported on
# first use: `import edgetune` (every CLI command, every child process) must not load ONNX Runtime
# (~80 MB resident) where nothing tunes, e.g. the child that draws curves.png or `edgetune --help`.
_EXPORTS = {"FitResult": "edgetune.loop", "StepRecord": "edgetune.zo", "TrainConfig": "edgetune.config",
            "Tuner": "edgetune.tuner"}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'edgetune' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
