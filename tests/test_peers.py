"""benchmarks/bench_peers.py: every peer sees edgetune's exact batches, and the MeZO reference is MeZO."""

import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from bench_peers import prepare_data  # noqa: E402
from peers_common import INPUTS, RESULT_MARK, PeerData  # noqa: E402

from edgetune import Tuner  # noqa: E402


@pytest.fixture(scope="module")
def workdir(classifier, tmp_path_factory):
    work = tmp_path_factory.mktemp("peers")
    args = Namespace(tokens=32, threads=1, batch_size=8, dev_size=40)
    prepare_data(work, classifier["model"], classifier["train"], classifier["dev"], args)
    return work


def test_peer_batches_are_edgetunes_batches(classifier, workdir):
    data = PeerData.load(workdir)
    tuner = Tuner.from_onnx(classifier["model"], trainable=None, max_length=32)
    train = tuner.load_data(classifier["train"])
    for step in (0, 5, 31):
        rows = data.order[step]
        want = train.batch(rows, INPUTS)
        got = data.train.batch(rows)
        for name in INPUTS:
            np.testing.assert_array_equal(got[name], want.inputs[name])
        np.testing.assert_array_equal(got["labels"], want.labels)
    assert len(data.dev) == 40


def test_budget_run_starts_from_the_export_and_learns(classifier, workdir):
    config = {"onnx": str(classifier["model"]), "trainable": "head", "split": True, "queries": 8, "lr": 0.05,
              "eps": 1e-3, "seed": 0, "threads": 1, "tokens": 32, "budget_s": 250.0, "budget_clock": "cpu",
              "max_steps": 40, "eval_batch_size": 16}  # a step count, not a time: a loaded machine cannot shorten it
    # a real child, as the benchmark runs it: it refuses to report if torch got into its process
    child = subprocess.run([sys.executable, str(BENCHMARKS / "peers_edgetune.py"), "--mode", "train",
                            "--workdir", str(workdir), "--config", json.dumps(config)],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    line = [ln for ln in child.stdout.splitlines() if ln.startswith(RESULT_MARK)][-1]
    result = json.loads(line[len(RESULT_MARK):])
    assert result["start_logit_diff"] < 1e-5
    assert result["budget_steps"] == 40
    assert result["accuracy_after"] > result["accuracy_before"] + 0.1


def test_mezo_step_moves_along_the_regenerated_noise():
    torch = pytest.importorskip("torch", reason="export extra not installed: pip install 'edgetune[export]'")
    from peers_mezo import mezo_step

    layer = torch.nn.Linear(5, 3)
    x, y = torch.randn(16, 5), torch.randn(16, 3)
    params = list(layer.parameters())
    before = [p.detach().clone() for p in params]
    eps, lr, seed = 1e-2, 0.1, 1234
    with torch.inference_mode():
        loss_plus, loss_minus = mezo_step(params, lambda: float(((layer(x) - y) ** 2).mean()), [seed], eps, lr)
    grad = (loss_plus - loss_minus) / (2 * eps)
    torch.manual_seed(seed)
    for p, p0 in zip(params, before):
        z = torch.normal(mean=0.0, std=1.0, size=p.shape)
        torch.testing.assert_close(p.detach() - p0, -lr * grad * z, atol=1e-6, rtol=1e-4)
    assert grad != 0.0


def test_floor_child_runs_the_model_without_any_framework(classifier):
    # the floor is inference with nothing else loaded: the child must run the forward and import
    # neither edgetune nor torch (either would count in its peak)
    code = (f"import sys; sys.path.insert(0, {str(BENCHMARKS)!r}); import peers_common as m; "
            f"m.inference_forward({str(classifier['model'])!r}, 2, 16, 1); "
            "print(sorted(k for k in ('torch', 'edgetune', 'transformers') if k in sys.modules))")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "[]"


def test_peers_table_reports_each_peak_against_the_floor():
    from bench_peers import MEZO, PEERS, table

    results = {p.name: {"trainable_params": 1, "step_ms": 100.0, "peak_rss_mb": 200.0, "accuracy_before": 0.5,
                        "accuracy_after": 0.6, "budget_steps": 3} for p in PEERS}
    results[MEZO]["peak_rss_mb"] = 500.0
    rows = {row[0]: row for row in table(results, floor_mb=125.0)}
    assert rows[PEERS[0].name][6:8] == ["125", "1.60×"]
    assert rows[MEZO][6:8] == ["125", "4.00×"]
    assert rows[f"{PEERS[0].name} ÷ {MEZO}"][5] == "0.40×"
