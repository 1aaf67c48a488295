"""benchmarks/bench_race.py: the curves' arithmetic on synthetic curves, and the race child of edgetune's defaults."""

import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from bench_peers import prepare_data  # noqa: E402
from bench_race import (EDGETUNE, ORT, RECIPE, accuracy_at, combine, edgetune_name, marks, parse_args,  # noqa: E402
                        peers, summarise, table, time_to_reach, verdicts)
from peers_common import RESULT_MARK  # noqa: E402


def _curve(*points):
    """(wall s, cpu s, accuracy) triples as curve points."""
    return [{"wall_s": w, "cpu_s": c, "accuracy": a, "steps": i, "forwards": 3 * i}
            for i, (w, c, a) in enumerate(points)]


ORT_CURVE = _curve((0, 0, 0.5), (30.2, 50, 0.7), (60.4, 100, 0.8), (120.3, 200, 0.85), (300.1, 500, 0.86))
OURS = _curve((0, 0, 0.5), (40.1, 70, 0.72), (80.2, 150, 0.79), (100.5, 190, 0.81), (300.2, 560, 0.84))


def test_accuracy_at_interpolates_between_points_and_not_beyond():
    assert accuracy_at(ORT_CURVE, 0) == 0.5
    assert accuracy_at(ORT_CURVE, 60.4) == pytest.approx(0.8)
    # 60 s lies between the points at 30.2 s and 60.4 s: linear between their accuracies
    assert accuracy_at(ORT_CURVE, 60) == pytest.approx(0.7 + 0.1 * (60 - 30.2) / (60.4 - 30.2))
    assert accuracy_at(ORT_CURVE, 150, "cpu_s") == pytest.approx(0.825)
    assert accuracy_at(ORT_CURVE, 300.2) is None  # the run stopped before: no extrapolation
    assert accuracy_at([], 10) is None


def test_time_to_reach_is_the_first_point_at_or_above():
    assert time_to_reach(OURS, 0.79) == 80.2
    assert time_to_reach(OURS, 0.79, "cpu_s") == 150
    assert time_to_reach(OURS, 0.785) == 80.2  # reached between 40.1 and 80.2: the point that shows it
    assert time_to_reach(OURS, 0.5) == 0
    assert time_to_reach(OURS, 0.9) is None


def test_summary_targets_ort_at_60_s_and_judges_both_goals():
    target = accuracy_at(ORT_CURVE, 60)  # 0.799
    summary = summarise({ORT: ORT_CURVE, EDGETUNE: OURS}, {ORT: 1000.0, EDGETUNE: 300.0}, 300)
    assert summary["target"] == pytest.approx(target)
    assert summary["reaches_target"][EDGETUNE] == {"wall_s": 100.5, "cpu_s": 190}  # 0.79 < 0.799 <= 0.81
    assert summary["reaches_target"][ORT] == {"wall_s": 60.4, "cpu_s": 100}
    assert summary["accuracy"][EDGETUNE]["wall_s@300"] == pytest.approx(0.81 + 0.03 * 199.5 / 199.7)
    assert summary["accuracy"][ORT]["cpu_s@300"] == pytest.approx(0.85 + 0.01 * 100 / 300)
    assert summary["peak_ratio"][EDGETUNE] == pytest.approx(0.3)
    assert summary["goals"] == {EDGETUNE: {"time": True, "peak": True}}
    # every edgetune peer is judged on its own against the same target
    slow_curve = _curve((0, 0, 0.5), (130, 200, 0.8), (300.5, 500, 0.8))
    both = summarise({ORT: ORT_CURVE, EDGETUNE: OURS, RECIPE: slow_curve},
                     {ORT: 1000.0, EDGETUNE: 300.0, RECIPE: 400.0}, 300)
    assert both["reaches_target"][RECIPE]["wall_s"] == 130 and both["goals"][RECIPE] == {"time": False, "peak": False}
    assert both["goals"][EDGETUNE] == {"time": True, "peak": True} and both["target"] == summary["target"]
    never = summarise({ORT: ORT_CURVE, EDGETUNE: _curve((0, 0, 0.5), (300.5, 500, 0.6))}, {ORT: 1.0, EDGETUNE: 1.0}, 300)
    assert never["reaches_target"][EDGETUNE] == {"wall_s": None, "cpu_s": None} and not never["goals"][EDGETUNE]["time"]


