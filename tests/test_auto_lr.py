"""--lr auto (the default), --eps auto, Spall's gains, MEAZO's scalar step, and the guard that rolls a diverging
run back: calibration is finite and counted, a huge lr is caught and the run ends no worse than it began (saying
so), a guarded run replays and resumes bit for bit, the same seed gives the same run, bad values are one line."""

import math

import numpy as np
import pytest
import yaml

from badinput import Snapshot, assert_rejected
from edgetune import Tuner
from edgetune.artifacts.trajectory import Trajectory
from edgetune.config import TrainConfig
from edgetune.errors import EdgetuneError
from edgetune.loop import TrainingRun
from edgetune.zo.calibrate import (BATCHES, C_LR, CONFIDENCE, FALLBACK_FRACTION, FORWARDS, LR_BOUNDS, MAX_PROBES, PROBES,
                                    calibrate, choose, probe_cap)
from edgetune.zo.guard import Guard
from edgetune.zo.schedules import Schedule, StepSize
from edgetune.zo.zosgd import StepRecord
from notes import Notes

HUGE = dict(lr=1.0, eps=1e-3, steps=60, seed=3)  # 6x the tiny classifier's calibrated lr: its loss climbs at once


def fit(bundle, trainable="last:1", **options):
    tuner = Tuner.from_onnx(bundle["model"], trainable=trainable, head="zo")  # ZO's calibration and guard
    notes = Notes()
    return tuner, tuner.fit(bundle["train"], progress=notes, **options), notes.lines


@pytest.mark.parametrize("bundle", ["classifier", "lm"])
def test_calibration_gives_a_finite_positive_lr_counted_in_the_forwards(bundle, request):
    tuner, result, notes = fit(request.getfixturevalue(bundle), steps=2)
    cal = result.calibration
    assert 0 < cal["lr"] < 1 and math.isfinite(cal["lr"]) and cal["curvature"] > 0 and not cal["fallback"]
    assert cal["forwards"] == 4 + 2 * cal["probes"]  # a base loss per batch, a ± pair per probe
    assert result.forward_passes == cal["forwards"] + 2 * 2
    assert notes[0].startswith(f"lr auto: {cal['lr']:.4g} from zᵀHz") and f"({cal['probes']} probes)" in notes[0]


def test_given_lr_and_eps_skip_the_calibration(classifier):
    _, result, notes = fit(classifier, steps=2, lr=1e-3)
    assert result.calibration is None and result.forward_passes == 4 and notes == []


def test_eps_auto_is_measured_with_the_lr(classifier):
    _, result, _ = fit(classifier, steps=1, eps="auto")
    assert 1e-5 <= result.calibration["eps"] <= 1e-1 and result.calibration["eps"] != 1e-3


def test_the_fallback_lr_when_the_curvature_is_lost_in_rounding():
    # a loss linear along the noise: no curvature, lr from the gradient scale (moves the loss by about 1 %)
    cal = choose(curvatures=[0.0, -1e-9, 1e-9], grads=[2.0, -2.0, 2.0], base=[0.7, 0.7], eps=1e-3, c=1.0, forwards=8)
    assert cal.fallback and cal.lr == pytest.approx(FALLBACK_FRACTION * 0.7 / 4.0)


def test_at_a_saddle_lr_comes_from_the_scale_of_the_curvature_not_the_clamp():
    # negative along every probe: no step minimises along z, but the loss bends at rate |zᵀHz| either way
    saddle = choose(curvatures=[-5.0, -3.0, -4.0], grads=[1e-6], base=[0.7], eps=None, c=1.0, forwards=8)
    assert not saddle.fallback and saddle.lr == pytest.approx(1 / np.sqrt((25 + 9 + 16) / 3))
    assert saddle.lr < LR_BOUNDS[1] and 1e-5 <= saddle.eps <= 1e-1


def test_probes_that_disagree_bound_the_mean_curvature_from_above():
    spread = [-100.0, 120.0, 30.0, -50.0, 80.0, 10.0, -20.0, 60.0]  # an indefinite Hessian: median 20, mean 16
    cal = choose(curvatures=spread, grads=[1.0], base=[0.7], eps=1e-3, c=1.0, forwards=20)
    se = np.std(spread, ddof=1) / np.sqrt(len(spread))
    assert cal.curvature == pytest.approx(np.mean(spread) + 2 * se) and cal.curvature_se == pytest.approx(se)
    assert cal.lr == pytest.approx(1 / cal.curvature) and cal.lr < 1 / np.median(spread) / 3


