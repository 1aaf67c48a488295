"""benchmarks/bench_plan.py: rows are labelled by whether the planner's constants were fitted on them,
and the errors are summarised per set, so held-out accuracy is not averaged into the fit's."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
from bench_plan import (  # noqa: E402
    FITTED,
    HELDOUT_MINILM_POINTS,
    HELDOUT_MODEL,
    HELDOUT_SHAPE,
    HELDOUT_SMOLLM2_POINTS,
    SCALED_TINY,
    fit_set,
    summary,
)


def test_rows_are_labelled_by_the_fit():
    assert fit_set("all-MiniLM-L6-v2", 8, 128) == FITTED
    assert fit_set("SmolLM2-135M", 16, 64) == FITTED
    assert fit_set("all-MiniLM-L6-v2", 16, 64) == HELDOUT_SHAPE  # fitted model, shape in no fit
    assert fit_set(SCALED_TINY, 8, 128) == HELDOUT_MODEL
    # the held-out points really are outside the fit
    assert {fit_set("all-MiniLM-L6-v2", b, t) for b, t in HELDOUT_MINILM_POINTS} == {HELDOUT_SHAPE}
    assert {fit_set("SmolLM2-135M", b, t) for b, t in HELDOUT_SMOLLM2_POINTS} == {HELDOUT_SHAPE}


def test_summary_keeps_fitted_and_held_out_errors_apart():
    rows = [{"set": FITTED, "error_pct": 2.0}, {"set": FITTED, "error_pct": -4.0},
            {"set": HELDOUT_SHAPE, "error_pct": -20.0}, {"set": HELDOUT_MODEL, "error_pct": 10.0}]
    got = summary(rows)
    assert got[FITTED] == {"count": 2, "mean_abs_error_pct": 3.0, "max_abs_error_pct": 4.0, "within_15pct": 2}
    assert got["held-out"] == {"count": 2, "mean_abs_error_pct": 15.0, "max_abs_error_pct": 20.0, "within_15pct": 1}
    assert got["all"]["count"] == 4 and got["all"]["max_abs_error_pct"] == 20.0
    assert set(got) == {"all", "held-out", FITTED, HELDOUT_SHAPE, HELDOUT_MODEL}