def test_table_and_verdicts_read_the_summary():
    def peer(curve, peak):
        return {"curve": curve, "steps": curve[-1]["steps"], "peak_rss_mb": peak, "trainable_params": 10,
                "eval_s": 12.0, "load_before": [4.0, 0, 0], "load_after": [5.0, 0, 0]}

    peers = {ORT: peer(ORT_CURVE, 1000.0), EDGETUNE: peer(OURS, 300.0)}
    payload = {"budget_s": 300, "datasets": {"rt": {"peers": peers, "summary": summarise(
        {n: p["curve"] for n, p in peers.items()}, {n: p["peak_rss_mb"] for n, p in peers.items()}, 300)}}}
    header, rows = table(payload)
    ours = dict(zip(header, rows[1]))
    assert ours["peer"] == EDGETUNE and ours["acc @ 60 s"] == f"{accuracy_at(OURS, 60):.3f}"
    assert ours["to ORT's 60-s acc (s / CPU-s)"] == "100 / 190" and ours["peak ÷ ORT's"] == "0.30×"
    assert "reached it at 100 s (within the 120-s goal)" in verdicts(payload)[0]


def test_edgetune_peers_are_named_by_the_flags_they_were_given():
    """The defaults run tune with no slice, head or lr flag; the first race's recipe and a lever say theirs."""
    assert edgetune_name() == EDGETUNE and RECIPE == "edgetune last:2 + exact head"
    assert edgetune_name("last:2", "exact", lr=5e-5) == "edgetune last:2 + exact head, lr 5e-05"
    assert edgetune_name(head="zo") == "edgetune ZO head"  # the defaults before --head auto
    defaults, recipe = peers(parse_args(["--peers", EDGETUNE, RECIPE]))
    assert (defaults.name, defaults.options) == (EDGETUNE, {"defaults": True, "trainable": "auto", "head": "auto"})
    assert (recipe.name, recipe.options["trainable"], recipe.options["head"]) == (RECIPE, "last:2", "exact")
    [lever] = peers(parse_args(["--peers", EDGETUNE, "--head", "exact", "--lr", "1e-4"]))
    assert lever.name == "edgetune exact head, lr 0.0001" and lever.options["lr"] == 1e-4
    [zo] = peers(parse_args(["--peers", EDGETUNE, "--head", "zo"]))
    assert (zo.name, zo.options["head"]) == ("edgetune ZO head", "zo")


def test_combine_takes_every_data_set_and_refuses_other_settings(tmp_path):
    settings = {"batch_size": 8, "tokens": 128, "threads": 2, "seed": 0, "budget_s": 300, "budget_clock": "cpu",
                "every_s": 20, "trainable": "last:2", "head": "exact", "head_lr": None, "ort_lr": 5e-5}
    ort, ours = {"curve": ORT_CURVE, "peak_rss_mb": 1000.0}, {"curve": OURS, "peak_rss_mb": 300.0}
    failed = {"error": "killed"}
    files = {"a": {"rt": {"title": "a", "peers": {ORT: ort, EDGETUNE: failed}}, "debates": {"peers": {ORT: ort}}},
             "b": {"rt": {"title": "a", "peers": {EDGETUNE: ours}}}}
    for name, datasets in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({**settings, "datasets": datasets}))
    (tmp_path / "c.json").write_text(json.dumps({**settings, "threads": 1, "datasets": {"x": {}}}))
    both = combine([tmp_path / "a.json", tmp_path / "b.json"])
    rt = both["datasets"]["rt"]
    # files of the first race (their "edgetune defaults" ran last:2 + exact head, as their settings say)
    assert rt["peers"][RECIPE]["run"] == "b.json" and rt["peers"][ORT]["run"] == "a.json"  # the one that finished
    # on the runs' own clock (cpu): ORT at 60 CPU-s is 0.72, reached by edgetune's point at 70 CPU-s
    assert rt["summary"]["axis"] == "cpu_s" and rt["summary"]["target"] == pytest.approx(0.72)
    assert rt["summary"]["reaches_target"][RECIPE]["cpu_s"] == 70 and rt["title"] == "a"
    assert both["datasets"]["debates"]["summary"] is None and both["budget_clock"] == "cpu"
    with pytest.raises(SystemExit, match="threads 1 differs"):
        combine([tmp_path / "a.json", tmp_path / "c.json"])
    # a run from before the peers were named by their flags: its "edgetune defaults" on last:2 + exact head is
    # the recipe; one from before --head auto (--head zo then) is "edgetune ZO head", raced beside tune's
    # real defaults from a newer run
    for name, head in (("d", "zo"), ("e", "auto")):
        (tmp_path / f"{name}.json").write_text(json.dumps({**settings, "trainable": "auto", "head": head,
                                                           "datasets": {"rt": {"peers": {EDGETUNE: ours}}}}))
    four = combine([tmp_path / f"{n}.json" for n in "abde"])["datasets"]["rt"]
    assert set(four["peers"]) == {ORT, RECIPE, "edgetune ZO head", EDGETUNE}
    assert (four["peers"][RECIPE]["run"], four["peers"][EDGETUNE]["run"]) == ("b.json", "e.json")
    assert set(four["summary"]["goals"]) == {RECIPE, "edgetune ZO head", EDGETUNE}


