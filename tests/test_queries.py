"""Query-count policies (fixed, grow, variance), forward passes as the unit of cost, the forward budget."""

import json

import numpy as np
import pytest

from edgetune import Tuner, _core
from edgetune.config import TrainConfig
from edgetune.errors import EdgetuneError, NonFiniteLoss
from edgetune.zo import ZOSGD, Schedule
from edgetune.zo.queries import FixedQueries, GrowingQueries, VarianceQueries, build_query_policy

N = 512


def quadratic(weights: np.ndarray, target: np.ndarray) -> np.float32:
    return np.float32(np.mean((weights - target) ** 2, dtype=np.float32))


def sgd(arena: np.ndarray, queries, lr: float = 0.05, weight_decay: float = 0.0) -> ZOSGD:
    return ZOSGD(arena, seed=5, lr=Schedule(lr), eps=Schedule(1e-3), queries=queries, weight_decay=weight_decay,
                 noise="rademacher")


def test_config_builds_the_named_policy():
    assert build_query_policy(TrainConfig(queries=4)) == FixedQueries(4)
    grow = TrainConfig(queries=16, queries_min=4, query_schedule="grow", steps=300)
    assert build_query_policy(grow) == GrowingQueries(4, 16, 300)
    variance = TrainConfig(queries=16, queries_min=3, query_schedule="variance", query_threshold=0.2)
    assert build_query_policy(variance) == VarianceQueries(3, 16, 0.2)
    for bad, message in ((dict(query_schedule="adaptive"), "--query-schedule"),
                         (dict(queries_min=5, queries=4), "--queries-min"),
                         (dict(query_threshold=0.0), "--query-threshold"),
                         (dict(forward_budget=-1), "--forward-budget")):
        with pytest.raises(EdgetuneError, match=message):
            TrainConfig(**bad).validate()


def test_grow_schedule_rises_as_the_square_root_of_progress():
    """q_t = 2 + ⌊6·√(t/9) + ½⌋ over 10 steps, then stays at the maximum on an extended run."""
    grow = GrowingQueries(2, 8, total=10)
    assert [grow.limit(t) for t in range(10)] == [2, 4, 5, 5, 6, 6, 7, 7, 8, 8]
    assert grow.limit(25) == 8 and GrowingQueries(3, 9, total=1).limit(0) == 9

    arena = np.zeros(N, np.float32)
    target = np.ones(N, np.float32)
    optimizer = sgd(arena, grow)
    records = [optimizer.step(t, lambda: quadratic(arena, target)) for t in range(10)]
    assert [len(r.seeds) for r in records] == [2, 4, 5, 5, 6, 6, 7, 7, 8, 8]
    assert [r.forwards for r in records] == [2 * len(r.seeds) for r in records]
    assert all(r.divisor == len(r.seeds) for r in records)


def test_variance_policy_queries_less_on_an_easy_step_than_on_a_noisy_one():
    """Easy: a loss linear in one weight gives every Rademacher query the same |g|. Noisy: evaluation
    noise 100× the slope scatters g² (χ²-like), so its mean stays uncertain up to the maximum."""
    policy = VarianceQueries(low=2, high=16, threshold=0.3)
    slope = np.zeros(N, np.float32)
    slope[0] = 1.0
    rng = np.random.default_rng(0)
    arena = np.zeros(N, np.float32)

    def easy() -> np.float32:
        return np.float32(slope @ arena)

    def noisy() -> np.float32:
        return np.float32(slope @ arena + 0.1 * rng.standard_normal())

    easy_q = [len(sgd(arena, policy).step(t, easy).seeds) for t in range(10)]
    noisy_q = [len(sgd(arena, policy).step(t, noisy).seeds) for t in range(10)]
    assert easy_q == [2] * 10
    assert np.mean(noisy_q) > 10 and max(noisy_q) == 16


def test_an_early_stop_applies_lr_over_the_queries_used_and_replays_bit_identically():
    """The fused passes apply lr/16 per query; stopping at q < 16 corrects them to lr/q in the last pass."""
    rng = np.random.default_rng(1)
    start = rng.standard_normal(N).astype(np.float32)
    target = rng.standard_normal(N).astype(np.float32)
    arena = start.copy()
    lr, wd = 0.05, 0.1
    optimizer = sgd(arena, VarianceQueries(2, 16, threshold=0.3), lr=lr, weight_decay=wd)
    record = optimizer.step(0, lambda: quadratic(arena, target))
    q = len(record.seeds)
    assert 2 <= q < 16 and record.divisor == 16 and record.forwards == 2 * q

    steps = [lr / q * g * _core.noise(seed, 0, N, "rademacher").astype(np.float64)
             for seed, g in zip(record.seeds, record.grads)]
    decay = 1 - lr * wd  # as in the fixed schedule, the last pass decays θ after the earlier queries' updates
    expected = decay * (start - sum(steps[:-1])) - steps[-1]
    np.testing.assert_allclose(arena, expected, rtol=0, atol=2e-6)  # float32 rounding of 2q + 1 passes

    replayed = start.copy()
    sgd(replayed, 16).replay(record)
    np.testing.assert_array_equal(replayed, arena)