def quadratic(weights: np.ndarray, curvatures: list[float], seed: int = 0):
    """L(θ) = 0.7 + ½ Σₖ sₖ (uₖᵀθ)² + 0.01 u₀ᵀθ over a few random directions uₖ: zᵀHz = Σₖ sₖ (uₖᵀz)², spread
    wide over z when the sₖ are few, and of either sign when they are."""
    u = np.random.default_rng(seed).normal(size=(len(curvatures), weights.size)) / np.sqrt(weights.size)

    def loss() -> float:
        t = u @ weights.astype(np.float64)
        return 0.7 + 0.5 * float(np.dot(curvatures, t**2)) + 0.01 * float(t[0])
    return loss


def test_probes_that_disagree_take_more_rounds_up_to_the_cap_and_leave_theta_as_it_was():
    weights = np.zeros(1000, np.float32)
    loss = quadratic(weights, [100.0, -100.0, 80.0, -50.0])
    binds = [lambda: None] * BATCHES
    first = calibrate(weights, 3, "rademacher", binds, loss, eps=1e-3, max_probes=16)
    assert first.probes == 16 and first.forwards == BATCHES + 2 * 16
    widest = calibrate(weights, 3, "rademacher", binds, loss, eps=1e-3)
    assert widest.probes == MAX_PROBES and widest.forwards == BATCHES + 2 * MAX_PROBES
    assert widest.curvature_se < first.curvature_se and not widest.fallback
    assert calibrate(weights, 3, "rademacher", binds, loss, eps=1e-3) == widest  # the same seed, the same rounds
    assert not weights.any()


def test_probes_that_agree_stop_after_the_first_round():
    weights = np.zeros(1000, np.float32)
    loss = quadratic(weights, [1.0] * 200)  # many equal directions: zᵀHz within a few % of its mean for every z
    cal = calibrate(weights, 3, "rademacher", [lambda: None] * BATCHES, loss, eps=1e-3)
    assert cal.probes == PROBES and cal.forwards == FORWARDS and cal.curvature_se < CONFIDENCE * cal.curvature


def test_the_guard_starts_from_the_calibrations_mean_loss_not_one_batchs():
    # a first batch 3 % below the mean must not become the best a mean loss "rises" from
    record = lambda step, loss: StepRecord(step, [1], [0.1], 1e-3, 1e-3, 0.0, "rademacher", loss)  # noqa: E731
    guard = Guard(0.005, loss=0.69)
    assert not guard.observe(record(0, 0.67)) and guard.state.best == pytest.approx(0.688)
    assert not any(guard.observe(record(t, 0.685)) for t in range(1, 40))
    alone = Guard(0.005)
    assert not alone.observe(record(0, 0.67)) and alone.state.best == 0.67
    assert any(alone.observe(record(t, 0.685)) for t in range(1, 40))  # what one lucky batch did


def test_a_forward_budget_caps_the_probes_at_a_fifth_of_it():
    assert probe_cap(0) == MAX_PROBES and probe_cap(60) == PROBES  # no budget; a small one keeps the first round
    assert probe_cap(300) == 24 and BATCHES + 2 * probe_cap(300) <= 300 / 5


def test_the_same_seed_gives_the_same_run(classifier):
    first, a, _ = fit(classifier, steps=30, seed=5)
    second, b, _ = fit(classifier, steps=30, seed=5)
    assert a.calibration == b.calibration and a.guard == b.guard
    for name, value in first.weights.items():
        np.testing.assert_array_equal(second.weights[name], value)
    third, c, _ = fit(classifier, steps=30, seed=6)
    assert c.calibration["lr"] != a.calibration["lr"]  # other probes, other batches


def test_a_huge_lr_is_caught_by_the_guard_and_the_run_ends_no_worse(classifier):
    tuner, result, notes = fit(classifier, **HUGE)
    rollbacks = [line for line in notes if line.startswith("guard: loss rose from")]
    assert rollbacks and "rolled back to step" in rollbacks[0] and "lr 1 → 0.5" in rollbacks[0]
    assert result.guard == rollbacks
    dev = tuner.load_data(classifier["dev"])
    base = Tuner.from_onnx(classifier["model"], trainable="last:1").evaluate(dev)
    assert tuner.evaluate(dev)["loss"] <= base["loss"] * 1.01


