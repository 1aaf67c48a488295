"""The ``.etdiff`` format: what a ``sparse:`` run changed in its base model, in KB rather than the model's MB.

Layout (little-endian)::

    b"ETDIFF"  u32 version  u32 header_bytes  header (UTF-8 JSON)  tensor data  sha256 of all bytes before

The header names the base model (its sha256) and each tensor: ``name`` (the base initializer), ``shape``,
``dtype`` (float32) and ``op``. An ``add`` tensor (a δ slice) stores ``count`` u32 flat indices then
``count`` f32 values and is applied as ``W.flat[idx] += δ``, the float32 sum the tuning graph computed; a
``set`` tensor (a densely tuned one, such as ``head`` in ``head,sparse:...``) stores all its f32 values.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from edgetune.artifacts import framed
from edgetune.artifacts.checkpoint import file_digest
from edgetune.errors import EdgetuneError
from edgetune.artifacts.finite import require_finite_tensors
from edgetune.graph.lift import fold_weights
from edgetune.graph.model import check_model_file, load_model
from edgetune.graph.sparse import add_delta, add_deltas, plan_sparse
from edgetune.graph.stream import ModelFile, Tensor
from edgetune.graph.trainable import SparseSpec

MAGIC = b"ETDIFF"
VERSION = 1
FILE_NAME = "sparse.etdiff"
_WHAT = "sparse diff"
_ADD, _SET = "add", "set"


@dataclass
class SparseDiff:
    base_sha256: str
    deltas: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # weight → (u32 indices, f32 δ)
    values: dict[str, np.ndarray] = field(default_factory=dict)  # densely tuned weight → its values
    # the tuned model's metadata (task, label names, verbaliser): a merge must mean what the run meant
    metadata: dict[str, str] = field(default_factory=dict)

    def _framed(self) -> tuple[dict, list[bytes]]:
        """The container's header and payload pieces."""
        tensors, chunks = [], []
        for name, (indices, delta) in self.deltas.items():
            tensors.append({"name": name, "op": _ADD, "count": int(indices.size), "dtype": "float32"})
            chunks += [np.ascontiguousarray(indices, "<u4").tobytes(), np.ascontiguousarray(delta, "<f4").tobytes()]
        for name, value in self.values.items():
            tensors.append({"name": name, "op": _SET, "shape": list(value.shape), "dtype": "float32"})
            chunks.append(np.ascontiguousarray(value, "<f4").tobytes())
        header = {"base_sha256": self.base_sha256, "tensors": tensors, "metadata": self.metadata}
        return header, chunks

    def to_bytes(self) -> bytes:
        return framed.pack(MAGIC, VERSION, *self._framed())

    def write(self, path: str | Path) -> None:
        framed.write(path, _WHAT, MAGIC, VERSION, *self._framed())

    @classmethod
    def read(cls, path: str | Path) -> SparseDiff:
        """Parse ``path``; every way it can be unusable is a one-line :class:`EdgetuneError`."""
        header, data = framed.read(path, MAGIC, VERSION, _WHAT)
        offset = 0
        try:
            diff = cls(str(header["base_sha256"]))
            diff.metadata = {str(k): str(v) for k, v in header.get("metadata", {}).items()}  # older diffs: none
            for entry in header["tensors"]:
                if entry["op"] == _ADD:
                    count = int(entry["count"])
                    indices = np.frombuffer(data, "<u4", count, offset).astype(np.int64)
                    delta = np.frombuffer(data, "<f4", count, offset + 4 * count).astype(np.float32)
                    diff.deltas[entry["name"]] = (indices, delta)
                    offset += 8 * count
                else:
                    shape = tuple(int(d) for d in entry["shape"])
                    size = math.prod(shape)
                    diff.values[entry["name"]] = np.frombuffer(data, "<f4", size, offset).astype(np.float32).reshape(shape)
                    offset += 4 * size
        except (ValueError, KeyError, TypeError, AttributeError):
            raise EdgetuneError(f"{path}: corrupt sparse diff header") from None
        if offset != len(data):
            raise EdgetuneError(f"{path}: sparse diff has {len(data) - offset} bytes its header does not describe")
        require_finite_tensors({**{name: delta for name, (_, delta) in diff.deltas.items()}, **diff.values}, str(path))
        return diff

    def apply(self, model: onnx.ModelProto, where: str) -> None:
        """Set the densely tuned weights, then add the δ slices (in place)."""
        fold_weights(model, self.values, self.metadata)
        add_deltas(model, self.deltas, where)


def save_sparse_outputs(out: Path, base_path: Path, spec: SparseSpec, weights: Mapping[str, np.ndarray],
                        metadata: Mapping[str, str]) -> None:
    """Write ``model.onnx`` (δ added into the base weights; plain ORT runs it) and ``sparse.etdiff``."""
    base = ModelFile(base_path)  # the graph without its weights; each weight is read when needed
    slices = plan_sparse(base.skeleton, spec, str(base_path), read=base.array)
    deltas = {piece.linear.weight: (piece.indices, np.asarray(weights[piece.delta_name])) for piece in slices}
    delta_names = {piece.delta_name for piece in slices}
    diff = SparseDiff(file_digest(base_path), deltas, {n: np.asarray(w) for n, w in weights.items() if n not in delta_names},
                      dict(metadata))
    tuned: dict[str, Tensor] = dict(diff.values)
    for name in deltas:  # as SparseDiff.apply: the dense value (if any), then δ; one weight at a time
        tuned[name] = functools.partial(_with_delta, base, diff, name, str(base_path))
    base.write(out / "model.onnx", tuned, metadata)
    diff.write(out / FILE_NAME)


def _with_delta(base: ModelFile, diff: SparseDiff, name: str, where: str) -> np.ndarray:
    weight = diff.values[name] if name in diff.values else base.array(name)
    return add_delta(weight, *diff.deltas[name], name, where)


def apply_sparse_diff(base_path: Path, diff_path: Path) -> onnx.ModelProto:
    """The base model with ``diff_path`` applied; refuses a diff recorded on another base model."""
    diff = SparseDiff.read(diff_path)
    check_model_file(base_path)  # before hashing it
    digest = file_digest(base_path)
    if digest != diff.base_sha256:
        raise EdgetuneError(f"{diff_path}: made from another base model (sha256 {diff.base_sha256[:12]}…), "
                            f"not {base_path} ({digest[:12]}…)")
    model = load_model(base_path)
    diff.apply(model, str(diff_path))
    return model
