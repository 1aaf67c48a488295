"""curves.png after ``tune`` and ``edgetune report``: what the figure is drawn from, that it is drawn, and the
report's bad inputs (one line each, nothing of the run changed)."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from badinput import Snapshot, assert_rejected
from conftest import run_cli, run_killed_at
from edgetune.artifacts.curves import read_curves
from edgetune.errors import EdgetuneError
from edgetune.report import FIGURE, render, smoothed

STEPS, EVAL_EVERY = 12, 4
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tune_args(bundle, out, *extra):
    return ("tune", "--onnx", bundle["model"], "--data", bundle["train"], "--eval-data", bundle["dev"],
            "--output-dir", out, "--steps", STEPS, "--eval-every", EVAL_EVERY, "--batch-size", 8, *extra)


def without_matplotlib(tmp_path, *args) -> subprocess.CompletedProcess:
    """``edgetune ARGS`` in an interpreter where matplotlib cannot be imported (a sitecustomize blocks it)."""
    blocker = tmp_path / "no-matplotlib"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['matplotlib'] = None\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "edgetune.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def png_size(path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def tuned(classifier, tmp_path_factory):
    """One finished CLI run with evaluations, shared read-only (tests that write copy it)."""
    out = tmp_path_factory.mktemp("report") / "run"
    proc = run_cli(*tune_args(classifier, out))
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_tune_draws_curves_png_of_loss_and_metric(tuned):
    out, proc = tuned
    assert f"curves: {out / FIGURE}" in proc.stderr
    width, height = png_size(out / FIGURE)
    assert (width, height) == (825, 605)  # 7.5 x 5.5 inches at 110 dpi: the two-panel figure (a metric was logged)
    assert 10_000 < (out / FIGURE).stat().st_size < 150_000


def test_curves_cumulate_forwards_and_place_each_evaluation(tuned):
    out, _ = tuned
    curves = read_curves(out)
    records = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert curves.steps.tolist() == list(range(1, STEPS + 1))
    summary = json.loads((out / "summary.json").read_text())["result"]
    before_steps = (summary.get("calibration") or {}).get("forwards", 0)  # --lr/--eps auto's probes
    assert curves.forwards.tolist() == (before_steps + np.cumsum([r["forwards"] for r in records])).tolist()
    assert curves.loss.tolist() == [r["loss"] for r in records]
    # before tuning at 0 forwards, then every EVAL_EVERY steps (the last one is the after-evaluation)
    assert [p.step for p in curves.evals] == [0, 4, 8, 12]
    assert [p.forwards for p in curves.evals] == [0] + [int(curves.forwards[p.step - 1]) for p in curves.evals[1:]]
    assert curves.metric == "accuracy" and curves.evals[-1].metric == summary["after"]["accuracy"]
    assert curves.evals[0].loss == summary["before"]["loss"]
    assert curves.finished and curves.peak_rss_mb == summary["peak_rss_mb"]
    assert curves.config["trainable"] == "head"  # what --trainable auto resolved to (the tiny classifier's head)


def test_forwards_of_varying_steps_and_of_logs_without_a_count(tmp_path):
    """A step's cost is its ``forwards``; without one, two per query (older logs)."""
    lines = [{"step": 0, "seeds": [1, 2], "loss": 0.7, "forwards": 4}, {"step": 1, "seeds": [3, 4, 5], "loss": 0.6},
             {"step": 2, "seeds": [6], "loss": 0.5, "forwards": 3}]
    (tmp_path / "steps.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    curves = read_curves(tmp_path)
    assert curves.forwards.tolist() == [4, 10, 13] and curves.evals == [] and not curves.finished
    # forwards spent before the first step (a calibration) shift every step, as the evaluations count them
    result = {"calibration": {"forwards": 20}, "before": {"loss": 0.7}, "history": [
        {"step": 2, "forwards": 30, "loss": 0.6}]}
    (tmp_path / "summary.json").write_text(json.dumps({"config": {}, "result": result}))
    curves = read_curves(tmp_path)
    assert curves.forwards.tolist() == [24, 30, 33] and [p.forwards for p in curves.evals] == [0, 30]
    assert curves.metric is None and curves.finished


def test_smoothed_is_a_trailing_mean_that_starts_with_the_first_value():
    values = np.array([1.0, 3.0, 5.0, 7.0])
    assert smoothed(values, 2).tolist() == [1.0, 2.0, 4.0, 6.0]
    assert smoothed(values, 1).tolist() == values.tolist()
    assert smoothed(np.full(50, 0.25)).tolist() == [0.25] * 50


def test_report_on_an_interrupted_run_reads_steps_and_the_checkpoint(classifier, tmp_path):
    out = tmp_path / "run"
    run_killed_at(classifier["model"], classifier["train"], out, trainable="last:1", kill_at=9, save_every=6,
                  eval_data=classifier["dev"], eval_every=3, steps=STEPS, batch_size=8)
    with open(out / "steps.jsonl", "a") as log:
        log.write('{"step": 10, "se')  # a torn last line: the kill came mid-write (steps 0-9 are whole)
    assert not (out / "summary.json").exists()
    proc = run_cli("report", out)
    assert proc.returncode == 0, proc.stderr
    assert "10 steps" in proc.stderr and "not finished" in proc.stderr and f"curves: {out / FIGURE}" in proc.stderr
    png_size(out / FIGURE)
    curves = read_curves(out)
    assert [p.step for p in curves.evals] == [0, 3, 6]  # what the step-6 checkpoint holds


def test_report_redraws_and_writes_elsewhere(tuned, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tuned[0], out)
    (out / FIGURE).unlink()
    snapshot = Snapshot(out)
    proc = run_cli("report", out, "--output", tmp_path / "figures" / "mine.png")
    assert proc.returncode == 0, proc.stderr
    assert "accuracy" in proc.stderr and "peak RSS" in proc.stderr and "4 evaluations" in proc.stderr
    png_size(tmp_path / "figures" / "mine.png")
    snapshot.assert_unchanged()
    assert run_cli("report", out).returncode == 0
    png_size(out / FIGURE)


def test_report_bad_inputs_are_one_line_and_change_nothing(tuned, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tuned[0], run)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "steps.jsonl").write_text('{"step": 0, "loss": 0.7, "forwards": 2}\nnot json\n')
    snapshot = Snapshot(tmp_path, ignore=(tmp_path / "no-matplotlib",))
    assert_rejected(run_cli("report", tmp_path / "nope"), f"{tmp_path / 'nope'}: no such folder")
    assert_rejected(run_cli("report", bad), f"{bad / 'steps.jsonl'}:2: not a step record")
    assert_rejected(run_cli("report", run, "--output", run / "steps.jsonl"), f"--output {run / 'steps.jsonl'} is the input")
    assert_rejected(without_matplotlib(tmp_path, "report", run), "needs matplotlib", "pip install 'edgetune[plot]'")
    snapshot.assert_unchanged()


