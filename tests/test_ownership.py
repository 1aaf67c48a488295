"""Nothing a user owns is lost: inputs are never written over, a finished run is never silently replaced,
one run holds its folder at a time, Ctrl-C keeps the steps done, and temporaries and the graph cache
do not pile up."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from badinput import Snapshot, assert_rejected
from conftest import KillAtStep
from edgetune import Tuner
from edgetune.artifacts.checkpoint import save_checkpoint
from edgetune.demo import free_output_dir
from edgetune.errors import EdgetuneError
from edgetune.graph.cache import cache_entries, clear_cache, prepare_cached
from edgetune.graph.trainable import TrainableSpec
from edgetune.process.interrupt import Interrupted, StopRequest
from edgetune.artifacts.outdir import LOCK_FILE, RUN_FILES, claim_output, output_lock

SHORT = ("--steps", "3", "--max-length", "64")


@pytest.fixture
def bundle(classifier, tmp_path):
    """A private copy of the tiny classifier's folder: a broken guard must not spoil the session's."""
    folder = tmp_path / "base"
    shutil.copytree(classifier["dir"], folder)
    return {key: folder / Path(path).name for key, path in classifier.items() if key != "dir"} | {"dir": folder}


def tune(cli, bundle, out, *extra):
    return cli("tune", "--onnx", bundle["model"], "--data", bundle["train"], "--output-dir", out, *SHORT, *extra)


def dead_pid() -> int:
    """The PID of a process that has exited (and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# -- 1. never write over an input ------------------------------------------------------------------


def test_tune_refuses_the_folder_of_its_model_or_tokenizer(bundle, tmp_path, cli):
    snapshot = Snapshot(bundle["dir"])
    assert_rejected(tune(cli, bundle, bundle["dir"]), f"--output-dir {bundle['dir']}", "holds the input",
                    str(bundle["model"]))
    other = tmp_path / "tok"
    other.mkdir()
    shutil.copy(bundle["tokenizer"], other / "tokenizer.json")
    assert_rejected(tune(cli, bundle, other, "--tokenizer", other / "tokenizer.json"), "holds the input",
                    str(other / "tokenizer.json"))
    snapshot.assert_unchanged()
    assert sorted(p.name for p in other.iterdir()) == ["tokenizer.json"]


def finished_run(bundle, run: Path, trainable: str) -> Path:
    """A two-step run of ``trainable`` on the bundle, saved in ``run``."""
    tuner = Tuner.from_onnx(bundle["model"], trainable=trainable, max_length=64)
    tuner.fit(bundle["train"], output_dir=run, steps=2)
    tuner.save(run)
    return run


def test_replay_apply_and_export_refuse_to_write_over_their_inputs(bundle, tmp_path, cli):
    run = finished_run(bundle, tmp_path / "run", "last:1")
    snapshot = Snapshot(bundle["dir"], run)
    assert_rejected(cli("replay", "--onnx", bundle["model"], "--log", run / "run.etlog", "--output", run),
                    f"--output {run} holds the input", "run.etlog")
    assert_rejected(cli("replay", "--onnx", bundle["model"], "--log", run / "run.etlog", "--output", bundle["dir"]),
                    "holds the input", str(bundle["model"]))
    adapter = run / "trainable.safetensors"
    assert_rejected(cli("apply", "--onnx", bundle["model"], "--adapter", adapter, "--output", bundle["model"]),
                    f"--output {bundle['model']} is the input")
    assert_rejected(cli("apply", "--onnx", bundle["model"], "--adapter", adapter, "--output", adapter),
                    f"--output {adapter} is the input")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert_rejected(cli("export", "--model", hf, "--task", "classification", "--output", hf),
                    f"--output {hf} holds the input")
    snapshot.assert_unchanged()
    assert sorted(p.name for p in hf.iterdir()) == ["config.json"]


def test_replay_and_apply_replace_an_earlier_output_only_with_overwrite(bundle, tmp_path, cli):
    run = finished_run(bundle, tmp_path / "run", "lora:r=2,targets=q")  # apply takes a LoRA run's slice
    replay = ("replay", "--onnx", bundle["model"], "--log", run / "run.etlog", "--output", tmp_path / "re")
    apply = ("apply", "--onnx", bundle["model"], "--adapter", run / "trainable.safetensors",
             "--output", tmp_path / "merged.onnx")
    for command in (replay, apply):
        assert cli(*command).returncode == 0
    snapshot = Snapshot(tmp_path)
    assert_rejected(cli(*replay), f"--output {tmp_path / 're'} already holds a run", "--overwrite")
    assert_rejected(cli(*apply), f"--output {tmp_path / 'merged.onnx'} already exists", "--overwrite")
    snapshot.assert_unchanged()
    for command in (replay, apply):
        proc = cli(*command, "--overwrite")
        assert proc.returncode == 0, proc.stderr
    assert Snapshot(tmp_path).before == snapshot.before, "the same log and adapter rebuild the same files"


# -- 2. never replace a run silently ---------------------------------------------------------------


def test_a_folder_holding_a_run_needs_resume_or_overwrite(bundle, tmp_path, cli):
    out = tmp_path / "out"
    assert tune(cli, bundle, out).returncode == 0
    assert set(RUN_FILES) <= {p.name for p in out.iterdir()}
    snapshot = Snapshot(out, bundle["dir"])
    line = assert_rejected(tune(cli, bundle, out, "--lr", "0.1"), f"--output-dir {out} already holds a run")
    assert "--resume" in line and "--overwrite" in line and "another folder" in line
    snapshot.assert_unchanged()

    # each of RUN_FILES alone makes a run; the lock file a killed run leaves does not
    for name in RUN_FILES:
        lone = tmp_path / f"lone-{name}"
        lone.mkdir()
        (lone / name).write_text("mine")
        with pytest.raises(EdgetuneError, match=f"already holds a run \\({name}\\)"), claim_output(lone):
            pass
        assert (lone / name).read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / LOCK_FILE).write_text("12345\n")
    with claim_output(empty):
        pass
    assert list(empty.iterdir()) == []

    before = load_file(out / "trainable.safetensors")
    replaced = tune(cli, bundle, out, "--overwrite", "--lr", "0.1")
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads((out / "summary.json").read_text())["config"]["lr"] == 0.1
    assert any(not np.array_equal(v, load_file(out / "trainable.safetensors")[k]) for k, v in before.items())
    config = tmp_path / "tune.yaml"
    config.write_text("overwrite: true\nlr: 0.2\n")
    assert tune(cli, bundle, out, "--config", config).returncode == 0
    assert json.loads((out / "summary.json").read_text())["config"]["lr"] == 0.2
    snapshot = Snapshot(bundle["dir"])
    assert tune(cli, bundle, out, "--resume", "--steps", "5", "--lr", "0.2").returncode == 0  # a resume continues it
    snapshot.assert_unchanged()


