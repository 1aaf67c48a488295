"""The C tuning runtime (csrc/runtime, edgetune_runtime.h) against the Python tuner on the same bundle.

Built once per session with CMake into a temp dir (the runtime and examples/c only, ~30 CPU-s); it tunes
through the onnxruntime wheel's own libonnxruntime.so.1.32.0, the library the Python tuner runs. Same bundle,
ids, seed and flags must give the same per-step losses and projected gradients and a bit-identical tuned slice.
"""
import ctypes
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from safetensors.numpy import load_file

from edgetune.artifacts.checkpoint import load_checkpoint
from models.tiny import LM_PHRASES, make_classifier_bundle, make_lm_bundle, make_sentiment_task, write_jsonl
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
FLAGS = {"--lr": "1e-3", "--eps": "1e-3", "--seed": "0", "--batch-size": "8", "--threads": "1", "--guard": "off"}
ORT_LIBRARY = Path(ort.__file__).parent / "capi" / f"libonnxruntime.so.{ort.__version__}"


@pytest.fixture(scope="module")
def runtime_build(tmp_path_factory):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake not found on PATH")
    if not ORT_LIBRARY.is_file():
        pytest.skip(f"the onnxruntime wheel has no {ORT_LIBRARY.name}")
    build = tmp_path_factory.mktemp("build-runtime")
    env = {k: v for k, v in os.environ.items() if k != "CMAKE_ARGS"}
    for cmd in ([cmake, "-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DEDGETUNE_PYTHON=OFF",
                 "-DEDGETUNE_CUDA=OFF", "-DEDGETUNE_RUNTIME=ON"],
                [cmake, "--build", build, "-j", "2", "--target", "tune_bundle", "infer_bundle"]):
        proc = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return build


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny classifier bundled with a frozen prefix (last:1), and its data as text and as the bundle's ids."""
    from edgetune.bundle.build import BundleOptions, bundle
    from edgetune.config import ModelOptions
    from edgetune.tuner import Tuner

    d = tmp_path_factory.mktemp("runtime")
    paths = make_classifier_bundle(d / "src", n_train=64, n_dev=32)
    # head zo: these tests are of the ZO step over the whole slice (the exact head's are below)
    bundle(BundleOptions(onnx=str(paths["model"]), trainable="last:1", output=d / "bundle",
                         model=ModelOptions(threads=1), head="zo"))
    tuner = Tuner.from_bundle(d / "bundle", threads=1)
    for split in ("train", "dev"):
        data = tuner.load_data(paths[split])
        lines = [json.dumps({"ids": [int(i) for i in ids], "label": int(label)}) for ids, label in
                 zip(data.ids, data.targets)]
        (d / f"{split}_ids.jsonl").write_text("\n".join(lines) + "\n")
    return {**paths, "bundle": d / "bundle", "train_ids": d / "train_ids.jsonl", "dev_ids": d / "dev_ids.jsonl"}


def tune_c(build: Path, bundle: Path, train: Path, *args) -> subprocess.CompletedProcess:
    flags = [x for kv in FLAGS.items() for x in kv]
    return subprocess.run([str(build / "tune_bundle"), str(bundle), str(train), *flags, "--ort", str(ORT_LIBRARY),
                           *map(str, args)], capture_output=True, text=True, timeout=300)


def curve(stdout: str) -> list[tuple[int, float, float]]:
    """(step, loss, first projected gradient) of each 'step T loss L lr X g G' line, as float32."""
    rows = [w for w in map(str.split, stdout.splitlines()) if w[:1] == ["step"] and w[2] == "loss"]
    return [(int(r[1]), float(np.float32(r[3])), float(np.float32(r[7]))) for r in rows]


def same_bits(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k].view(np.uint32), b[k].view(np.uint32)) for k in a)


def assert_same_run(c_stdout: str, py_dir: Path, c_dir: Path) -> None:
    """The C run's curve is the Python run's steps.jsonl (loss and first gradient, as float32) and its tuned slice
    is the Python one, bit for bit."""
    records = [json.loads(line) for line in (py_dir / "steps.jsonl").read_text().splitlines()]
    assert curve(c_stdout) == [(r["step"], float(np.float32(r["loss"])), float(np.float32(r["grads"][0])))
                               for r in records if "rollback" not in r]  # the guard's undo records: no step line
    assert same_bits(load_file(c_dir / "trainable.safetensors"), load_file(py_dir / "trainable.safetensors"))


@pytest.mark.parametrize("schedule,queries,extra", [("constant", 1, ()), ("linear", 2, ("--warmup", 2)),
                                                    ("spall", 1, ("--weight-decay", "0.5"))])
def test_c_runtime_reproduces_python_tune_on_a_bundle(runtime_build, tiny, tmp_path, schedule, queries, extra):
    """examples/c vs `edgetune tune --bundle`: the same curve, bit for bit, and the same tuned slice."""
    steps = 6
    py = run_cli("tune", "--bundle", tiny["bundle"], "--data", tiny["train"], "--output-dir", tmp_path / "py",
                 "--steps", steps, "--schedule", schedule, "--queries", queries, *extra,
                 *[x for kv in FLAGS.items() for x in kv])
    assert py.returncode == 0, py.stderr
    c = tune_c(runtime_build, tiny["bundle"], tiny["train_ids"], "--steps", steps, "--schedule", schedule,
               "--queries", queries, *extra, "--out", tmp_path / "c")
    assert c.returncode == 0, c.stderr
    assert_same_run(c.stdout, tmp_path / "py", tmp_path / "c")
    # the tuned model.onnx (streamed, tensors patched in place) runs in plain ORT as the Python-saved one does
    feeds = _dev_batch(tiny)
    outputs = [ort.InferenceSession(str(tmp_path / side / "model.onnx")).run(None, feeds)[0] for side in ("c", "py")]
    assert np.array_equal(outputs[0], outputs[1])


