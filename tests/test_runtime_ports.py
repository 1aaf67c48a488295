"""The tuning runtime off the x86-64 C path (issue 14 parts 4 and 5): Java over JNI, and aarch64 under qemu.

One tiny bundle (the suite's classifier, ``edgetune bundle --trainable last:2``), its examples as token ids,
and one set of flags. The x86-64 ``tune_bundle`` (examples/c) run is the reference:

* JNI: ``libedgetune_jni.so`` builds for x86-64 (the JDK's jni.h) and aarch64 (cross, AOSP's jni.h) and
  exports exactly the entry points ``EdgeTune.java`` declares.
* Java: ``ai.edgetune.EdgeTune`` on the desktop JVM tunes the bundle through a cancel from another thread,
  a listener that stops the run and one that throws, and still saves the C example's slice byte for byte,
  under the spall schedule (lr and eps both decay, computed in double from the double lr/eps Java passes).
* aarch64: the cross-built ``tune_bundle`` runs under ``qemu-aarch64-static`` against the aarch64
  onnxruntime wheel's library (scripts/fetch_ort_aarch64.sh, scripts/qemu_aarch64.sh): the NEON kernels are
  the active ones, the ZO arithmetic alone (lr 0: perturb, restore) is bit-identical to x86-64, and a real
  tune's loss falls with its slice within ARM_TOLERANCE of x86-64's (ORT's float kernels differ by ISA).

Build trees and outputs go to pytest's temp dirs. Collected after test_native (the builds take a while).
"""
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from safetensors.numpy import load_file

from conftest import run_cli
from edgetune.data.tokenizer import load_tokenizer
from edgetune.zo.schedules import Schedule
from test_native import CROSS_TOOLS, JOBS, ROOT, TIMEOUT, _env, _run
from test_runtime import _wordpiece_bundle

STEPS = 40
# lr 1e-2: the tiny classifier's dev loss falls clearly within 40 steps (0.69 -> 0.60 on x86-64)
EPS = "1e-3"


def flags(schedule: str, lr: str) -> list[str]:
    return ["--steps", str(STEPS), "--lr", lr, "--eps", EPS, "--seed", "0", "--batch-size", "16", "--threads", "1",
            "--schedule", schedule]


FLAGS = flags("constant", "1e-2")
# The Java run's schedule: spall rounds lr and eps to float per step from double bases, so a binding that
# carried them as float (3e-2f is not 3e-2) would round 12 of the 40 lrs and 28 of the eps differently.
# lr 3e-2: spall decays it to 0.27x by step 39; the dev loss still falls 0.69 -> 0.58 (1e-2: only to 0.67)
JAVA_SCHEDULE, JAVA_LR = "spall", "3e-2"
# The largest |theta_arm - theta_x86| allowed, as a fraction of the largest |theta_x86 - theta_0| (how far the
# tune moved the slice). Measured: 3.3e-5 (6.9e-6 absolute after 40 steps), from ORT's losses alone (they
# differ by <= 2e-6 per step between its x86-64 and aarch64 kernels); 1e-3 leaves 30x headroom.
ARM_TOLERANCE = 1e-3
JAVA_NATIVE = re.compile(r"private static native \S+ (native\w+)\(")


