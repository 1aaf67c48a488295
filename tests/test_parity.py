"""The Python trainer and the C API's ask/tell tuner are one algorithm: same losses, same bits."""

import numpy as np
import pytest

from edgetune import _core
from edgetune.zo import ZOSGD, Schedule


def quadratic_loss(weights: np.ndarray, target: np.ndarray) -> np.float32:
    return np.float32(np.mean((weights - target) ** 2, dtype=np.float32))


@pytest.mark.parametrize("chain", [False, True], ids=["separate-passes", "chained-steps"])
@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_python_trainer_equals_c_api_tuner_bit_for_bit(noise, chain):
    """Chaining fuses step t+1's first perturbation into step t's last pass: it must not move a bit."""
    n, steps, queries = 1000, 30, 3
    rng = np.random.default_rng(0)
    start = rng.standard_normal(n).astype(np.float32)
    target = rng.standard_normal(n).astype(np.float32)
    options = dict(seed=11, lr=0.05, eps=1e-3, weight_decay=0.01, queries=queries, noise=noise)

    c_tuner = _core.Tuner(n_params=n, max_steps=steps, **options)
    c_arena = c_tuner.arena()
    c_arena[:] = start
    while (probe := c_tuner.ask()) is not None:
        c_tuner.tell(probe, float(quadratic_loss(c_arena, target)))

    py_arena = start.copy()
    optimizer = ZOSGD(py_arena, seed=options["seed"], lr=Schedule(options["lr"]), eps=Schedule(options["eps"]),
                      queries=queries, weight_decay=options["weight_decay"], noise=noise)
    for t in range(steps):
        optimizer.step(t, lambda: quadratic_loss(py_arena, target), chain=chain and t + 1 < steps)

    np.testing.assert_array_equal(py_arena, c_arena)
    assert quadratic_loss(py_arena, target) < quadratic_loss(start, target)
