"""Outputs of a LoRA run: merged model.onnx, ORT multi-LoRA adapter, PEFT folder, and `edgetune apply`."""

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgetune import Tuner
from edgetune.artifacts.adapters import LORA_GRAPH, ORT_ADAPTER, PEFT_DIR, Adapter, apply_adapter, merge_adapter
from edgetune.errors import EdgetuneError, ModelError
from edgetune.graph.loss import labelled_positions
from models.tiny import build_classifier, build_tokenizer, make_lm_texts, write_jsonl

CPU = ["CPUExecutionProvider"]
ATOL = 1e-5  # the merged weights W + s·(BA)ᵀ against the graph computing xW + s·(xAᵀ)Bᵀ, in fp32


def _session(path):
    so = ort.SessionOptions()
    so.log_severity_level = 3  # model_lora.onnx's overridable inputs make ORT warn, by design
    return ort.InferenceSession(str(path), so, providers=CPU)


def _logits(path, feeds, run_options=None):
    return _session(path).run(["logits"], feeds, run_options)[0]


@pytest.fixture(scope="module")
def run(classifier, tmp_path_factory):
    """head + LoRA tuned on the tiny classifier and saved; the tuned graph's logits on a dev batch."""
    out = tmp_path_factory.mktemp("lora_run")
    tuner = Tuner.from_onnx(classifier["model"], trainable="head,lora:r=4,targets=q,v,o")
    tuner.fit(classifier["train"], steps=40, lr=1e-2, eps=1e-3, queries=2)
    tuner.save(out)
    batch = next(tuner.load_data(classifier["dev"]).batches(32, tuner.info.data_inputs))
    _, tuned = tuner.engine.loss_and_logits(batch)
    base = _logits(classifier["model"], batch.inputs)
    assert np.abs(tuned - base).max() > 1e-3, "tuning should have moved the logits"
    return {"out": out, "feeds": batch.inputs, "tuned": tuned, "base": base, "tuner": tuner}


def test_merged_model_is_the_plain_architecture_with_the_tuned_logits(run, classifier):
    merged = onnx.load(str(run["out"] / "model.onnx"))
    base = onnx.load(str(classifier["model"]))
    assert [n.op_type for n in merged.graph.node] == [n.op_type for n in base.graph.node]
    assert sorted(i.name for i in merged.graph.initializer) == sorted(i.name for i in base.graph.initializer)
    np.testing.assert_allclose(_logits(run["out"] / "model.onnx", run["feeds"]), run["tuned"], rtol=0, atol=ATOL)


