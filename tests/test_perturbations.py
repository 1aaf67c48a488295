"""LOZO (low-rank matrix perturbations) and HiZOO (diagonal-curvature-shaped perturbations): the noise's
structure, Σ's health, learning on the tiny classifier, resume and replay bit for bit, options at the edge."""

import numpy as np
import pytest

from badinput import Snapshot, assert_rejected
from edgetune import Tuner, _core
from edgetune.replay import replay_run
from edgetune.zo import HiZOO, LOZO
from edgetune.zo.schedules import Schedule

f32 = np.float32


def _lozo(n: int, layout, rank: int, noise: str = "gaussian") -> LOZO:
    return LOZO(np.zeros(n, f32), 7, Schedule(1e-3), Schedule(1e-3), layout=layout, rank=rank, interval=3, noise=noise)


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
@pytest.mark.parametrize("rank", [1, 2, 4])
def test_lozo_noise_of_a_matrix_has_rank_at_most_r_and_dense_noise_elsewhere(rank, noise):
    layout = [(0, (48, 40)), (1920, (40,)), (1960, (30, 3)), (2050, (64, 32))]  # matrix, bias, thin matrix, matrix
    opt = _lozo(2050 + 64 * 32, layout, rank, noise)
    opt._perturb([], seed=11, scale=1.0)
    z = opt.buffer
    for offset, (m, n) in ((0, (48, 40)), (2050, (64, 32))):
        singular = np.linalg.svd(z[offset:offset + m * n].reshape(m, n).astype(np.float64), compute_uv=False)
        assert np.sum(singular > singular[0] * 1e-5) == rank
    matrix = opt.matrices[0]
    power = []
    for window in range(40):  # V is fixed within a window: average over both draws
        opt._window = window
        power.append(np.mean(opt.perturbation(matrix, window) ** 2))
    power = np.mean(power)
    assert power == pytest.approx(1.0, rel=0.15)  # E[Z²] = 1, as dense noise: zᵀHz and lr keep their meaning
    dense = _core.noise(11, 0, len(z), noise)
    thin = 1960 if rank >= 3 else None  # a 30×3 matrix is rank ≤ 3 anyway: dense noise when r ≥ 3
    np.testing.assert_array_equal(z[1920:1960], dense[1920:1960])
    if thin is not None:
        np.testing.assert_array_equal(z[1960:2050], dense[1960:2050])


def test_lozo_keeps_v_for_its_interval_and_u_per_query():
    opt = _lozo(48 * 40, [(0, (48, 40))], rank=2)
    matrix = opt.matrices[0]
    a, b = opt.perturbation(matrix, 1), opt.perturbation(matrix, 2)
    # the same V: both span the same row space, so stacking them keeps rank 2
    assert np.linalg.matrix_rank(np.vstack([a, b]).astype(np.float64), tol=1e-4) == 2
    opt._window = 1
    c = opt.perturbation(matrix, 1)
    assert np.linalg.matrix_rank(np.vstack([a, c]).astype(np.float64), tol=1e-4) == 4


def _quadratic(buf: np.ndarray, curvature: np.ndarray, target: np.ndarray):
    return lambda: float(0.5 * np.sum(curvature * (buf.astype(np.float64) - target) ** 2))


