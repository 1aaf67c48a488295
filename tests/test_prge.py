"""P-RGE: copy-batched graph, the copies kernel, training, determinism and the `auto` choice."""

import numpy as np
import pytest

from edgetune import Tuner, _core
from edgetune.config import TrainConfig
from edgetune.errors import EdgetuneError, ModelError
from edgetune.zo.prge import choose_batching

EPS = 1e-2
# Copies evaluated in one forward vs one at a time: the same float ops except that the batched MatMul
# and LayerNorm(x, 1, 0)·γ + β may round differently; measured max difference is 5e-7.
LOSS_TOLERANCE = 1e-5


def _tuner(bundle, trainable):
    # the plain graph: these runs compare P-RGE with ZO-SGD over the whole slice, the head included
    return Tuner.from_onnx(bundle["model"], trainable=trainable, max_length=32, head="zo")


def _batch(tuner, bundle, size=4):
    return tuner.load_data(bundle["train"]).batch(np.arange(size), tuner.info.data_inputs)


@pytest.mark.parametrize("bundle_name,trainable", [
    ("classifier", "last:1"),  # linear weights, biases, LayerNorm scale and shift, head
    ("classifier", "lora:r=4,targets=q,v"),
    ("lm", "lora:r=4,targets=q,v,down"),
    ("lm", "last:1"),  # RMSNorm weight through Mul
])
def test_per_copy_losses_equal_sequential_runs(request, bundle_name, trainable):
    bundle = request.getfixturevalue(bundle_name)
    tuner = _tuner(bundle, trainable)
    batch = _batch(tuner, bundle)
    width = 6
    engine = tuner.copy_batched_engine()
    engine.set_width(width)
    engine.set_batch(batch)
    buffer = tuner.arena.buffer()
    theta = buffer.copy()
    seeds = [_core.derive_seed(3, 0, p // 2) for p in range(width)]
    scales = [EPS if p % 2 == 0 else -EPS for p in range(width)]
    _core.perturb_copies(buffer, engine.copies, engine.spans, seeds, scales, "gaussian")
    batched = engine.losses()
    assert np.array_equal(buffer, theta)  # the copies never touch θ

    tuner.engine.set_batch(batch)
    sequential = []
    for seed, scale in zip(seeds, scales):
        buffer[...] = theta
        _core.perturb(buffer, seed, scale, "gaussian")
        sequential.append(tuner.engine.loss())
    buffer[...] = theta
    sequential = np.array(sequential)
    assert batched.shape == (width, batch.size)
    assert np.ptp(sequential) > 100 * LOSS_TOLERANCE  # the copies really differ
    np.testing.assert_allclose(batched, sequential, rtol=0, atol=LOSS_TOLERANCE)


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_perturb_copies_writes_what_perturb_would(noise):
    theta = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    spans = [(0, 3000), (3008, 1992)]
    seeds, scales = [7, 7, 9], [0.5, -0.5, 0.25]
    expected = np.zeros(len(seeds) * theta.size, np.float32)
    _core.set_isa("scalar")  # the reference: perturb on a copy of each span, portable kernel
    try:
        for offset, size in spans:
            for p, (seed, scale) in enumerate(zip(seeds, scales)):
                start = len(seeds) * offset + p * size
                expected[start:start + size] = theta[offset:offset + size]
                _core.perturb(expected[start:start + size], seed, scale, noise, offset)
        for isa in _core.available_isas():  # every compiled kernel writes the same bits
            _core.set_isa(isa)
            copies = np.zeros_like(expected)
            _core.perturb_copies(theta, copies, spans, seeds, scales, noise)
            assert np.array_equal(copies, expected), isa
    finally:
        _core.set_isa("auto")
    with pytest.raises(ValueError, match="outside"):
        _core.perturb_copies(theta, copies, [(4000, 2000)], seeds, scales, noise)


def test_training_with_parallel_on_raises_accuracy(classifier):
    tuner = _tuner(classifier, "last:1")
    result = tuner.fit(classifier["train"], eval_data=classifier["dev"], steps=60, lr=2e-2, eps=EPS, queries=4,
                       batch_size=16, parallel="on")
    assert result.after["loss"] < result.before["loss"] - 0.1
    assert result.after["accuracy"] > result.before["accuracy"] + 0.2


def _tuned_weights(bundle, out=None, resume=False, steps=6, **options):
    tuner = _tuner(bundle, "lora:r=4,targets=q,v")
    tuner.fit(bundle["train"], steps=steps, lr=1e-2, eps=EPS, queries=2, batch_size=8, parallel="on",
              output_dir=out, resume=resume, **options)
    return tuner.arena.buffer().copy()


def test_same_seed_same_bits_also_after_resume(classifier, tmp_path):
    once = _tuned_weights(classifier)
    assert np.array_equal(once, _tuned_weights(classifier))
    _tuned_weights(classifier, out=tmp_path, steps=3)
    resumed = _tuned_weights(classifier, out=tmp_path, resume=True)
    assert np.array_equal(once, resumed)
    assert not np.array_equal(once, _tuned_weights(classifier, seed=1))


def test_replay_rebuilds_a_parallel_run_bit_for_bit(classifier, tmp_path):
    from edgetune.artifacts.checkpoint import load_checkpoint
    from edgetune.replay import replay_run
    from edgetune.artifacts.trajectory import FILE_NAME

    tuned = _tuned_weights(classifier, out=tmp_path / "run")
    replay_run(classifier["model"], tmp_path / "run" / FILE_NAME, tmp_path / "replayed")
    tuner = _tuner(classifier, "lora:r=4,targets=q,v")
    replayed, _ = load_checkpoint(tmp_path / "replayed" / "trainable.safetensors")
    for name, view in tuner.weights.items():
        view[...] = replayed[name]
    assert np.array_equal(tuner.arena.buffer(), tuned)


def test_batch_roles_tile_rows_scale_batch_sizes_and_share_the_rest():
    from edgetune.engine.prge import batch_roles

    hidden = np.arange(6, dtype=np.float32).reshape(1, 3, 2)
    one = {"hidden": hidden, "reshape_to": np.array([1, 3, 4, 8]), "rotary": np.ones((1, 3, 2), np.float32)}
    two = {"hidden": np.concatenate([hidden] * 2), "reshape_to": np.array([2, 3, 4, 8]), "rotary": one["rotary"]}
    roles = batch_roles(one, two)
    assert [roles[k].kind for k in one] == ["rows", "scaled", "shared"]
    batch_of_two = two["reshape_to"]
    np.testing.assert_array_equal(roles["reshape_to"].stack(batch_of_two, 4), [8, 3, 4, 8])
    assert roles["hidden"].stack(two["hidden"], 3).shape == (6, 3, 2)
    assert roles["rotary"].stack(one["rotary"], 3) is one["rotary"]
    with pytest.raises(ModelError, match="cannot stack the batch in 'transposed'"):
        batch_roles({"transposed": np.zeros((3, 1))}, {"transposed": np.zeros((3, 2))})


def test_auto_batches_only_where_it_pays():
    slower = choose_batching(8, lambda: 1.0, lambda group: 1.2)
    assert slower.queries_per_forward == 0
    assert slower.speedups == pytest.approx({1: 1 / 1.2, 2: 1 / 1.2, 4: 1 / 1.2, 8: 1 / 1.2})
    within_margin = choose_batching(4, lambda: 1.0, lambda group: 0.97)
    assert within_margin.queries_per_forward == 0
    faster = choose_batching(8, lambda: 1.0, {1: 0.9, 2: 0.6, 4: 0.7, 8: 0.8}.get)
    assert faster.queries_per_forward == 2
    assert set(choose_batching(6, lambda: 1.0, lambda group: 0.5).batched_s) == {1, 2}  # divisors of q only


def test_auto_keeps_zo_sgd_when_batching_is_slower(classifier, monkeypatch):
    """An injected cost makes batching 2x slower per evaluation: auto must train exactly as --parallel off."""
    import edgetune.zo.prge as prge

    def slow_batching(*args, **kwargs):
        return (lambda: 1.0), (lambda group: 2.0)

    monkeypatch.setattr(prge, "measured_costs", slow_batching)
    auto = _tuner(classifier, "head")
    result = auto.fit(classifier["train"], steps=4, lr=1e-2, queries=2, batch_size=8, parallel="auto")
    off = _tuner(classifier, "head")
    off.fit(classifier["train"], steps=4, lr=1e-2, queries=2, batch_size=8, parallel="off")
    assert result.parallel["queries_per_forward"] == 0
    assert np.array_equal(auto.arena.buffer(), off.arena.buffer())


def test_unbatchable_trainable_tensor_is_refused(classifier):
    tuner = _tuner(classifier, "embeddings")
    with pytest.raises(ModelError, match="P-RGE cannot batch .* Gather node .*--parallel off"):
        tuner.copy_batched_engine()


def test_parallel_needs_zo_sgd():
    with pytest.raises(EdgetuneError, match="--parallel on/auto needs --optimizer zo-sgd"):
        TrainConfig(parallel="on", optimizer="dizo").validate()
    with pytest.raises(EdgetuneError, match="--parallel must be off, on or auto"):
        TrainConfig(parallel="yes").validate()
