"""Reading JSONL training data with errors that name the file and line.

Record shapes, by task:

* classification (and verbaliser classification through a causal LM): ``{"text": str, "label": str | int}``
* language modelling, one shape per file:

  - ``{"text": str}``: loss on every token;
  - ``{"prompt": str, "completion": str}``: loss on the completion's tokens only;
  - ``{"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}``: rendered
    with the model's chat template, loss on the assistant turns only.

A line may hold at most :data:`MAX_LINE_BYTES` (16 MiB): the file is read one line at a time, so a
hostile or broken file (a whole corpus on one line) is refused naming its line instead of being read,
decoded and parsed whole. Tokenisation cuts a long record further (``edgetune.data.encode``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetune.errors import DataError

TASK_CLASSIFICATION = "classification"
TASK_LM = "lm"

MAX_LINE_BYTES = 16 << 20  # one JSONL record; a longer line is refused (it is no training example)

FORMAT_TEXT = "text"
FORMAT_PROMPT = "prompt/completion"
FORMAT_MESSAGES = "messages"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Example:
    text: str | None  # None for prompt/completion and messages records
    label: str | int | None
    where: str  # "file:line", kept so that later errors can point at the record
    prompt: str | None = None
    completion: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None  # (role, content) per turn

    @property
    def format(self) -> str:
        if self.messages is not None:
            return FORMAT_MESSAGES
        return FORMAT_PROMPT if self.prompt is not None else FORMAT_TEXT


def read_examples(path: str | Path, task: str, *, lm_labels: bool = True) -> list[Example]:
    """Parse and validate a JSONL file for ``task``; raise :class:`DataError` on the first bad line.

    ``lm_labels=False`` refuses language-model records with a ``"label"`` (a causal LM trains on the
    text and would silently drop it).
    """
    path = Path(path)
    examples: list[Example] = []
    first_line = 0
    for i, line in _lines(path):
        if not line.strip():
            continue
        example = _parse_line(path, i, line, task, lm_labels)
        if not examples:
            first_line = i
        elif example.format != examples[0].format:
            raise DataError(
                f"{path}:{i}: record uses {example.format} but line {first_line} used {examples[0].format}; "
                "a file must use one format"
            )
        examples.append(example)
    if not examples:
        raise DataError(f"{path}: no examples (the file is empty)")
    return examples


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each line, read and decoded one at a time, each at most MAX_LINE_BYTES."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    with handle:
        line_no = 0
        while True:
            line_no += 1
            try:
                raw = handle.readline(MAX_LINE_BYTES + 2)  # the limit, and room for a CR LF
            except OSError as exc:
                raise DataError(f"{path}: cannot read ({exc.strerror})") from None
            if not raw:
                return
            if len(raw.rstrip(b"\r\n")) > MAX_LINE_BYTES:
                raise DataError(f"{path}:{line_no}: line is longer than {MAX_LINE_BYTES >> 20} MiB, the most "
                                "edgetune reads as one record")
            try:
                yield line_no, raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}:{line_no}: not valid UTF-8") from None


def _parse_line(path: Path, line_no: int, line: str, task: str, lm_labels: bool) -> Example:
    where = f"{path}:{line_no}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    except ValueError as exc:  # an integer of thousands of digits
        raise DataError(f"{where}: invalid JSON ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise DataError(f"{where}: invalid JSON (nested too deeply)") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if task == TASK_LM:
        if not lm_labels and "label" in record:
            raise DataError(f'{where}: record has a "label", but a causal LM without --verbalizer trains on the '
                            'text alone and would ignore it; pass --verbalizer "label=word,..." to classify, '
                            'drop the labels, or pass --task lm to train on the text anyway')
        return _parse_lm(record, where)
    text = _string_field(record, "text", where)
    if "label" not in record:
        raise DataError(f'{where}: field "label" is missing (classification data needs "text" and "label")')
    label = record["label"]
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise DataError(f'{where}: field "label" must be a string or an integer, got {json.dumps(label)}')
    return Example(text=text, label=label, where=where)


def _parse_lm(record: dict[str, Any], where: str) -> Example:
    shapes = [name for name, keys in ((FORMAT_TEXT, ("text",)), (FORMAT_PROMPT, ("prompt", "completion")),
                                      (FORMAT_MESSAGES, ("messages",))) if any(k in record for k in keys)]
    if len(shapes) > 1:
        raise DataError(f"{where}: record has fields of both {shapes[0]} and {shapes[1]}; use one format")
    if not shapes:
        raise DataError(f'{where}: no field "text", "prompt"/"completion" or "messages" (language-model data needs one)')
    if shapes[0] == FORMAT_TEXT:
        return Example(text=_string_field(record, "text", where), label=None, where=where)
    if shapes[0] == FORMAT_PROMPT:
        prompt = _string_field(record, "prompt", where)
        completion = _string_field(record, "completion", where)
        return Example(text=None, label=None, where=where, prompt=prompt, completion=completion)
    return Example(text=None, label=None, where=where, messages=_parse_messages(record["messages"], where))


def _string_field(record: dict[str, Any], name: str, where: str) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        problem = "missing" if name not in record else f"not a string ({type(value).__name__})"
        raise DataError(f'{where}: field "{name}" is {problem}')
    if not value.strip():
        raise DataError(f'{where}: field "{name}" is empty')
    return value


def _parse_messages(messages: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f'{where}: field "messages" must be a non-empty list of {{"role", "content"}} objects')
    turns = []
    for k, message in enumerate(messages):
        at = f"{where}: messages[{k}]"
        if not isinstance(message, dict):
            raise DataError(f'{at} is not an object with "role" and "content"')
        role = message.get("role")
        if role not in ROLES:
            shown = "missing" if "role" not in message else json.dumps(role)
            raise DataError(f"{at} has role {shown}; use {', '.join(ROLES)}")
        content = message.get("content")
        if not isinstance(content, str):
            problem = "missing" if "content" not in message else f"not a string ({type(content).__name__})"
            raise DataError(f'{at} field "content" is {problem}')
        if not content.strip():
            raise DataError(f'{at} field "content" is empty')
        turns.append((role, content))
    if not any(role == "assistant" for role, _ in turns):
        raise DataError(f"{where}: conversation has no assistant turn (the loss covers assistant turns only)")
    return tuple(turns)


MAX_CLASSES = 1 << 16  # integer labels of a head whose width the model does not state


def _class_count(examples: Iterable[Example]) -> int:
    """Classes implied by integer labels 0..C-1, for a model that does not state its head's width."""
    top = max(examples, key=lambda ex: ex.label)  # type: ignore[arg-type, return-value]
    if top.label >= MAX_CLASSES:  # type: ignore[operator]
        raise DataError(f"{top.where}: label {top.label} implies more than {MAX_CLASSES:,} classes")
    return top.label + 1  # type: ignore[operator, return-value]


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
            count = num_classes if num_classes is not None else _class_count(examples)
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

    @classmethod
    def from_ids(cls, examples: Sequence[Example], num_classes: int | None, model: str) -> LabelSet:
        """Classes for evaluating a model that stores no label names: integer labels are class ids."""
        named = next((ex for ex in examples if not isinstance(ex.label, int)), None)
        if named is not None:
            raise DataError(f'{named.where}: label "{named.label}" is a name, but {model} stores no label names, so '
                            "its class is unknown; export the model with --labels, tune it first (a tuned model "
                            "stores them), or give class ids 0..C-1")
        count = num_classes if num_classes is not None else _class_count(examples)
        return cls([str(i) for i in range(count)])

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
