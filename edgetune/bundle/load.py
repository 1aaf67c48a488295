"""A bundle back into the prepared model a :class:`edgetune.Tuner` runs, with no preparation.

The graphs and the arena image are used as they are (the C runtime's parity depends on it): only the
plain ``model.onnx``'s skeleton is read (its initializers' bytes stay on disk) to know the model's inputs,
task and metadata, and ``arena.bin`` is read tensor by tensor straight into the arena.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgetune import _core
from edgetune.bundle.format import Manifest, read_bundle
from edgetune.errors import ModelError
from edgetune.graph.blocks import EMBEDDINGS, HEAD, Param, find_params
from edgetune.graph.cache import _SafetensorsFile
from edgetune.graph.head_grad import LinearHead
from edgetune.graph.model import inspect_model
from edgetune.graph.prepare import PreparedModel, arena_group
from edgetune.graph.wire import read_skeleton

_HEAD_GROUP = arena_group(Param("", (), None, HEAD, 0))


@dataclass
class OpenBundle:
    directory: Path
    manifest: Manifest
    prepared: PreparedModel
    tokenizer_path: Path


def open_bundle(directory: str | Path) -> OpenBundle:
    """The bundle in ``directory``, its files checked against the manifest's sha256 first."""
    directory = Path(directory)
    manifest = read_bundle(directory)
    model_path = directory / manifest.graphs["model"]
    skeleton = read_skeleton(model_path)
    info = inspect_model(skeleton, model_path, manifest.task)
    names = [i["name"] for i in manifest.inputs]
    if names != info.data_inputs:
        raise ModelError(f"{directory / 'manifest.json'}: key 'inputs' ({', '.join(names)}) does not match "
                         f"{model_path}'s inputs ({', '.join(info.data_inputs)})")
    params = [_param(t.name, t.shape, t.group, i) for i, t in enumerate(manifest.arena.tensors)]
    in_model = {init.name for init in skeleton.graph.initializer}
    total = sum(p.size for p in find_params(skeleton)) + sum(p.size for p in params if p.name not in in_model)
    arena_file = directory / manifest.arena.file
    entries = {t.name: {"dtype": "F32", "shape": t.shape,
                        "data_offsets": [4 * t.offset, 4 * (t.offset + _numel(t.shape))]} for t in manifest.arena.tensors}
    prefix = manifest.graphs["prefix"]
    prepared = PreparedModel(
        info=info,
        params=params,
        initial=_SafetensorsFile(arena_file, entries),
        prefix=str(directory / prefix) if prefix else None,
        suffix=str(directory / manifest.graphs["suffix"]),
        boundary=list(manifest.boundary),
        total_params=total,
        head=_linear_head(manifest),
    )
    return OpenBundle(directory, manifest, prepared, directory / manifest.tokenizer.file)


def check_arena(bundle: OpenBundle, arena: _core.Arena) -> None:
    """Refuse a bundle whose arena offsets are not the ones this edgetune's arena assigns: the C runtime
    binds each tensor at ``arena + offset``, so the two must agree to the float."""
    where = bundle.directory / "manifest.json"
    for t in bundle.manifest.arena.tensors:
        if arena.offset(t.name) != t.offset:
            raise ModelError(f"{where}: key 'arena.tensors' puts '{t.name}' at offset {t.offset}; this edgetune's "
                             f"arena puts it at {arena.offset(t.name)}: bundle the model again")
    if len(arena) != bundle.manifest.arena.count:
        raise ModelError(f"{where}: key 'arena.count' is {bundle.manifest.arena.count}; this edgetune's arena "
                         f"holds {len(arena)} floats: bundle the model again")


def _linear_head(manifest: Manifest) -> LinearHead | None:
    """The head an exact-head bundle's suffix outputs the gradient of (``head_grad_W``/``_b`` in the weight's and
    the bias's layout); its shapes are the arena's. None: the bundle tunes the head by ZO."""
    if manifest.head != "exact":
        return None
    shapes = {t.name: tuple(t.shape) for t in manifest.arena.tensors}
    weight, bias = manifest.head_tensors["weight"], manifest.head_tensors["bias"]
    return LinearHead("", weight, shapes[weight], bias, shapes[bias] if bias else None)


def _param(name: str, shape: list[int], group: int, index: int) -> Param:
    """The slice's tensor as prepare found it: its group is its region and block (``arena_group``'s inverse)."""
    if group == 0:
        return Param(name, tuple(shape), None, EMBEDDINGS, index)
    if group == _HEAD_GROUP:
        return Param(name, tuple(shape), None, HEAD, index)
    return Param(name, tuple(shape), group - 1, "block", index)


def _numel(shape: list[int]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count