@pytest.mark.parametrize("files, output, message", [
    ({}, None, "steps.jsonl: no step log"),
    ({"steps.jsonl": '{"step": 0, "loss": "low", "forwards": 2}\n'}, None, "steps.jsonl:1: not a step record (loss is 'low'"),
    ({"steps.jsonl": '{"step": -1, "loss": 0.5, "forwards": 2}\n'}, None, "steps.jsonl:1: not a step record (step is -1"),
    ({"steps.jsonl": '[1]\n'}, None, "steps.jsonl:1: not a step record (not a JSON object)"),
    ({"steps.jsonl": '{"step": 0, "loss": 0.7}\n'}, None, "steps.jsonl:1: not a step record (no forwards and no seeds"),
    ({"steps.jsonl": '{"step": 0, "loss": 0.7, "forwards": 2}\n', "summary.json": "{"}, None, "summary.json: not readable JSON"),
    ({"steps.jsonl": '{"step": 0, "loss": 0.7, "forwards": 2}\n', "checkpoint.safetensors": "junk"}, None,
     "checkpoint.safetensors: not a readable checkpoint"),
    ({"steps.jsonl": '{"step": 0, "loss": 0.7, "forwards": 2}\n'}, "summary.json", "--output"),
    ({"steps.jsonl": '{"step": 0, "loss": 0.7, "forwards": 2}\n'}, ".", "is a folder"),
])
def test_report_refuses(tmp_path, files, output, message):
    """The other refusals, in this process (each is an EdgetuneError, which the CLI prints as one line)."""
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    snapshot = Snapshot(tmp_path)
    with pytest.raises(EdgetuneError) as caught:
        render(str(tmp_path), str(tmp_path / output) if output else None)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    snapshot.assert_unchanged()


def test_tune_without_matplotlib_hints_once_and_overwrite_drops_the_old_figure(tuned, classifier, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tuned[0], out)
    proc = without_matplotlib(tmp_path, *tune_args(classifier, out, "--overwrite"))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("edgetune[plot]") == 1
    assert not (out / FIGURE).exists()  # the replaced run's figure went with it


def test_benchmark_figures_draw_every_result_small(tmp_path):
    """benchmarks/figures.py: each result with a figure gives a PNG under 150 KB, named after its JSON."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    import figures

    for name in figures.DRAW:
        target = figures.render(name, figures=tmp_path)
        assert target == tmp_path / f"{name}.png", name
        png_size(target)
        assert target.stat().st_size < 150_000, name
    assert figures.render("no_such_result", figures=tmp_path) is None
