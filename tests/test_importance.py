"""Importance-scored block selection: the forward-only probe measures gradient energy per weight."""

import json

import numpy as np
import pytest

from edgetune.errors import EdgetuneError
from edgetune.tuner import Tuner
from edgetune.graph.trainable import TrainableSpec
from edgetune.zo.importance import score_groups


def test_probe_scores_match_the_true_gradient_energy_per_weight():
    # loss = ½‖θ − target‖²: ∇ = θ − target, known exactly; central differences are exact on a quadratic
    rng = np.random.default_rng(0)
    sizes = {0: 1500, 1: 600, 2: 900}
    scale = {0: 1.0, 1: 3.0, 2: 0.3}  # block 1: fewer weights but far more gradient per weight
    theta = np.zeros(sum(sizes.values()), dtype=np.float32)
    groups, start = {}, 0
    target = np.empty_like(theta)
    for key, size in sizes.items():
        groups[key] = (start, start + size)
        target[start:start + size] = scale[key] * rng.standard_normal(size)
        start += size
    before = theta.copy()

    def loss():
        return np.float64(0.5) * np.sum((theta.astype(np.float64) - target) ** 2)

    scores = score_groups(theta, groups, loss, probes=400, eps=1e-2, seed=3)
    for key, (a, b) in groups.items():
        truth = float(np.sum(target[a:b].astype(np.float64) ** 2)) / (b - a + 2)
        assert scores[key] == pytest.approx(truth, rel=0.2)
    assert sorted(scores, key=scores.get, reverse=True) == [1, 0, 2]
    np.testing.assert_allclose(theta, before, atol=1e-6)  # every probe put its block back


def test_resolving_importance_terms():
    ranking = [2, 0, 1]  # blocks, best first

    def resolve(text):
        return str(TrainableSpec.parse(text).resolve(ranking))

    assert resolve("importance:2") == "blocks:0,blocks:2,head"
    assert resolve("embeddings,importance:1") == "embeddings,blocks:2,head"
    assert resolve("last:1") == "last:1"
    assert TrainableSpec.parse("head").importance is None
    with pytest.raises(EdgetuneError, match="only 3 blocks"):
        resolve("importance:4")
    with pytest.raises(EdgetuneError, match="importance:K"):
        TrainableSpec.parse("importance:x")


def test_python_api_explains_that_importance_needs_data(classifier):
    with pytest.raises(EdgetuneError, match="rank_blocks"):
        Tuner.from_onnx(classifier["model"], trainable="importance:1")


def test_tune_with_importance_selects_measured_blocks_and_learns(classifier, cli, tmp_path):
    out = tmp_path / "out"
    result = cli("tune", "--onnx", classifier["model"], "--data", classifier["train"], "--eval-data",
                 classifier["dev"], "--output-dir", out, "--trainable", "importance:1", "--steps", "60",
                 "--queries", "4", "--lr", "5e-2", "--eps", "1e-2", "--importance-probes", "4")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    ranking = summary["importance"]
    best = max(ranking, key=lambda s: s["score"])["block"]
    assert summary["config"]["trainable"] == f"blocks:{best},head"
    assert f"-> blocks:{best},head" in result.stderr
    assert summary["result"]["after"]["loss"] < summary["result"]["before"]["loss"]
