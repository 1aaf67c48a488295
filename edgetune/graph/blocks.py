"""Which transformer block each weight belongs to.

Exporters keep module paths in *node* names (``/bert/encoder/layer.3/attention/self/query/MatMul``)
even where they mangle the weight's own name (``onnx::MatMul_1234``). A weight is placed by, in order:

1. the scope of the nodes consuming it, following unscoped nodes that only transform weights
   (a Transpose or Cast of an initializer) downstream until a scoped one is found;
2. its own name;
3. for exporter-generated names only, the names of weights it meets within two nodes downstream (the bias added to its MatMul), which
   still works when the exporter blanked every node name;
4. failing all that, the block of the nearest placed weight consumed before it, when placed weights
   follow it too (weights after the last placed one count as head).

Weights outside every block are ``embeddings`` (consumed before the first block) or ``head``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx

EMBEDDINGS = "embeddings"
HEAD = "head"

_BLOCK_RE = re.compile(r"(?:^|[/.:_])(?:layers?|h|blocks?)[._/](\d+)(?=[/._:]|$)")
# Float buffers that exporters store as initializers but that are not weights.
_BUFFER_RE = re.compile(r"(inv_freq|cos_cached|sin_cached|_cached|causal_mask|masked_bias|position_ids)$")
_MAX_HOPS = 4


@dataclass(frozen=True)
class Param:
    name: str
    shape: tuple[int, ...]
    block: int | None  # None for embeddings / head
    region: str  # "block", EMBEDDINGS or HEAD
    first_use: int  # index of the first consuming node in topological order

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


def block_of_name(name: str) -> int | None:
    match = _BLOCK_RE.search(name)
    return int(match.group(1)) if match else None


def _is_mangled(name: str) -> bool:
    """An exporter-generated name (``onnx::MatMul_12``) says nothing; a module path says 'no block'."""
    return name.startswith("onnx::") or "." not in name


def find_params(model: onnx.ModelProto) -> list[Param]:
    """Every fp32 weight of the graph, placed in a block, the embeddings or the head."""
    graph = model.graph
    consumers: dict[str, list[int]] = defaultdict(list)
    for index, node in enumerate(graph.node):
        for name in node.input:
            consumers[name].append(index)

    constants = {init.name for init in graph.initializer}
    constants.update(o for node in graph.node if node.op_type == "Constant" for o in node.output)

    def scoped_block(node_index: int, hops: int = 0) -> int | None:
        node = graph.node[node_index]
        block = block_of_name(node.name)
        if block is not None or hops >= _MAX_HOPS:
            return block
        if not all(name in constants for name in node.input if name):
            return None  # this node computes on activations, so its (missing) scope is the weight's
        constants.update(node.output)
        for out in node.output:
            for nxt in consumers.get(out, ()):
                block = scoped_block(nxt, hops + 1)
                if block is not None:
                    return block
        return None

    initializer_names = {init.name for init in graph.initializer}

    def neighbour_block(uses: list[int]) -> int | None:
        """Block named by a weight that meets this one within a hop (``MatMul(x, W) + bias``)."""
        frontier = list(uses)
        for _ in range(2):
            following = []
            for index in frontier:
                node = graph.node[index]
                for name in node.input:
                    if name in initializer_names and (block := block_of_name(name)) is not None:
                        return block
                following += [nxt for out in node.output for nxt in consumers.get(out, ())]
            frontier = following
        return None

    candidates = []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or len(init.dims) == 0 or int(np.prod(init.dims)) < 2:
            continue
        if _BUFFER_RE.search(init.name) or not consumers.get(init.name):
            continue
        uses = consumers[init.name]
        blocks = {b for b in (scoped_block(i) for i in uses) if b is not None}
        block = min(blocks) if blocks else block_of_name(init.name)
        if block is None and _is_mangled(init.name):
            block = neighbour_block(uses)
        candidates.append((init, block, min(uses)))

    # A weight still unplaced but consumed between two placed ones sits in the block of the nearest
    # placed weight before it (a stripped, bias-free Llama: q/k/v/o and the MLP follow their norms).
    anchors = sorted((use, block) for _, block, use in candidates if block is not None)
    first_block_use = anchors[0][0] if anchors else -1
    last_block_use = anchors[-1][0] if anchors else -1
    params = []
    for init, block, use in candidates:
        if block is None and _is_mangled(init.name) and first_block_use < use < last_block_use:
            block = max((a for a in anchors if a[0] <= use), default=(0, None))[1]
        if block is not None:
            region = "block"
        else:
            region = EMBEDDINGS if use < first_block_use or first_block_use < 0 else HEAD
        params.append(Param(init.name, tuple(int(d) for d in init.dims), block, region, use))
    return params
