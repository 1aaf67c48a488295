"""Tuner.steps: a training loop the app owns, one StepRecord per step, θ exact between steps, fit's trajectory."""

import numpy as np
import pytest
from badinput import Snapshot

from edgetune import StepRecord, TrainConfig, Tuner
from edgetune.artifacts.trajectory import Trajectory
from edgetune.errors import EdgetuneError

RUN = dict(steps=12, lr=1e-2, eps=1e-3, queries=2, weight_decay=0.1, seed=3, batch_size=16)


def tuner_of(classifier) -> Tuner:
    return Tuner.from_onnx(classifier["model"], trainable="last:1", max_length=32)


def fitted(classifier, **options) -> dict[str, np.ndarray]:
    """The weights after ``fit``: chained steps, the reference the step API must match bit for bit."""
    tuner = tuner_of(classifier)
    tuner.fit(classifier["train"], **{**RUN, **options})
    return tuner.weights


def assert_same_weights(weights, reference) -> None:
    assert weights.keys() == reference.keys()
    for name in reference:
        np.testing.assert_array_equal(weights[name], reference[name], err_msg=name)


def test_one_record_per_step_and_the_loss_falls(classifier):
    records = list(tuner_of(classifier).steps(classifier["train"], steps=150, lr=5e-3, queries=2))
    assert all(isinstance(r, StepRecord) for r in records)
    assert [r.step for r in records] == list(range(150))
    losses = [r.loss for r in records]
    assert np.mean(losses[-20:]) < np.mean(losses[:20]) - 0.05


class Recorder:
    """A progress hook keeping the records ``fit`` reports."""

    def __init__(self):
        self.records = []

    def on_start(self, start, total): ...
    def on_eval(self, step, metrics): ...

    def on_step(self, record):
        self.records.append(record)


def test_steps_equal_fit_bit_for_bit(classifier, tmp_path):
    """Unchained steps and fit's chained ones: the same weights, records, step log and trajectory."""
    reference, recorder = tuner_of(classifier), Recorder()
    reference.fit(classifier["train"], output_dir=tmp_path / "fit", progress=recorder, **RUN)
    tuner = tuner_of(classifier)
    records = list(tuner.steps(classifier["train"], output_dir=tmp_path / "steps", **RUN))
    assert_same_weights(tuner.weights, reference.weights)
    assert records == recorder.records
    for name in ("steps.jsonl", "run.etlog"):
        assert (tmp_path / "steps" / name).read_bytes() == (tmp_path / "fit" / name).read_bytes(), name


def test_a_train_config_gives_the_same_run_as_options(classifier):
    config = TrainConfig(**RUN)
    tuner = tuner_of(classifier)
    for _ in tuner.steps(classifier["train"], config=config):
        pass
    assert_same_weights(tuner.weights, fitted(classifier))
    assert config == TrainConfig(**RUN)  # the caller's config is checked on a copy, not changed


def test_theta_is_exact_between_steps(classifier):
    """At every yield the app may evaluate θ: it is θ after that step, as a run of that many steps leaves it."""
    tuner = tuner_of(classifier)
    for record in tuner.steps(classifier["train"], **RUN):
        if record.step == 4:
            middle = tuner.evaluate(classifier["dev"])
            weights = {name: value.copy() for name, value in tuner.weights.items()}
    assert_same_weights(weights, fitted(classifier, steps=5))
    fresh = tuner_of(classifier)
    for name, value in weights.items():
        fresh.weights[name][...] = value
    assert fresh.evaluate(classifier["dev"]) == middle
    assert middle != tuner.evaluate(classifier["dev"])  # the run went on after the evaluation


def test_breaking_out_leaves_theta_at_the_last_step(classifier):
    tuner = tuner_of(classifier)
    for record in tuner.steps(classifier["train"], **RUN):
        if record.step == 6:
            break
    assert_same_weights(tuner.weights, fitted(classifier, steps=7))


def test_an_exception_in_the_loop_leaves_theta_at_the_last_step(classifier):
    tuner = tuner_of(classifier)
    with pytest.raises(RuntimeError, match="the app failed"):
        for record in tuner.steps(classifier["train"], **RUN):
            if record.step == 2:
                raise RuntimeError("the app failed")
    assert_same_weights(tuner.weights, fitted(classifier, steps=3))


def test_leaving_early_checkpoints_and_resume_continues_bit_for_bit(classifier, tmp_path):
    tuner = tuner_of(classifier)
    for record in tuner.steps(classifier["train"], output_dir=tmp_path, **RUN):
        if record.step == 4:
            break
    assert len(Trajectory.read(tmp_path / "run.etlog").records) == 5
    resumed = tuner_of(classifier)
    rest = [r.step for r in resumed.steps(classifier["train"], output_dir=tmp_path, resume=True, **RUN)]
    assert rest == list(range(5, RUN["steps"]))
    assert_same_weights(resumed.weights, fitted(classifier))
    assert len(Trajectory.read(tmp_path / "run.etlog").records) == RUN["steps"]


def test_the_forward_budget_ends_the_steps(classifier):
    records = list(tuner_of(classifier).steps(classifier["train"], **{**RUN, "forward_budget": 10}))
    assert [r.step for r in records] == [0, 1, 2]  # 4 forwards a step: the step reaching 10 is the last


def test_without_an_output_folder_nothing_is_written(classifier, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    untouched = Snapshot(tmp_path, classifier["dir"])
    for _ in tuner_of(classifier).steps(classifier["train"], **RUN):
        pass
    untouched.assert_unchanged()


@pytest.mark.parametrize("options, fragments", [
    (dict(lr=-1.0), ("--lr",)),
    (dict(stepz=3), ("unknown option 'stepz'",)),
    (dict(eval_every=5), ("eval_every 5", "evaluate()")),
    (dict(resume=True), ("--resume needs --output-dir",)),
    (dict(resume="yes"), ("resume",)),
    (dict(config=TrainConfig(steps=3), lr=1e-2), ("not both",)),
    (dict(config={"steps": 3}), ("expected a TrainConfig",)),
    (dict(config=TrainConfig(steps=0)), ("--steps",)),
])
def test_bad_options_are_one_line_before_any_data_is_read(classifier, tmp_path, options, fragments):
    """Refused at the call, not at the first step: the data file does not even exist."""
    with pytest.raises(EdgetuneError) as error:
        tuner_of(classifier).steps(tmp_path / "missing.jsonl", **options)
    message = str(error.value)
    assert "\n" not in message and "missing.jsonl" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_an_evaluation_only_tuner_has_nothing_to_step(classifier, tmp_path):
    tuner = Tuner.from_onnx(classifier["model"], trainable=None, max_length=32)
    with pytest.raises(EdgetuneError, match="nothing to tune"):
        tuner.steps(tmp_path / "missing.jsonl", steps=3)
