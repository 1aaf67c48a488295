"""JSONL reading, label sets and batching: every bad line is named, order is reproducible."""

import json

import numpy as np
import pytest

from edgetune.data import BatchStream, LabelSet, read_examples
from edgetune.data.jsonl import TASK_CLASSIFICATION, TASK_LM
from edgetune.errors import DataError


def write(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"text": "ok", "label": "a"', "invalid JSON"),
        ('["text", "label"]', "expected a JSON object"),
        ('{"label": "a"}', 'field "text" is missing'),
        ('{"text": 3, "label": "a"}', 'field "text" is not a string'),
        ('{"text": "  ", "label": "a"}', 'field "text" is empty'),
        ('{"text": "ok"}', 'field "label" is missing'),
        ('{"text": "ok", "label": [1]}', 'field "label" must be a string or an integer'),
        ('{"text": "ok", "label": true}', 'field "label" must be a string or an integer'),
    ],
)
def test_bad_line_is_named_with_file_and_line(tmp_path, line, message):
    path = write(tmp_path, ['{"text": "fine", "label": "a"}', "", line])
    with pytest.raises(DataError) as err:
        read_examples(path, TASK_CLASSIFICATION)
    assert f"{path}:3:" in str(err.value)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="no examples"):
        read_examples(write(tmp_path, ["", "  "]), TASK_CLASSIFICATION)
    with pytest.raises(DataError, match="file not found"):
        read_examples(tmp_path / "nope.jsonl", TASK_LM)


def test_invalid_utf8_names_line(tmp_path):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"bin.jsonl:2: not valid UTF-8"):
        read_examples(path, TASK_LM)


def test_lm_records_need_only_text(tmp_path):
    examples = read_examples(write(tmp_path, ['{"text": "hello world"}']), TASK_LM)
    assert examples[0].text == "hello world" and examples[0].label is None


def test_label_set_from_strings_ints_and_model(tmp_path):
    examples = read_examples(
        write(tmp_path, [json.dumps({"text": "x", "label": lab}) for lab in ["pos", "neg", "pos"]]),
        TASK_CLASSIFICATION,
    )
    labels = LabelSet.from_examples(examples, num_classes=2)
    assert labels.names == ["neg", "pos"]
    assert [labels.index(ex) for ex in examples] == [1, 0, 1]
    with pytest.raises(DataError, match="but the model has 1 classes"):
        LabelSet.from_examples(examples, num_classes=1)

    ints = read_examples(write(tmp_path, ['{"text": "x", "label": 0}', '{"text": "y", "label": 3}'], "i.jsonl"),
                         TASK_CLASSIFICATION)
    with pytest.raises(DataError, match=r"i.jsonl:2: label 3 is out of range"):
        LabelSet.from_examples(ints, num_classes=2).index(ints[1])

    model_labels = LabelSet(["negative", "positive"])
    with pytest.raises(DataError, match=r'data.jsonl:1: unknown label "pos" \(known: negative, positive\)'):
        model_labels.index(examples[0])


def test_batch_stream_is_a_function_of_seed_and_step():
    a, b = BatchStream(10, 4, seed=7), BatchStream(10, 4, seed=7)
    steps = [a.indices(t).tolist() for t in range(6)]
    assert [b.indices(t).tolist() for t in reversed(range(6))] == steps[::-1]
    flat = np.concatenate(steps[:5])[:20]
    # every example once per epoch
    assert sorted(flat[:10].tolist()) == list(range(10)) and sorted(flat[10:20].tolist()) == list(range(10))
    assert BatchStream(10, 4, seed=8).indices(0).tolist() != steps[0]


def _reference_permutation(seed: int, epoch: int, n: int) -> list[int]:
    """edgetune.h's et_epoch_permutation, written from its spec with Python integers."""
    from tests.reference_noise import derive_seed, splitmix64

    out, key = list(range(n)), derive_seed(seed, epoch, 0x5045524D)
    for i in range(n - 1, 0, -1):
        j = (splitmix64((key + i) % 2**64) * (i + 1)) >> 64
        out[i], out[j] = out[j], out[i]
    return out


def test_epoch_order_is_the_core_permutation_the_c_runtime_draws():
    """The batch order is the specified permutation (the C runtime computes the same rows from a bundle),
    not numpy's generator, which C could not reproduce."""
    from edgetune import _core

    for seed, epoch, n in ((0, 0, 1), (0, 0, 10), (7, 3, 37), (2**64 - 1, 2**40, 1000)):
        assert _core.epoch_permutation(seed, epoch, n).tolist() == _reference_permutation(seed, epoch, n)
    stream = BatchStream(37, 8, seed=5)
    rows = [i for t in range(10) for i in stream.indices(t).tolist()]
    assert rows[:37] == _reference_permutation(5, 0, 37) and rows[37:74] == _reference_permutation(5, 1, 37)