def test_python_api_refuses_a_finished_run_unless_overwrite(bundle, tmp_path):
    out = tmp_path / "out"
    tuner = Tuner.from_onnx(bundle["model"], trainable="last:1", max_length=64)
    tuner.fit(bundle["train"], output_dir=out, steps=2)
    with pytest.raises(EdgetuneError, match="already holds a run"):
        tuner.fit(bundle["train"], output_dir=out, steps=2)
    tuner.fit(bundle["train"], output_dir=out, steps=2, overwrite=True)
    with pytest.raises(EdgetuneError, match="--resume continues .* --overwrite replaces it: give one"):
        tuner.fit(bundle["train"], output_dir=out, steps=2, overwrite=True, resume=True)
    snapshot = Snapshot(bundle["dir"])
    with pytest.raises(EdgetuneError, match="holds the input"):
        tuner.fit(bundle["train"], output_dir=bundle["dir"], steps=2)
    with pytest.raises(EdgetuneError, match="holds the input"):
        tuner.save(bundle["dir"])
    snapshot.assert_unchanged()


def test_demo_picks_the_next_free_folder_instead_of_replacing_a_run(tmp_path):
    base = tmp_path / "demo"
    assert free_output_dir(base) == base  # missing
    base.mkdir()
    assert free_output_dir(base) == base  # empty
    (base / "model.onnx").write_text("first")
    assert free_output_dir(base) == tmp_path / "demo-2"
    (tmp_path / "demo-2").mkdir()
    (tmp_path / "demo-2" / "summary.json").write_text("{}")
    assert free_output_dir(base) == tmp_path / "demo-3"


# -- 3. one run per folder -------------------------------------------------------------------------


def test_a_second_run_into_a_held_folder_fails_naming_the_holder(bundle, tmp_path, cli):
    out = tmp_path / "out"
    with output_lock(out):
        with output_lock(out):  # re-entrant in one process: the CLI claims, then Tuner.fit again
            assert (out / LOCK_FILE).read_text().strip() == str(os.getpid())
        snapshot = Snapshot(out)
        assert_rejected(tune(cli, bundle, out), f"--output-dir {out} is in use by another edgetune run",
                        f"(PID {os.getpid()})")
        snapshot.assert_unchanged()
    assert not out.exists()  # the lock was all there was: nothing left behind
    assert tune(cli, bundle, out).returncode == 0
    assert not (out / LOCK_FILE).exists()


# -- 4. Ctrl-C and SIGTERM keep the steps done -----------------------------------------------------


