"""Language-model data formats: which tokens carry the loss, and bad files named by file and line."""

import json

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from edgetune.data import ChatTemplate, TokenizedSet, read_examples
from edgetune.data.batching import IGNORE_INDEX
from edgetune.data.jsonl import TASK_LM
from edgetune.errors import DataError, ModelError
from edgetune.tuner import Tuner
from models.tiny import TINY_VOCAB, build_tokenizer, write_jsonl
from tests.badinput import assert_rejected

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHAT_VOCAB = [*TINY_VOCAB, "system", "user", "assistant", "you", "are"]
CONVERSATION = [
    {"role": "system", "content": "you are a friend"},
    {"role": "user", "content": "the movie"},
    {"role": "assistant", "content": "was great"},
    {"role": "user", "content": "and the plot"},
    {"role": "assistant", "content": "was very boring"},
]


def word_tokenizer(path, vocab=TINY_VOCAB, chat=False):
    """WordLevel tokenizer without a post-processor; ``chat`` adds the ChatML markers as special tokens."""
    tok = build_tokenizer(None, vocab, cls_sep=False)
    tok.no_padding()
    if chat:
        tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok.save(str(path))
    return Tokenizer.from_file(str(path))


def tokenized(path, tok, max_length=64, **kw):
    return TokenizedSet(read_examples(path, TASK_LM), tok, max_length, TASK_LM, **kw)


def test_prompt_completion_labels_only_the_completion(tmp_path):
    tok = word_tokenizer(tmp_path / "tokenizer.json")
    data = write_jsonl(tmp_path / "pc.jsonl", [
        {"prompt": "the cat sat", "completion": " on the mat"},
        {"prompt": "a dog", "completion": " ran"},
    ])
    batch = tokenized(data, tok).batch([0, 1], ["input_ids", "attention_mask"])
    ids = lambda text: tok.encode(text).ids  # noqa: E731
    assert batch.inputs["input_ids"][0].tolist() == ids("the cat sat on the mat")
    assert batch.labels[0].tolist() == [IGNORE_INDEX] * 3 + ids("on the mat")
    # the shorter row: prompt then padding are ignored, its one completion token is the target
    assert batch.labels[1].tolist() == [IGNORE_INDEX] * 2 + ids("ran") + [IGNORE_INDEX] * 3
    assert batch.inputs["attention_mask"][1].tolist() == [1, 1, 1, 0, 0, 0]


def test_completion_ends_with_the_eos_token_and_post_processor_markers_are_targets(tmp_path):
    tok = word_tokenizer(tmp_path / "tokenizer.json")
    data = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "the cat", "completion": " sat"}])
    sep = tok.token_to_id("[SEP]")
    eos = tokenized(data, tok, eos_token="[SEP]").batch([0], ["input_ids"])
    assert eos.labels[0].tolist() == [IGNORE_INDEX, IGNORE_INDEX, tok.token_to_id("sat"), sep]

    bert_style = build_tokenizer(tmp_path / "cls" / "tokenizer.json", TINY_VOCAB)  # [CLS] $A [SEP]
    bert_style.no_padding()
    batch = tokenized(data, bert_style).batch([0], ["input_ids"])
    assert batch.inputs["input_ids"][0].tolist() == [2, *tok.encode("the cat sat").ids, 3]
    assert batch.labels[0].tolist() == [IGNORE_INDEX] * 3 + [tok.token_to_id("sat"), 3]


