"""DiZO: learning, the projection's clip, θ0 memory-mapped, forwards counted, resume and replay exact."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from edgetune import Tuner
from edgetune.config import TrainConfig
from edgetune.artifacts.trajectory import FILE_NAME as TRAJECTORY, Trajectory
from edgetune.zo import build_optimizer

DIZO = dict(optimizer="dizo", lr=5e-3, eps=1e-3, queries=2, dizo_interval=5, dizo_iters=4)


def _run_steps(tuner: Tuner, train_path: Path, config: TrainConfig, steps: int) -> list:
    optimizer = build_optimizer(config, tuner.arena.buffer(), anchors=tuner.anchors)
    train = tuner.load_data(train_path)
    tuner.engine.set_batch(train.batch(range(16), tuner.info.data_inputs))
    return [optimizer.step(t, lambda: np.mean(tuner.engine.loss())) for t in range(steps)]


def _distances(tuner: Tuner) -> dict[str, float]:
    return {name: float(np.linalg.norm((view - tuner.anchors.initial[name]).astype(np.float64)))
            for name, view in tuner.weights.items()}


def test_dizo_trains_the_tiny_classifier_and_counts_the_projection_forwards(classifier):
    records = []

    class Collect:
        def on_start(self, start, total): ...
        def on_eval(self, step, metrics): ...
        def on_step(self, record):
            records.append(record)

    tuner = Tuner.from_onnx(classifier["model"], trainable="last:1")
    result = tuner.fit(classifier["train"], eval_data=classifier["dev"], steps=200, progress=Collect(),
                       **{**DIZO, "dizo_interval": 20})
    assert result.before["accuracy"] < 0.7 and result.after["accuracy"] >= 0.9
    projected = [r for r in records if r.projection is not None]
    assert [r.step for r in projected] == list(range(19, 200, 20))
    assert all(r.forwards == 2 * 2 + 2 * 4 for r in projected)
    assert all(r.forwards == 2 * 2 for r in records if r.projection is None)
    assert result.forward_passes == sum(r.forwards for r in records) == 200 * 4 + 10 * 8


def test_projection_keeps_each_distance_within_tau_of_its_pre_projection_value(classifier):
    """DiZO's step 4 is ZO-SGD's step 4 followed by the projection: a ZO-SGD twin gives the distances before it."""
    dizo, sgd = (Tuner.from_onnx(classifier["model"], trainable="last:1") for _ in range(2))
    records = _run_steps(dizo, classifier["train"], TrainConfig(**DIZO, dizo_tau=0.1), 5)
    _run_steps(sgd, classifier["train"], TrainConfig(**{**DIZO, "optimizer": "zo-sgd"}), 5)
    before, after = _distances(sgd), _distances(dizo)
    scales = records[-1].projection["scales"]
    assert set(scales) == set(before) and any(s != 1 for s in scales.values()), "the search should move r"
    for name, distance in before.items():
        assert distance > 0
        ratio = after[name] / distance
        assert 0.9 - 1e-4 <= ratio <= 1.1 + 1e-4, name
        assert ratio == pytest.approx(scales[name], rel=1e-4), name


def test_anchor_is_a_read_only_file_mapping_of_the_prepared_cache(classifier):
    tuner = Tuner.from_onnx(classifier["model"], trainable="last:1")
    name, view = next(iter(tuner.weights.items()))
    anchor = tuner.anchors.initial[name]
    assert not anchor.flags.writeable
    np.testing.assert_array_equal(anchor, view)  # θ0 before any step
    address = anchor.ctypes.data
    mapped = [line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
              if int(line.split("-")[0], 16) <= address < int(line.split()[0].split("-")[1], 16)]
    assert mapped and mapped[0].endswith("initial.safetensors")


# A fresh Python that loads an arena (no copy: read straight into the buffer), maps θ0, takes one DiZO step
# with its projection, and prints its peak RSS (VmHWM) before and after the step: a peak counts every
# transient copy, where sampling the RSS inside loss() only sees the moments the forwards run.
PROJECTION_PEAK_CHILD = """
import sys
from pathlib import Path
import numpy as np
from edgetune.config import TrainConfig
from edgetune.graph.cache import _SafetensorsFile
from edgetune.zo import Anchors, build_optimizer

def peak_mb():
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024

folder = Path(sys.argv[1])
buffer = np.fromfile(folder / "theta.f32", dtype=np.float32)
half = buffer.size // 2
anchors = Anchors({"a": buffer[:half], "b": buffer[half:]},
                  _SafetensorsFile(folder / "initial.safetensors").map_readonly())
config = TrainConfig(optimizer="dizo", lr=1e-3, eps=1e-3, dizo_interval=1, dizo_iters=3)
optimizer = build_optimizer(config, buffer, anchors=anchors)
forwards = []
def loss():
    forwards.append(1)
    return float(np.sum(buffer[:4096] ** 2))
before = peak_mb()
record = optimizer.step(0, loss)
print(before, peak_mb(), record.projection is not None, len(forwards))
"""


def test_projection_does_not_hold_a_second_copy_of_the_arena_in_memory(tmp_path):
    """Anchors of 64 MB: the projection streams them, so the step's peak RSS stays near the arena's."""
    n = 1 << 24
    rng = np.random.default_rng(0)
    initial = {"a": rng.standard_normal(n // 2, dtype=np.float32), "b": rng.standard_normal(n // 2, dtype=np.float32)}
    save_file(initial, str(tmp_path / "initial.safetensors"))
    # some divergence from θ0 to rescale
    (np.concatenate([initial["a"], initial["b"]]) + np.float32(1e-2)).tofile(tmp_path / "theta.f32")
    del initial
    proc = subprocess.run([sys.executable, "-c", PROJECTION_PEAK_CHILD, str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    before, after, projected, forwards = proc.stdout.split()
    assert projected == "True" and int(forwards) == 2 + 2 * 3
    growth = float(after) - float(before)
    assert growth < 16, f"peak RSS grew by {growth:.0f} MB over a {4 * n >> 20} MB arena"


def test_resume_and_replay_equal_the_uninterrupted_run_bit_for_bit(classifier, tmp_path, kill_and_resume):
    options = {**DIZO, "steps": 16, "seed": 3, "dizo_interval": 4}
    straight = Tuner.from_onnx(classifier["model"], trainable="last:1")
    straight.fit(classifier["train"], output_dir=tmp_path / "a", **options)

    resumed, _ = kill_and_resume(classifier["model"], classifier["train"], tmp_path / "b", trainable="last:1",
                                 kill_at=9, save_every=6, **options)
    for name, value in straight.weights.items():
        np.testing.assert_array_equal(value, resumed.weights[name], err_msg=name)

    log = Trajectory.read(tmp_path / "b" / TRAJECTORY)
    assert sum(r.projection is not None for r in log.records) == 4
    replayed = Tuner.from_onnx(classifier["model"], trainable="last:1")
    optimizer = build_optimizer(TrainConfig(**options), replayed.arena.buffer(), anchors=replayed.anchors)
    for record in log.records:
        optimizer.replay(record)
    for name, value in straight.weights.items():
        np.testing.assert_array_equal(value, replayed.weights[name], err_msg=name)
