"""The bad-input corpus for data and models: non-finite numbers, labels that would change meaning silently,
errors that used to come late or as internal errors, and hostile records and chat templates.

Every case runs the real ``edgetune`` (or the Python API) on inputs under a :class:`Snapshot` and asserts one
``edgetune: error:`` line naming the file, line, flag or tensor, the error class's exit code, and untouched
inputs. The memory cases run under an address-space limit, so a regression is a MemoryError or a kill here.
"""

import json
import os
import resource
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from safetensors import safe_open

from edgetune import Tuner
from edgetune.artifacts.checkpoint import save_checkpoint
from edgetune.data import ChatTemplate, LabelSet, read_examples
from edgetune.data.jsonl import MAX_LINE_BYTES, TASK_CLASSIFICATION
from edgetune.errors import DataError, ModelError, TrainingError
from edgetune.graph.model import LABELS_KEY
from edgetune.artifacts.sparse_diff import SparseDiff
from edgetune.artifacts.trajectory import Trajectory
from models.tiny import TINY_VOCAB, build_tokenizer, make_classifier_bundle, write_jsonl
from tests.badinput import Snapshot, assert_rejected

EVAL = ("eval", "--max-length", "32", "--threads", "1")
TUNE = ("tune", "--steps", "2", "--batch-size", "8", "--max-length", "32", "--threads", "1")
SPARSE = "sparse:density=0.05"
ADDRESS_SPACE = 1536 << 20  # 1.5 GB: a tokenised 15 MB record alone took more


def _copy(bundle, directory):
    """The model and tokenizer of ``bundle`` in a folder of their own (the files a case then edits)."""
    directory.mkdir(parents=True, exist_ok=True)
    for key in ("model", "tokenizer"):
        shutil.copy(bundle[key], directory / bundle[key].name)
    return directory


def _metadata(path):
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _limited(*args):
    """``edgetune ARGS`` in a fresh interpreter whose address space is capped at ADDRESS_SPACE."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    return subprocess.run([sys.executable, "-m", "edgetune.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, preexec_fn=limit)


@pytest.fixture(scope="module")
def nan_model(classifier, tmp_path_factory):
    """The tiny classifier with a NaN head bias: every logit is NaN."""
    directory = _copy(classifier, tmp_path_factory.mktemp("nan"))
    model = onnx.load(str(directory / "model.onnx"))
    bias = next(init for init in model.graph.initializer if init.name == "classifier.bias")
    bias.CopyFrom(numpy_helper.from_array(np.full(tuple(bias.dims), np.nan, np.float32), bias.name))
    onnx.save(model, str(directory / "model.onnx"))
    return directory


@pytest.fixture(scope="module")
def unnamed(tmp_path_factory):
    """A classifier whose model stores no label names."""
    return make_classifier_bundle(tmp_path_factory.mktemp("unnamed"), n_train=64, n_dev=64, labels=None)


@pytest.fixture(scope="module")
def sparse_run(classifier, tmp_path_factory):
    """A finished sparse run of the tiny classifier: run.etlog, sparse.etdiff, checkpoint."""
    out = tmp_path_factory.mktemp("sparse_run")
    tuner = Tuner.from_onnx(classifier["model"], trainable=SPARSE, max_length=32)
    tuner.fit(classifier["train"], output_dir=out, steps=3, lr=1e-2, batch_size=8)
    tuner.save(out)
    return out


# -- non-finite values ---------------------------------------------------------------------------


def test_eval_of_nan_logits_is_refused_naming_the_example(nan_model, classifier, cli):
    inputs = Snapshot(nan_model, classifier["dir"])
    proc = cli(*EVAL, "--onnx", nan_model / "model.onnx", "--data", classifier["dev"])
    assert_rejected(proc, "model.onnx", f"the loss on {classifier['dev']}:1 is nan", "non-finite logits")
    assert proc.stdout == ""  # no {"loss": NaN}: that is not JSON
    inputs.assert_unchanged()


def test_tune_on_nan_logits_stops_before_the_first_step(nan_model, classifier, cli, tmp_path):
    inputs = Snapshot(nan_model, classifier["dir"])
    proc = cli(*TUNE, "--onnx", nan_model / "model.onnx", "--data", classifier["train"],
               "--eval-data", classifier["dev"], "--output-dir", tmp_path / "out")
    assert_rejected(proc, "non-finite logits")
    assert not (tmp_path / "out" / "model.onnx").exists()
    inputs.assert_unchanged()


def test_api_evaluate_refuses_nan(nan_model, classifier):
    inputs = Snapshot(nan_model, classifier["dir"])
    tuner = Tuner.from_onnx(nan_model / "model.onnx", trainable=None, max_length=32)
    with pytest.raises(ModelError, match="non-finite logits"):
        tuner.evaluate(classifier["dev"])
    inputs.assert_unchanged()


def test_api_save_refuses_non_finite_weights_and_summaries(classifier, tmp_path):
    tuner = Tuner.from_onnx(classifier["model"], trainable="head", max_length=32)
    with pytest.raises(TrainingError, match="summary.json: the run's summary holds NaN"):
        tuner.save(tmp_path / "summary", {"result": {"after": {"loss": float("nan")}}})
    name = sorted(tuner.weights)[0]
    tuner.weights[name][...] = np.inf
    with pytest.raises(TrainingError, match=f"the tuned weights: tensor '{name}' holds"):
        tuner.save(tmp_path / "weights")
    assert not (tmp_path / "summary").exists() and not (tmp_path / "weights").exists()


def _edited_log(run, tmp_path, edit):
    """``run``'s trajectory log with ``edit(header, records)`` applied, written with a valid checksum."""
    log = Trajectory.read(run / "run.etlog")
    edit(log.header, log.records)
    path = tmp_path / "edited.etlog"
    path.write_bytes(Trajectory(log.header, log.records).to_bytes())
    return path


