import os
import subprocess
import sys
import tempfile

import pytest

from edgetune import Tuner
from edgetune.tuner import FitResult
from models.tiny import make_classifier_bundle, make_lm_bundle

# Prepared graphs go to a throw-away cache, inherited by the CLI subprocesses too.
os.environ["EDGETUNE_CACHE"] = tempfile.mkdtemp(prefix="edgetune-test-cache-")

# Under CI (CI=true, as .ci/run sets it) a skip fails the run: there a skip means that something CI must
# install is missing (cmake, the aarch64 cross tools, the export extra behind pytest.importorskip), and a
# green run would hide that those tests never ran. The one skip allowed: a test marked ``gpu`` on a machine
# without a CUDA GPU (CI machines have none; the marker itself does the skipping, below).
_FORBIDDEN_SKIPS: list[tuple[str, str]] = []  # (node id, reason) of each skip CI does not allow


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one (the only skip CI allows)")


def has_gpu() -> bool:
    from edgetune import _core

    return _core.cuda_available()


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") and not has_gpu():
        pytest.skip("no CUDA GPU (or edgetune built without EDGETUNE_CUDA)")


def _note_skip(report) -> None:
    gpu_test_without_gpu = "gpu" in getattr(report, "keywords", {}) and not has_gpu()
    allowed = gpu_test_without_gpu or hasattr(report, "wasxfail")  # an xfail is no skip
    if in_ci() and report.skipped and not allowed:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        _FORBIDDEN_SKIPS.append((report.nodeid, reason))


def pytest_collectreport(report):  # a module-level skip (pytest.importorskip) skips at collection
    _note_skip(report)


def pytest_runtest_logreport(report):
    _note_skip(report)


def pytest_sessionfinish(session, exitstatus):
    if _FORBIDDEN_SKIPS and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if _FORBIDDEN_SKIPS:
        terminalreporter.section("CI is set: these skips fail the run", red=True)
        for nodeid, reason in _FORBIDDEN_SKIPS:
            terminalreporter.line(f"{nodeid}: {reason}")


@pytest.fixture(scope="session")
def classifier(tmp_path_factory):
    """A tiny BERT-like classifier with exporter-mangled weight names and a separable task."""
    return make_classifier_bundle(tmp_path_factory.mktemp("clf"), n_train=256, n_dev=128, mangle_names=True)


@pytest.fixture(scope="session")
def lm(tmp_path_factory):
    return make_lm_bundle(tmp_path_factory.mktemp("lm"), n_train=64, n_dev=16)


@pytest.fixture
def cli():
    return run_cli


def run_cli(*args, cwd=None):
    """Run ``edgetune`` in a fresh interpreter, as a user would."""
    return subprocess.run([sys.executable, "-m", "edgetune.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture
def kill_at_step():
    return run_killed_at


@pytest.fixture
def kill_and_resume():
    return run_killed_and_resumed


class SimulatedKill(BaseException):
    """The process dying at a step (SIGKILL, power loss): nothing after it runs, no checkpoint is written."""


class KillAtStep:
    """A progress hook that stops a run at ``step`` the way Ctrl-C does (``Tuner.fit`` then checkpoints
    first), or with ``hard`` the way a kill does (the last ``save_every`` checkpoint is all that is left)."""

    def __init__(self, step: int, hard: bool = False):
        self.step, self.hard = step, hard

    def on_start(self, start, total): ...
    def on_eval(self, step, metrics): ...

    def on_step(self, record):
        if record.step == self.step:
            raise SimulatedKill if self.hard else KeyboardInterrupt


def run_killed_at(model, data, output_dir, *, trainable: str, kill_at: int, save_every: int = 0,
                  **fit_options) -> None:
    """Fit until killed at step ``kill_at``, leaving in ``output_dir`` the checkpoint ``save_every`` last wrote
    and step logs that run past it (what a resume must cut back)."""
    with pytest.raises(SimulatedKill):
        Tuner.from_onnx(model, trainable=trainable).fit(data, output_dir=output_dir, save_every=save_every,
                                                         progress=KillAtStep(kill_at, hard=True), **fit_options)


def run_killed_and_resumed(model, data, output_dir, *, trainable: str, kill_at: int, save_every: int = 0,
                           **fit_options) -> tuple[Tuner, FitResult]:
    """Kill a run at step ``kill_at``, then resume it to the end in a fresh tuner (``save_every`` is the killed
    run's alone: the resumed one checkpoints only at its end)."""
    run_killed_at(model, data, output_dir, trainable=trainable, kill_at=kill_at, save_every=save_every,
                  **fit_options)
    resumed = Tuner.from_onnx(model, trainable=trainable)
    return resumed, resumed.fit(data, output_dir=output_dir, resume=True, **fit_options)