def test_combine_can_keep_a_renamed_old_row_beside_its_rerun(tmp_path):
    settings = {"batch_size": 8, "tokens": 128, "threads": 2, "seed": 0, "budget_s": 300, "budget_clock": "cpu",
                "every_s": 20, "ort_lr": 5e-5}
    ort, old, new = ({"curve": ORT_CURVE, "peak_rss_mb": 1000.0}, {"curve": OURS, "peak_rss_mb": 300.0},
                     {"curve": OURS, "peak_rss_mb": 250.0, "run": "ignored"})
    (tmp_path / "race.json").write_text(json.dumps({**settings, "combined_from": ["r1.json", "r2.json"], "datasets": {
        "rt": {"peers": {ORT: {**ort, "run": "r1.json"}, EDGETUNE: {**old, "run": "r2.json"}}}}}))
    (tmp_path / "new.json").write_text(json.dumps({**settings, "trainable": "auto", "head": "auto",
                                                   "datasets": {"rt": {"peers": {EDGETUNE: new}}}}))
    both = combine([tmp_path / "race.json", tmp_path / "new.json"], {EDGETUNE: "edgetune defaults (before)"})
    peers = both["datasets"]["rt"]["peers"]
    assert {n: (r["run"], r["peak_rss_mb"]) for n, r in peers.items()} == {
        ORT: ("r1.json", 1000.0), "edgetune defaults (before)": ("r2.json", 300.0), EDGETUNE: ("new.json", 250.0)}
    assert both["combined_from"] == ["r1.json", "r2.json", "new.json"]
    assert set(both["datasets"]["rt"]["summary"]["goals"]) == {"edgetune defaults (before)", EDGETUNE}


def test_marks_dense_up_to_the_goal_then_sparser():
    assert marks(300, 20) == [20, 40, 60, 80, 100, 120, 160, 200, 240, 280, 300]
    assert marks(20, 5) == [5, 10, 15, 20]
    assert marks(130, 50) == [50, 100, 130]


@pytest.mark.parametrize("head", ["auto", "zo"])
def test_race_child_runs_the_defaults_and_logs_a_curve(classifier, tmp_path, head):
    """The edgetune child as the race runs it (tune's defaults: --trainable auto, --head auto, the guard), on
    the tiny classifier: one point per mark, forwards counting --lr auto's calibration. Under --head auto the
    slice's linear head is tuned exactly (the child records what tune chose), under --head zo (the defaults
    before) by ZO as the rest of the slice."""
    args = Namespace(tokens=32, threads=1, batch_size=8, dev_size=40)
    prepare_data(tmp_path, classifier["model"], classifier["train"], classifier["dev"], args)
    config = {"defaults": True, "onnx": str(classifier["model"]), "train_path": str(classifier["train"]),
              "trainable": "auto", "head": head, "batch_size": 8, "seed": 0, "threads": 1, "tokens": 32,
              "max_steps": 20_000, "marks": [0.2, 0.4], "budget_clock": "cpu", "eval_batch_size": 8}
    child = subprocess.run([sys.executable, str(BENCHMARKS / "peers_edgetune.py"), "--mode", "race",
                            "--workdir", str(tmp_path), "--config", json.dumps(config)],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    result = json.loads([ln for ln in child.stdout.splitlines() if ln.startswith(RESULT_MARK)][-1][len(RESULT_MARK):])
    curve = result["curve"]
    assert len(curve) == 3 and curve[0]["steps"] == curve[0]["forwards"] == 0
    assert all(b["steps"] >= a["steps"] and b["cpu_s"] > a["cpu_s"] for a, b in zip(curve, curve[1:]))
    assert curve[1]["steps"] >= 1 and result["config"]["head"] == ("exact" if head == "auto" else "zo")
    assert curve[1]["forwards"] >= 20 + 2  # the calibration's 20, then 2 a step
    assert result["calibration"]["forwards"] == 20 and result["config"]["lr"] == result["calibration"]["lr"]
    assert result["steps"] == curve[-1]["steps"] and result["peak_rss_mb"] > 0
    assert result["trainable"] == "head"  # --trainable auto on a classifier with a fresh head, as tune resolves it