@pytest.mark.parametrize("edit, fragments", [
    (lambda header, records: setattr(records[0], "lr", float("nan")), ["step 0: lr is nan"]),
    (lambda header, records: records[1].grads.__setitem__(0, float("inf")),
     ["step 1: the projected gradient of query 0 is inf"]),
    (lambda header, records: header["config"].__setitem__("lr", float("nan")), ["corrupt trajectory log header"]),
    (lambda header, records: records[0].__dict__.update(lr=3e38, grads=[3e38] * len(records[0].grads)),
     ["the replayed weights", "non-finite"]),
], ids=["nan-lr", "inf-grad", "nan-config", "overflowing-lr"])
def test_replay_of_a_non_finite_log_writes_nothing(sparse_run, classifier, cli, tmp_path, edit, fragments):
    log = _edited_log(sparse_run, tmp_path, edit)
    inputs = Snapshot(sparse_run, classifier["dir"], log)
    proc = cli("replay", "--onnx", classifier["model"], "--log", log, "--output", tmp_path / "replayed")
    assert_rejected(proc, "edited.etlog", *fragments)
    assert not (tmp_path / "replayed" / "model.onnx").exists()
    inputs.assert_unchanged()


def test_apply_of_a_sparse_diff_with_nan_writes_nothing(sparse_run, classifier, cli, tmp_path):
    diff = SparseDiff.read(sparse_run / "sparse.etdiff")
    name, (indices, delta) = next(iter(diff.deltas.items()))
    delta = delta.copy()
    delta[0] = np.nan
    diff.deltas[name] = (indices, delta)
    diff.write(tmp_path / "nan.etdiff")
    inputs = Snapshot(sparse_run, classifier["dir"], tmp_path / "nan.etdiff")
    proc = cli("apply", "--onnx", classifier["model"], "--adapter", tmp_path / "nan.etdiff",
               "--output", tmp_path / "merged.onnx")
    assert_rejected(proc, "nan.etdiff", f"tensor '{name}' holds 1 non-finite value")
    assert not (tmp_path / "merged.onnx").exists()
    inputs.assert_unchanged()


def test_resume_from_a_nan_checkpoint_is_refused(classifier, cli, tmp_path):
    out = tmp_path / "out"
    first = cli(*TUNE, "--onnx", classifier["model"], "--data", classifier["train"], "--output-dir", out)
    assert first.returncode == 0, first.stderr
    path = out / "checkpoint.safetensors"
    with safe_open(str(path), framework="numpy") as handle:
        state = json.loads(handle.metadata()["state"])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    name = sorted(tensors)[0]
    tensors[name] = np.full_like(tensors[name], np.nan)
    save_checkpoint(path, tensors, state)
    inputs = Snapshot(classifier["dir"], out)
    proc = cli(*TUNE[:2], "4", *TUNE[3:], "--onnx", classifier["model"], "--data", classifier["train"],
               "--output-dir", out, "--resume")
    assert_rejected(proc, "checkpoint.safetensors", f"tensor '{name}'", "non-finite")
    inputs.assert_unchanged()


