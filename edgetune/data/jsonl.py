"""Reading JSONL training data with errors that name the file and line.

Two record shapes are accepted:

* classification: ``{"text": str, "label": str | int}``
* language modelling: ``{"text": str}``
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgetune.errors import DataError

TASK_CLASSIFICATION = "classification"
TASK_LM = "lm"


@dataclass(frozen=True)
class Example:
    text: str
    label: str | int | None
    where: str  # "file:line", kept so that later errors can point at the record


def read_examples(path: str | Path, task: str) -> list[Example]:
    """Parse and validate a JSONL file for ``task``; raise :class:`DataError` on the first bad line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        line_no = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line_no}: not valid UTF-8") from None

    examples = [_parse_line(path, i, line, task) for i, line in enumerate(lines, start=1) if line.strip()]
    if not examples:
        raise DataError(f"{path}: no examples (the file is empty)")
    return examples


def _parse_line(path: Path, line_no: int, line: str, task: str) -> Example:
    where = f"{path}:{line_no}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    text = record.get("text")
    if not isinstance(text, str):
        problem = "missing" if "text" not in record else f"not a string ({type(text).__name__})"
        raise DataError(f'{where}: field "text" is {problem}')
    if not text.strip():
        raise DataError(f'{where}: field "text" is empty')
    if task == TASK_LM:
        return Example(text=text, label=None, where=where)
    if "label" not in record:
        raise DataError(f'{where}: field "label" is missing (classification data needs "text" and "label")')
    label = record["label"]
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise DataError(f'{where}: field "label" must be a string or an integer, got {json.dumps(label)}')
    return Example(text=text, label=label, where=where)


class LabelSet:
    """The ordered class names of a classifier; class i is logit i."""

    def __init__(self, names: Sequence[str]):
        if len(set(names)) != len(names):
            raise DataError(f"duplicate label names in {list(names)}")
        self.names = [str(n) for n in names]
        self._index = {n: i for i, n in enumerate(self.names)}

    def __len__(self) -> int:
        return len(self.names)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelSet) and other.names == self.names

    def __repr__(self) -> str:
        return f"LabelSet({self.names})"

    @classmethod
    def from_examples(cls, examples: Iterable[Example], num_classes: int | None) -> LabelSet:
        """Label names for data whose model carries none: sorted string labels, or class indices."""
        labels = {ex.label for ex in examples}
        if all(isinstance(label, int) for label in labels):
            count = num_classes if num_classes is not None else max(labels) + 1  # type: ignore[type-var]
            return cls([str(i) for i in range(count)])
        if any(isinstance(label, int) for label in labels):
            first_int = next(ex for ex in examples if isinstance(ex.label, int))
            raise DataError(f"{first_int.where}: mixes integer and string labels; use one kind")
        names = sorted(labels)  # type: ignore[type-var]
        if num_classes is not None and len(names) > num_classes:
            raise DataError(
                f"data has {len(names)} labels {names} but the model has {num_classes} classes; "
                "export the model with a matching head"
            )
        if num_classes is not None and len(names) < num_classes:
            names += [f"LABEL_{i}" for i in range(len(names), num_classes)]
        return cls(names)

    def index(self, example: Example) -> int:
        label = example.label
        if isinstance(label, int):
            if 0 <= label < len(self.names):
                return label
            raise DataError(f"{example.where}: label {label} is out of range (model has {len(self.names)} classes)")
        try:
            return self._index[label]  # type: ignore[index]
        except KeyError:
            raise DataError(f'{example.where}: unknown label "{label}" (known: {", ".join(self.names)})') from None
