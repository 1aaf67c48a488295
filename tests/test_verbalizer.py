"""Classification through a causal LM by verbaliser words: tuning, accuracy, metadata, errors."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from edgetune.data import Verbalizer
from edgetune.errors import DataError, EdgetuneError
from edgetune.tuner import Tuner
from models.tiny import (NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS, TINY_VOCAB, build_causal_lm, build_tokenizer,
                         write_jsonl)
from tests.badinput import assert_rejected
from tests.test_lm_data import byte_level_bpe

VERBALIZER = "negative=bad,positive=good"
TEMPLATE = "my friend saw {text}"


def sentiment_rows(n, seed):
    """1-4 neutral words, then one cue word of the label: separable from the last prompt position."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        positive = bool(rng.integers(2))
        words = [NEUTRAL_WORDS[i] for i in rng.integers(len(NEUTRAL_WORDS), size=int(rng.integers(1, 5)))]
        cues = POSITIVE_WORDS if positive else NEGATIVE_WORDS
        words.append(cues[int(rng.integers(len(cues)))])
        rows.append({"text": " ".join(words), "label": "positive" if positive else "negative"})
    return rows


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A tiny random causal LM whose tokenizer adds no special tokens, and a separable sentiment task."""
    d = tmp_path_factory.mktemp("verbalizer")
    build_tokenizer(d / "tokenizer.json", TINY_VOCAB, cls_sep=False)
    build_causal_lm(d / "model.onnx", seed=1)
    write_jsonl(d / "train.jsonl", sentiment_rows(256, 0))
    write_jsonl(d / "dev.jsonl", sentiment_rows(128, 1000))
    return d


def plain_ort_accuracy(model_path, tokenizer_path, data_path, words, template):
    """Accuracy from plain ORT logits, one unpadded example at a time, independent of edgetune's batching."""
    session = ort.InferenceSession(str(model_path))
    tok = Tokenizer.from_file(str(tokenizer_path))
    word_ids = [tok.token_to_id(w) for w in words.values()]
    labels = list(words)
    correct = 0
    rows = [json.loads(line) for line in data_path.read_text().splitlines()]
    for row in rows:
        ids = np.asarray([tok.encode(template.replace("{text}", row["text"])).ids], dtype=np.int64)
        logits = session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
        correct += labels[int(np.argmax(logits[0, -1, word_ids]))] == row["label"]
    return correct / len(rows)


def test_tuning_through_the_verbalizer_beats_chance_and_eval_reads_metadata(task, tmp_path, cli):
    out = tmp_path / "out"
    proc = cli("tune", "--onnx", task / "model.onnx", "--data", task / "train.jsonl", "--eval-data",
               task / "dev.jsonl", "--verbalizer", VERBALIZER, "--template", TEMPLATE, "--trainable", "head",
               "--steps", "200", "--lr", "0.02", "--queries", "4", "--output-dir", out)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "summary.json").read_text())["result"]
    assert result["before"]["accuracy"] < 0.6
    assert result["after"]["accuracy"] >= 0.9

    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert json.loads(meta["edgetune.verbalizer"]) == {"negative": "bad", "positive": "good"}
    assert meta["edgetune.template"] == TEMPLATE

    evaluated = cli("eval", "--onnx", out / "model.onnx", "--data", task / "dev.jsonl")  # no verbaliser flags
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert metrics["accuracy"] == pytest.approx(result["after"]["accuracy"])
    words = {"negative": "bad", "positive": "good"}
    assert metrics["accuracy"] == plain_ort_accuracy(out / "model.onnx", out / "tokenizer.json", task / "dev.jsonl",
                                                     words, TEMPLATE)
    assert plain_ort_accuracy(task / "model.onnx", task / "tokenizer.json", task / "dev.jsonl", words,
                              TEMPLATE) == pytest.approx(result["before"]["accuracy"])


def test_accuracy_does_not_depend_on_how_evaluation_is_batched(task, monkeypatch):
    import edgetune.tuner as tuner_module

    tuner = Tuner.from_onnx(task / "model.onnx", trainable=None, verbalizer=VERBALIZER, template=TEMPLATE)
    dev = tuner.load_data(task / "dev.jsonl")
    whole = tuner.evaluate(dev, batch_size=128)
    monkeypatch.setattr(tuner_module, "_EVAL_LOGITS_BUDGET", 64 * 20)  # 64-token vocabulary: 20 tokens per run
    assert max(b.size * b.labels.shape[1] for b in dev.batches(128, ["input_ids"], max_tokens=20)) <= 20
    chunked = tuner.evaluate(dev, batch_size=128)
    assert chunked["accuracy"] == whole["accuracy"]
    assert chunked["loss"] == pytest.approx(whole["loss"], rel=1e-5)