# -- wrong meanings --------------------------------------------------------------------------------


def test_eval_without_stored_names_refuses_string_labels(unnamed, cli):
    inputs = Snapshot(unnamed["dir"])
    proc = cli(*EVAL, "--onnx", unnamed["model"], "--data", unnamed["dev"])
    assert_rejected(proc, f"{unnamed['dev']}:1", "stores no label names", "--labels", "tune it first")
    inputs.assert_unchanged()


def test_eval_without_stored_names_takes_integer_labels_as_ids(unnamed, cli, tmp_path):
    rows = [json.loads(line) for line in unnamed["dev"].read_text().splitlines()]
    ids = write_jsonl(tmp_path / "ids.jsonl", [{**r, "label": ["negative", "positive"].index(r["label"])} for r in rows])
    proc = cli(*EVAL, "--onnx", unnamed["model"], "--data", ids)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["examples"] == len(rows)
    out_of_range = write_jsonl(tmp_path / "range.jsonl", [{"text": "good film", "label": 0},
                                                          {"text": "bad film", "label": 2}])
    assert_rejected(cli(*EVAL, "--onnx", unnamed["model"], "--data", out_of_range),
                    "range.jsonl:2", "label 2 is out of range")


def test_tuned_model_stores_its_labels_so_a_one_class_file_keeps_its_meaning(unnamed, cli, tmp_path):
    out = tmp_path / "tuned"
    tuned = cli(*TUNE, "--onnx", unnamed["model"], "--data", unnamed["train"], "--output-dir", out)
    assert tuned.returncode == 0, tuned.stderr
    assert json.loads(_metadata(out / "model.onnx")[LABELS_KEY]) == ["negative", "positive"]
    rows = [json.loads(line) for line in unnamed["dev"].read_text().splitlines()]
    parts = {label: write_jsonl(tmp_path / f"{label}.jsonl", [r for r in rows if r["label"] == label])
             for label in ("negative", "positive")}

    def correct(data):
        proc = cli(*EVAL, "--onnx", out / "model.onnx", "--data", data)
        assert proc.returncode == 0, proc.stderr
        metrics = json.loads(proc.stdout)
        return metrics["accuracy"] * metrics["examples"]

    # one-class files map their label through the stored names, not to class 0 of their own
    assert correct(parts["negative"]) + correct(parts["positive"]) == pytest.approx(correct(unnamed["dev"]))


@pytest.mark.parametrize("trainable, adapter", [(SPARSE, "sparse.etdiff"), ("lora:r=2,targets=q,v", "trainable.safetensors")],
                         ids=["sparse", "lora"])
def test_every_save_path_stores_the_labels(unnamed, cli, tmp_path, trainable, adapter):
    """Tuned, replayed and merged (edgetune apply) models of an unnamed base all carry the run's label names."""
    run = tmp_path / "run"
    tuned = cli(*TUNE, "--trainable", trainable, "--onnx", unnamed["model"], "--data", unnamed["train"],
                "--output-dir", run)
    assert tuned.returncode == 0, tuned.stderr
    replayed = cli("replay", "--onnx", unnamed["model"], "--log", run / "run.etlog", "--output", tmp_path / "re")
    assert replayed.returncode == 0, replayed.stderr
    merged = cli("apply", "--onnx", unnamed["model"], "--adapter", run / adapter, "--output", tmp_path / "merged.onnx")
    assert merged.returncode == 0, merged.stderr
    for model in (run / "model.onnx", tmp_path / "re" / "model.onnx", tmp_path / "merged.onnx"):
        assert json.loads(_metadata(model)[LABELS_KEY]) == ["negative", "positive"], model


def test_unknown_label_is_named_with_file_and_line(classifier, cli, tmp_path):
    data = write_jsonl(tmp_path / "dev.jsonl", [{"text": "good film", "label": "positive"},
                                                {"text": "meh", "label": "neutral"}])
    inputs = Snapshot(classifier["dir"], tmp_path)
    assert_rejected(cli(*EVAL, "--onnx", classifier["model"], "--data", data), "dev.jsonl:2", 'unknown label "neutral"')
    inputs.assert_unchanged()