def test_hizoo_sigma_stays_positive_and_finite_and_follows_the_curvature():
    n = 400
    rng = np.random.default_rng(0)
    curvature = np.where(np.arange(n) < n // 2, 10.0, 0.1)  # half the weights 100 times as curved
    target = rng.standard_normal(n)
    buf = np.zeros(n, f32)
    opt = HiZOO(buf, 3, Schedule(2e-4), Schedule(1e-2), smooth=0.01, noise="gaussian")
    loss = _quadratic(buf, curvature, target)
    start = loss()
    for t in range(600):
        opt.step(t, loss)
        assert np.all(opt.hessian > 0) and np.all(np.isfinite(opt.hessian))
    assert loss() < start
    stiff, soft = opt.hessian[: n // 2].mean(), opt.hessian[n // 2:].mean()
    # Σ ranks the curved half above the flat one, weakly: |c·(u² − 1)| carries a weight's own curvature H_ii
    # over a floor of |c| ~ tr(H)/2 (here ~1.3x for a 100x curvature ratio; docs/optimizers.md)
    assert stiff > 1.1 * soft


def test_hizoo_replay_and_rebuild_repeat_the_step_bit_for_bit():
    n = 3000
    rng = np.random.default_rng(1)
    curvature, target = rng.uniform(0.1, 5, n), rng.standard_normal(n)
    start = rng.standard_normal(n).astype(f32)
    buf = start.copy()
    opt = HiZOO(buf, 5, Schedule(1e-3), Schedule(1e-2), queries=2, weight_decay=0.1, noise="gaussian")
    records = [opt.step(t, _quadratic(buf, curvature, target)) for t in range(20)]
    assert all(r.forwards == 5 and len(r.curvature) == 2 for r in records)
    replayed = HiZOO(start.copy(), 5, Schedule(0), Schedule(0), queries=2, noise="gaussian")
    for record in records:
        replayed.replay(record)
    np.testing.assert_array_equal(replayed.buffer.view(np.uint32), buf.view(np.uint32))
    rebuilt = HiZOO(buf.copy(), 5, Schedule(0), Schedule(0), noise="gaussian")
    rebuilt.rebuild(records)
    np.testing.assert_array_equal(rebuilt.hessian.view(np.uint32), opt.hessian.view(np.uint32))


FIT = {"lozo": dict(lozo_rank=2, lozo_interval=5), "hizoo": dict(noise="gaussian")}


@pytest.mark.parametrize("optimizer", list(FIT))
def test_each_learns_the_tiny_classifier_with_lr_auto(classifier, optimizer):
    tuner = Tuner.from_onnx(classifier["model"], trainable="last:1")
    # 200 steps: the robust lr auto (mean + 2 SE of zᵀHz) steps more cautiously than the median did; LOZO fell
    # 0.0299 in 120 steps, 0.058 in 200
    result = tuner.fit(classifier["train"], eval_data=classifier["dev"], steps=200, batch_size=16,
                       optimizer=optimizer, **FIT[optimizer])
    assert result.after["loss"] < result.before["loss"] - 0.03
    assert result.after["accuracy"] > result.before["accuracy"]


@pytest.mark.parametrize("optimizer", list(FIT))
def test_resume_and_replay_reproduce_the_run_bit_for_bit(classifier, tmp_path, optimizer, kill_and_resume):
    options = dict(steps=16, eps=1e-3, lr=3e-3, seed=5, weight_decay=0.05, optimizer=optimizer, **FIT[optimizer])
    straight = Tuner.from_onnx(classifier["model"], trainable="last:1")
    straight.fit(classifier["train"], output_dir=tmp_path / "a", **options)
    straight.save(tmp_path / "a")
    # killed at step 11 after a checkpoint at 7: LOZO's V window (5) and HiZOO's Σ are rebuilt mid-run
    resumed, _ = kill_and_resume(classifier["model"], classifier["train"], tmp_path / "b", trainable="last:1",
                                 kill_at=11, save_every=7, **options)
    for name, value in straight.weights.items():
        np.testing.assert_array_equal(value.view(np.uint32), resumed.weights[name].view(np.uint32), err_msg=name)
    replay_run(classifier["model"], tmp_path / "a" / "run.etlog", tmp_path / "replayed")
    assert (tmp_path / "replayed" / "model.onnx").read_bytes() == (tmp_path / "a" / "model.onnx").read_bytes()
    base = Tuner.from_onnx(classifier["model"], trainable="last:1")
    assert not all(np.array_equal(v, base.weights[k]) for k, v in straight.weights.items())


def _args(classifier, out) -> list:
    return ["tune", "--onnx", classifier["model"], "--data", classifier["train"], "--output-dir", out, "--threads", 1,
            "--steps", 2]


@pytest.mark.parametrize("flags,fragments", [
    (["--optimizer", "hizoo"], ["--optimizer hizoo needs --noise gaussian"]),
    (["--optimizer", "hizoo", "--noise", "gaussian", "--query-schedule", "grow", "--queries", "2"],
     ["--query-schedule fixed"]),
    (["--optimizer", "lozo", "--lozo-rank", "0"], ["--lozo-rank"]),
    (["--optimizer", "hizoo", "--noise", "gaussian", "--hizoo-smooth", "1"], ["--hizoo-smooth"]),
    (["--lozo-rank", "4"], ["--lozo-rank 4 is an option of --optimizer lozo"]),
    (["--optimizer", "hizoo", "--noise", "gaussian", "--trainable", "last:1", "--hizoo-max-params", "100"],
     ["--hizoo-max-params 100", "--trainable selects"]),
    (["--optimizer", "hizoo", "--noise", "gaussian", "--queries", "3000"], ["--queries 3000", "record extension"]),
])
def test_options_are_refused_in_one_line(classifier, cli, tmp_path, flags, fragments):
    snapshot = Snapshot(classifier["model"].parent)
    proc = cli(*_args(classifier, tmp_path / "out"), *flags)
    assert_rejected(proc, *fragments)
    snapshot.assert_unchanged()
