"""Native (C/C++) builds of the core, driven from pytest so that one `pytest` run covers everything.

* host: configure + build the core with CMake (EDGETUNE_BUILD_TESTS=ON) and run ctest: the scalar and
  AVX2/AVX-512 kernels against each other, the C API test program and the golden-noise file.
* aarch64: cross-build with Debian's g++-aarch64-linux-gnu and run the same ctest under qemu-user
  (scripts/build_aarch64.sh). NEON noise must match the x86-64 golden file bit for bit.

Build trees go to pytest's temp dirs, never into the repository. Builds use 2 jobs. This module is
named so that it is collected last (the builds take a while).
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JOBS = "2"
TIMEOUT = 1200  # seconds per command; a cold cross build under qemu takes a few minutes on 2 cores

CROSS_TOOLS = {"aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu", "qemu-aarch64-static": "qemu-user-static"}


def _env():
    env = dict(os.environ)
    env["CMAKE_BUILD_PARALLEL_LEVEL"] = JOBS  # honoured by `cmake --build` with any generator
    env.pop("CMAKE_ARGS", None)  # scikit-build-core's variable; must not leak into these builds
    return env


def _run(cmd, **kw):
    """Run a command; on failure, fail the test with its full output."""
    proc = subprocess.run([str(c) for c in cmd], cwd=kw.pop("cwd", ROOT), env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT, **kw)
    if proc.returncode != 0:
        pytest.fail(f"command failed (exit {proc.returncode}): {' '.join(map(str, cmd))}\n{proc.stdout}",
                    pytrace=False)
    return proc.stdout


@pytest.fixture(scope="module")
def cmake():
    exe = shutil.which("cmake")
    if exe is None:
        pytest.skip("cmake not found on PATH")
    return exe


def test_host_core_ctest(cmake, tmp_path_factory):
    build = tmp_path_factory.mktemp("build-host")
    _run([cmake, "-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DEDGETUNE_BUILD_TESTS=ON",
          "-DEDGETUNE_PYTHON=OFF", "-DEDGETUNE_CUDA=OFF", "-DEDGETUNE_RUNTIME=OFF"])  # test_runtime.py builds that
    _run([cmake, "--build", build, "-j", JOBS])
    out = _run(["ctest", "--test-dir", build, "--output-on-failure", "-V"])
    print(out)
    assert "all C API checks passed" in out
    assert "golden:" in out and "100% tests passed" in out


def test_aarch64_cross_ctest_under_qemu(cmake, tmp_path_factory):
    missing = [pkg for tool, pkg in CROSS_TOOLS.items() if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"aarch64 cross toolchain / qemu-user not found; install with: apt-get install -y "
                    f"{' '.join(missing)}")  # under CI=true, tests/conftest.py turns this skip into a failure
    build = tmp_path_factory.mktemp("build-aarch64")
    env = _env()
    env["BUILD"] = str(build)
    # the runtime's aarch64 build (and a tune under qemu) is test_runtime_ports.py's
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "build_aarch64.sh"), "-DEDGETUNE_RUNTIME=OFF"], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT)
    print(proc.stdout)
    if proc.returncode != 0:
        pytest.fail(f"scripts/build_aarch64.sh failed (exit {proc.returncode}):\n{proc.stdout}", pytrace=False)
    assert "golden:" in proc.stdout and "all C API checks passed" in proc.stdout
    assert "100% tests passed" in proc.stdout
