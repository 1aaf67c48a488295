"""--rotate K: each step perturbs and updates K of the trainable blocks, chosen from (seed, t) alone."""

import json
import re

import numpy as np
import pytest

from edgetune import Tuner, _core
from edgetune.config import TrainConfig
from edgetune.errors import EdgetuneError
from edgetune.zo import ZOSGD, Schedule, build_optimizer
from edgetune.zo.subset import ArenaBlocks, BlockSubsets, block_subsets

f32 = np.float32
# a quadratic "model": three blocks of unequal size and a head; padding between groups, as the arena has
LAYOUT = ArenaBlocks(blocks={0: (0, 1000), 1: (1008, 2500), 2: (2512, 3000)}, always=[(3008, 3200)])
SIZE = 3216


def quadratic_run(subsets, steps=12, chain=True, queries=2, chain_last=False):
    """θ after ``steps`` ZO-SGD steps from 0 towards a random target, and the step records."""
    rng = np.random.default_rng(2)
    target = rng.standard_normal(SIZE).astype(f32)
    buf = np.zeros(SIZE, f32)
    opt = ZOSGD(buf, 9, Schedule(5e-2), Schedule(1e-3), queries=queries, weight_decay=0.1, noise="gaussian",
                subsets=subsets)
    records = [opt.step(t, lambda: float(np.mean((buf - target) ** 2)), chain=chain and (chain_last or t < steps - 1))
               for t in range(steps)]
    return buf, records, opt


def test_subsets_are_a_function_of_seed_and_window():
    cyclic = BlockSubsets(LAYOUT, 2, every=2, mode="cyclic")
    assert [cyclic.chosen(t) for t in range(8)] == [[0, 1], [0, 1], [0, 2], [0, 2], [1, 2], [1, 2], [0, 1], [0, 1]]
    assert cyclic.spans(2) == [(0, 1000), (2512, 3000), (3008, 3200)]  # the head in every step
    draws = [BlockSubsets(LAYOUT, 1, seed=4).chosen(t) for t in range(60)]
    assert draws == [BlockSubsets(LAYOUT, 1, seed=4).chosen(t) for t in range(60)]
    assert draws != [BlockSubsets(LAYOUT, 1, seed=5).chosen(t) for t in range(60)]
    assert {b for (b,) in draws} == {0, 1, 2} and len({tuple(d) for d in draws[:3]}) > 1


def test_a_rotated_step_moves_only_its_blocks_with_the_noise_of_their_offsets():
    rotation = BlockSubsets(LAYOUT, 1, seed=9)
    buf, records, _ = quadratic_run(rotation, steps=1, chain=False, queries=1)
    (block,) = records[0].blocks
    assert records[0].blocks == rotation.chosen(0)
    for b, (start, end) in LAYOUT.blocks.items():
        assert np.any(buf[start:end] != 0) == (b == block)
    outside = np.ones(SIZE, bool)
    for start, end in [LAYOUT.blocks[block], *LAYOUT.always]:
        outside[start:end] = False
    assert not np.any(buf[outside])  # padding and the other blocks untouched
    # from θ = 0 one query's update is −lr·g·z: z of the global offsets, the same as an unrotated step's
    start, end = LAYOUT.always[0]
    z = _core.noise(records[0].seeds[0], start, end - start, "gaussian")
    np.testing.assert_allclose(buf[start:end], -f32(5e-2) * f32(records[0].grads[0]) * z, rtol=1e-5)


def test_rotating_all_blocks_is_the_unrotated_run_bit_for_bit():
    everything = ArenaBlocks(blocks={0: (0, 1000), 1: (1000, 2500), 2: (2500, 3000)}, always=[(3000, SIZE)])
    rotated, _, _ = quadratic_run(BlockSubsets(everything, 3))
    plain, _, _ = quadratic_run(None)
    np.testing.assert_array_equal(rotated.view(np.uint32), plain.view(np.uint32))


@pytest.mark.parametrize("mode", ["cyclic", "random"])
def test_chained_rotated_steps_equal_unchained_ones_and_their_replay(mode):
    rotation = BlockSubsets(LAYOUT, 1, every=2, mode=mode, seed=3)
    chained, records, _ = quadratic_run(rotation)
    unchained, _, _ = quadratic_run(rotation, chain=False)
    np.testing.assert_array_equal(chained.view(np.uint32), unchained.view(np.uint32))
    replayed = np.zeros(SIZE, f32)
    replayer = ZOSGD(replayed, 9, Schedule(0), Schedule(0), noise="gaussian", subsets=rotation)
    for record in records:
        replayer.replay(record)
    np.testing.assert_array_equal(replayed.view(np.uint32), chained.view(np.uint32))
    other = ZOSGD(np.zeros(SIZE, f32), 9, Schedule(0), Schedule(0), noise="gaussian",
                  subsets=BlockSubsets(LAYOUT, 2, mode=mode, seed=3))
    with pytest.raises(EdgetuneError, match="logged on blocks"):
        other.replay(records[0])


