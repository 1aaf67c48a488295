"""End to end on tiny exported-style models: learning, fold-back, resume, determinism, replay."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from edgetune import Tuner, _core
from edgetune.data import BatchStream
from edgetune.errors import EdgetuneError, TrainingError

FAST = dict(steps=400, lr=5e-3, eps=1e-3, batch_size=16, queries=2, schedule="linear")


def test_tiny_classifier_learns_from_chance_to_near_perfect(classifier):
    tuner = Tuner.from_onnx(classifier["model"], trainable="last:1")
    assert tuner.split, "the frozen prefix should be split off for last:1"
    result = tuner.fit(classifier["train"], eval_data=classifier["dev"], **FAST)
    assert result.before["accuracy"] < 0.7
    assert result.after["accuracy"] >= 0.95
    assert result.after["loss"] < result.before["loss"]
    assert result.forward_passes == 2 * FAST["queries"] * FAST["steps"]


def test_tuned_model_reloads_in_plain_onnxruntime_with_the_same_logits(classifier, tmp_path):
    tuner = Tuner.from_onnx(classifier["model"], trainable="last:1")
    tuner.fit(classifier["train"], steps=50, lr=1e-2, eps=1e-3)
    tuner.save(tmp_path)
    dev = tuner.load_data(classifier["dev"])
    batch = next(dev.batches(32, tuner.info.data_inputs))
    _, tuned_logits = tuner.engine.loss_and_logits(batch)

    plain = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = plain.run(["logits"], batch.inputs)
    np.testing.assert_allclose(logits, tuned_logits, rtol=0, atol=1e-5)
    base = ort.InferenceSession(str(classifier["model"]), providers=["CPUExecutionProvider"])
    assert not np.allclose(base.run(["logits"], batch.inputs)[0], logits, atol=1e-4), "weights were not folded"
    meta = plain.get_modelmeta().custom_metadata_map
    assert json.loads(meta["edgetune.labels"]) == ["negative", "positive"]
    assert (tmp_path / "tokenizer.json").is_file()


def test_split_prefix_gives_the_same_loss_as_the_whole_graph(classifier):
    split = Tuner.from_onnx(classifier["model"], trainable="last:1", split=True)
    whole = Tuner.from_onnx(classifier["model"], trainable="last:1", split=False)
    assert split.split and not whole.split
    dev = split.load_data(classifier["dev"])
    batch = dev.batch(range(16), split.info.data_inputs)
    split.engine.set_batch(batch)
    whole.engine.set_batch(batch)
    np.testing.assert_allclose(split.engine.loss(), whole.engine.loss(), rtol=1e-6, atol=1e-6)


def test_same_seed_same_weights_and_other_seed_differs(classifier):
    def run(seed):
        tuner = Tuner.from_onnx(classifier["model"], trainable="last:1")
        tuner.fit(classifier["train"], steps=20, lr=1e-2, eps=1e-3, seed=seed, queries=2)
        return tuner.arena.buffer().copy()

    first = run(1)
    np.testing.assert_array_equal(first, run(1))
    assert not np.array_equal(first, run(2))


def test_resume_continues_bit_identically(classifier, tmp_path, kill_and_resume):
    options = dict(steps=40, lr=1e-2, eps=1e-3, seed=3, queries=2, schedule="cosine", warmup=5)
    straight = Tuner.from_onnx(classifier["model"], trainable="last:1")
    straight.fit(classifier["train"], output_dir=tmp_path / "a", **options)

    resumed, _ = kill_and_resume(classifier["model"], classifier["train"], tmp_path / "b", trainable="last:1",
                                 kill_at=17, save_every=5, **options)

    for name, value in straight.weights.items():
        np.testing.assert_array_equal(value, resumed.weights[name], err_msg=name)
    steps_a = (tmp_path / "a" / "steps.jsonl").read_text().splitlines()
    steps_b = (tmp_path / "b" / "steps.jsonl").read_text().splitlines()
    assert steps_a == steps_b and len(steps_a) == 40


def test_resume_refuses_a_different_configuration(classifier, tmp_path):
    tuner = Tuner.from_onnx(classifier["model"], trainable="last:1")
    tuner.fit(classifier["train"], output_dir=tmp_path, steps=5, lr=1e-2)
    again = Tuner.from_onnx(classifier["model"], trainable="last:1")
    with pytest.raises(Exception, match="cannot resume, 'lr' differs"):
        again.fit(classifier["train"], output_dir=tmp_path, steps=10, lr=2e-2, resume=True)


def test_step_log_replays_the_run_exactly(classifier, tmp_path):
    """(seed, g, lr, ε) per step is a complete description of the update."""
    tuner = Tuner.from_onnx(classifier["model"], trainable="last:1", head="zo")  # ZO over the whole slice
    start = tuner.arena.buffer().copy()
    tuner.fit(classifier["train"], output_dir=tmp_path, steps=25, lr=1e-2, eps=1e-3, queries=3, weight_decay=0.1)
    replay = start.copy()
    f32 = np.float32
    for line in (tmp_path / "steps.jsonl").read_text().splitlines():
        rec = json.loads(line)
        q, lr, eps, noise = len(rec["seeds"]), f32(rec["lr"]), f32(rec["eps"]), rec["noise"]
        _core.perturb(replay, rec["seeds"][0], float(eps), noise)
        for i, (seed, g) in enumerate(zip(rec["seeds"], rec["grads"])):
            _core.perturb(replay, seed, float(f32(-2) * eps), noise)
            decay = f32(1) - lr * f32(rec["weight_decay"]) if i == q - 1 else f32(1)
            coef = decay * eps - (lr / f32(q)) * f32(g)
            seeds, coefs = ([seed, rec["seeds"][i + 1]], [float(coef), float(eps)]) if i + 1 < q else ([seed], [float(coef)])
            _core.combine(replay, float(decay), seeds, coefs, noise)
    np.testing.assert_array_equal(replay, tuner.arena.buffer())


def test_causal_lm_loss_falls(lm):
    tuner = Tuner.from_onnx(lm["model"], trainable="last:1")
    result = tuner.fit(lm["train"], eval_data=lm["dev"], steps=200, lr=5e-3, eps=1e-3, batch_size=8)
    assert result.after["loss"] < result.before["loss"] - 0.05
    assert result.after["perplexity"] < result.before["perplexity"]


def test_self_check_rejects_weights_that_do_not_reach_the_loss(classifier, tmp_path):
    """A trainable tensor that cannot move the loss must fail at start-up, not 'train' silently."""
    model = onnx.load(str(classifier["model"]))
    for node in model.graph.node:
        node.output[:] = ["logits_base" if o == "logits" else o for o in node.output]
    model.graph.initializer.extend([
        numpy_helper.from_array(np.ones(2, np.float32), "dead.weight"),
        numpy_helper.from_array(np.zeros(2, np.float32), "dead.zero"),
    ])
    model.graph.node.extend([
        helper.make_node("Mul", ["dead.weight", "dead.zero"], ["dead_out"], name="/dead/Mul"),
        helper.make_node("Add", ["logits_base", "dead_out"], ["logits"], name="/dead/Add"),
    ])
    onnx.save(model, str(tmp_path / "model.onnx"))
    tuner = Tuner.from_onnx(tmp_path / "model.onnx", trainable="dead.weight", tokenizer=classifier["tokenizer"])
    with pytest.raises(TrainingError, match="perturbing the trainable weights did not change the loss"):
        tuner.fit(classifier["train"], steps=2)


def test_non_finite_loss_stops_with_a_clear_error(classifier):
    tuner = Tuner.from_onnx(classifier["model"], trainable="last:1")
    with pytest.raises(TrainingError, match=r"non-finite loss at step \d+ .* on examples .*train.jsonl:\d+"):
        tuner.fit(classifier["train"], steps=200, lr=1e30, eps=1e-3)


def test_batch_order_does_not_depend_on_history():
    """A stream that has served many steps (its epoch cache filled and cleared, steps out of order) gives
    every step the batch a fresh stream gives it: a resumed run sees the batches of an uninterrupted one."""
    used = BatchStream(37, 8, seed=5)
    for step in [*range(120), 7, 300, 2, 119]:  # 26 epochs: the cache of permutations is cleared several times
        used.indices(step)
    for step in (0, 3, 100, 301):
        assert used.indices(step).tolist() == BatchStream(37, 8, seed=5).indices(step).tolist(), step
    fresh = BatchStream(37, 8, seed=5)
    assert fresh.indices(100).tolist() != fresh.indices(101).tolist()  # the batches do depend on the step


def test_resume_refuses_a_different_tokenizer(classifier, tmp_path):
    """Same model and data, another vocabulary: every token id of the resumed run would change."""
    Tuner.from_onnx(classifier["model"], trainable="last:1").fit(classifier["train"], output_dir=tmp_path / "out", steps=3)
    other = tmp_path / "tokenizer.json"
    vocab = json.loads((Path(classifier["model"]).parent / "tokenizer.json").read_text())
    vocab["normalizer"] = None  # same ids, different tokens for cased text
    other.write_text(json.dumps(vocab))
    again = Tuner.from_onnx(classifier["model"], trainable="last:1", tokenizer=other)
    with pytest.raises(EdgetuneError, match="cannot resume, 'tokenizer' differs from the checkpoint"):
        again.fit(classifier["train"], output_dir=tmp_path / "out", steps=6, resume=True)


@pytest.mark.parametrize("option", ["guard", "batch_order"])
def test_resume_refuses_a_checkpoint_from_before_an_option(classifier, tmp_path, option):
    """A checkpoint an older edgetune wrote lacks the options added since (the guard, --head, ...; batch_order:
    before the core's epoch permutation it drew numpy's order, so continuing would switch the batches mid-run):
    what the run did under them is unknown, so resuming it is refused in one line naming the option."""
    from edgetune.artifacts.checkpoint import load_checkpoint, save_checkpoint

    out = tmp_path / "out"
    Tuner.from_onnx(classifier["model"], trainable="last:1").fit(classifier["train"], output_dir=out, steps=3)
    tensors, state = load_checkpoint(out / "checkpoint.safetensors")
    del state["fingerprint"][option]
    save_checkpoint(out / "checkpoint.safetensors", tensors, state)
    again = Tuner.from_onnx(classifier["model"], trainable="last:1")
    with pytest.raises(EdgetuneError, match=f"cannot resume, the checkpoint predates the '{option}' option"):
        again.fit(classifier["train"], output_dir=out, steps=6, resume=True)


def test_evaluation_runs_the_training_batch_unless_told_otherwise():
    """An evaluation batch larger than a step's would set the job's peak memory above the step's."""
    from edgetune.config import TrainConfig

    assert TrainConfig(batch_size=8).eval_rows == 8
    assert TrainConfig(batch_size=8, eval_batch_size=32).eval_rows == 32
