"""``--trainable auto`` (the default): the slice chosen by what the model is.

Four kinds, each with the slice that did best at a fixed forward budget with ``--lr auto`` (measured by
``benchmarks/bench_defaults.py``; the table is in docs/optimizers.md):

- a classifier whose head is fresh (initialised, never trained: an encoder exported with a new head);
- a classifier whose head is trained;
- a causal LM classifying through a verbaliser (the next word);
- a causal LM on text, prompt/completion or chat data (generation).

A fresh head is told from its weights, not from a name or a file beside the model: a linear layer initialised
the way Hugging Face (and PyTorch's ``nn.Linear`` under transformers' ``_init_weights``) initialise a new
classification head has a bias of exact zeros, which no training leaves. The weights are read from where
their bytes lie in the file (``graph.wire``), never by loading the model: a classifier's bias is a few floats.
A head without a bias, or one whose bytes are not stored raw, counts as trained (the safer slice: it also
moves the layers below).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgetune.data.jsonl import TASK_CLASSIFICATION, TASK_LM
from edgetune.data.verbalizer import VERBALIZER_KEY
from edgetune.errors import ModelError
from edgetune.graph.blocks import find_params
from edgetune.graph.head_grad import find_exact_head, find_linear_head
from edgetune.graph.model import inspect_model
from edgetune.graph.select import select_params
from edgetune.graph.trainable import TrainableSpec
from edgetune.graph.wire import read_skeleton, tensor_locations

FRESH_HEAD = "a classifier with a fresh head"
TRAINED_HEAD = "a classifier with a trained head"
VERBALISER = "a causal LM classifying by verbaliser"
GENERATIVE = "a causal LM on text, prompt/completion or chat data"

# The chosen slice per kind ({late} is the first of the last quarter of the blocks); see the module docstring.
# A classifier's slice holds its linear head, which --head auto then tunes first-order (edgetune.zo.exact_head):
# with the exact head, `head` alone beat `last:1` and `last:2` (ZO below it, --lr auto) at bench_defaults' 300
# forwards on 3 seeds, Rotten Tomatoes 0.820 / 0.805 / 0.775 and the debates 0.661 / 0.621 / 0.631; on a trained
# head the exact head matched the ZO head (0.812 both, dev loss 0.439 against 0.465).
SLICES = {
    FRESH_HEAD: "head",
    TRAINED_HEAD: "head",
    VERBALISER: "lora:r=4,targets=o,down,layers={late}-{last},fa",
    GENERATIVE: "lora:r=4,targets=o,down,layers={late}-{last},fa",
}


@dataclass(frozen=True)
class AutoSlice:
    """The slice ``--trainable auto`` chose for a model, and why."""

    spec: TrainableSpec
    kind: str  # one of the kinds above

    @property
    def reason(self) -> str:
        return f"auto: {self.kind}; --trainable to choose"

    def line(self) -> str:
        """The choice in one line (logged at the start of a run; the CLI says it in its banner)."""
        return f"trainable: {self.spec} ({self.reason})"


def choose_slice(path: str | Path, task: str | None = None, verbalized: bool | None = None) -> AutoSlice:
    """The slice for the model at ``path`` (``task`` as --task gives it; ``verbalized``: a verbaliser is given,
    None: whether the model's metadata names one). Reads the file's structure and, for a classifier, its
    head's bias."""
    path = Path(path)
    skeleton = read_skeleton(path)
    info = inspect_model(skeleton, path, task)
    if info.task == TASK_LM:
        if verbalized is None:
            verbalized = VERBALIZER_KEY in info.metadata
        kind = VERBALISER if verbalized else GENERATIVE
    else:
        kind = FRESH_HEAD if head_is_fresh(path, skeleton) else TRAINED_HEAD
    blocks = sorted({p.block for p in find_params(skeleton) if p.block is not None})
    last = blocks[-1] if blocks else 0
    late = blocks[-math.ceil(len(blocks) / 4)] if blocks else 0
    return AutoSlice(TrainableSpec.parse(SLICES[kind].format(late=late, last=last)), kind)


def exact_head_fits(path: str | Path, trainable: TrainableSpec, task: str | None = None) -> bool:
    """``--head auto``: whether the exact head serves this run: a classifier whose logits come from a linear
    layer (``find_exact_head``) that ``trainable`` tunes, weight and bias. Reads the file's structure only."""
    path = Path(path)
    skeleton = read_skeleton(path)
    if inspect_model(skeleton, path, task).task != TASK_CLASSIFICATION:
        return False
    try:
        head = find_exact_head(skeleton.graph, str(path))
        tuned = {p.name for p in select_params(find_params(skeleton), trainable)}
    except ModelError:  # no linear head; or a slice that selects nothing, which preparing it says in its line
        return False
    return head.weight in tuned and (head.bias is None or head.bias in tuned)


def head_is_fresh(path: Path, skeleton: onnx.ModelProto) -> bool:
    """Whether the classifier's last linear layer has a bias of exact zeros (see the module docstring)."""
    try:
        head = find_linear_head(skeleton.graph, str(path))
    except ModelError:  # logits not from a linear layer: nothing to tell a fresh head by
        return False
    dtypes = {init.name: init.data_type for init in skeleton.graph.initializer}
    if head.bias is None or dtypes.get(head.bias) != onnx.TensorProto.FLOAT:
        return False
    where = tensor_locations(path).get(head.bias)
    if where is None:
        return False
    file, offset, length = where
    with open(path.parent / file, "rb") as handle:
        handle.seek(offset)
        raw = handle.read(length)
    if len(raw) != length or length % 4:
        return False
    bias = np.frombuffer(raw, np.float32)
    return bias.size > 0 and not np.any(bias)