def interrupt_cli_run(bundle, out, signum):
    """Start a long CLI run, send ``signum`` once its step log has lines, and return the finished process."""
    command = [sys.executable, "-m", "edgetune.cli", "tune", "--onnx", str(bundle["model"]), "--data",
               str(bundle["train"]), "--output-dir", str(out), "--max-length", "64", "--steps", "1000000"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    steps = out / "steps.jsonl"
    try:
        while not (steps.is_file() and steps.stat().st_size > 0):
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.01)  # polling the file, not waiting for a time
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, stderr


def test_ctrl_c_checkpoints_the_current_step_and_resume_reaches_the_same_weights(bundle, tmp_path, cli):
    out = tmp_path / "out"
    code, stderr = interrupt_cli_run(bundle, out, signal.SIGINT)
    assert code == 130, stderr
    last = stderr.strip().splitlines()[-1]
    match = re.fullmatch(rf"edgetune: interrupted at step (\d+); checkpoint saved in {re.escape(str(out))}/"
                         r"checkpoint\.safetensors, continue with --resume", last)
    assert match, stderr
    stopped = int(match.group(1))
    assert len((out / "steps.jsonl").read_text().splitlines()) == stopped
    assert not (out / LOCK_FILE).exists() and not list(out.glob(".*.tmp-*"))

    # a constant schedule may be extended on resume: run on to a few steps past the interruption
    total = str(stopped + 7)
    resumed = cli("tune", "--onnx", bundle["model"], "--data", bundle["train"], "--output-dir", out,
                  "--max-length", "64", "--steps", total, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    straight = cli("tune", "--onnx", bundle["model"], "--data", bundle["train"], "--output-dir", tmp_path / "straight",
                   "--max-length", "64", "--steps", total)
    assert straight.returncode == 0, straight.stderr
    a, b = load_file(out / "trainable.safetensors"), load_file(tmp_path / "straight" / "trainable.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert (out / "steps.jsonl").read_text() == (tmp_path / "straight" / "steps.jsonl").read_text()


def test_sigterm_checkpoints_too_and_exits_143(bundle, tmp_path):
    code, stderr = interrupt_cli_run(bundle, tmp_path / "out", signal.SIGTERM)
    assert code == 143, stderr
    assert re.search(r"edgetune: interrupted at step \d+; checkpoint saved in .*checkpoint\.safetensors", stderr)
    assert (tmp_path / "out" / "checkpoint.safetensors").is_file()


def test_an_interrupted_api_run_checkpoints_or_says_nothing_was_saved(bundle, tmp_path):
    tuner = Tuner.from_onnx(bundle["model"], trainable="last:1", max_length=64)
    # step 4 (0-based) is chained to the next: the run stops after that one, whose end leaves θ exact (the guard,
    # which never chains, is off)
    with pytest.raises(Interrupted, match=r"interrupted at step 6; nothing was saved \(no output folder\)"):
        tuner.fit(bundle["train"], steps=20, progress=KillAtStep(4), guard="off")
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt) as raised:  # what an embedder catches
        Tuner.from_onnx(bundle["model"], trainable="last:1", max_length=64).fit(
            bundle["train"], output_dir=out, steps=20, progress=KillAtStep(9), guard="off")
    assert f"checkpoint saved in {out / 'checkpoint.safetensors'}" in str(raised.value)
    assert len((out / "steps.jsonl").read_text().splitlines()) == 11  # step 9's chained successor ends unchained


def test_a_second_signal_stops_at_once_and_handlers_are_restored():
    def own(signum, frame): ...

    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (main) thread before the next line runs
        assert stop.signum == signal.SIGTERM
        with pytest.raises(Interrupted, match="interrupted again: stopped at once") as raised:
            os.kill(os.getpid(), signal.SIGINT)
        assert raised.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    previous = signal.signal(signal.SIGTERM, own)  # an embedder's own handler is left alone
    try:
        with StopRequest():
            assert signal.getsignal(signal.SIGTERM) is own
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- 5. temporaries a killed write left ------------------------------------------------------------


def test_stale_temporaries_of_the_output_folder_are_removed_at_start(bundle, tmp_path, cli):
    out = tmp_path / "out"
    out.mkdir()
    dead = out / f".model.onnx.tmp-{dead_pid()}"
    live = out / f".checkpoint.safetensors.tmp-{os.getpid()}"
    old = out / f".summary.json.tmp-{os.getppid()}"
    for path in (dead, live, old):
        path.write_bytes(b"x" * 1000)
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    assert tune(cli, bundle, out).returncode == 0
    assert not dead.exists() and not old.exists()
    assert live.exists()  # its writer (this test) is alive


# -- 6. the prepared-graph cache -------------------------------------------------------------------


def test_cache_evicts_least_recently_used_entries_beyond_its_limit(bundle, tmp_path, monkeypatch):
    root = tmp_path / "cache"
    model = bundle["model"]
    prepare_cached(model, TrainableSpec.parse("last:1"), "d", cache_root=root)
    prepare_cached(model, TrainableSpec.parse("head"), "d", cache_root=root)
    first, second = cache_entries(root)
    assert [first.trainable, second.trainable] == ["last:1", "head"] and first.model == str(model)
    os.utime(first.path / "manifest.json", (time.time() - 60, time.time() - 60))
    os.utime(second.path / "manifest.json", (time.time() - 30, time.time() - 30))
    prepare_cached(model, TrainableSpec.parse("last:1"), "d", cache_root=root)  # a use makes it the most recent
    assert [e.trainable for e in cache_entries(root)] == ["head", "last:1"]

    half = root / f"0123456789abcdef01234567.tmp-{dead_pid()}"  # a preparation killed mid-write
    half.mkdir()
    (half / "suffix.onnx").write_bytes(b"x" * 100)
    monkeypatch.setenv("EDGETUNE_CACHE_MAX", str((first.bytes + 1) / 2**20))  # in MB: room for one entry
    prepare_cached(model, TrainableSpec.parse("last:2"), "d", cache_root=root)
    assert [e.trainable for e in cache_entries(root)] == ["last:2"]
    assert not half.exists()


def test_a_failed_preparation_leaves_no_half_written_entry(bundle, tmp_path):
    root = tmp_path / "cache"
    with pytest.raises(EdgetuneError):
        prepare_cached(bundle["model"], TrainableSpec.parse("lora:r=2,targets=nothing_like_this"), "d", cache_root=root)
    assert not root.exists() or not list(root.iterdir())


def test_a_damaged_cache_entry_is_one_line_naming_the_cache_and_the_cure(bundle, tmp_path):
    root = tmp_path / "cache"
    prepare_cached(bundle["model"], TrainableSpec.parse("last:1"), "d", cache_root=root)
    (entry,) = cache_entries(root)
    (entry.path / "manifest.json").write_text('{"info": ')  # cut short
    with pytest.raises(EdgetuneError, match=r"damaged prepared-graph cache entry \(EDGETUNE_CACHE\): run edgetune "
                       r"cache --clear"):
        prepare_cached(bundle["model"], TrainableSpec.parse("last:1"), "d", cache_root=root)
    assert clear_cache(root)[0] == 1 and list(root.iterdir()) == []


def test_cache_command_lists_and_clears(bundle, tmp_path, cli, monkeypatch):
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path / "c"))
    prepare_cached(bundle["model"], TrainableSpec.parse("last:1"), "d", cache_root=tmp_path / "c" / "prepared")
    listing = cli("cache")
    assert listing.returncode == 0, listing.stderr
    assert str(tmp_path / "c" / "prepared") in listing.stdout and "EDGETUNE_CACHE" in listing.stdout
    assert str(bundle["model"]) in listing.stdout and "--trainable last:1" in listing.stdout
    assert re.search(r"1 entries, [\d.]+ MB of 2048 MB", listing.stdout), listing.stdout
    cleared = cli("cache", "--clear")
    assert cleared.returncode == 0 and "removed 1 entries" in cleared.stdout
    assert "0 entries, 0.0 MB" in cli("cache").stdout
    monkeypatch.setenv("EDGETUNE_CACHE_MAX", "lots")
    assert_rejected(cli("cache", "--clear"), "EDGETUNE_CACHE_MAX 'lots'")