def test_ort_adapter_on_the_lora_graph_gives_tuned_logits_and_without_it_the_base(run):
    out = run["out"]
    adapter = ort.LoraAdapter()
    adapter.Load(str(out / ORT_ADAPTER))
    options = ort.RunOptions()
    options.add_active_adapter(adapter)
    session = _session(out / LORA_GRAPH)
    with_adapter = session.run(["logits"], run["feeds"], options)[0]
    without = session.run(["logits"], run["feeds"])[0]
    np.testing.assert_allclose(with_adapter, run["tuned"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(without, run["base"], rtol=0, atol=1e-6)
    params = ort.AdapterFormat.read_adapter(str(out / ORT_ADAPTER)).get_parameters()
    assert "bert.encoder.layer.2.attention.output.dense.lora_A.weight" in params
    assert "classifier.bias" in params  # the tuned head travels in the adapter, under its ONNX name


@pytest.mark.parametrize("source", [ORT_ADAPTER, PEFT_DIR, "trainable.safetensors"])
def test_apply_merges_every_adapter_form_into_the_base(run, classifier, tmp_path, source):
    merged = apply_adapter(classifier["model"], run["out"] / source, tmp_path / "merged.onnx")
    np.testing.assert_allclose(_logits(merged, run["feeds"]), run["tuned"], rtol=0, atol=ATOL)
    assert [p for p in os.listdir(tmp_path) if p != "merged.onnx"] == [], "no temp files left behind"


def test_peft_folder_layout(run):
    peft = run["out"] / PEFT_DIR
    config = json.loads((peft / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "SEQ_CLS"
    assert (config["r"], config["lora_alpha"]) == (4, 8.0)
    # 'dense' would also catch the intermediate/output/pooler layers: the attention output is named in full
    assert config["target_modules"] == sorted(
        f"bert.encoder.layer.{i}.attention.{m}" for i in range(3) for m in ("self.query", "self.value", "output.dense"))
    assert config["modules_to_save"] == ["bert.pooler.dense", "classifier"]
    from safetensors.numpy import load_file

    tensors = load_file(str(peft / "adapter_model.safetensors"))
    a = tensors["base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"]
    b = tensors["base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight"]
    assert a.shape == (4, 32) and b.shape == (32, 4)
    np.testing.assert_array_equal(b, run["tuner"].weights["bert.encoder.layer.0.attention.self.query.lora_B.weight"])
    assert tensors["base_model.model.classifier.weight"].shape == (2, 32)  # nn.Linear's [out, in]


def test_lora_fa_outputs_rebuild_the_frozen_a(lm, tmp_path):
    tuner = Tuner.from_onnx(lm["model"], trainable="lora:r=2,targets=q,v,down,fa,seed=7")
    tuner.fit(lm["train"], steps=20, lr=2e-2, eps=1e-3, batch_size=8)
    tuner.save(tmp_path / "out")
    batch = next(tuner.load_data(lm["dev"]).batches(8, tuner.info.data_inputs))
    _, tuned = tuner.engine.loss_and_logits(batch)  # the tuning graph's logits at the scored positions
    scored = labelled_positions(batch.labels)
    assert np.abs(tuned - _logits(lm["model"], batch.inputs)[scored]).max() > 1e-4
    np.testing.assert_allclose(_logits(tmp_path / "out" / "model.onnx", batch.inputs)[scored], tuned, rtol=0, atol=ATOL)
    for source in (ORT_ADAPTER, PEFT_DIR, "trainable.safetensors"):  # the last holds B only
        merged = apply_adapter(lm["model"], tmp_path / "out" / source, tmp_path / f"{source}.onnx")
        np.testing.assert_allclose(_logits(merged, batch.inputs)[scored], tuned, rtol=0, atol=ATOL, err_msg=source)


def test_mismatched_adapters_are_one_line_errors(run, classifier, lm, tmp_path):
    wider = tmp_path / "wide.onnx"
    build_classifier(wider, hidden=64, mangle_names=True)
    with pytest.raises(ModelError, match=r"adapter tensor '[^']+' has shape \[32, 2\], .*wide.onnx has \[64, 2\]"):
        apply_adapter(wider, run["out"] / ORT_ADAPTER, tmp_path / "x.onnx")  # the tuned head is checked first
    module = "bert.encoder.layer.0.attention.self.query"
    lora_only = Adapter({module: (np.zeros((4, 32), np.float32), np.zeros((32, 4), np.float32), 1.0)})
    with pytest.raises(ModelError, match=rf"adapter tensor '{module}.lora_A.weight' has shape \[4, 32\], "
                                         rf"layer '{module}' \(64→64, r=4\) needs \[4, 64\]"):
        merge_adapter(onnx.load(str(wider)), lora_only, wider)
    with pytest.raises(ModelError, match=r"adapter tensor 'base_model.model.bert.pooler.dense.bias' names no linear"):
        apply_adapter(lm["model"], run["out"] / PEFT_DIR, tmp_path / "x.onnx")
    with pytest.raises(ModelError, match=rf"adapter tensor '{module}.lora_A.weight': .* has no linear layer '{module}' "
                                         r"\(linear layers: self_attn.q_proj, "):
        merge_adapter(onnx.load(str(lm["model"])), lora_only, lm["model"])
    with pytest.raises(EdgetuneError, match="adapter not found"):
        apply_adapter(classifier["model"], tmp_path / "missing.onnx_adapter", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_cli_apply(cli, run, classifier, lm, tmp_path):
    ok = cli("apply", "--onnx", classifier["model"], "--adapter", run["out"] / PEFT_DIR, "--output", tmp_path / "m.onnx")
    assert ok.returncode == 0, ok.stderr
    np.testing.assert_allclose(_logits(tmp_path / "m.onnx", run["feeds"]), run["tuned"], rtol=0, atol=ATOL)
    bad = cli("apply", "--onnx", lm["model"], "--adapter", run["out"] / ORT_ADAPTER, "--output", tmp_path / "n.onnx")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "adapter tensor" in bad.stderr and not (tmp_path / "n.onnx").exists()


def test_peft_folder_loads_in_peft_on_the_hf_model(tmp_path):
    """Tiny random LlamaForCausalLM → edgetune export → LoRA tune → PEFT folder → PeftModel in torch."""
    torch = pytest.importorskip("torch", reason="export extra not installed: pip install 'edgetune[export]'")
    transformers = pytest.importorskip("transformers", reason="export extra not installed")
    peft = pytest.importorskip("peft", reason="export extra not installed: pip install 'edgetune[export]'")
    from edgetune.export import export_causal_lm

    hf = tmp_path / "hf"
    tok = build_tokenizer(None, cls_sep=False)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                         eos_token="[SEP]", bos_token="[CLS]").save_pretrained(hf)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                      max_position_embeddings=64)
    transformers.LlamaForCausalLM(config).save_pretrained(hf)
    onnx_path = export_causal_lm(hf, tmp_path / "onnx")
    train = write_jsonl(tmp_path / "train.jsonl", make_lm_texts(32))

    tuner = Tuner.from_onnx(onnx_path, trainable="lora:r=4,alpha=8,targets=q,v,o,gate,up,down")
    tuner.fit(train, steps=10, lr=5e-2, eps=1e-3, batch_size=8)
    for name in tuner.weights:  # a sizeable, known adapter on top of the tuned one
        if "lora_B" in name:
            tuner.weights[name] += np.random.default_rng(0).normal(0, 0.05, tuner.weights[name].shape).astype(np.float32)
    tuner.save(tmp_path / "out")
    config = json.loads((tmp_path / "out" / PEFT_DIR / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["base_model_name_or_path"] == str(hf.resolve())
    assert config["target_modules"] == sorted(["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

    ids = np.array([[tok.token_to_id(w) for w in "the cat sat on the mat".split()]], np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None]}
    names = {i.name for i in _session(onnx_path).get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in names}
    tuned = _logits(tmp_path / "out" / "model.onnx", feeds)
    base_model = transformers.LlamaForCausalLM.from_pretrained(hf).eval()
    with torch.no_grad():
        base = base_model(torch.from_numpy(ids)).logits.numpy()
        model = peft.PeftModel.from_pretrained(base_model, tmp_path / "out" / PEFT_DIR).eval()
        got = model(torch.from_numpy(ids)).logits.numpy()
    assert np.abs(tuned - base).max() > 1e-2, "the adapter should change the logits"
    np.testing.assert_allclose(got, tuned, rtol=0, atol=1e-4)


def test_no_peft_folder_for_a_tensor_peft_cannot_name_and_a_warning_says_why(classifier, tmp_path, caplog):
    """A LayerNorm gain has no place in PEFT's modules_to_save; the other outputs still carry it."""
    tuner = Tuner.from_onnx(classifier["model"], trainable="*LayerNorm.weight,lora:r=2,targets=q")
    tuner.fit(classifier["train"], steps=2, lr=1e-2)
    with caplog.at_level("WARNING", logger="edgetune.artifacts.adapters"):
        tuner.save(tmp_path)
    assert not (tmp_path / PEFT_DIR).exists()
    assert (tmp_path / ORT_ADAPTER).is_file() and (tmp_path / "model.onnx").is_file()
    assert any("no peft/ folder" in r.getMessage() and "LayerNorm" in r.getMessage() for r in caplog.records)
