"""A new user's first commands: a regular install run from the source checkout, and CI's rule on skips."""

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import edgetune
from edgetune import _core
MANIFEST = "manifest.json"  # a prepared cache entry's last file

ROOT = Path(__file__).resolve().parent.parent

# The console script pip writes for ``edgetune``: its own folder, not the working directory, goes first
# on sys.path, so the parent itself imports the installed package whatever the working directory holds.
CONSOLE_SCRIPT = "import sys\nfrom edgetune.cli import main\nsys.exit(main())\n"

# run_child called directly, as graph preparation calls it; prints the child's result.
RUN_CHILD_SCRIPT = """import json, sys
from edgetune.process.child import run_child
model, directory = sys.argv[1:]
print(json.dumps(run_child("edgetune.graph.cache", [model, "head", None, True, directory], "preparing")))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """A regular (non-editable) install of this edgetune, beside a decoy source tree.

    The test suite runs in an editable install, whose import hook finds the real package wherever the
    working directory is, which would hide the bug; so: a venv without that hook (the suite's
    site-packages reach it as plain path entries, whose .pth files are not run), a copy of the compiled
    package, and a decoy ``edgetune/`` that fails on import, like the uncompiled tree of a checkout.
    """
    base = tmp_path_factory.mktemp("installed")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", base / "venv"], check=True, timeout=120)
    python = base / "venv" / "bin" / "python"
    venv_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip()
    deps = dict.fromkeys([*site.getsitepackages(), site.getusersitepackages(), sysconfig.get_path("purelib"),
                          sysconfig.get_path("platlib")])
    (Path(venv_site) / "suite-deps.pth").write_text("\n".join(deps) + "\n")

    package = base / "site" / "edgetune"
    no_cache = shutil.ignore_patterns("__pycache__")
    shutil.copytree(Path(edgetune.__file__).parent, package, ignore=no_cache)
    compiled = Path(_core.__file__).parent  # an editable install keeps _core and its library apart
    if compiled.resolve() != Path(edgetune.__file__).parent.resolve():
        shutil.copytree(compiled, package, ignore=no_cache, dirs_exist_ok=True)

    decoy = base / "checkout"
    (decoy / "edgetune").mkdir(parents=True)
    (decoy / "edgetune" / "__init__.py").write_text("raise ImportError('the decoy source tree was imported')\n")
    (base / "bin").mkdir()
    (base / "bin" / "edgetune").write_text(CONSOLE_SCRIPT)
    (base / "bin" / "run_child.py").write_text(RUN_CHILD_SCRIPT)
    return {"base": base, "python": python, "site": package.parent, "decoy": decoy, "bin": base / "bin"}


def _run_in_checkout(installed, script: str, *args, cache: Path) -> subprocess.CompletedProcess:
    """Run ``script`` with the installed edgetune, from the decoy checkout, with the decoy on PYTHONPATH too
    (after the install: before it, the parent itself would import the decoy, which no child can undo)."""
    env = {**os.environ, "EDGETUNE_CACHE": str(cache),
           "PYTHONPATH": os.pathsep.join([str(installed["site"]), str(installed["decoy"])])}
    return subprocess.run([installed["python"], installed["bin"] / script, *map(str, args)], cwd=installed["decoy"],
                          env=env, capture_output=True, text=True, timeout=300)


def test_tune_from_a_source_checkout_prepares_with_the_installed_edgetune(installed, classifier, tmp_path):
    out = tmp_path / "out"
    proc = _run_in_checkout(installed, "edgetune", "tune", "--onnx", classifier["model"], "--data",
                            classifier["train"], "--output-dir", out, "--steps", "4", "--batch-size", "8",
                            cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.onnx").is_file()
    assert list((tmp_path / "cache").rglob(MANIFEST)), "no graph was prepared: the child never ran"


def test_run_child_from_a_source_checkout_imports_the_parents_edgetune(installed, classifier, tmp_path):
    directory = tmp_path / "prepared"
    proc = _run_in_checkout(installed, "run_child.py", classifier["model"], directory, cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) is None
    assert (directory / MANIFEST).is_file()


SKIPPING_SUITE = {
    "test_runs.py": "import pytest\n\n\ndef test_passes():\n    pass\n\n\ndef test_skips():\n"
                    "    pytest.skip('a tool is missing')\n\n\n@pytest.mark.gpu\ndef test_on_gpu():\n    pass\n",
    "test_imports.py": "import pytest\n\npytest.importorskip('edgetune_no_such_module')\n\n\n"
                       "def test_never_runs():\n    pass\n",
}


def _pytest_with_our_hooks(directory: Path, ci: str) -> subprocess.CompletedProcess:
    """pytest on ``directory`` with this suite's conftest as a plugin (and not this repository's pytest.ini)."""
    env = {**os.environ, "CI": ci,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q",
                           "-rs", directory], cwd=directory, env=env, capture_output=True, text=True, timeout=300)


def test_a_skip_fails_the_run_under_ci_except_a_gpu_test(tmp_path):
    for name, text in SKIPPING_SUITE.items():
        (tmp_path / name).write_text(text)
    assert _pytest_with_our_hooks(tmp_path, "").returncode == 0
    proc = _pytest_with_our_hooks(tmp_path, "true")
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, proc.stdout
    section = proc.stdout.split("CI is set: these skips fail the run")[1]
    failed = section.split("\n", 1)[1].split("=====")[0]  # the section's lines, up to the next header
    assert "test_runs.py::test_skips: a tool is missing" in failed
    assert "test_imports.py" in failed and "edgetune_no_such_module" in failed
    assert "test_on_gpu" not in failed


def test_demo_says_whether_a_step_made_its_output_or_reused_an_earlier_one(tmp_path):
    from edgetune.data.datasets import write_rotten_tomatoes_splits
    from edgetune.demo import _made_or_reused
    from edgetune.cli.progress import console

    def step(seed: int) -> str:
        with console.capture() as said:
            _made_or_reused(tmp_path / "train.jsonl", "written", lambda: write_rotten_tomatoes_splits(
                tmp_path, n_train=8, n_dev=4, seed=seed))
        return said.get()

    assert step(0).strip() == f"{tmp_path / 'train.jsonl'}: written now"
    assert step(0).strip() == f"{tmp_path / 'train.jsonl'}: reused (written by an earlier run)"
    assert step(1).strip().endswith("written now")  # other parameters: the cache does not apply