def byte_level_bpe(path):
    """A small GPT-2-style byte-level BPE (as SmolLM2's) trained here, so offsets are real BPE offsets."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the movie was great and the plot was terrible, it was good"] * 20, trainer)
    tok.save(str(path))
    return tok


def test_byte_level_prompt_completion_split_mid_word(tmp_path):
    tok = byte_level_bpe(tmp_path / "tokenizer.json")
    # the boundary falls inside the pre-token " great": the token holding completion text is a target
    data = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "the movie was gr", "completion": "eat and"}])
    batch = tokenized(data, tok).batch([0], ["input_ids"])
    enc = tok.encode("the movie was great and")
    assert batch.inputs["input_ids"][0].tolist() == enc.ids
    expected = [i if end > len("the movie was gr") else IGNORE_INDEX for i, (_, end) in zip(enc.ids, enc.offsets)]
    assert batch.labels[0].tolist() == expected
    assert tok.decode([i for i in batch.labels[0].tolist() if i != IGNORE_INDEX]) == " great and"


def test_messages_label_exactly_the_assistant_turns(tmp_path):
    tok = word_tokenizer(tmp_path / "tokenizer.json", CHAT_VOCAB, chat=True)
    (tmp_path / "chat_template.jinja").write_text(CHATML)
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}])
    chat = ChatTemplate.beside(tmp_path / "tokenizer.json")
    batch = tokenized(data, tok, chat=chat).batch([0], ["input_ids"])
    tokens = [tok.id_to_token(i) for i in batch.inputs["input_ids"][0]]
    assert tokens[:6] == ["<|im_start|>", "system", "you", "are", "a", "friend"]
    # independently: after each "<|im_start|> assistant", up to and including its "<|im_end|>"
    expected = [IGNORE_INDEX] * len(tokens)
    for k in range(len(tokens) - 1):
        if tokens[k] == "<|im_start|>" and tokens[k + 1] == "assistant":
            j = k + 2
            while True:
                expected[j] = tok.token_to_id(tokens[j])
                if tokens[j] == "<|im_end|>":
                    break
                j += 1
    assert batch.labels[0].tolist() == expected
    targets = [tok.id_to_token(i) for i in batch.labels[0] if i != IGNORE_INDEX]
    assert targets == ["was", "great", "<|im_end|>", "was", "very", "boring", "<|im_end|>"]


def test_chat_template_from_tokenizer_config_with_bos_token(tmp_path):
    tok = word_tokenizer(tmp_path / "tokenizer.json", CHAT_VOCAB, chat=True)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": {"content": "[CLS]", "special": True}, "eos_token": "<|im_end|>",
        "chat_template": "{{ bos_token }}" + CHATML,
    }))
    chat = ChatTemplate.beside(tmp_path / "tokenizer.json")
    assert chat is not None and chat.origin.endswith("tokenizer_config.json")
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION[1:3]}])
    ids = tokenized(data, tok, chat=chat).ids[0].tolist()
    assert ids[0] == tok.token_to_id("[CLS]") and ids.count(tok.token_to_id("[CLS]")) == 1  # no second BOS
    (tmp_path / "chat_template.jinja").write_text("{{ raise_exception('jinja file wins') }}")
    with pytest.raises(DataError, match=r"chat\.jsonl:1: the chat template .*chat_template\.jinja.*jinja file wins"):
        tokenized(data, tok, chat=ChatTemplate.beside(tmp_path / "tokenizer.json"))
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}\n{{ m.content }\n")
    with pytest.raises(ModelError, match=r"chat_template\.jinja:2: chat template is not valid Jinja"):
        ChatTemplate.beside(tmp_path / "tokenizer.json")


def test_template_that_rewrites_earlier_turns_is_rejected(tmp_path):
    tok = word_tokenizer(tmp_path / "tokenizer.json", CHAT_VOCAB, chat=True)
    # drops every assistant turn but the last, as reasoning templates drop old thoughts
    template = ("{% for m in messages %}{% if m.role != 'assistant' or loop.last %}"
                "{{ m.role + ' ' + m.content + ' ' }}{% endif %}{% endfor %}")
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CONVERSATION}])
    with pytest.raises(DataError, match=r"chat\.jsonl:1: .*does not render messages\[2\] as a continuation"):
        tokenized(data, tok, chat=ChatTemplate(template, "inline"))


def test_completion_truncated_away_is_skipped_with_a_warning(tmp_path, caplog):
    tok = word_tokenizer(tmp_path / "tokenizer.json")
    data = write_jsonl(tmp_path / "pc.jsonl", [
        {"prompt": "the cat", "completion": " sat"},
        {"prompt": "one two three four five six", "completion": " the end"},
        {"prompt": "a dog ran", "completion": " in the park"},
    ])
    with caplog.at_level("WARNING"):
        dataset = tokenized(data, tok, max_length=5)
    assert dataset.where == [f"{data}:1", f"{data}:3"]
    assert f"{data}:2: completion entirely beyond --max-length 5; 1 example(s) skipped" in caplog.text
    # truncation keeps the start: the prompt and what fits of the completion
    assert dataset.batch([1], ["input_ids"]).labels[0].tolist() == [IGNORE_INDEX] * 3 + tok.encode("in the").ids
    with pytest.raises(DataError, match=r"pc\.jsonl:1: completion entirely beyond --max-length 2, as in every example"):
        tokenized(data, tok, max_length=2)


@pytest.mark.parametrize("lines, message", [
    (['{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}',
      '{"prompt": "a", "completion": "b"}'],
     "record uses prompt/completion but line 1 used messages; a file must use one format"),
    (['{"text": "a b"}', '{"prompt": "a", "completion": "b"}'],
     "record uses prompt/completion but line 1 used text; a file must use one format"),
    (['{"prompt": "a", "completion": "b"}', '{"prompt": "a"}'], 'field "completion" is missing'),
    (['{"prompt": "a", "completion": "b"}', '{"prompt": "a", "completion": " "}'], 'field "completion" is empty'),
    (['{"prompt": "a", "completion": "b"}', '{"completion": "b"}'], 'field "prompt" is missing'),
    (['{"text": "a"}', '{"text": "a", "prompt": "b", "completion": "c"}'],
     "record has fields of both text and prompt/completion"),
    (['{"text": "a"}', '{"body": "a"}'], 'no field "text", "prompt"/"completion" or "messages"'),
    (['{"text": "a"}', '{"messages": []}'], 'field "messages" must be a non-empty list'),
    (['{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}',
      '{"messages": [{"role": "bot", "content": "hi"}]}'], 'messages[0] has role "bot"; use system, user, assistant'),
    (['{"text": "a"}', '{"messages": [{"role": "user", "content": "hi"}, {"content": "yo"}]}'],
     "messages[1] has role missing"),
    (['{"text": "a"}', '{"messages": [{"role": "user", "content": "hi"}, "yo"]}'], 'messages[1] is not an object'),
    (['{"text": "a"}', '{"messages": [{"role": "user"}, {"role": "assistant", "content": "yo"}]}'],
     'messages[0] field "content" is missing'),
    (['{"text": "a"}', '{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "yo"}]}'],
     'messages[0] field "content" is empty'),
    (['{"text": "a"}', '{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}'],
     "conversation has no assistant turn"),
])
def test_bad_lm_record_is_named_with_file_and_line(tmp_path, lines, message):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        read_examples(path, TASK_LM)
    assert str(err.value).startswith(f"{path}:2: ")
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.fixture(scope="module")
def bad_lm(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_lm")
    chat = '{"messages": [{"role": "user", "content": "the movie"}, {"role": "assistant", "content": "was great"}]}'
    (d / "mixed.jsonl").write_text(chat + '\n{"prompt": "the cat", "completion": " sat"}\n')
    (d / "nocompletion.jsonl").write_text('{"prompt": "the cat", "completion": " sat"}\n\n{"prompt": "a dog"}\n')
    (d / "badrole.jsonl").write_text(chat + '\n' + chat.replace('"user"', '"human"') + "\n")
    (d / "noassistant.jsonl").write_text(chat + '\n{"messages": [{"role": "user", "content": "hi"}]}\n')
    (d / "chat.jsonl").write_text(chat + "\n")
    return d


@pytest.mark.parametrize("case, fragments", [
    ("mixed", ["mixed.jsonl:2:", "record uses prompt/completion but line 1 used messages"]),
    ("nocompletion", ["nocompletion.jsonl:3:", 'field "completion" is missing']),
    ("badrole", ["badrole.jsonl:2:", 'messages[0] has role "human"']),
    ("noassistant", ["noassistant.jsonl:2:", "conversation has no assistant turn"]),
    ("chat", ["chat.jsonl:1:", "need the model's chat template", "chat_template.jinja"]),
])
def test_cli_bad_lm_data_is_one_line(bad_lm, lm, cli, case, fragments):
    # the tiny LM's folder has no chat template, so a valid conversation fails too
    assert_rejected(cli("tune", "--steps", "2", "--onnx", lm["model"], "--data", bad_lm / f"{case}.jsonl",
                        "--output-dir", bad_lm / "out"), *fragments)


def test_prompt_completion_loss_is_the_cross_entropy_of_the_completion_tokens(lm, tmp_path):
    import onnxruntime as ort

    data = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "the cat sat", "completion": " on the mat"}])
    metrics = Tuner.from_onnx(lm["model"], trainable=None).evaluate(data)
    tok = Tokenizer.from_file(str(lm["tokenizer"]))
    ids = np.asarray([tok.encode("the cat sat on the mat").ids])  # [CLS] the cat sat on the mat [SEP]
    logits = ort.InferenceSession(str(lm["model"])).run(["logits"], {
        "input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0].astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    targets = range(4, ids.shape[1])  # "on", "the", "mat", [SEP]
    expected = -np.mean([logp[t - 1, ids[0, t]] for t in targets])
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5)


def test_tune_on_prompt_completion_lowers_the_completion_loss(lm, tmp_path):
    rows = [{"prompt": p.split()[0], "completion": " " + " ".join(p.split()[1:])}
            for p in ("the cat sat on the mat", "a dog ran in the park", "one two three four five six")] * 8
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    tuner = Tuner.from_onnx(lm["model"], trainable="last:1")
    result = tuner.fit(train, eval_data=train, steps=150, lr=5e-3, batch_size=8)
    assert result.after["loss"] < result.before["loss"] - 0.3
