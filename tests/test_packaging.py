"""What the package promises about itself: one version everywhere, stubs that match the extension, and
one default noise for the Python trainer and the C API."""

import ast
import ctypes
import dataclasses
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

import edgetune
from edgetune import _core
from edgetune.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
STUB = ROOT / "edgetune" / "_core.pyi"
CUDA_ONLY = {"cuda_noise", "cuda_perturb", "cuda_combine"}  # bound only in a CUDA build of the core


def pyproject_version() -> str:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def shared_library() -> Path:
    """The C API library shipped in the package (edgetune/lib/), wherever the install put it."""
    for folder in edgetune.__path__:
        path = Path(folder) / "lib" / "libedgetune.so"
        if path.is_file():
            return path
    pytest.fail(f"no lib/libedgetune.so under {edgetune.__path__}")


def test_every_version_is_pyprojects(cli):
    version = pyproject_version()
    assert edgetune.__version__ == version
    assert _core.__version__ == version
    assert importlib.metadata.version("edgetune") == version
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"edgetune {version}"
    lib = ctypes.CDLL(str(shared_library()))
    lib.et_version.restype = ctypes.c_char_p
    assert lib.et_version().decode() == version


def test_tuning_never_imports_the_export_package():
    """export/ needs torch and transformers; a tuning process (and the KV-cache relink its save does) must not
    load any of it, in a fresh interpreter."""
    code = "import edgetune.tuner, sys; print([m for m in sys.modules if m.startswith('edgetune.export')])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_importing_the_package_loads_no_inference_engine():
    """`import edgetune` (every command and child starts with it) leaves ONNX Runtime unloaded until the
    façade is used: a child that only draws a figure must not carry ~80 MB of engine."""
    code = ("import sys, edgetune\n"
            "print('onnxruntime' in sys.modules)\n"
            "from edgetune import FitResult, StepRecord, TrainConfig, Tuner\n"
            "print('onnxruntime' in sys.modules, Tuner.__module__, sorted(edgetune.__all__) == sorted(dir(edgetune)))\n"
            "edgetune.NoSuchName\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["False", "True", "edgetune.tuner", "True"]
    assert "AttributeError: module 'edgetune' has no attribute 'NoSuchName'" in proc.stderr


def test_c_api_default_noise_is_the_trainers():
    """An app on the C API and `edgetune tune` run the same algorithm unless told otherwise."""
    default = {f.name: f.default for f in dataclasses.fields(TrainConfig)}["noise"]
    assert default == "rademacher"
    assert _core.Tuner(n_params=4).params["noise"] == default


# ---- the stubs ----------------------------------------------------------------------------------------

def _stub_tree() -> ast.Module:
    return ast.parse(STUB.read_text(), filename=str(STUB))


def _public(names) -> set[str]:
    return {n for n in names if not n.startswith("_")}


def _stub_names(body) -> dict[str, ast.AST]:
    names = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    return names


def _module_names() -> set[str]:
    names = _public(dir(_core))
    return names if _core.cuda_compiled else names | CUDA_ONLY


def test_stub_names_match_the_extension():
    stub = _stub_names(_stub_tree().body)
    assert _public(stub) == _module_names()
    assert "__version__" in stub
    for cls in (_core.Arena, _core.Tuner):
        members = _stub_names(stub[cls.__name__].body)
        assert _public(members) == _public(vars(cls)), cls.__name__
        assert {"__init__"} | ({"__len__", "__contains__"} & set(vars(cls))) <= set(members), cls.__name__


def _split_top_level(text: str) -> list[str]:
    """Split a pybind11 parameter list on the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _bound_params(obj) -> list[tuple[str, bool]]:
    """(name, has default) per parameter, from the signature pybind11 writes as the docstring's first line."""
    match = re.match(r"[\w.]+\((.*)\) ->", (obj.__doc__ or "").splitlines()[0])
    assert match, f"no signature in {obj!r}'s docstring"
    params = []
    for part in _split_top_level(match.group(1)):
        name = part.split(":")[0].split("=")[0].strip()
        if name != "self":
            params.append((name, "=" in part.split(":", 1)[-1]))
    return params


def _stub_params(fn: ast.FunctionDef) -> list[tuple[str, bool]]:
    args = fn.args
    positional = args.posonlyargs + args.args
    first_default = len(positional) - len(args.defaults)
    params = [("arg" if i < len(args.posonlyargs) else a.arg, i >= first_default)
              for i, a in enumerate(positional) if a.arg != "self"]
    params += [(a.arg, d is not None) for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    if args.kwarg:
        params.append(("**" + args.kwarg.arg, False))
    return params


def _normalised(params: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    # pybind11 names a positional-only parameter arg0, arg1, ...; the stub gives it a real name before `/`
    return [("arg" if re.fullmatch(r"arg\d+", n) else n, d) for n, d in params]


def _callables():
    stub = _stub_names(_stub_tree().body)
    for name in sorted(_public(dir(_core))):
        obj = getattr(_core, name)
        if isinstance(obj, type):
            members = _stub_names(stub[name].body)
            for member in sorted(_public(vars(obj)) | ({"__init__", "__contains__"} & set(vars(obj)))):
                bound = getattr(obj, member)
                if not isinstance(bound, property):
                    yield f"{name}.{member}", bound, members[member]
        elif callable(obj):
            yield name, obj, stub[name]


def test_stub_parameters_match_the_extension():
    checked = 0
    for qualname, bound, stub_fn in _callables():
        assert _normalised(_stub_params(stub_fn)) == _normalised(_bound_params(bound)), qualname
        checked += 1
    assert checked >= 25  # every kernel, Arena and Tuner method: the walk above did not silently skip them

