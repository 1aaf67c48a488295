import pytest

from edgetune.zo import Schedule


def test_constant_warmup_linear_cosine():
    assert Schedule(0.1)(0) == Schedule(0.1)(999) == 0.1
    warm = Schedule(1.0, warmup=4)
    assert [warm(t) for t in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    linear = Schedule(1.0, "linear", total=10)
    assert linear(0) == 1.0 and linear(5) == pytest.approx(0.5) and linear(10) == 0.0 and linear(50) == 0.0
    cosine = Schedule(1.0, "cosine", total=10, final=0.1)
    assert cosine(0) == pytest.approx(1.0) and cosine(5) == pytest.approx(0.55) and cosine(10) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown schedule"):
        Schedule(1.0, "step")