def test_settle_takes_back_the_next_steps_perturbation_of_other_blocks():
    rotation = BlockSubsets(LAYOUT, 1, mode="cyclic")  # step 3 works on another block than step 2
    plain, _, _ = quadratic_run(rotation, steps=3, chain=False)
    chained, _, opt = quadratic_run(rotation, steps=3, chain_last=True)
    assert not np.allclose(chained, plain, atol=1e-4)  # θ + εz of step 3, on its block and the head
    opt.settle()
    np.testing.assert_allclose(chained, plain, atol=1e-6)


RUN = dict(steps=20, lr=5e-2, eps=1e-2, queries=2, seed=5, rotate=1, rotate_every=2)


def test_resumed_rotated_run_equals_an_uninterrupted_one(classifier, tmp_path, kill_and_resume):
    straight = Tuner.from_onnx(classifier["model"], trainable="all")
    start = straight.arena.buffer().copy()
    straight.fit(classifier["train"], output_dir=tmp_path / "a", **RUN)
    records = [json.loads(line) for line in (tmp_path / "a" / "steps.jsonl").read_text().splitlines()]
    subsets = block_subsets(TrainConfig(**RUN), straight.params, straight.arena)
    assert [r["blocks"] for r in records] == [subsets.chosen(t) for t in range(RUN["steps"])]
    assert len({tuple(r["blocks"]) for r in records}) > 1

    # the blocks no step chose are the pretrained ones, bit for bit; the head (always) moved
    layout = ArenaBlocks.of(straight.params, straight.arena)
    buffer = straight.arena.buffer()
    for b, (lo, hi) in layout.blocks.items():
        assert np.array_equal(buffer[lo:hi], start[lo:hi]) == all(r["blocks"] != [b] for r in records)
    head = layout.always[-1]
    assert not np.array_equal(buffer[head[0]:head[1]], start[head[0]:head[1]])

    resumed, _ = kill_and_resume(classifier["model"], classifier["train"], tmp_path / "b", trainable="all",
                                 kill_at=13, save_every=5, **RUN)
    np.testing.assert_array_equal(resumed.arena.buffer(), straight.arena.buffer())
    assert (tmp_path / "a" / "run.etlog").read_bytes() == (tmp_path / "b" / "run.etlog").read_bytes()


def test_rotated_cli_run_learns_and_replays_bit_for_bit(classifier, cli, tmp_path):
    out = tmp_path / "run"
    result = cli("tune", "--onnx", classifier["model"], "--data", classifier["train"], "--eval-data",
                 classifier["dev"], "--output-dir", out, "--trainable", "last:2", "--steps", "60", "--queries", "4",
                 "--lr", "5e-2", "--eps", "1e-2", "--rotate", "1", "--rotate-mode", "cyclic")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["result"]["after"]["loss"] < summary["result"]["before"]["loss"] - 0.05
    blocks = [json.loads(line)["blocks"] for line in (out / "steps.jsonl").read_text().splitlines()]
    assert blocks[:4] == [[1], [2], [1], [2]]  # last:2 of the 3 blocks, one per step in turn

    replayed = cli("replay", "--onnx", classifier["model"], "--log", out / "run.etlog", "--output", tmp_path / "re")
    assert replayed.returncode == 0, replayed.stderr
    assert (tmp_path / "re" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()


@pytest.mark.parametrize("options,message", [
    ({"rotate": -1}, "--rotate must be 0 (off) or a number of blocks"),
    ({"rotate": 1, "rotate_every": 0}, "--rotate-every must be at least 1"),
    ({"rotate": 1, "rotate_every": -2}, "--rotate-every must be at least 1"),
    ({"rotate": 1, "rotate_mode": "sideways"}, "--rotate-mode must be cyclic or random"),
    ({"rotate": 1, "optimizer": "zo-adam"}, "--rotate works with --optimizer zo-sgd only"),
    ({"rotate": 1, "parallel": "auto"}, "--rotate needs --parallel off"),
])
def test_bad_rotation_settings_are_refused(options, message):
    with pytest.raises(EdgetuneError, match=re.escape(message)):
        TrainConfig(**options).validate()


@pytest.mark.parametrize("trainable,rotate,message", [
    ("last:2", 3, r"--rotate 3: --trainable selects only 2 transformer blocks \(1, 2\)"),
    ("head", 1, "--rotate needs transformer blocks"),
])
def test_rotation_the_slice_cannot_take_is_refused_before_tuning(classifier, trainable, rotate, message):
    tuner = Tuner.from_onnx(classifier["model"], trainable=trainable)
    before = tuner.arena.buffer().copy()
    with pytest.raises(EdgetuneError, match=message):
        tuner.fit(classifier["train"], steps=2, rotate=rotate)
    np.testing.assert_array_equal(tuner.arena.buffer(), before)


def test_cli_reports_a_bad_rotation_in_one_line(classifier, cli, tmp_path):
    result = cli("tune", "--onnx", classifier["model"], "--data", classifier["train"], "--output-dir", tmp_path,
                 "--trainable", "last:1", "--rotate", "2", "--steps", "2")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("edgetune:")]
    assert errors == ["edgetune: error: --rotate 2: --trainable selects only 1 transformer block (2)"]
    assert "Traceback" not in result.stderr


def test_build_optimizer_needs_the_subsets_for_rotate():
    with pytest.raises(ValueError, match="block_subsets"):
        build_optimizer(TrainConfig(rotate=1), np.zeros(16, f32))
