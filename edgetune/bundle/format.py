"""The bundle's ``manifest.json``: the dataclass, its writer and the one reader that checks it.

A bundle is a folder a device tunes from with no Python (``docs/bundle.md`` lists every key). The manifest
is written last and atomically, so its presence means a complete bundle; every other file is listed in
``files`` with its size and sha256, which :func:`read_bundle` checks before anything is loaded. Readers
refuse a ``format_version`` they do not know, in one line, rather than guess at a layout.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgetune.artifacts.checkpoint import file_digest
from edgetune.artifacts.io import atomic_write_text
from edgetune.data.jsonl import TASK_CLASSIFICATION, TASK_LM
from edgetune.errors import ModelError

FORMAT = "edgetune-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARENA_FILE = "arena.bin"
# The manifest's task words (the C runtime's) against the package's task names.
TASK_WORDS = {TASK_CLASSIFICATION: "classify", TASK_LM: "lm"}
_TASKS = {word: task for task, word in TASK_WORDS.items()}
HEAD_MODES = ("zo", "exact")  # how the runtimes tune the classifier's head (manifest key "head")


@dataclass
class ArenaTensor:
    """One trainable tensor at ``arena + offset`` floats (``_core.Arena``'s offsets, alignment included)."""

    name: str
    offset: int
    shape: list[int]
    group: int


@dataclass
class ArenaLayout:
    file: str
    dtype: str
    count: int  # floats in the file: the whole arena, its alignment gaps included
    tensors: list[ArenaTensor]


@dataclass
class TokenizerEntry:
    file: str
    max_length: int
    pad_id: int
    kind: str  # "wordpiece", "bpe-bytelevel", or the tokenizer.json model type (lower case) for others


@dataclass
class Manifest:
    """The manifest's keys, in the contract's order (``task`` holds the package's name; the file, the word)."""

    edgetune_version: str
    task: str
    labels: list[str] | None
    verbalizer: dict[str, Any] | None  # {"words": {label: word}, "template": "...", "token_ids": [...]}
    chat_template: str | None
    eos_token: str | None
    trainable: str
    graphs: dict[str, str | None]  # prefix (None without a frozen prefix), suffix, model
    inputs: list[dict[str, str]]  # [{"name", "dtype"}] in the batcher's order
    labels_input: dict[str, Any]  # {"name", "dtype", "per_token"}
    boundary: list[str]
    outputs: dict[str, str]  # {"loss", "logits"}
    arena: ArenaLayout
    tokenizer: TokenizerEntry
    static_shapes: dict[str, int] | None  # {"batch_size", "max_length"}
    noise: str
    defaults: dict[str, Any]  # lr, eps, queries, batch_size, seed, steps
    # "exact": the suffix also outputs the head's exact gradient (graph/head_grad.py) and the runtimes tune the
    # head first-order (zo/exact_head.py); "zo": the whole slice by ZO (bundles written before it: zo)
    head: str = "zo"
    head_tensors: dict[str, str | None] | None = None  # exact: {"weight": name, "bias": name or null}
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"bytes", "sha256"}

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["task"] = TASK_WORDS[self.task]
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **body}


