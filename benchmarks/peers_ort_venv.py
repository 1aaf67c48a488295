"""The venv that ORT on-device training runs in, built once and cached.

onnxruntime-training-cpu 1.19.2 cannot share edgetune's environment: it is a second onnxruntime
(same import name), it needs onnx 1.17 and numpy < 2, and its training API imports torch.
``python benchmarks/peers_ort_venv.py`` builds it ahead of a run and prints its python.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

REQUIREMENTS = ["onnxruntime-training-cpu==1.19.2", "onnx==1.17.0", "numpy<2", "torch==2.13.0"]
_READY = "edgetune-ready.txt"  # written last, holding REQUIREMENTS: a half-built venv has none


class VenvUnavailable(Exception):
    """The ORT training venv could not be built; the message says why in one line."""


def venv_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgetune" / "venvs" / "ort-training"


def ensure_venv(log) -> Path:
    """The venv's python, building the venv first if it is missing or was built for other pins."""
    root = venv_dir()
    python = root / "bin" / "python"
    ready = root / _READY
    if ready.is_file() and ready.read_text().split() == REQUIREMENTS and python.is_file():
        return python
    log(f"building the ORT training venv in {root} (once, about a minute): {' '.join(REQUIREMENTS)}")
    try:
        venv.create(root, with_pip=True, clear=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True,
                       capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        lines = [line for line in exc.stderr.splitlines() if line.startswith("ERROR")] or exc.stderr.splitlines()
        raise VenvUnavailable(f"pip could not install {' '.join(REQUIREMENTS)}: "
                              f"{lines[-1] if lines else 'exit ' + str(exc.returncode)}") from None
    except OSError as exc:
        raise VenvUnavailable(f"cannot create a venv in {root}: {exc}") from None
    ready.write_text("\n".join(REQUIREMENTS) + "\n")
    return python


if __name__ == "__main__":
    print(ensure_venv(lambda msg: print(msg, file=sys.stderr)))
