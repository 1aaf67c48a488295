"""Running the copy-batched graph (edgetune.graph.prge): P perturbed copies of the slice, one forward.

The P copies live in their own buffer, never in the arena: for the arena view at offset o with n
values, copy p is ``copies[P·o + p·n : P·o + (p+1)·n]``, so each trainable input ``[P, *shape]`` is
one contiguous block bound zero-copy, and the core's ``perturb_copies`` writes all P in one read of θ.

The batch reaches the graph as P stacked copies of the tunable graph's inputs. Which inputs carry the
batch is learnt once by running the frozen prefix on one example and on that example twice:

* a leading dimension that doubles → rows of the batch: tiled P times (copy-major, as the graph expects);
* an integer shape vector whose entries double (a Reshape target ``[B, T, 12, 32]`` the prefix
  computed from the batch size) → those entries are multiplied by P;
* unchanged → shared by every copy (a causal mask, rotary tables);
* anything else → refused: the batch dimension is not where the copy-batched graph can extend it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from edgetune.data.batching import Batch
from edgetune.engine.runner import LossEngine
from edgetune.engine.session import create_session
from edgetune.errors import ModelError
from edgetune.graph.loss import LOSS_OUTPUT


@dataclass(frozen=True)
class Segment:
    """One trainable tensor's place in the arena."""

    name: str
    offset: int
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class CopyBatchedEngine:
    """Per-copy mean losses of ``width`` perturbed copies of the slice, from one run of the copy-batched graph."""

    def __init__(
        self,
        graph: onnx.ModelProto,
        segments: Sequence[Segment],
        arena_size: int,
        base: LossEngine,
        threads: int | None,
        providers: Sequence[str] | None,
    ):
        self.segments = list(segments)
        self.spans = [(s.offset, s.size) for s in self.segments]  # what the core's perturb_copies reads
        self.copies = np.zeros(0, np.float32)  # width × arena size, allocated by set_width
        self._arena_size = arena_size
        self.width = 0
        self._base = base
        self.session = create_session(graph, threads, providers)
        self._inputs = {i.name for i in self.session.get_inputs()}
        self._binding = self.session.io_binding()
        self._roles: dict[str, BatchRole] | None = None
        self._batch_arrays: list[np.ndarray] = []
        self._rows = 0

    def set_width(self, width: int) -> None:
        """Evaluate ``width`` copies per run from now on (rebinds the slice; call ``set_batch`` after)."""
        if width < 1:
            raise ValueError(f"width must be at least 1, not {width}")
        self.width = width
        if self.copies.size != width * self._arena_size:  # only the copies in use take memory
            self.copies = np.zeros(width * self._arena_size, np.float32)
        for seg in self.segments:
            view = self.copies[width * seg.offset: width * (seg.offset + seg.size)]
            self._binding.bind_input(seg.name, "cpu", 0, np.float32, [width, *seg.shape], view.ctypes.data)

    def set_batch(self, batch: Batch) -> None:
        """Bind ``batch`` as ``width`` stacked copies (runs the frozen prefix once)."""
        if self._roles is None:  # from one example and that example twice
            one, two = (self._feeds(batch.select(rows)) for rows in ([0], [0, 0]))
            self._roles = batch_roles(one, two)
        self._batch_arrays = []
        self._binding.bind_output(LOSS_OUTPUT, "cpu")  # a bound output keeps the shape of its last run
        for name, array in self._feeds(batch).items():
            array = np.ascontiguousarray(self._roles[name].stack(array, self.width))
            self._batch_arrays.append(array)  # bind_cpu_input does not own the memory
            self._binding.bind_cpu_input(name, array)
        self._rows = batch.size

    def _feeds(self, batch: Batch) -> dict[str, np.ndarray]:
        """The base engine's feeds that this graph reads (it may have fewer inputs: ``without_head_grad``)."""
        return {name: array for name, array in self._base.data_feeds(batch).items() if name in self._inputs}

    def losses(self) -> np.ndarray:
        """Per-example losses, ``[width, B]``: row p is copy p's."""
        self.session.run_with_iobinding(self._binding)
        return self._binding.copy_outputs_to_cpu()[0].reshape(self.width, self._rows)

    def mean_loss(self) -> np.ndarray:
        """Each copy's mean loss over the batch, ``[width]`` (the P-RGE optimizer's ``loss_fn``)."""
        return self.losses().mean(axis=1)


@dataclass(frozen=True)
class BatchRole:
    """How one input of the tunable graph takes P stacked copies of the batch."""

    kind: str  # "rows" (tile along axis 0), "scaled" (multiply the batch-sized entries by P) or "shared"
    scaled: np.ndarray | None = None  # "scaled": which entries

    def stack(self, array: np.ndarray, width: int) -> np.ndarray:
        if self.kind == "rows":
            return np.concatenate([array] * width)
        if self.kind == "scaled":
            return np.where(self.scaled, array * width, array).astype(array.dtype)
        return array


def batch_roles(one: dict[str, np.ndarray], two: dict[str, np.ndarray]) -> dict[str, BatchRole]:
    """Each input's role, from its values for one example (``one``) and for that example twice (``two``)."""
    roles = {}
    for name, a in one.items():
        b = two[name]
        if a.ndim and b.shape == (2 * a.shape[0], *a.shape[1:]):
            roles[name] = BatchRole("rows")
        elif a.shape == b.shape and np.array_equal(a, b):
            roles[name] = BatchRole("shared")
        elif a.shape == b.shape and a.ndim <= 1 and np.issubdtype(a.dtype, np.integer) \
                and np.all((b == a) | ((b == 2 * a) & (a != 0))):
            roles[name] = BatchRole("scaled", b != a)
        else:
            raise ModelError(
                f"P-RGE cannot stack the batch in '{name}' (shape {list(a.shape)} for one example, "
                f"{list(b.shape)} for two); use --parallel off"
            )
    return roles