# ---- shared inputs ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle(classifier, tmp_path_factory):
    """The bundle, its train/dev examples as {"ids", "label"} JSONL, and as "label TAB text TAB ids" lines."""
    d = tmp_path_factory.mktemp("ports")
    proc = run_cli("bundle", "--onnx", classifier["model"], "--trainable", "last:2", "--head", "zo",
                   "--output", d / "wordlevel")
    assert proc.returncode == 0, proc.stderr
    _wordpiece_bundle({"bundle": d / "wordlevel"}, d / "bundle")  # a tokenizer the C++ one reads (addText)
    labels = json.loads((d / "bundle" / "manifest.json").read_text())["labels"]
    tok = load_tokenizer(d / "bundle" / "tokenizer.json")
    for split in ("train", "dev"):
        rows = [json.loads(line) for line in Path(classifier[split]).read_text().splitlines()]
        ids = [tok.encode(r["text"]).ids for r in rows]
        (d / f"{split}.jsonl").write_text("".join(json.dumps({"ids": i, "label": r["label"]}) + "\n"
                                                  for i, r in zip(ids, rows)))
        (d / f"{split}.tsv").write_text("".join(f"{labels.index(r['label'])}\t{r['text']}\t{' '.join(map(str, i))}\n"
                                                for i, r in zip(ids, rows)), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def host_build(tmp_path_factory):
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found on PATH")
    build = tmp_path_factory.mktemp("build-host-jni")
    _run(["cmake", "-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DEDGETUNE_PYTHON=OFF",
          "-DEDGETUNE_CUDA=OFF", "-DEDGETUNE_RUNTIME=ON", "-DEDGETUNE_JNI=ON"])
    _run(["cmake", "--build", build, "-j", JOBS, "--target", "tune_bundle", "edgetune_jni"])
    return build


@pytest.fixture(scope="module")
def arm_build(tmp_path_factory):
    missing = [pkg for tool, pkg in CROSS_TOOLS.items() if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"aarch64 cross toolchain / qemu-user not found: apt-get install -y {' '.join(missing)}")
    build = tmp_path_factory.mktemp("build-aarch64-jni")
    env = _env()
    env.update(BUILD=str(build), TARGETS="tune_bundle edgetune_jni")
    proc = subprocess.run(["bash", ROOT / "scripts" / "build_aarch64.sh", "-DEDGETUNE_RUNTIME=ON", "-DEDGETUNE_JNI=ON"],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=TIMEOUT)
    if proc.returncode != 0:
        pytest.fail(f"scripts/build_aarch64.sh failed (exit {proc.returncode}):\n{proc.stdout}", pytrace=False)
    return build


@pytest.fixture(scope="module")
def host_ort():
    lib = Path(onnxruntime.__file__).parent / "capi" / f"libonnxruntime.so.{onnxruntime.__version__}"
    assert lib.is_file(), f"the onnxruntime wheel has no {lib.name}"
    return lib


@pytest.fixture(scope="module")
def arm_ort():
    """The aarch64 wheel's library, cached across runs in ~/.cache (one download per CI run)."""
    out = _run(["bash", ROOT / "scripts" / "fetch_ort_aarch64.sh"])
    lib = Path(out.strip().splitlines()[-1])
    assert lib.is_file() and lib.name == f"libonnxruntime.so.{onnxruntime.__version__}", out
    return lib


def tune(cmd, bundle, out, *flags, ort):
    """Run a tune_bundle command line (maybe behind qemu); return its step losses and evaluations."""
    text = _run([*cmd, bundle / "bundle", bundle / "train.jsonl", "--eval", bundle / "dev.jsonl", "--out", out,
                 *flags, "--ort", ort])
    losses = [np.float32(m) for m in re.findall(r"^step \d+ loss (\S+)", text, re.M)]
    evals = {k: (float(loss), float(acc)) for k, loss, acc in
             re.findall(r"^eval (before|after) loss (\S+) accuracy (\S+)", text, re.M)}
    return losses, evals


def x86_tune(bundle, host_build, host_ort, tmp_path_factory, *flags):
    out = tmp_path_factory.mktemp("x86") / "tuned"
    losses, evals = tune([host_build / "tune_bundle"], bundle, out, *flags, ort=host_ort)
    assert len(losses) == STEPS and evals["after"][0] < evals["before"][0] - 0.05, evals
    return out, losses, evals


@pytest.fixture(scope="module")
def x86_run(bundle, host_build, host_ort, tmp_path_factory):
    return x86_tune(bundle, host_build, host_ort, tmp_path_factory, *FLAGS)


@pytest.fixture(scope="module")
def x86_java_run(bundle, host_build, host_ort, tmp_path_factory):
    """The C example's run under the Java run's schedule: the reference the Java binding must equal."""
    return x86_tune(bundle, host_build, host_ort, tmp_path_factory, *flags(JAVA_SCHEDULE, JAVA_LR))


def slice_of(out: Path) -> dict[str, np.ndarray]:
    return load_file(out / "trainable.safetensors")


# ---- JNI library -----------------------------------------------------------------------------

def elf_machine(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[18:20], "little")  # e_machine: 62 x86-64, 183 aarch64


def exported(nm: str, lib: Path) -> set[str]:
    out = _run([nm, "-D", "--defined-only", lib])
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_jni_library_builds_for_x86_64_and_aarch64(host_build, arm_build):
    natives = JAVA_NATIVE.findall((ROOT / "bindings/java/ai/edgetune/EdgeTune.java").read_text())
    assert len(natives) > 15
    want = {"JNI_OnLoad"} | {f"Java_ai_edgetune_EdgeTune_{n}" for n in natives}
    for build, machine, nm in ((host_build, 62, "nm"), (arm_build, 183, "aarch64-linux-gnu-nm")):
        lib = build / "csrc" / "jni" / "libedgetune_jni.so"
        assert elf_machine(lib) == machine
        # exactly the Java natives: nothing of the linked-in core, runtime or C++ runtime leaks out
        assert exported(nm, lib) == want


# ---- Java on the desktop JVM -----------------------------------------------------------------

def test_java_binding_tunes_like_the_c_example(bundle, host_build, host_ort, x86_java_run, tmp_path):
    javac, java = shutil.which("javac"), shutil.which("java")
    if javac is None or java is None:
        pytest.skip("no JDK: apt-get install -y openjdk-17-jdk-headless")
    classes = tmp_path / "classes"
    _run([javac, "-Xlint:all", "-Werror", "-d", classes, *sorted((ROOT / "bindings/java").rglob("*.java")),
          ROOT / "tests/java/TuneEndToEnd.java"])
    out = tmp_path / "tuned"
    lib = host_build / "csrc" / "jni" / "libedgetune_jni.so"
    text = _run([java, "-Xcheck:jni", f"-Dedgetune.jni.library={lib}", "-cp", classes, "TuneEndToEnd",
                 bundle / "bundle", bundle / "train.jsonl", bundle / "dev.tsv", out, host_ort, STEPS, JAVA_LR, EPS,
                 0, 10, 20, 30, JAVA_SCHEDULE])
    assert "WARNING" not in text, text  # -Xcheck:jni found a misuse of JNI
    line = dict(re.findall(r"^(error \w+|\w+) ?(.*)$", text, re.M))  # "key value" (errors: "error what value")
    assert line["simd"] in ("avx2", "avx512", "scalar") and line["task"] == "classify"
    assert line["labels"] == "negative,positive" and line["examples"] == "256 128"
    # errors: the status and the runtime's one line (naming the path / value), Java-side checks before JNI
    assert line["error open"].startswith("-20 EdgeTuneException ") and "no-such-bundle" in line["error open"]
    assert line["error label"].startswith("-22 EdgeTuneException ") and "label 7" in line["error label"]
    assert line["error empty"].startswith("-22 EdgeTuneException ")
    assert line["error textlabel"].startswith("-22 EdgeTuneException ") and "label -1" in line["error textlabel"]
    assert line["utf8"] == "true"
    assert line["error listener"] == "0 IllegalStateException from the listener"
    assert line["error relatch"].startswith("-4 EdgeTuneException ")
    # half the eval split went in as text, half as ids: the same evaluation as the C example's ids (below)
    # the run: cancelled at 10 from another thread, stopped at 20 by the listener, thrown at 30, finished
    assert line["cancelled"] == "true 10" and line["stopped"] == "true 20" and line["thrown"] == "30"
    assert line["finished"] == f"false {STEPS} {2 * STEPS}" and line["next"] == "none" and "closed" in text
    # the bundle's defaults are tune's (lr auto, the guard on); this run's numeric lr, which the guard never cut
    assert line["defaults"] == "lrAuto true guard true" and line["summary"] == f"{float(JAVA_LR)} 0 false 0"
    # a short run from those defaults: the C example's lr auto to the last bit, the note heard by onNote
    c_auto = _run([host_build / "tune_bundle", bundle / "bundle", bundle / "train.jsonl", "--steps", 5, "--seed", 0,
                   "--batch-size", 16, "--threads", 1, "--ort", host_ort])
    c_lr = float(re.search(r"^summary lr (\S+)", c_auto, re.M).group(1))
    java_lr, steps, heard = line["auto"].split()
    assert float(java_lr) == c_lr and (steps, heard) == ("5", "true") and line["autonote"].startswith("lr auto: ")
    assert line["autonote"] == next(x for x in c_auto.splitlines() if x.startswith("lr auto: "))

    c_out, c_losses, c_evals = x86_java_run
    steps = re.findall(r"^step (\d+) ([0-9a-f]+) ([0-9a-f]+) ([0-9a-f]+) 1 1$", text, re.M)
    assert [int(s[0]) for s in steps] == list(range(STEPS))  # every step reported once, in order
    java_losses, java_lrs, java_eps = ([np.uint32(int(s[i], 16)).view(np.float32) for s in steps] for i in (1, 2, 3))
    assert java_losses == c_losses  # bit for bit
    # each step's lr and eps: Python's schedules of the double bases, rounded to float once (not from 1e-2f)
    lr, eps = Schedule(float(JAVA_LR), JAVA_SCHEDULE, STEPS), Schedule(float(EPS), "spall-eps", STEPS)
    assert java_lrs == [np.float32(lr(t)) for t in range(STEPS)] and len(set(java_lrs)) == STEPS
    assert java_eps == [np.float32(eps(t)) for t in range(STEPS)]
    before, after = (tuple(map(float, line[k].split()[:2])) for k in ("before", "after"))
    # the C example prints the loss to 9 digits and the accuracy to 6 decimals
    assert before == pytest.approx(c_evals["before"], abs=1e-6) and after == pytest.approx(c_evals["after"], abs=1e-6)
    assert after[0] < before[0] - 0.05
    # the saved slice and model equal the uninterrupted C run's; weights() is that slice in arena order
    assert (out / "trainable.safetensors").read_bytes() == (c_out / "trainable.safetensors").read_bytes()
    assert (out / "model.onnx").read_bytes() == (c_out / "model.onnx").read_bytes()
    manifest = json.loads((bundle / "bundle" / "manifest.json").read_text())
    weights = np.fromfile(out / "weights.f32", dtype="<f4")
    tuned = slice_of(out)
    for t in manifest["arena"]["tensors"]:
        n = tuned[t["name"]].size
        np.testing.assert_array_equal(weights[t["offset"]:t["offset"] + n], tuned[t["name"]].ravel())


# ---- aarch64 under qemu ------------------------------------------------------------------------

def qemu(arm_build):
    return ["env", f"LD_LIBRARY_PATH={arm_build}", "bash", ROOT / "scripts" / "qemu_aarch64.sh"]


def test_aarch64_tune_under_qemu_matches_x86_64(bundle, host_build, host_ort, arm_build, arm_ort, x86_run, tmp_path):
    # the kernels libedgetune.so picks on aarch64 (tune_bundle links that very library)
    probe = tmp_path / "print_simd_level"
    _run(["aarch64-linux-gnu-gcc", "-O2", "-I", ROOT / "csrc/include", ROOT / "tests/c/print_simd_level.c", "-o", probe,
          f"-L{arm_build}", "-ledgetune"])
    assert re.search(r"^simd neon available scalar neon$", _run([*qemu(arm_build), probe]), re.M)

    # the ZO arithmetic alone (lr 0: the noise, perturb and restore on the arena): bit-identical across ISAs
    lr0 = ["--steps", "3", "--lr", "0", "--eps", "1e-3", "--seed", "0", "--batch-size", "16", "--threads", "1"]
    tune([host_build / "tune_bundle"], bundle, tmp_path / "x86-lr0", *lr0, ort=host_ort)
    tune([*qemu(arm_build), arm_build / "tune_bundle"], bundle, tmp_path / "arm-lr0", *lr0, ort=arm_ort)
    assert (tmp_path / "arm-lr0/trainable.safetensors").read_bytes() == \
        (tmp_path / "x86-lr0/trainable.safetensors").read_bytes()

    # a real tune: the loss falls; the slice is x86-64's up to ORT's float kernels
    losses, evals = tune([*qemu(arm_build), arm_build / "tune_bundle"], bundle, tmp_path / "arm", *FLAGS, ort=arm_ort)
    x86_out, x86_losses, x86_evals = x86_run
    assert len(losses) == STEPS and evals["after"][0] < evals["before"][0] - 0.05, evals
    assert np.abs(np.array(losses) - np.array(x86_losses)).max() < 1e-4
    assert evals["after"] == pytest.approx(x86_evals["after"], abs=1e-4)
    manifest = json.loads((bundle / "bundle" / "manifest.json").read_text())
    initial = np.fromfile(bundle / "bundle" / "arena.bin", dtype="<f4")
    arm, x86 = slice_of(tmp_path / "arm"), slice_of(x86_out)
    moved = max(np.abs(x86[t["name"]].ravel() - initial[t["offset"]:t["offset"] + x86[t["name"]].size]).max()
                for t in manifest["arena"]["tensors"])
    apart = max(np.abs(arm[k] - x86[k]).max() for k in x86)
    print(f"aarch64 vs x86-64 after {STEPS} steps: max |diff| {apart:.3g}, the tune moved the slice {moved:.3g} "
          f"(ratio {apart / moved:.3g}); dev loss {evals['before'][0]:.4f} -> {evals['after'][0]:.4f}")
    assert moved > 0.05 and apart <= ARM_TOLERANCE * moved