def test_training_rows_end_at_the_word_whose_token_is_the_only_target(task):
    tuner = Tuner.from_onnx(task / "model.onnx", trainable=None, verbalizer=VERBALIZER, template="{text} it was",
                            max_length=6)
    dev = tuner.load_data(task / "dev.jsonl")
    tok = tuner.tokenizer
    good, bad = tok.token_to_id("good"), tok.token_to_id("bad")
    rows = [json.loads(line) for line in (task / "dev.jsonl").read_text().splitlines()]
    cut = 0
    for i, row in enumerate(rows[:16]):
        batch = dev.batch([i], ["input_ids"])
        word = good if row["label"] == "positive" else bad
        prompt = tok.encode(f"{row['text']} it was").ids
        # too long for max_length 6: the prompt keeps its end (the cue), then the word
        expected = (prompt + [word])[-6:]
        cut += len(prompt) + 1 > 6
        assert batch.inputs["input_ids"][0].tolist() == expected
        assert batch.labels[0].tolist() == [-100] * (len(expected) - 1) + [word]
        assert batch.classes[0] == (1 if row["label"] == "positive" else 0)
    assert cut >= 3


def test_bad_verbalizers_are_one_line_errors(task, tmp_path, cli):
    tok = Tokenizer.from_file(str(task / "tokenizer.json"))
    with pytest.raises(DataError, match=r'verbaliser word "good-bad" is 3 tokens with a leading space '
                                        r'\("good", "\[UNK\]", "bad"\); pick a word that is one token'):
        Verbalizer.create("negative=terrible,positive=good-bad", None, tok)
    bpe = byte_level_bpe(tmp_path / "bpe.json")  # as SmolLM2's: " great" is one token, " terrific" is not
    assert Verbalizer.create("negative=terrible,positive=great", None, bpe).token_ids == (
        bpe.token_to_id("Ġterrible"), bpe.token_to_id("Ġgreat"))
    with pytest.raises(DataError, match=r'"terrific" is \d+ tokens with a leading space \("Ġter", '):
        Verbalizer.create("negative=terrible,positive=terrific", None, bpe)
    with pytest.raises(DataError, match='verbaliser word "superb" is not in the tokenizer'):
        Verbalizer.create("negative=bad,positive=superb", None, tok)
    with pytest.raises(DataError, match="must contain {text}"):
        Verbalizer.create(VERBALIZER, "it was", tok)
    for spec in ("negative:bad,positive:good", "negative=bad", "a=bad,a=good", "a=bad,b=bad", "a=,b=good"):
        with pytest.raises(DataError):
            Verbalizer.create(spec, None, tok)

    args = ("tune", "--steps", "2", "--onnx", task / "model.onnx", "--data", task / "train.jsonl",
            "--output-dir", tmp_path / "o")
    assert_rejected(cli(*args, "--verbalizer", "negative=bad,positive=good-bad"),
                    'verbaliser word "good-bad" is 3 tokens')
    other_labels = write_jsonl(tmp_path / "three.jsonl", [{"text": "meh", "label": "neutral"}])
    assert_rejected(cli(*args[:-4], "--data", other_labels, "--verbalizer", VERBALIZER),
                    "three.jsonl:1:", 'unknown label "neutral"')


def test_verbalizer_needs_a_causal_lm_and_template_needs_a_verbalizer(classifier, task):
    with pytest.raises(EdgetuneError, match="needs a causal language model"):
        Tuner.from_onnx(classifier["model"], trainable=None, verbalizer="negative=bad,positive=good")
    with pytest.raises(EdgetuneError, match="--template needs --verbalizer"):
        Tuner.from_onnx(task / "model.onnx", trainable=None, template=TEMPLATE)


def test_resume_refuses_a_different_verbalizer(task, tmp_path):
    options = dict(steps=4, lr=0.1, batch_size=8)
    out = tmp_path / "out"
    Tuner.from_onnx(task / "model.onnx", trainable="head", verbalizer=VERBALIZER, template=TEMPLATE).fit(
        task / "train.jsonl", output_dir=out, **options)
    other = Tuner.from_onnx(task / "model.onnx", trainable="head", verbalizer=VERBALIZER, template="{text} so")
    with pytest.raises(EdgetuneError, match="cannot resume, 'template' differs"):
        other.fit(task / "train.jsonl", output_dir=out, resume=True, **{**options, "steps": 8})


def test_config_file_takes_the_verbalizer_as_a_mapping(task, tmp_path, cli):
    config = tmp_path / "tune.yaml"
    config.write_text(f"onnx: {task / 'model.onnx'}\ndata: {task / 'train.jsonl'}\nsteps: 2\ntrainable: head\n"
                      f"output_dir: {tmp_path / 'o'}\nverbalizer: {{negative: bad, positive: good}}\n"
                      f"template: 'my friend saw {{text}}'\n")
    proc = cli("tune", "--config", config)
    assert proc.returncode == 0, proc.stderr
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "o" / "model.onnx")).metadata_props}
    assert json.loads(meta["edgetune.verbalizer"]) == {"negative": "bad", "positive": "good"}
    assert meta["edgetune.template"] == TEMPLATE