def _dev_batch(tiny) -> dict[str, np.ndarray]:
    rows = [json.loads(line)["ids"] for line in tiny["dev_ids"].read_text().splitlines()[:8]]
    length = max(map(len, rows))
    ids = np.zeros((len(rows), length), np.int64)
    mask = np.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, :len(row)], mask[r, :len(row)] = row, 1
    names = [i.name for i in ort.InferenceSession(str(tiny["bundle"] / "model.onnx")).get_inputs()]
    return {k: v for k, v in {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}.items()
            if k in names}


def _to_wordpiece(path: Path) -> None:
    """Rewrite the suite's WordLevel tokenizer.json at path as a WordPiece one of the same vocabulary (the C++
    tokenizer reads WordPiece and byte-level BPE)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = json.loads(path.read_text())["model"]["vocab"]
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.save(str(path))


def _wordpiece_bundle(tiny, bundle: Path) -> Path:
    """The tiny bundle with its tokenizer.json made WordPiece (_to_wordpiece), the manifest's entry updated to match."""
    import hashlib

    shutil.copytree(tiny["bundle"], bundle)
    _to_wordpiece(bundle / "tokenizer.json")
    manifest = json.loads((bundle / "manifest.json").read_text())
    data = (bundle / "tokenizer.json").read_bytes()
    manifest["files"]["tokenizer.json"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest["tokenizer"]["kind"] = "wordpiece"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def test_text_examples_through_the_cpp_tokenizer_reproduce_python(runtime_build, tiny, tmp_path):
    """{"text"} JSONL tokenised in C++ from the bundle's tokenizer.json: the same curve and slice as Python, whose
    Hugging Face tokenizer reads the same file."""
    bundle = _wordpiece_bundle(tiny, tmp_path / "bundle")
    py = run_cli("tune", "--bundle", bundle, "--data", tiny["train"], "--output-dir", tmp_path / "py", "--steps", 4,
                 "--schedule", "constant", *[x for kv in FLAGS.items() for x in kv])
    assert py.returncode == 0, py.stderr
    c = tune_c(runtime_build, bundle, tiny["train"], "--steps", 4, "--out", tmp_path / "c")
    assert c.returncode == 0, c.stderr
    assert_same_run(c.stdout, tmp_path / "py", tmp_path / "c")
    assert (tmp_path / "c" / "tokenizer.json").read_bytes() == (bundle / "tokenizer.json").read_bytes()


def test_a_language_model_bundle_from_token_ids_reproduces_python(runtime_build, tmp_path):
    """A causal LM (per-token labels = the ids, padding ignored, as a {"text"} record trains): same curve and slice."""
    from edgetune.bundle.build import BundleOptions, bundle
    from edgetune.config import ModelOptions
    from edgetune.tuner import Tuner

    paths = make_lm_bundle(tmp_path / "src", n_train=32, n_dev=8)
    bundle(BundleOptions(onnx=str(paths["model"]), trainable="last:1", output=tmp_path / "bundle",
                         model=ModelOptions(threads=1)))
    data = Tuner.from_bundle(tmp_path / "bundle", threads=1).load_data(paths["train"])
    ids = tmp_path / "train_ids.jsonl"
    ids.write_text("".join(json.dumps({"ids": [int(i) for i in row]}) + "\n" for row in data.ids))
    py = run_cli("tune", "--bundle", tmp_path / "bundle", "--data", paths["train"], "--output-dir", tmp_path / "py",
                 "--steps", 4, "--schedule", "constant", *[x for kv in FLAGS.items() for x in kv])
    assert py.returncode == 0, py.stderr
    c = tune_c(runtime_build, tmp_path / "bundle", ids, "--steps", 4, "--out", tmp_path / "c")
    assert c.returncode == 0, c.stderr
    assert_same_run(c.stdout, tmp_path / "py", tmp_path / "c")


def test_a_static_shape_bundle_reproduces_python(runtime_build, tiny, tmp_path):
    """--batch-size bundles (NPU-ready graphs): every batch padded to the bundle's length, the evaluation's last
    batch filled; the same curve, slice and evaluation as Python."""
    from edgetune.bundle.build import BundleOptions, bundle
    from edgetune.config import ModelOptions

    bundle(BundleOptions(onnx=str(tiny["model"]), trainable="last:1", output=tmp_path / "bundle", batch_size=8,
                         model=ModelOptions(threads=1, max_length=32)))
    py = run_cli("tune", "--bundle", tmp_path / "bundle", "--data", tiny["train"], "--eval-data", tiny["dev"],
                 "--output-dir", tmp_path / "py", "--steps", 4, "--schedule", "constant",
                 *[x for kv in FLAGS.items() for x in kv])
    assert py.returncode == 0, py.stderr
    c = tune_c(runtime_build, tmp_path / "bundle", tiny["train_ids"], "--eval", tiny["dev_ids"], "--steps", 4,
               "--out", tmp_path / "c")
    assert c.returncode == 0, c.stderr
    assert_same_run(c.stdout, tmp_path / "py", tmp_path / "c")
    after = next(line.split() for line in c.stdout.splitlines() if line.startswith("eval after"))
    metrics = json.loads((tmp_path / "py" / "summary.json").read_text())["result"]["after"]
    assert float(after[5]) == metrics["accuracy"] and float(after[3]) == pytest.approx(metrics["loss"], rel=1e-6)


def test_evaluation_matches_python(runtime_build, tiny):
    from edgetune.tuner import Tuner

    c = tune_c(runtime_build, tiny["bundle"], tiny["train_ids"], "--eval", tiny["dev_ids"], "--steps", 1)
    assert c.returncode == 0, c.stderr
    before = next(line.split() for line in c.stdout.splitlines() if line.startswith("eval before"))
    metrics = Tuner.from_bundle(tiny["bundle"], threads=1).evaluate(tiny["dev"])
    assert float(before[5]) == metrics["accuracy"] and int(before[7]) == metrics["examples"]
    assert float(before[3]) == pytest.approx(metrics["loss"], rel=1e-6)


def test_resume_after_a_checkpoint_is_bit_identical(runtime_build, tiny, tmp_path):
    whole = tune_c(runtime_build, tiny["bundle"], tiny["train_ids"], "--steps", 6, "--out", tmp_path / "whole")
    first = tune_c(runtime_build, tiny["bundle"], tiny["train_ids"], "--steps", 6, "--stop-after", 3,
                   "--checkpoint", tmp_path / "ck.safetensors")
    rest = tune_c(runtime_build, tiny["bundle"], tiny["train_ids"], "--steps", 6, "--resume",
                  tmp_path / "ck.safetensors", "--out", tmp_path / "resumed")
    for proc in (whole, first, rest):
        assert proc.returncode == 0, proc.stderr
    assert "trained 3 steps" in first.stdout and "(stopped)" in first.stdout
    assert curve(first.stdout) + curve(rest.stdout) == curve(whole.stdout)
    assert same_bits(load_file(tmp_path / "whole" / "trainable.safetensors"),
                     load_file(tmp_path / "resumed" / "trainable.safetensors"))
    # the checkpoint is the Python checkpoint format: its reader takes it
    from edgetune.artifacts.checkpoint import load_checkpoint

    tensors, state = load_checkpoint(tmp_path / "ck.safetensors")
    assert state["step"] == 3 and set(tensors) == set(load_file(tmp_path / "whole" / "trainable.safetensors"))
    # other flags than the checkpoint's: refused in one line
    other = tune_c(runtime_build, tiny["bundle"], tiny["train_ids"], "--steps", 6, "--lr", "2e-3", "--resume",
                   tmp_path / "ck.safetensors")
    assert other.returncode == 1 and "train params differ from the run's after step 3" in other.stderr


def _damage(bundle: Path, how: str) -> str:
    """Damage a copy of a bundle; the text the one error line must contain."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    if how == "missing":
        (bundle / "suffix.onnx").unlink()
        return f"{bundle}/suffix.onnx: missing"
    if how == "sha256":
        data = bytearray((bundle / "arena.bin").read_bytes())
        data[5] ^= 0x40
        (bundle / "arena.bin").write_bytes(bytes(data))
        return f"{bundle}/arena.bin: sha256 differs from manifest.json's"
    if how == "version":
        manifest["format_version"] = 2
    elif how == "key":
        del manifest["arena"]["count"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return {"version": "manifest.json: format_version 2 is not supported (this runtime reads 1)",
            "key": "manifest.json: key 'count' missing"}[how]


@pytest.mark.parametrize("how", ["missing", "sha256", "version", "key"])
def test_a_bad_bundle_is_one_error_line(runtime_build, tiny, tmp_path, how):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny["bundle"], bundle)
    expected = _damage(bundle, how)
    proc = tune_c(runtime_build, bundle, tiny["train_ids"], "--steps", 1)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("tune_bundle: error: ")
    assert expected in proc.stderr


def test_a_bad_jsonl_line_names_the_file_and_line(runtime_build, tiny, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"ids": [1, 2, 3], "label": 0}\n{"ids": [4, 5], "label": "nope"}\n')
    proc = tune_c(runtime_build, tiny["bundle"], data, "--steps", 1)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert f"{data}:2: label 'nope' is not one of the bundle's classes" in proc.stderr


def test_a_non_finite_loss_stops_as_the_python_tuner_does(runtime_build, tiny, tmp_path):
    """lr 1e30 blows the head up: both runtimes stop at the same step with the same examples named."""
    py = run_cli("tune", "--bundle", tiny["bundle"], "--data", tiny["train"], "--output-dir", tmp_path / "py",
                 "--steps", 50, "--schedule", "constant",
                 *[x for kv in {**FLAGS, "--lr": "1e30"}.items() for x in kv])
    c = tune_c(runtime_build, tiny["bundle"], tiny["train_ids"], "--steps", 50, "--lr", "1e30",
               "--checkpoint", tmp_path / "unused")
    assert py.returncode != 0 and c.returncode == 1
    assert c.stderr.count("\n") == 1 and "non-finite loss at step" in c.stderr
    step = int(c.stderr.split("non-finite loss at step ")[1].split()[0])
    assert f"non-finite loss at step {step} " in py.stderr
    lines = lambda text: sorted(w.rsplit(":", 1)[1].rstrip(",;") for w in text.split() if ".jsonl:" in w)  # noqa: E731
    assert lines(c.stderr) == lines(py.stderr.split("examples", 1)[1])
    assert not (tmp_path / "unused").exists()  # the run stopped with an error: nothing after it ran


def test_peak_memory_peer_runs(runtime_build, tiny):
    """infer_bundle, the benchmark's plain-ORT peer, runs the bundle's model.onnx on a batch."""
    proc = subprocess.run([str(runtime_build / "infer_bundle"), str(tiny["bundle"] / "model.onnx"),
                           str(tiny["train_ids"]), "8", "2", "1", str(ORT_LIBRARY)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "(8 rows x" in proc.stdout


# -- lr auto, the guard and keep-best: the C runtime decides as the Python tuner does -------------------------------

NOTES = ("lr auto:", "guard:", "kept best:")


@pytest.mark.parametrize("lr,steps,extra,evaluated,expect", [
    ("auto", 30, (), False, "calibrated"),  # lr auto, the guard watching
    ("auto", 300, ("--batch-size", 2, "--seed", 5, "--schedule", "linear"), False, "remeasured"),  # under lr auto
    ("3", 30, (), False, "rolled back"),  # a huge lr: the guard rolls back and halves it
    ("30", 60, (), False, "kept best"),  # past its 8 rollbacks the run ends worse than it began
    ("3", 60, (), True, "kept best"),  # the same judged by the evaluation loss (before vs after), as --eval-data does
])
def test_lr_auto_guard_and_keep_best_reproduce_python(runtime_build, tiny, tmp_path, lr, steps, extra, evaluated,
                                                      expect):
    """Guard on: the same calibrated lr, the same rollbacks (lines included), the same kept state, bit for bit."""
    flags = {**FLAGS, "--lr": lr, "--guard": "on"}
    py = run_cli("tune", "--bundle", tiny["bundle"], "--data", tiny["train"], "--output-dir", tmp_path / "py",
                 "--steps", steps, *[x for kv in flags.items() for x in kv], *extra,
                 *(("--eval-data", tiny["dev"]) if evaluated else ()))
    assert py.returncode == 0, py.stderr
    c = tune_c(runtime_build, tiny["bundle"], tiny["train_ids"], "--steps", steps, "--lr", lr, "--guard", "on", *extra,
               *(("--eval", tiny["dev_ids"]) if evaluated else ()), "--out", tmp_path / "c")
    assert c.returncode == 0, c.stderr
    assert_same_run(c.stdout, tmp_path / "py", tmp_path / "c")
    result = json.loads((tmp_path / "py" / "summary.json").read_text())["result"]
    notes = [line for line in c.stdout.splitlines() if line.startswith(NOTES)]
    summary = next(line.split() for line in c.stdout.splitlines() if line.startswith("summary "))
    assert [n for n in notes if n.startswith("guard:")] == result["guard"]
    calibration = result["calibration"]
    assert (notes[0] == f"lr auto: {calibration['lr']:.4g} from zᵀHz {calibration['curvature']:.3g} "
                        f"({calibration['probes']} probes), eps 0.001") if calibration else not notes[0].startswith("lr")
    assert float(summary[2]) == (calibration["lr"] if calibration else float(lr))  # %.17g: the double itself
    kept = [n for n in notes if n.startswith("kept best:")]
    assert summary[-1] == result["kept"] and len(kept) == (result["kept"] == "best")
    if kept:
        assert f"kept θ before step {result['best_step']}" in kept[0]
        assert (f", loss {result['after']['loss']:.4g}" in kept[0]) if evaluated else "(smoothed" in kept[0]
    # the calibration's forwards count: the run's forwards are Python's (its undo records take none)
    assert f"trained {result['steps']} steps" in c.stdout or result["kept"] == "best"
    assert f", {result['forward_passes']} forwards" in c.stdout
    checks = {"calibrated": calibration and not result["guard"], "remeasured": "(zᵀHz here " in " ".join(result["guard"]),
              "rolled back": result["guard"] and not calibration, "kept best": kept}
    assert checks[expect]


def test_a_guarded_run_resumes_bit_identically(runtime_build, tiny, tmp_path):
    """A checkpoint between rollbacks holds the guard, the lr scale and the undo terms: the run goes on as if whole."""
    run = lambda *args: tune_c(runtime_build, tiny["bundle"], tiny["train_ids"], "--steps", 30, "--lr", "3",  # noqa: E731
                               "--guard", "on", *args)
    whole, first = run("--out", tmp_path / "whole"), run("--stop-after", 12, "--checkpoint", tmp_path / "ck")
    rest = run("--resume", tmp_path / "ck", "--out", tmp_path / "resumed")
    for proc in (whole, first, rest):
        assert proc.returncode == 0, proc.stderr
    guard = lambda out: [line for line in out.splitlines() if line.startswith("guard:")]  # noqa: E731
    assert guard(first.stdout) and guard(rest.stdout) and guard(first.stdout) + guard(rest.stdout) == guard(whole.stdout)
    assert curve(first.stdout) + curve(rest.stdout) == curve(whole.stdout)
    assert same_bits(load_file(tmp_path / "whole" / "trainable.safetensors"),
                     load_file(tmp_path / "resumed" / "trainable.safetensors"))


# -- the exact head: a classifier's head tuned first-order from its in-graph gradient, as tune --head exact -------


@pytest.fixture(scope="module")
def exact(tiny, tmp_path_factory):
    """The tiny classifier bundled under --head auto (which chooses exact): the head alone and last:1; and a
    training set with its labels flipped, as evaluation data a run gets worse on (keep-best)."""
    from edgetune.bundle.build import BundleOptions, bundle
    from edgetune.config import ModelOptions

    d = tmp_path_factory.mktemp("exact")
    for name, spec in (("head", "classifier.*"), ("last1", "last:1")):
        made = bundle(BundleOptions(onnx=str(tiny["model"]), trainable=spec, output=d / name,
                                    model=ModelOptions(threads=1)))
        assert made.manifest.head == "exact"
    flip = lambda label: {"negative": "positive", "positive": "negative"}.get(label, label)  # noqa: E731
    for source, target, key in ((tiny["train"], "flipped.jsonl", flip), (tiny["train_ids"], "flipped_ids.jsonl",
                                                                            lambda label: 1 - label)):
        rows = [json.loads(line) for line in Path(source).read_text().splitlines()]
        (d / target).write_text("".join(json.dumps({**r, "label": key(r["label"])}) + "\n" for r in rows))
    return {"head": d / "head", "last1": d / "last1", "flipped": d / "flipped.jsonl",
            "flipped_ids": d / "flipped_ids.jsonl"}


def losses(stdout: str) -> list[tuple[int, float, float]]:
    """(step, loss, lr) of each 'step T loss L lr X g G' line, as float32 (a step of the head alone has g nan)."""
    rows = [w for w in map(str.split, stdout.splitlines()) if w[:1] == ["step"] and w[2] == "loss"]
    return [(int(r[1]), float(np.float32(r[3])), float(np.float32(r[5]))) for r in rows]


@pytest.mark.parametrize("which,steps,flags,evaluated,expect", [
    ("head", 8, ("--lr", "1e-3"), False, ""),  # the head alone: one forward a step, Adam at 3e-3
    ("last1", 56, ("--lr", "auto"), False, "lr auto:"),  # 50 steps of the head alone, then calibrated below it
    ("last1", 12, ("--lr", "1e15"), False, "guard:"),  # rollbacks: undo records below, the head from its copies
    ("head", 8, ("--lr", "1e-3"), True, "kept best:"),  # worse on the evaluation data: its best state kept
])
def test_the_exact_head_reproduces_python(runtime_build, tiny, exact, tmp_path, which, steps, flags, evaluated,
                                          expect):
    """An exact-head bundle: the C runtime binds the gradient outputs and takes Python's Adam step in float32,
    the warm-up and calibration under lr auto, the guard's rollbacks and keep-best: the same curve, notes and
    tuned slice as `tune --bundle`, bit for bit."""
    py = run_cli("tune", "--bundle", exact[which], "--data", tiny["train"], "--output-dir", tmp_path / "py",
                 "--steps", steps, *[x for kv in {**FLAGS, "--guard": "on"}.items() for x in kv], *flags,
                 *(("--eval-data", exact["flipped"]) if evaluated else ()))
    assert py.returncode == 0, py.stderr
    c = tune_c(runtime_build, exact[which], tiny["train_ids"], "--steps", steps, "--guard", "on", *flags,
               *(("--eval", exact["flipped_ids"]) if evaluated else ()), "--out", tmp_path / "c",
               "--checkpoint", tmp_path / "ck")
    assert c.returncode == 0, c.stderr
    records = [json.loads(line) for line in (tmp_path / "py" / "steps.jsonl").read_text().splitlines()]
    assert losses(c.stdout) == [(r["step"], float(np.float32(r["loss"])), float(np.float32(r["lr"])))
                                for r in records if "rollback" not in r]
    assert same_bits(load_file(tmp_path / "c" / "trainable.safetensors"),
                     load_file(tmp_path / "py" / "trainable.safetensors"))
    result = json.loads((tmp_path / "py" / "summary.json").read_text())["result"]
    notes = [line for line in c.stdout.splitlines() if line.startswith(NOTES)]
    assert [n for n in notes if n.startswith("guard:")] == result["guard"]
    assert (not expect or any(n.startswith(expect) for n in notes)) and "head exact" in c.stdout
    assert f", {result['forward_passes']} forwards" in c.stdout
    # the guard's state (its rule's EMA and spread) and the head's Adam state at the end: Python's, to the bit
    ours, theirs = load_checkpoint(tmp_path / "ck")[1], load_checkpoint(tmp_path / "py" / "checkpoint.safetensors")[1]
    assert ours["guard"] == theirs["guard"]
    head = theirs["optimizer"]["head"]
    assert ours["head"]["updates"] == head["updates"] and ours["head"]["m"] == [x for m, _ in head["moments"] for x in m]


def test_an_exact_head_run_resumes_bit_identically(runtime_build, tiny, exact, tmp_path):
    """Checkpoints in the head's warm-up and after the calibration below it carry the head's Adam state and kept
    copies: the run resumed twice equals the whole run. A bundle whose manifest has no "head" (written before the
    exact head) tunes it by ZO in both runtimes."""
    run = lambda *args: tune_c(runtime_build, exact["last1"], tiny["train_ids"], "--steps", 56, "--lr", "auto",  # noqa: E731
                               "--guard", "on", *args)
    parts = [run("--out", tmp_path / "whole"), run("--stop-after", 30, "--checkpoint", tmp_path / "ck30"),
             run("--resume", tmp_path / "ck30", "--stop-after", 53, "--checkpoint", tmp_path / "ck53"),
             run("--resume", tmp_path / "ck53", "--out", tmp_path / "resumed")]
    for proc in parts:
        assert proc.returncode == 0, proc.stderr
    assert sum((losses(p.stdout) for p in parts[1:]), []) == losses(parts[0].stdout)
    assert same_bits(load_file(tmp_path / "whole" / "trainable.safetensors"),
                     load_file(tmp_path / "resumed" / "trainable.safetensors"))
    old = tmp_path / "old"
    shutil.copytree(exact["head"], old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["head"], manifest["head_tensors"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    py = run_cli("tune", "--bundle", old, "--data", tiny["train"], "--output-dir", tmp_path / "py", "--steps", 3,
                 *[x for kv in FLAGS.items() for x in kv])
    c = tune_c(runtime_build, old, tiny["train_ids"], "--steps", 3, "--out", tmp_path / "c")
    assert py.returncode == 0 and c.returncode == 0, py.stderr + c.stderr
    assert "head: zo" in py.stderr and "head zo" in c.stdout
    assert_same_run(c.stdout, tmp_path / "py", tmp_path / "c")


class _Options(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("threads", ctypes.c_int32), ("ort_library", ctypes.c_char_p),
                ("verify_sha256", ctypes.c_int32)]


class _TrainParams(ctypes.Structure):  # edgetune_runtime.h's et_train_params
    _fields_ = [("struct_size", ctypes.c_uint32), ("steps", ctypes.c_uint64), ("seed", ctypes.c_uint64),
                ("batch_size", ctypes.c_uint32), ("queries", ctypes.c_uint32), ("lr", ctypes.c_double),
                ("eps", ctypes.c_double), ("weight_decay", ctypes.c_double), ("schedule", ctypes.c_int32),
                ("warmup", ctypes.c_uint32), ("noise", ctypes.c_int32), ("progress", ctypes.c_void_p),
                ("user", ctypes.c_void_p), ("cancel", ctypes.c_void_p), ("lr_auto", ctypes.c_int32),
                ("eps_auto", ctypes.c_int32), ("guard", ctypes.c_int32), ("note", ctypes.c_void_p),
                ("note_user", ctypes.c_void_p)]


class _Summary(ctypes.Structure):  # et_run_summary
    _fields_ = [("struct_size", ctypes.c_uint32), ("lr", ctypes.c_double), ("eps", ctypes.c_double),
                ("calibrated", ctypes.c_int32), ("fallback", ctypes.c_int32), ("curvature", ctypes.c_double),
                ("calibration_loss", ctypes.c_double), ("loss_noise", ctypes.c_double), ("grad_rms", ctypes.c_double),
                ("probes", ctypes.c_uint32), ("calibration_forwards", ctypes.c_uint64), ("rollbacks", ctypes.c_uint32),
                ("lr_scale", ctypes.c_double), ("kept_best", ctypes.c_int32), ("best_step", ctypes.c_uint64),
                ("notes", ctypes.c_uint32)]


INVALID_ARGUMENT = -1


def test_misuse_of_the_c_api_returns_the_documented_status(runtime_build, tiny):
    """NULL handles and pointers, and a struct_size too small or too large, are ET_ERR_INVALID_ARGUMENT with a
    message; a caller of the struct before lr auto (ET_TRAIN_PARAMS_V1_SIZE) still trains, with a numeric lr and
    no guard; the defaults carry the bundle's lr "auto" and the guard."""
    lib = ctypes.CDLL(str(runtime_build / "libedgetune.so"))
    handle, ref = ctypes.c_void_p, ctypes.byref
    lib.et_runtime_open.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(handle)]
    lib.et_runtime_last_error.argtypes, lib.et_runtime_last_error.restype = [handle], ctypes.c_char_p
    lib.et_runtime_notes.argtypes, lib.et_runtime_notes.restype = [handle], ctypes.c_char_p
    for name in ("et_runtime_train", "et_runtime_set_train_params", "et_runtime_summary", "et_runtime_step",
                 "et_runtime_default_train_params", "et_runtime_free", "et_runtime_load_jsonl", "et_runtime_evaluate"):
        getattr(lib, name).argtypes = [handle, ctypes.c_void_p, ctypes.c_void_p][:{"et_runtime_free": 1,
                                        "et_runtime_step": 2, "et_runtime_summary": 2,
                                        "et_runtime_default_train_params": 2, "et_runtime_set_train_params": 2}.get(name, 3)]
    lib.et_runtime_load_jsonl.argtypes = [handle, ctypes.c_int, ctypes.c_char_p]
    lib.et_runtime_evaluate.argtypes = [handle, ctypes.c_int, ctypes.c_void_p]
    options = _Options()
    lib.et_runtime_default_options(ref(options))
    options.ort_library = str(ORT_LIBRARY).encode()
    rt = handle()
    assert lib.et_runtime_open(None, ref(options), ref(rt)) == INVALID_ARGUMENT and not rt.value
    assert b"must not be NULL" in lib.et_runtime_last_error(None)
    assert lib.et_runtime_open(str(tiny["bundle"]).encode(), ref(options), None) == INVALID_ARGUMENT
    for size in (4, ctypes.sizeof(_Options) + 8):
        bad = _Options.from_buffer_copy(options)
        bad.struct_size = size
        assert lib.et_runtime_open(str(tiny["bundle"]).encode(), ref(bad), ref(rt)) == INVALID_ARGUMENT
    assert lib.et_runtime_open(str(tiny["bundle"]).encode(), ref(options), ref(rt)) == 0, lib.et_runtime_last_error(None)
    try:
        params, summary = _TrainParams(), _Summary()
        lib.et_runtime_default_train_params(rt, ref(params))
        assert params.struct_size == ctypes.sizeof(_TrainParams)  # the layout above is the header's
        assert (params.lr_auto, params.eps_auto, params.guard) == (1, 0, 1)  # the bundle says lr "auto"
        for call in (lambda: lib.et_runtime_train(None, ref(params), None), lambda: lib.et_runtime_step(None, None),
                     lambda: lib.et_runtime_summary(None, ref(summary)), lambda: lib.et_runtime_set_train_params(rt, None),
                     lambda: lib.et_runtime_train(rt, None, None), lambda: lib.et_runtime_evaluate(rt, 0, None),
                     lambda: lib.et_runtime_summary(rt, None), lambda: lib.et_runtime_summary(rt, ref(summary))):
            assert call() == INVALID_ARGUMENT  # the summary's struct_size is the caller's to set: 0 here
        assert lib.et_runtime_notes(None) == b""
        assert lib.et_runtime_load_jsonl(rt, 0, str(tiny["train_ids"]).encode()) == 0
        params.steps, params.batch_size = 3, 8
        for size in (8, _TrainParams.lr_auto.offset - 8, ctypes.sizeof(_TrainParams) + 8):
            params.struct_size = size
            assert lib.et_runtime_train(rt, ref(params), None) == INVALID_ARGUMENT
            assert b"struct_size" in lib.et_runtime_last_error(rt)
        params.struct_size = _TrainParams.lr_auto.offset  # ET_TRAIN_PARAMS_V1_SIZE: its fields only
        params.lr, params.eps = 1e-3, 1e-3
        assert lib.et_runtime_train(rt, ref(params), None) == 0, lib.et_runtime_last_error(rt)
        summary.struct_size = ctypes.sizeof(_Summary)
        assert lib.et_runtime_summary(rt, ref(summary)) == 0
        assert summary.lr == 1e-3 and not summary.calibrated and summary.lr_scale == 1.0 and not summary.kept_best
        assert lib.et_runtime_notes(rt) == b""
    finally:
        lib.et_runtime_free(rt)
    lib.et_runtime_free(None)  # a no-op