@pytest.mark.parametrize("chain", [False, True])
def test_variance_policy_that_uses_every_query_is_the_fixed_schedule_bit_for_bit(chain):
    rng = np.random.default_rng(2)
    start = rng.standard_normal(N).astype(np.float32)
    target = rng.standard_normal(N).astype(np.float32)
    arenas = []
    for policy in (FixedQueries(4), VarianceQueries(1, 4, threshold=1e-9)):
        arena = start.copy()
        optimizer = sgd(arena, policy, weight_decay=0.01)
        records = [optimizer.step(t, lambda: quadratic(arena, target), chain=chain and t < 11) for t in range(12)]
        assert all(len(r.seeds) == 4 for r in records)
        arenas.append(arena)
    np.testing.assert_array_equal(*arenas)


def test_forward_budget_ends_the_run_and_the_forwards_are_counted_exactly(classifier, tmp_path):
    tuner = Tuner.from_onnx(classifier["model"], trainable="last:1")
    options = dict(steps=100, lr=1e-2, eps=1e-3, queries=4, queries_min=1, query_schedule="variance",
                   query_threshold=0.5, forward_budget=60, eval_every=3)
    result = tuner.fit(classifier["train"], eval_data=classifier["dev"], output_dir=tmp_path, **options)
    records = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    spent = np.cumsum([r["forwards"] for r in records])
    assert result.forward_passes == spent[-1] and spent[-1] >= 60 > spent[-2]
    assert result.steps == len(records) < 100
    assert [r["forwards"] for r in records] == [2 * len(r["seeds"]) for r in records]
    assert len({len(r["seeds"]) for r in records}) > 1, "the variance policy should vary q on a real model"
    evals = result.history
    assert [h["forwards"] for h in evals] == [spent[h["step"] - 1] for h in evals]
    assert evals[-1]["step"] == result.steps and evals[-1]["forwards"] == result.forward_passes

    again = Tuner.from_onnx(classifier["model"], trainable="last:1")
    rerun = again.fit(classifier["train"], eval_data=classifier["dev"], output_dir=tmp_path, resume=True, **options)
    assert rerun.steps == 0 and rerun.forward_passes == 0, "a spent budget must not run on after a resume"
    for name, value in tuner.weights.items():
        np.testing.assert_array_equal(value, again.weights[name], err_msg=name)


@pytest.mark.parametrize("schedule", ["fixed", "grow", "variance"])
def test_resume_mid_run_is_bit_identical(classifier, tmp_path, schedule, kill_and_resume):
    options = dict(steps=16, lr=1e-2, eps=1e-3, seed=3, queries=4, queries_min=2, query_schedule=schedule,
                   query_threshold=0.4)
    straight = Tuner.from_onnx(classifier["model"], trainable="last:1")
    full = straight.fit(classifier["train"], output_dir=tmp_path / "a", **options)

    resumed, rest = kill_and_resume(classifier["model"], classifier["train"], tmp_path / "b", trainable="last:1",
                                    kill_at=9, save_every=4, **options)

    for name, value in straight.weights.items():
        np.testing.assert_array_equal(value, resumed.weights[name], err_msg=name)
    steps_a = (tmp_path / "a" / "steps.jsonl").read_text().splitlines()
    assert steps_a == (tmp_path / "b" / "steps.jsonl").read_text().splitlines()
    forwards = [json.loads(line)["forwards"] for line in steps_a]
    assert full.forward_passes == sum(forwards) and rest.forward_passes == sum(forwards[8:])


def test_cli_rejects_an_unknown_query_schedule_in_one_line(classifier, cli):
    result = cli("tune", "--onnx", classifier["model"], "--data", classifier["train"], "--query-schedule", "adaptive")
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "--query-schedule" in result.stderr


@pytest.mark.parametrize("failing_pass, forwards", [(1, 2), (2, 2), (3, 4), (6, 6)])
def test_a_non_finite_step_reports_the_passes_it_ran_and_leaves_theta(failing_pass, forwards):
    """A step that meets a NaN at its k-th pass ran every ± pair up to that one: the budget counts them (the C
    runtime counts the same). θ is as the step found it, also when the earlier queries had applied their share
    of the update (fused into their passes): a rollback undoes logged steps only."""
    arena = np.linspace(-1, 1, N, dtype=np.float32)
    before = arena.copy()
    passes = 0

    def loss() -> np.float32:
        nonlocal passes
        passes += 1
        return np.float32(np.nan) if passes == failing_pass else quadratic(arena, np.zeros(N, np.float32))

    with pytest.raises(NonFiniteLoss) as failed:
        sgd(arena, FixedQueries(4)).step(0, loss)
    assert failed.value.forwards == forwards == passes + passes % 2
    np.testing.assert_allclose(arena, before, atol=1e-6)  # back at θ up to the passes' rounding
