"""Running one edgetune function in a short-lived child interpreter.

Some jobs (graph surgery, Hugging Face export) hold far more memory than inference, or import torch.
Run in the tuning process they would set its *peak* RSS, the number an on-device tuner must keep at
inference level. A child does them and exits; the parent only reads the files it wrote.

Protocol: the parent runs ``<module>`` as ``__main__`` with ``<json args>`` (see :data:`_BOOTSTRAP`); it calls
:func:`child_main`, which prints one JSON line last on stdout: ``{"result": ...}`` on success, or
``{"error": {"module", "kind", "message"}}`` for a user-facing :class:`EdgetuneError`, which the
parent raises again as the same class with the same one-line message.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgetune import errors


# Not ``python -m module``: -m (like -c) puts the working directory first on sys.path, and PYTHONPATH comes
# before site-packages, so run from a source checkout (the README's first command) the child would import
# the uncompiled ./edgetune (no _core) instead of the installed edgetune the parent runs. The bootstrap puts
# the parent's package root first, drops the working directory ('') and runs the module as -m would. (-P
# would drop the working directory only, and needs Python 3.11.)
_BOOTSTRAP = (
    "import runpy, sys; root, module = sys.argv.pop(1), sys.argv.pop(1); "
    "sys.path[:] = [root] + [p for p in sys.path if p not in ('', root)]; "
    "runpy.run_module(module, run_name='__main__', alter_sys=True)"
)


def run_child(module: str, args: list, what: str, fallback: type[errors.EdgetuneError] = errors.ModelError) -> Any:
    """Run ``module``'s :func:`child_main` on ``args``; return its result or re-raise its error here.

    ``what`` names the job for errors that are not the child's own (a crash, an import failure).
    """
    package_root = str(Path(errors.__file__).resolve().parent.parent)
    proc = subprocess.run([sys.executable, "-c", _BOOTSTRAP, package_root, module, json.dumps(args)],
                          capture_output=True, text=True)
    try:
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        report = None
    if not isinstance(report, dict) or not ("result" in report or "error" in report):
        lines = proc.stderr.strip().splitlines()
        raise fallback(f"{what} failed ({lines[-1] if lines else f'exit code {proc.returncode}'})")
    if "error" in report:
        raise _error_class(report["error"], fallback)(report["error"]["message"])
    return report["result"]


def _error_class(error: dict, fallback: type[errors.EdgetuneError]) -> type[errors.EdgetuneError]:
    """The child's exception class, when it is an EdgetuneError from an edgetune module."""
    module = str(error.get("module", ""))
    if module != "edgetune" and not module.startswith("edgetune."):
        return fallback
    cls = getattr(importlib.import_module(module), str(error.get("kind", "")), None)
    return cls if isinstance(cls, type) and issubclass(cls, errors.EdgetuneError) else fallback


def child_main(function: Callable[..., Any]) -> None:
    """Entry point of a child: call ``function(*json args)`` and report as :func:`run_child` expects."""
    try:
        result = function(*json.loads(sys.argv[1]))
    except errors.EdgetuneError as exc:
        error = {"module": type(exc).__module__, "kind": type(exc).__qualname__, "message": str(exc)}
        print(json.dumps({"error": error}), flush=True)
        sys.exit(2)
    print(json.dumps({"result": result}), flush=True)