@pytest.mark.parametrize("command", ["eval", "tune"])
def test_labelled_text_on_a_causal_lm_needs_a_verbalizer(lm, classifier, cli, tmp_path, command):
    inputs = Snapshot(lm["dir"], classifier["dir"])
    args = EVAL if command == "eval" else (*TUNE, "--output-dir", tmp_path / "out")
    proc = cli(*args, "--onnx", lm["model"], "--data", classifier["dev"])
    assert_rejected(proc, f"{classifier['dev']}:1", 'record has a "label"', "--verbalizer", "--task lm")
    inputs.assert_unchanged()


def test_labelled_text_on_a_causal_lm_trains_on_the_text_when_asked(lm, classifier, cli):
    proc = cli(*EVAL, "--task", "lm", "--onnx", lm["model"], "--data", classifier["dev"])
    assert proc.returncode == 0, proc.stderr
    assert "perplexity" in json.loads(proc.stdout)


# -- errors that came late, or as internal errors -----------------------------------------------------


@pytest.mark.parametrize("task, model, rank", [("classification", "lm", 3), ("lm", "classifier", 2)])
def test_task_that_contradicts_the_model_is_refused_up_front(lm, classifier, cli, tmp_path, task, model, rank):
    bundle = lm if model == "lm" else classifier
    inputs = Snapshot(lm["dir"], classifier["dir"])
    for args in (EVAL, (*TUNE, "--output-dir", tmp_path / "out")):
        proc = cli(*args, "--task", task, "--onnx", bundle["model"], "--data", bundle["dev"])
        assert_rejected(proc, "model.onnx", f"--task {task} does not fit", f"rank {rank}")
    inputs.assert_unchanged()
    with pytest.raises(ModelError, match=f"--task {task} does not fit"):
        Tuner.from_onnx(bundle["model"], trainable=None, task=task)


