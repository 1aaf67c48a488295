"""``edgetune generate``: greedy parity with Hugging Face, seeded sampling, the KV-cache graph after tuning.

Exports a tiny random Llama built here (the ``export`` extra); skipped only when that is not installed.
"""

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch", reason="export extra not installed: pip install 'edgetune[export]'")
transformers = pytest.importorskip("transformers", reason="export extra not installed: pip install 'edgetune[export]'")
pytest.importorskip("optimum.exporters.onnx", reason="export extra not installed: pip install 'edgetune[export]'")

from edgetune.export import export_causal_lm  # noqa: E402
from edgetune.graph.relink import WITH_PAST, linked_to  # noqa: E402
from edgetune.generate import GenerationConfig, GenerationError, Generator, choose  # noqa: E402
from models.tiny import make_lm_texts, write_jsonl  # noqa: E402
from models.tiny_hf import make_tiny_llama  # noqa: E402

PROMPT = "the movie was good"


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    base = tmp_path_factory.mktemp("gen")
    source = make_tiny_llama(base / "hf", seed=4)  # seed 4: greedy text that changes token late (KV reuse shows)
    return source, export_causal_lm(source, base / "onnx")


def _hf_greedy(source, ids, n):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(source)).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=n)
    tokens = out[0, len(ids):].tolist()
    return tokens[:-1] if tokens and tokens[-1] == model.generation_config.eos_token_id else tokens


@pytest.mark.parametrize("use_past", [True, False], ids=["kv-cache", "recompute"])
def test_greedy_tokens_equal_hugging_face(llama, use_past):
    source, model = llama
    generator = Generator(model, use_past=use_past)
    assert generator.uses_past is use_past
    ids = generator.encode(PROMPT)
    got = list(generator.generate(ids, GenerationConfig(max_new_tokens=24)))
    want = _hf_greedy(source, ids, 24)
    assert got == want
    assert len(got) == 24 and len(set(got)) > 3  # a real sequence, not one token repeated


def test_kv_cache_is_picked_by_default_and_refused_when_unlinked(llama, tmp_path):
    _, model = llama
    assert Generator(model).uses_past
    lone = tmp_path / "model.onnx"
    lone.write_bytes(model.read_bytes())
    (tmp_path / "tokenizer.json").write_bytes((model.parent / "tokenizer.json").read_bytes())
    (tmp_path / WITH_PAST).write_bytes((model.parent / WITH_PAST).read_bytes())
    assert linked_to(tmp_path / WITH_PAST, lone)  # a copied folder keeps working
    rewritten = onnx.load(str(lone))  # a rewritten model.onnx: the byte offsets no longer hold
    rewritten.metadata_props.add(key="note", value="rewritten")
    onnx.save(rewritten, str(lone))
    assert not Generator(lone).uses_past
    with pytest.raises(Exception, match="no KV-cache graph linked"):
        Generator(lone, use_past=True)


def test_sampling_is_seeded(llama):
    _, model = llama
    generator = Generator(model)
    ids = generator.encode(PROMPT)

    def sample(seed, top_p=0.9):
        return list(generator.generate(ids, GenerationConfig(max_new_tokens=12, temperature=1.5, top_p=top_p, seed=seed)))

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
    greedy = list(generator.generate(ids, GenerationConfig(max_new_tokens=12)))
    assert sample(7, top_p=1e-9) == greedy  # the nucleus shrinks to the most likely token


def test_nucleus_keeps_only_the_top_mass():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(0)
    drawn = {choose(logits, 1.0, 0.75, rng) for _ in range(500)}
    assert drawn == {0, 1}  # 0.5 + 0.3 is the smallest top set reaching 0.75; tokens 2 and 3 are cut
    drawn = {choose(logits, 1.0, 0.85, rng) for _ in range(500)}
    assert drawn == {0, 1, 2}
    drawn = {choose(logits, 1.0, 1.0, rng) for _ in range(500)}
    assert drawn == {0, 1, 2, 3}


@pytest.mark.parametrize("options, message", [
    ({"temperature": -1.0}, "--temperature must be"),
    ({"temperature": float("nan")}, "--temperature must be"),
    ({"top_p": 0.0}, "--top-p must be in"),
    ({"top_p": 1.5}, "--top-p must be in"),
    ({"max_new_tokens": 0}, "--max-new-tokens must be"),
])
def test_bad_settings_are_one_line_errors(options, message):
    with pytest.raises(GenerationError, match=message) as info:
        GenerationConfig(**options).validate()
    assert "\n" not in str(info.value)


def test_cli_bad_setting_exits_with_one_line(llama, cli):
    _, model = llama
    proc = cli("generate", "--onnx", model, "--prompt", PROMPT, "--top-p", "2")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["edgetune: error: --top-p must be in (0, 1], got 2.0"]


def test_chat_prompt_matches_hugging_face_template(llama, cli):
    source, model = llama
    want = transformers.AutoTokenizer.from_pretrained(str(source)).apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=True)
    generator = Generator(model)
    assert generator.encode(PROMPT, chat=True) == list(want)
    proc = cli("generate", "--onnx", model, "--prompt", PROMPT, "--chat", "--max-new-tokens", "8")
    assert proc.returncode == 0, proc.stderr
    greedy = list(generator.generate(list(want), GenerationConfig(max_new_tokens=8)))
    assert proc.stdout.strip() == generator.decode(greedy)
    assert "tokens/s, KV cache" in proc.stderr


def test_tuned_model_keeps_a_kv_cache_graph_over_the_tuned_weights(llama, tmp_path):
    from edgetune.tuner import Tuner

    _, model = llama
    data = write_jsonl(tmp_path / "train.jsonl", make_lm_texts(32, seed=0))
    tuner = Tuner.from_onnx(model, trainable="all", max_length=32)
    tuner.fit(data, steps=3, batch_size=4, lr=1e-2, eps=1e-2, queries=1)
    tuned = tuner.save(tmp_path / "out")
    assert linked_to(tuned.with_name(WITH_PAST), tuned)
    assert tuned.with_name(WITH_PAST).stat().st_size < tuned.stat().st_size  # references, not a second copy
    ids = Generator(tuned).encode(PROMPT)

    def first_logits(path, past):
        feeds = {"input_ids": np.array([ids]), "attention_mask": np.ones((1, len(ids)), np.int64),
                 "position_ids": np.arange(len(ids))[None]}
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        if past:
            from edgetune.generate import empty_past
            feeds.update(empty_past(session, 1))
        return session.run(["logits"], feeds)[0]

    tuned_logits = first_logits(tuned, False)
    np.testing.assert_allclose(first_logits(tuned.with_name(WITH_PAST), True), tuned_logits, atol=1e-5)
    assert np.abs(tuned_logits - first_logits(model, False)).max() > 1e-3  # the tuning moved the weights
    config = GenerationConfig(max_new_tokens=16)
    assert list(Generator(tuned).generate(ids, config)) == list(Generator(tuned, use_past=False).generate(ids, config))