def test_without_the_guard_the_same_lr_diverges(classifier):
    tuner, result, notes = fit(classifier, guard="off", **HUGE)
    assert result.guard == [] and result.kept == "final" and notes == []
    dev = tuner.load_data(classifier["dev"])
    base = Tuner.from_onnx(classifier["model"], trainable="last:1").evaluate(dev)
    assert tuner.evaluate(dev)["loss"] > 2 * base["loss"]


OVERFLOW = dict(trainable="head", lr=1e38, eps=1e-3, steps=20, seed=0)  # step 0's update takes the logits past
# float32's range: step 1's loss is infinite


def test_a_non_finite_loss_is_rolled_back_and_the_run_goes_on(classifier, tmp_path, cli):
    out = tmp_path / "run"
    tuner, result, notes = fit(classifier, output_dir=out, **OVERFLOW)
    assert notes[0] == "guard: non-finite loss at step 1; rolled back to step 0, lr 1e+38 → 5e+37"
    assert result.guard[0] == notes[0] and result.steps >= OVERFLOW["steps"]  # and a keep-best rollback at the end
    assert all(np.isfinite(w).all() for w in tuner.weights.values())
    assert math.isfinite(tuner.evaluate(classifier["dev"])["loss"])
    tuner.save(out)
    undo = Trajectory.read(out / "run.etlog").records[1]
    assert undo.step == 1 and undo.rollback == 0  # the failed step left no record: its undo takes its index
    done = cli("replay", "--onnx", classifier["model"], "--log", out / "run.etlog", "--output", tmp_path / "replayed")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "replayed" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()


def test_without_the_guard_a_non_finite_loss_ends_the_run_in_one_line(classifier, tmp_path, cli):
    done = cli("tune", "--onnx", classifier["model"], "--data", classifier["train"], "--output-dir", tmp_path / "o",
               "--guard", "off", "--head", "zo", *(f"--{k.replace('_', '-')}={v}" for k, v in OVERFLOW.items()))
    assert done.returncode == 3 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("edgetune: error: non-finite loss at step 1 (")


def test_under_lr_auto_a_rollback_measures_the_curvature_again_where_it_returns(classifier):
    # the calibrated lr is c/zᵀHz at the start; a slice that sharpens as it trains needs a smaller one later
    tuner = Tuner.from_onnx(classifier["model"], trainable="last:1", head="zo")
    run = TrainingRun(tuner, TrainConfig(steps=100, seed=3), classifier["train"])
    notes = Notes()
    run.note = notes.on_note
    for _ in range(30):
        run.guard.observe(run.step())
    spent, calibrated = run.spent, run.calibration
    run.guard_acts()
    line = notes.lines[-1]
    assert line.startswith("guard: loss rose") and f", was {calibrated.curvature:.3g})" in line
    assert run.spent == spent + FORWARDS  # the probes count in the budget
    again = float(line.rpartition("zᵀHz here ")[2].partition(",")[0])
    assert run.step_size.scale == pytest.approx(min(0.5, (C_LR / again) / calibrated.lr), rel=1e-2)
    assert run.trajectory.records[-1].rollback is not None  # θ went back before it was measured


def test_a_run_that_ends_worse_keeps_its_best_state_and_says_so(classifier):
    # one rollback allowed is not enough at this lr: the end of the run finds it worse than the start
    tuner, result, notes = fit(classifier, eval_data=classifier["dev"], lr=3.0, eps=1e-3, steps=40, seed=3)
    assert result.kept == "best" and result.best_step is not None
    kept = [line for line in notes if line.startswith("kept best: the run ended worse than it began")]
    assert len(kept) == 1 and f"kept θ before step {result.best_step}" in kept[0]
    assert result.after["loss"] <= result.before["loss"] * 1.01
    assert result.history[-1]["loss"] == result.after["loss"]  # the final evaluation is of the kept state


def test_replay_of_a_guarded_run_reproduces_the_weights(classifier, tmp_path, cli):
    out = tmp_path / "run"
    tuner, result, _ = fit(classifier, output_dir=out, **HUGE)
    tuner.save(out)
    log = Trajectory.read(out / "run.etlog")
    undo = [r for r in log.records if r.rollback is not None]
    assert undo and all(r.forwards == 0 for r in undo) and len(undo) >= len(result.guard)
    assert log.header["config"]["lr"] == 1.0
    done = cli("replay", "--onnx", classifier["model"], "--log", out / "run.etlog", "--output", tmp_path / "replayed")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "replayed" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()