@pytest.mark.parametrize("cut", ["empty", "half", "no-opset"])
def test_empty_or_truncated_onnx_is_not_a_valid_model(classifier, cli, tmp_path, cut):
    whole = classifier["model"].read_bytes()
    if cut == "no-opset":  # cut between two fields: protobuf parses what is left
        model = onnx.load(str(classifier["model"]))
        del model.opset_import[:]
        whole = model.SerializeToString()
    path = tmp_path / "model.onnx"
    path.write_bytes({"empty": b"", "half": whole[: len(whole) // 2], "no-opset": whole}[cut])
    shutil.copy(classifier["tokenizer"], tmp_path / "tokenizer.json")
    inputs = Snapshot(tmp_path)
    assert_rejected(cli(*EVAL, "--onnx", path, "--data", classifier["dev"]), "model.onnx", "not a valid ONNX model")
    # generate hands the file to ONNX Runtime, whose own words name a missing opset
    reason = "Missing opset" if cut == "no-opset" else "not a valid ONNX model"
    assert_rejected(cli("generate", "--onnx", path, "--prompt", "the movie"), "model.onnx", reason)
    assert_rejected(cli("plan", "--onnx", path), "model.onnx", "not a valid ONNX model")
    inputs.assert_unchanged()


AS_ROOT = os.geteuid() == 0


@pytest.mark.skipif(AS_ROOT and shutil.which("setpriv") is None, reason="root reads any file; needs setpriv")
def test_unreadable_model_is_one_line(classifier, sparse_run, tmp_path):
    model = _copy(classifier, tmp_path / "model") / "model.onnx"
    model.chmod(0)
    inputs = Snapshot(tmp_path)
    caps = "-dac_override,-dac_read_search"  # root reads any file unless these are dropped
    prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"] if AS_ROOT else []
    for args in ((*EVAL, "--data", classifier["dev"]), ("generate", "--prompt", "the movie"),
                 ("replay", "--log", sparse_run / "run.etlog", "--output", tmp_path / "re"),
                 ("apply", "--adapter", sparse_run / "sparse.etdiff", "--output", tmp_path / "merged.onnx")):
        proc = subprocess.run([*prefix, sys.executable, "-m", "edgetune.cli", *map(str, args), "--onnx", str(model)],
                              capture_output=True, text=True, timeout=300)
        assert_rejected(proc, "model.onnx", "cannot read the model (Permission denied)")
    model.chmod(0o644)
    inputs.assert_unchanged()


def test_tokenizer_that_is_not_json(classifier, cli, tmp_path):
    (tmp_path / "tokenizer.json").write_text("not json {")
    inputs = Snapshot(tmp_path, classifier["dir"])
    proc = cli(*EVAL, "--onnx", classifier["model"], "--tokenizer", tmp_path / "tokenizer.json",
               "--data", classifier["dev"])
    assert_rejected(proc, "tokenizer.json", "not a valid tokenizer.json")
    inputs.assert_unchanged()


def test_non_utf8_line_is_named(classifier, cli, tmp_path):
    path = tmp_path / "dev.jsonl"
    path.write_bytes(b'{"text": "good film", "label": "positive"}\n{"text": "bad \xff film", "label": "negative"}\n')
    inputs = Snapshot(tmp_path, classifier["dir"])
    assert_rejected(cli(*EVAL, "--onnx", classifier["model"], "--data", path), "dev.jsonl:2: not valid UTF-8")
    inputs.assert_unchanged()


@pytest.mark.parametrize("line, fragment", [
    ('{"text": "a", "label": ' + "[" * 100000 + "]" * 100000 + "}", "nested too deeply"),
    ('{"text": "a", "label": ' + "9" * 5000 + "}", "4300 digits"),
], ids=["deep", "long-integer"])
def test_hostile_json_line_is_named(classifier, cli, tmp_path, line, fragment):
    path = tmp_path / "dev.jsonl"
    path.write_text('{"text": "good film", "label": "positive"}\n' + line + "\n")
    inputs = Snapshot(tmp_path, classifier["dir"])
    assert_rejected(cli(*EVAL, "--onnx", classifier["model"], "--data", path), "dev.jsonl:2: invalid JSON", fragment)
    inputs.assert_unchanged()


def test_integer_labels_of_a_headless_width_are_bounded(tmp_path):
    path = write_jsonl(tmp_path / "ids.jsonl", [{"text": "good film", "label": 0}, {"text": "bad", "label": 10**30}])
    with pytest.raises(DataError, match=r"ids\.jsonl:2: label 10+ implies more than 65,536 classes"):
        LabelSet.from_examples(read_examples(path, TASK_CLASSIFICATION), None)


def test_generate_on_a_classifier_is_refused_before_generating(classifier, cli):
    inputs = Snapshot(classifier["dir"])
    proc = cli("generate", "--onnx", classifier["model"], "--prompt", "the movie")
    assert_rejected(proc, "model.onnx", "not a classifier")
    assert proc.stdout == ""
    inputs.assert_unchanged()


def test_generate_with_another_models_tokenizer(lm, cli, tmp_path):
    build_tokenizer(tmp_path / "tokenizer.json", [*TINY_VOCAB, *(f"extra{i}" for i in range(100))])
    inputs = Snapshot(tmp_path, lm["dir"])
    proc = cli("generate", "--onnx", lm["model"], "--tokenizer", tmp_path / "tokenizer.json", "--prompt", "the movie")
    assert_rejected(proc, "tokenizer.json", "does not belong to the model")
    inputs.assert_unchanged()


# -- chat templates ----------------------------------------------------------------------------------


CHAT = [{"role": "user", "content": "the movie"}, {"role": "assistant", "content": "was great"}]
LOOP_OUTPUT = "{% for i in range(100000) %}{% for j in range(100000) %}{{ messages }}{% endfor %}{% endfor %}"
LOOP_SILENT = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


@pytest.fixture
def chat_lm(lm, tmp_path):
    """The tiny LM in a folder of its own with a one-conversation data file; the case writes the template."""
    directory = _copy(lm, tmp_path / "model")
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT}])
    return directory, data


@pytest.mark.parametrize("template, fragments", [
    ("{% include 'other.jinja' %}", ["chat_template.jinja:1", "{% include %}"]),
    ("{% import 'macros.jinja' as m %}{{ m.x() }}", ["chat_template.jinja:1", "{% import %}"]),
    ("{% if true %}\n{% extends 'base.jinja' %}{% endif %}", ["chat_template.jinja:2", "{% extends %}"]),
    (LOOP_OUTPUT, ["chat_template.jinja", "writes more than", "chat.jsonl:1"]),
    ("{{ 'x' * 20000000000 }}", ["chat_template.jinja", "repeats a value 20000000000 times"]),
    ("{{ 'x'.center(20000000000) }}", ["chat_template.jinja", "passes 20000000000"]),
    ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
     ["chat_template.jinja", "grows namespace attribute 's'"]),
    (LOOP_SILENT, ["chat_template.jinja", "runs longer than 10 s"]),
], ids=["include", "import", "extends", "loop", "multiply", "center", "doubling", "silent-loop"])
def test_hostile_chat_template_is_one_line_in_bounded_memory(chat_lm, template, fragments):
    _eval_rejects_template(chat_lm, template.encode(), fragments, _limited)