def file_entry(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": file_digest(path)}


def write_manifest(directory: Path, manifest: Manifest, names: list[str]) -> None:
    """List ``names`` (files already written in ``directory``) with their digests, then write the manifest:
    last and atomically, so that a reader never sees a manifest whose files are not all there."""
    manifest.files = {name: file_entry(directory / name) for name in sorted(names)}
    atomic_write_text(directory / MANIFEST, json.dumps(manifest.to_json(), indent=2) + "\n")


# -- reading ---------------------------------------------------------------------------------------------


class _Reader:
    """Typed access to the manifest's keys; every failure is one line naming the file and the key."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, problem: str) -> ModelError:
        return ModelError(f"{self.path}: key '{key}' {problem}")

    def get(self, obj: dict, key: str, kind: type | tuple[type, ...], where: str = "", optional: bool = False):
        name = f"{where}.{key}" if where else key
        if key not in obj:
            raise self.fail(name, "is missing")
        value = obj[key]
        if value is None and optional:
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            wanted = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(name, f"must be {'null or ' if optional else ''}{wanted}, got {json.dumps(value)[:40]}")
        return value

    def strings(self, obj: dict, key: str, where: str = "", optional: bool = False) -> list[str] | None:
        values = self.get(obj, key, list, where, optional)
        if values is not None and not all(isinstance(v, str) for v in values):
            raise self.fail(f"{where}.{key}" if where else key, "must be a list of strings")
        return values

    def named(self, obj: Any, where: str) -> dict[str, str]:
        """A graph input as ``{"name", "dtype"}``."""
        if not isinstance(obj, dict):
            raise self.fail(where, "must be an object with name and dtype")
        return {"name": self.get(obj, "name", str, where), "dtype": self.get(obj, "dtype", str, where)}

    def file_name(self, obj: dict, key: str, where: str, optional: bool = False) -> str | None:
        """A file of the bundle: a plain name in its folder (a path elsewhere would read outside the bundle)."""
        name = self.get(obj, key, str, where, optional)
        if name is not None and (not name or Path(name).name != name or name in (".", "..")):
            raise self.fail(f"{where}.{key}", f"must name a file in the bundle's folder, got {json.dumps(name)}")
        return name


def parse_manifest(body: Any, path: Path) -> Manifest:
    """The manifest from its JSON; refused in one line when a key is missing or of the wrong type."""
    r = _Reader(path)
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise ModelError(f"{path}: not an edgetune bundle manifest (no \"format\": \"{FORMAT}\")")
    version = body.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(f"{path}: format_version {json.dumps(version)} is not one this edgetune reads "
                         f"({FORMAT_VERSION}); bundle the model again with this version")
    task = r.get(body, "task", str)
    if task not in _TASKS:
        raise r.fail("task", f"must be one of {', '.join(_TASKS)}, got {json.dumps(task)}")
    graphs = r.get(body, "graphs", dict)
    arena = r.get(body, "arena", dict)
    tensors = []
    for i, t in enumerate(r.get(arena, "tensors", list, "arena")):
        where = f"arena.tensors[{i}]"
        if not isinstance(t, dict):
            raise r.fail(where, "must be an object")
        shape = r.get(t, "shape", list, where)
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise r.fail(f"{where}.shape", "must be a list of non-negative integers")
        tensors.append(ArenaTensor(r.get(t, "name", str, where), r.get(t, "offset", int, where), shape,
                                   r.get(t, "group", int, where)))
    if r.get(arena, "dtype", str, "arena") != "float32":
        raise r.fail("arena.dtype", "must be float32")
    tokenizer = r.get(body, "tokenizer", dict)
    files = r.get(body, "files", dict)
    for name, entry in files.items():
        if Path(name).name != name or not isinstance(entry, dict):
            raise r.fail(f"files.{name}", "must be a file of the bundle's folder with its bytes and sha256")
        r.get(entry, "bytes", int, f"files.{name}")
        r.get(entry, "sha256", str, f"files.{name}")
    static = r.get(body, "static_shapes", dict, optional=True)
    if static is not None:
        for key in ("batch_size", "max_length"):
            if r.get(static, key, int, "static_shapes") < 1:
                raise r.fail(f"static_shapes.{key}", "must be at least 1")
    return Manifest(
        edgetune_version=r.get(body, "edgetune_version", str),
        task=_TASKS[task],
        labels=r.strings(body, "labels", optional=True),
        verbalizer=r.get(body, "verbalizer", dict, optional=True),
        chat_template=r.get(body, "chat_template", str, optional=True),
        eos_token=r.get(body, "eos_token", str, optional=True),
        trainable=r.get(body, "trainable", str),
        graphs={"prefix": r.file_name(graphs, "prefix", "graphs", optional=True),
                "suffix": r.file_name(graphs, "suffix", "graphs"), "model": r.file_name(graphs, "model", "graphs")},
        inputs=[r.named(i, f"inputs[{n}]") for n, i in enumerate(r.get(body, "inputs", list))],
        labels_input=r.get(body, "labels_input", dict),
        boundary=r.strings(body, "boundary"),
        outputs={k: r.get(r.get(body, "outputs", dict), k, str, "outputs") for k in ("loss", "logits")},
        arena=ArenaLayout(r.file_name(arena, "file", "arena"), "float32", r.get(arena, "count", int, "arena"), tensors),
        tokenizer=TokenizerEntry(r.file_name(tokenizer, "file", "tokenizer"),
                                 r.get(tokenizer, "max_length", int, "tokenizer"),
                                 r.get(tokenizer, "pad_id", int, "tokenizer"), r.get(tokenizer, "kind", str, "tokenizer")),
        static_shapes=static,
        noise=r.get(body, "noise", str),
        defaults=r.get(body, "defaults", dict),
        **_head(r, body, {t.name for t in tensors}),
        files=files,
    )


def _head(r: _Reader, body: dict, tensors: set[str]) -> dict[str, Any]:
    """``head`` and ``head_tensors``: absent in bundles written before the exact head, which tune it by ZO."""
    head = body.get("head", "zo")
    if head not in HEAD_MODES:
        raise r.fail("head", f"must be one of {', '.join(HEAD_MODES)}, got {json.dumps(head)[:40]}")
    if head == "zo":
        return {"head": head, "head_tensors": None}
    names = r.get(body, "head_tensors", dict)
    weight, bias = r.get(names, "weight", str, "head_tensors"), r.get(names, "bias", str, "head_tensors", optional=True)
    for key, name in (("weight", weight), ("bias", bias)):
        if name is not None and name not in tensors:
            raise r.fail(f"head_tensors.{key}", f"names '{name}', which is not a tensor of the arena")
    return {"head": head, "head_tensors": {"weight": weight, "bias": bias}}


def read_manifest(directory: str | Path) -> Manifest:
    """The manifest of the bundle in ``directory``, checked key by key (the files are not read)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ModelError(f"{directory}: not a bundle (no {MANIFEST}; an interrupted `edgetune bundle` leaves none)")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: cannot read the manifest ({getattr(exc, 'strerror', None) or exc})") from None
    except ValueError as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None
    return parse_manifest(body, path)


def read_bundle(directory: str | Path) -> Manifest:
    """The bundle's manifest, with every file it names present and matching its recorded size and sha256."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    named = [manifest.graphs["suffix"], manifest.graphs["model"], manifest.arena.file, manifest.tokenizer.file]
    named += [manifest.graphs["prefix"]] if manifest.graphs["prefix"] else []
    for name in named:
        if name not in manifest.files:
            raise ModelError(f"{directory / MANIFEST}: key 'files' does not list {name}, which the manifest uses")
    for name, entry in manifest.files.items():
        path = directory / name
        if not path.is_file():
            raise ModelError(f"{path}: missing from the bundle (manifest.json lists it)")
        if path.stat().st_size != entry["bytes"] or file_entry(path)["sha256"] != entry["sha256"]:
            raise ModelError(f"{path}: sha256 differs from the bundle's manifest.json (the file changed after "
                             "bundling); bundle the model again")
    if manifest.arena.count * 4 != manifest.files[manifest.arena.file]["bytes"]:
        raise ModelError(f"{directory / MANIFEST}: key 'arena.count' ({manifest.arena.count} floats) does not "
                         f"match {manifest.arena.file}'s {manifest.files[manifest.arena.file]['bytes']} bytes")
    return manifest