# -- text for causal-LM bundles: verbaliser classification and prompt/completion, tokenised in C++ ---------------


def _prompt_records() -> list[dict]:
    """Prompt/completion records cut from the LM phrases at varied characters (mid-word too: a token then holds
    both sides and is a target), and one whose prompt alone fills max_length (left out by both runtimes)."""
    rows = []
    for k, phrase in enumerate(LM_PHRASES * 4):
        cut = 3 + (5 * k) % (len(phrase) - 4)
        rows.append({"prompt": phrase[:cut], "completion": phrase[cut:]})
    return rows + [{"prompt": "one two three " * 60, "completion": "four"}]


@pytest.fixture(scope="module")
def lm_text(tmp_path_factory):
    """The suite's tiny LM with a WordPiece tokenizer.json and an eos token ([SEP]), bundled with a verbaliser
    (for sentiment text) and without (for prompt/completion and {"text"} records)."""
    from edgetune.bundle.build import BundleOptions, bundle
    from edgetune.config import ModelOptions

    d = tmp_path_factory.mktemp("runtime-lm")
    paths = make_lm_bundle(d / "src", n_train=16, n_dev=8)
    _to_wordpiece(paths["tokenizer"])
    (d / "src" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "[SEP]"}))
    out = {"sentiment": write_jsonl(d / "sentiment.jsonl", make_sentiment_task(24, 3)),
           "sentiment_dev": write_jsonl(d / "sentiment_dev.jsonl", make_sentiment_task(16, 4)),
           "prompts": write_jsonl(d / "prompts.jsonl", _prompt_records()), "text": paths["train"]}
    for name, extra in (("verbal", {"verbalizer": "negative=bad,positive=good", "template": "{text} it was"}),
                        ("plain", {})):
        bundle(BundleOptions(onnx=str(paths["model"]), trainable="last:1", output=d / name,
                             model=ModelOptions(threads=1, **extra)))
        out[name] = d / name
    return out