def test_an_unwritable_cache_is_named_in_one_line(bundle, tmp_path, cli, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("EDGETUNE_CACHE", str(blocker))
    snapshot = Snapshot(bundle["dir"])
    assert_rejected(tune(cli, bundle, tmp_path / "out"), "EDGETUNE_CACHE", str(blocker))
    snapshot.assert_unchanged()
    assert not (tmp_path / "out").exists()


# -- 7. a failed save claims only what is true -----------------------------------------------------


def test_a_failed_checkpoint_says_the_previous_one_is_kept_only_when_there_is_one(tmp_path):
    tensors = {"w": np.ones(3, np.float32)}
    path = tmp_path / "checkpoint.safetensors"
    blocked = tmp_path / f".checkpoint.safetensors.tmp-{os.getpid()}"
    blocked.mkdir()  # the temporary cannot be written: as a full disk, the write fails
    with pytest.raises(EdgetuneError, match="no checkpoint was saved") as first:
        save_checkpoint(path, tensors, {})
    assert "previous" not in str(first.value)
    blocked.rmdir()
    save_checkpoint(path, tensors, {})
    blocked.mkdir()
    with pytest.raises(EdgetuneError, match="the previous one is kept"):
        save_checkpoint(path, {"w": np.zeros(3, np.float32)}, {})
    np.testing.assert_array_equal(load_file(path)["w"], tensors["w"])
