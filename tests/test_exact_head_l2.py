"""The exact head's L2 penalty (issue 15, the race): a head that runs for thousands of epochs over few rows holds
the held-out loss it reached early instead of over-fitting, and it is the default of every exact-head run."""

import numpy as np

from edgetune import Tuner
from edgetune.config import TrainConfig
from edgetune.loop import TrainingRun
from edgetune.zo.exact_head import ExactHead, HeadGrads
from edgetune.zo.options import HEAD_L2

FEATURES, ROWS, NOISE = 16, 32, 0.5  # fewer rows than twice the features: the training rows are separable
STEPS, EVERY = 8000, 100


def _rows(rng, true_w: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features, and labels from a noisy linear rule: the best head has a finite weight."""
    x = rng.standard_normal((count, FEATURES)).astype(np.float32)
    y = (x @ true_w / np.sqrt(FEATURES) + NOISE * rng.standard_normal(count) > 0).astype(np.int64)
    return x, y


def _softmax_loss(weight, bias, x, y) -> tuple[np.ndarray, float]:
    logits = x @ weight.T + bias
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    return p, float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-30)).mean())


def _long_run(**head_options) -> tuple[list[float], np.ndarray, np.ndarray]:
    """A 2-class head on fixed features trained for 8000 full-batch steps (250 per row) by ExactHead, the
    gradient written where a forward leaves it: the held-out loss every 100 steps, the weight, and the full
    batch's loss gradient at the end."""
    rng = np.random.default_rng(0)
    true_w = rng.standard_normal(FEATURES).astype(np.float32)
    (x, y), (x_held, y_held) = _rows(rng, true_w, ROWS), _rows(rng, true_w, 400)
    weight, bias = np.zeros((2, FEATURES), np.float32), np.zeros(2, np.float32)
    grads = HeadGrads(weight, bias, np.zeros_like(weight), np.zeros_like(bias))

    def forward() -> float:  # what the head_grad graph's forward computes: the mean loss and its gradient
        p, loss = _softmax_loss(weight, bias, x, y)
        p[np.arange(ROWS), y] -= 1.0
        p /= ROWS
        grads.weight_grad[...] = p.T @ x
        grads.bias_grad[...] = p.sum(0)
        return loss

    head = ExactHead(grads, **head_options)
    held = []
    for t in range(STEPS):
        head.step(t, forward)
        if (t + 1) % EVERY == 0:
            held.append(_softmax_loss(weight, bias, x_held, y_held)[1])
    forward()
    return held, weight, grads.weight_grad


def test_the_default_l2_holds_a_long_head_only_runs_held_out_loss_at_its_best():
    held, weight, loss_grad = _long_run()  # the defaults: Adam 3e-3, λ = HEAD_L2
    best = int(np.argmin(held))
    assert max(held[best:]) - held[best] < 0.1  # 0.575 at step 100, at most 0.659 after
    # converged to the minimiser of the mean loss + λ/2·‖W‖²: its gradient vanishes there (7e-5; 1e-1 at the start)
    assert np.linalg.norm(loss_grad + HEAD_L2 * weight) < 1e-3
    # ... which bounds the weight: λ/2·‖W‖² ≤ the loss at W = 0, log 2
    assert np.linalg.norm(weight) <= np.sqrt(2 * np.log(2) / HEAD_L2)


def test_without_the_penalty_the_same_run_over_fits():
    held, _, _ = _long_run(l2=0.0)
    best = int(np.argmin(held))
    assert held[-1] - held[best] > 0.5  # 0.577 at step 100, 1.627 at the end: the weight grows on separable rows


def test_a_tune_run_tunes_the_head_with_the_default_penalty(classifier):
    tuner = Tuner.from_onnx(classifier["model"], trainable="head", threads=1)  # --head auto: exact here
    assert HEAD_L2 > 0 and TrainConfig().head_l2 == HEAD_L2
    default = TrainingRun(tuner, TrainConfig(steps=10, seed=0), classifier["train"]).optimizer
    assert isinstance(default, ExactHead) and default.l2 == np.float32(HEAD_L2)
    assert TrainingRun(tuner, TrainConfig(steps=10, seed=0, head_l2=0.0), classifier["train"]).optimizer.l2 == 0