def _c_examples(build: Path, bundle: Path, data: Path) -> tuple[list[tuple[list, list, int]], str]:
    """(ids, token labels, class) of each example et_runtime_load_jsonl made of data, and its warning ("" if none)."""
    lib = ctypes.CDLL(str(build / "libedgetune.so"))
    handle, i64p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64)
    lib.et_runtime_open.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(handle)]
    lib.et_runtime_last_error.argtypes, lib.et_runtime_last_error.restype = [handle], ctypes.c_char_p
    lib.et_runtime_load_jsonl.argtypes = [handle, ctypes.c_int, ctypes.c_char_p]
    lib.et_runtime_num_examples.argtypes = [handle, ctypes.c_int, ctypes.POINTER(ctypes.c_uint64)]
    lib.et_runtime_example.argtypes = [handle, ctypes.c_int, ctypes.c_uint64, ctypes.POINTER(i64p), ctypes.POINTER(i64p),
                                       ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_int64)]
    lib.et_runtime_free.argtypes = [handle]
    options = _Options()
    lib.et_runtime_default_options(ctypes.byref(options))
    options.ort_library = str(ORT_LIBRARY).encode()
    rt = handle()
    assert lib.et_runtime_open(str(bundle).encode(), ctypes.byref(options), ctypes.byref(rt)) == 0, \
        lib.et_runtime_last_error(None)
    try:
        assert lib.et_runtime_load_jsonl(rt, 0, str(data).encode()) == 0, lib.et_runtime_last_error(rt)
        warning = lib.et_runtime_last_error(rt).decode()
        count, ids, labels, n, cls = ctypes.c_uint64(), i64p(), i64p(), ctypes.c_size_t(), ctypes.c_int64()
        lib.et_runtime_num_examples(rt, 0, ctypes.byref(count))
        rows = []
        for i in range(count.value):
            assert lib.et_runtime_example(rt, 0, i, ctypes.byref(ids), ctypes.byref(labels), ctypes.byref(n),
                                          ctypes.byref(cls)) == 0
            rows.append((ids[:n.value], labels[:n.value] if labels else ids[:n.value], cls.value))
    finally:
        lib.et_runtime_free(rt)
    return rows, warning


