import os
import subprocess
import sys
import tempfile

import pytest

from models.tiny import make_classifier_bundle, make_lm_bundle

# Prepared graphs go to a throw-away cache, inherited by the CLI subprocesses too.
os.environ["EDGETUNE_CACHE"] = tempfile.mkdtemp(prefix="edgetune-test-cache-")


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