def test_replay_of_an_auto_lr_run_reproduces_the_weights(classifier, tmp_path, cli):
    out = tmp_path / "run"
    tuner, result, _ = fit(classifier, output_dir=out, steps=20, lr_adapt="meazo", schedule="spall")
    tuner.save(out)
    log = Trajectory.read(out / "run.etlog")
    assert log.header["config"]["lr"] == result.calibration["lr"]  # the measured value, not "auto"
    assert len({r.lr for r in log.records}) > 1 and len({r.eps for r in log.records}) > 1  # MEAZO and Spall move them
    done = cli("replay", "--onnx", classifier["model"], "--log", out / "run.etlog", "--output", tmp_path / "replayed")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "replayed" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()


def test_resume_across_a_rollback_continues_bit_for_bit(classifier, tmp_path, kill_and_resume):
    options = {**HUGE, "lr_adapt": "meazo", "head": "zo"}
    straight, whole, _ = fit(classifier, output_dir=tmp_path / "straight", save_every=25, **options)
    assert whole.guard and any(r.rollback is not None and r.step < 25
                               for r in Trajectory.read(tmp_path / "straight" / "run.etlog").records)
    resumed, _ = kill_and_resume(classifier["model"], classifier["train"], tmp_path / "killed", trainable="last:1",
                                 kill_at=40, save_every=25, **options)
    for name, value in straight.weights.items():
        np.testing.assert_array_equal(resumed.weights[name], value)
    assert (tmp_path / "killed" / "run.etlog").read_bytes() == (tmp_path / "straight" / "run.etlog").read_bytes()


def test_spall_gains():
    lr = Schedule(0.1, "spall", total=100)
    assert lr(0) == pytest.approx(0.1) and lr(99) == pytest.approx(0.1 * (11 / 110) ** 0.602)
    eps = Schedule(1e-3, "spall-eps")
    assert eps(0) == pytest.approx(1e-3) and eps(9) == pytest.approx(1e-3 / 10**0.101)


def test_meazo_scales_lr_by_one_scalar():
    size = StepSize(Schedule(0.1), "meazo", reference=2.0)
    assert size(0) == 0.1  # no gradient seen yet
    size.observe([4.0])
    assert size(1) == pytest.approx(0.1 * 2.0 / 4.0)  # bias-corrected: v̂ = g² after one step
    size.scale = 0.5
    assert size(1) == pytest.approx(0.025)
    restored = StepSize(Schedule(0.1), "meazo")
    restored.load_state_dict(size.state_dict())
    assert restored(1) == size(1)


def test_auto_is_the_default_and_a_yaml_config_takes_it(tmp_path):
    assert TrainConfig().lr == "auto" and TrainConfig().guard == "on"
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"lr": "auto", "eps": "auto"}))
    from edgetune.config import read_config_options

    assert read_config_options(path, [TrainConfig]) == {"lr": "auto", "eps": "auto"}


@pytest.mark.parametrize("options, message", [
    ({"lr": "fast"}, "--lr: expected a number or auto, got 'fast'"),
    ({"eps": "big"}, "--eps: expected a number or auto, got 'big'"),
    ({"lr": -1.0}, "--lr must be positive, got -1.0"),
    ({"lr_adapt": "adam"}, "--lr-adapt must be off or meazo, not 'adam'"),
    ({"guard": "maybe"}, "--guard must be on or off, not 'maybe'"),
    ({"schedule": "spal"}, "--schedule must be one of constant, linear, cosine, spall, not 'spal'"),
    ({"forward_budget": 20}, "--forward-budget 20 leaves no step after the 20 forwards of --lr/--eps auto's"),
])
def test_bad_values_are_one_line_before_any_work(classifier, options, message):
    with pytest.raises(EdgetuneError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Tuner.from_onnx(classifier["model"]).fit(classifier["train"], steps=1, **options)


@pytest.mark.parametrize("flags, fragments", [
    (["--lr", "fast"], ["--lr", "fast"]),
    (["--eps", "nan"], ["--eps", "nan"]),
    (["--lr-adapt", "adam"], ["--lr-adapt", "adam"]),
])
def test_bad_flags_are_one_line(classifier, tmp_path, cli, flags, fragments):
    snapshot = Snapshot(classifier["dir"])
    proc = cli("tune", "--onnx", classifier["model"], "--data", classifier["train"], "--output-dir", tmp_path / "o",
               "--steps", "1", *flags)
    assert_rejected(proc, *fragments)
    snapshot.assert_unchanged()