def _eval_rejects_template(chat_lm, source: bytes, fragments, run) -> None:
    """``eval`` (started by ``run``) of the chat data with ``source`` as the template: one line, inputs untouched."""
    directory, data = chat_lm
    (directory / "chat_template.jinja").write_bytes(source)
    inputs = Snapshot(directory, data)
    assert_rejected(run(*EVAL, "--onnx", directory / "model.onnx", "--data", data), *fragments)
    inputs.assert_unchanged()


@pytest.mark.parametrize("source, fragments", [
    (b"{{ messages }}\xff", ["chat_template.jinja", "not valid UTF-8"]),
    (b"{% if true %}" * 5000, ["chat_template.jinja", "nests too deeply"]),
    (b"x" * (5 << 20), ["chat_template.jinja", "longer than 1,048,576 characters"]),
], ids=["not-utf8", "nested", "huge"])
def test_unusable_chat_template_file(chat_lm, cli, source, fragments):
    _eval_rejects_template(chat_lm, source, fragments, cli)


def test_generate_chat_with_an_include_is_refused(chat_lm, cli):
    directory, _ = chat_lm
    (directory / "chat_template.jinja").write_text("{% include 'system.jinja' %}{{ messages[0].content }}")
    inputs = Snapshot(directory)
    proc = cli("generate", "--onnx", directory / "model.onnx", "--prompt", "the movie", "--chat")
    assert_rejected(proc, "chat_template.jinja:1", "{% include %}")
    inputs.assert_unchanged()


def test_api_chat_template_refuses_include():
    with pytest.raises(ModelError, match=r"t\.jinja:1: chat template uses \{% include %\}"):
        ChatTemplate("{% include 'x' %}", "t.jinja")


# -- records too large to tokenise whole -----------------------------------------------------------


def _long_text(chars):
    words = "the movie was great and the plot awful boring film actor".split()
    reps = chars // len(" ".join(words)) + 1
    return " ".join(words * reps)[:chars]


def test_line_over_the_limit_is_refused_in_bounded_memory(classifier, tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "w") as handle:
        handle.write(json.dumps({"text": "good film", "label": "positive"}) + "\n")
        handle.write(json.dumps({"text": _long_text(50_000_000), "label": "negative"}) + "\n")
    inputs = Snapshot(tmp_path, classifier["dir"])
    assert_rejected(_limited(*EVAL, "--onnx", classifier["model"], "--data", path), "huge.jsonl:2", "16 MiB")
    inputs.assert_unchanged()
    with pytest.raises(DataError, match="huge.jsonl:2: line is longer"):
        read_examples(path, TASK_CLASSIFICATION)
    assert MAX_LINE_BYTES == 16 << 20  # docs/language-models.md and the docstring promise this limit


@pytest.mark.parametrize("shape", ["text", "lm", "verbalizer", "messages"])
def test_a_15_mb_record_is_cut_before_tokenising(classifier, lm, tmp_path, shape):
    text = _long_text(15_000_000)
    rows = {
        "text": [{"text": text, "label": "positive"}, {"text": "bad film", "label": "negative"}],
        "lm": [{"text": text}],
        "verbalizer": [{"text": text, "label": "positive"}, {"text": "bad film", "label": "negative"}],
        "messages": [{"messages": [{"role": "user", "content": "the movie"}, {"role": "assistant", "content": text}]}],
    }[shape]
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    model = classifier["model"] if shape == "text" else lm["model"]
    args = [*EVAL, "--onnx", model, "--data", data]
    if shape == "verbalizer":
        args += ["--verbalizer", "negative=awful,positive=great"]
    if shape == "messages":
        directory = _copy(lm, tmp_path / "model")
        (directory / "chat_template.jinja").write_text(
            "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant: {% endif %}")
        args[args.index(model)] = directory / "model.onnx"
    proc = _limited(*args)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["examples"] == len(rows)