@pytest.mark.parametrize("bundle,data", [("verbal", "sentiment"), ("plain", "prompts"), ("plain", "text")])
def test_lm_text_is_encoded_as_python_encodes_it(runtime_build, lm_text, bundle, data):
    """Token ids, token labels (the verbaliser's word, a completion's tokens by the tokenizer's offsets, eos
    appended; every token of a {"text"}) and classes from the C++ encoding equal edgetune's; the record whose
    completion lies beyond max_length is left out by both, the C runtime saying so as tune does."""
    from edgetune.tuner import Tuner

    rows, warning = _c_examples(runtime_build, lm_text[bundle], lm_text[data])
    expected = Tuner.from_bundle(lm_text[bundle], threads=1).load_data(lm_text[data])
    classes = expected.classes if expected.classes is not None else [0] * len(expected)
    assert rows == [(list(map(int, i)), list(map(int, lab)), int(c))
                    for i, lab, c in zip(expected.ids, expected.token_labels, classes)]
    if data == "prompts":
        assert any(lab[0] == -100 and lab[-1] == 3 for _, lab, _ in rows)  # masked prompts, eos [SEP] a target
        max_length = json.loads((lm_text[bundle] / "manifest.json").read_text())["tokenizer"]["max_length"]
        assert warning == (f"warning: {lm_text['prompts']}:{len(_prompt_records())}: completion entirely beyond "
                           f"max_length {max_length}; 1 example(s) skipped")
    else:
        assert warning == ""


@pytest.mark.parametrize("bundle,data", [("verbal", "sentiment"), ("plain", "prompts")])
def test_lm_text_tunes_and_evaluates_as_python(runtime_build, lm_text, tmp_path, bundle, data):
    """Text JSONL into an LM bundle: the C runtime's curve and tuned slice are tune --bundle's bit for bit, and its
    evaluation is eval's (a verbaliser's accuracy: argmax over its words' tokens)."""
    dev = lm_text["sentiment_dev" if bundle == "verbal" else "prompts"]
    py = run_cli("tune", "--bundle", lm_text[bundle], "--data", lm_text[data], "--eval-data", dev, "--output-dir",
                 tmp_path / "py", "--steps", 4, "--schedule", "constant",
                 *[x for kv in FLAGS.items() for x in kv])
    assert py.returncode == 0, py.stderr
    c = tune_c(runtime_build, lm_text[bundle], lm_text[data], "--eval", dev, "--steps", 4, "--out", tmp_path / "c")
    assert c.returncode == 0, c.stderr
    assert_same_run(c.stdout, tmp_path / "py", tmp_path / "c")
    after = next(line.split() for line in c.stdout.splitlines() if line.startswith("eval after"))
    metrics = json.loads((tmp_path / "py" / "summary.json").read_text())["result"]["after"]
    assert float(after[3]) == pytest.approx(metrics["loss"], rel=1e-6)
    if bundle == "verbal":
        assert float(after[5]) == metrics["accuracy"]


def test_chat_records_are_refused_in_one_line(runtime_build, lm_text, tmp_path):
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "the cat"}]}) + "\n")
    proc = tune_c(runtime_build, lm_text["plain"], data, "--steps", 1)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert f"{data}:1: {{\"messages\"}} records are rendered by the model's Jinja chat template" in proc.stderr
