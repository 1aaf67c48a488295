"""Predicting peak memory (RSS) before running anything: ``edgetune plan``.

The model is read as a *skeleton*: the ONNX file is walked at the protobuf wire level and every
initializer keeps its name, type and shape but not its bytes, so planning a 540 MB model costs a few
MB. Parameter counts come from the same code the tuner uses (``graph.blocks.find_params``,
``graph.select``, ``graph.lora``), so they are exact; memory is a formula with constants calibrated
on this project's machine (x86-64, onnxruntime 1.31, glibc, Python 3.11). All figures are MiB
(what ``free -m`` and VmHWM/1024 show); W is bytes of weights, B batch, T tokens, H hidden size,
a heads, V vocabulary, I MLP width, L blocks.

ONNX Runtime (inference and edgetune), per session over its *frozen* initializers:

    session creation peak  = 2.49·W_other + 1.33·W_matmul     (protobuf copy + tensors + prepacking)
    resident after loading = 1.62·W_other + 1.29·W_matmul     (tensors + MLAS prepacked MatMul weights)
    one forward            = 84·B·T·H + 12·a·B·T² bytes  (+ 4·B·T·V logits for a causal LM)

edgetune's causal-LM graph runs the LM head on the scored positions only (``graph/loss.py``), so its
logits are 4·B·S·V with S the tokens scored per example (``--scored-tokens``: 1 for a verbaliser, a
completion's length; default T, plain text scores every token).

The forward term does not grow with L: ORT frees a block's tensors before the next block runs.

    inference peak = ORT_BASE + max(session peak, resident + forward)
    edgetune peak  = EDGETUNE_BASE + arena (4 bytes per trainable value)
                     + max(prefix session peak, prefix resident + suffix session peak,
                           both resident + max(prefix forward, suffix forward) + boundary + loss)

(the start-up self-check snapshots the arena to a temporary file, not to memory).

The frozen prefix and the trainable suffix are separate sessions drawing from one CPU arena shared
through ORT's environment (``engine/session.py``), so the suffix reuses the memory of the prefix's
freed activations and only the boundary tensors live across the cut; a frozen weight both halves use
(a tied embedding) is in both sessions. The causal-LM loss adds one more 4·B·S·V tensor
(``graph/loss.py``); trainable weights that the graph transposes at run time (a tied LM head) add a
copy per forward.

First-order fine-tuning in PyTorch (fp32, AdamW), the standard count:

    peak = TORCH_BASE + W (weights) + W_grad + 2·W_grad (AdamW m, v) + 1.56 · activations
    activations per block = 34·s·b·h + 8·s·b·I + 9·a·s²·b bytes

which is Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
34·s·b·h + 5·a·s²·b at fp16) with every 2-byte tensor at 4 bytes, dropout masks at 1 byte, and the
MLP's two 4h-wide tensors written as I-wide (I = 4h gives 66·s·b·h + 9·a·s²·b). Gradient
checkpointing keeps each block's 4·s·b·h input and recomputes one block at a time, whose activations
and their gradients are alive together during its backward (2 × one block; with 1 ×, the three
measured MiniLM points were 7–17 % under); LoRA keeps gradients and
AdamW state for the adapters only (activations as for full tuning: the backward still runs through
every block). A causal LM adds 8·B·T·V for the logits and their gradient.

What is not covered: other allocators or platforms (glibc's adaptive mmap threshold can leave up to
~30 % more resident after creating a large session, run to run), GPU memory, quantised weights'
kernels, evaluation batches (``--eval-batch-size``), and ``--no-split``.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgetune.data.jsonl import TASK_LM
from edgetune.errors import EdgetuneError
from edgetune.graph.blocks import Param, find_params
from edgetune.graph.lora import add_lora, find_linears
from edgetune.graph.loss import lm_head
from edgetune.graph.model import inspect_model
from edgetune.graph.select import select_params
from edgetune.graph.split import node_inputs, partition
from edgetune.graph.trainable import ALL, DEFAULT, LAST, LoraSpec, Term, TrainableSpec
from edgetune.graph.wire import read_skeleton

MB = float(1 << 20)

# Process baselines: VmHWM of `python -c "import numpy, onnxruntime"` (47 MB) and with `import
# edgetune.tuner` too (74 MB, the tuning process before it loads a model), in fresh interpreters.
ORT_BASE_MB = 47.0
EDGETUNE_BASE_MB = 74.0
# PyTorch: `import torch, transformers` alone is 329 MB, but a training process holds more (the model
# classes, autograd's code pages, allocator slack) and eager BERT keeps more than the formula counts
# (SDPA's math path, GELU and LayerNorm saved tensors). Fitted to PyTorch + AdamW on all-MiniLM-L6-v2
# (benchmarks/bench_plan.py, full fine-tuning at 8x128 and 32x128: measured 1226 and 2317 MB against
# 329 MB + 4W + the formula's 232 and 930 MB): peak = TORCH_BASE + 4W + TORCH_ACTIVATION_FACTOR * formula.
TORCH_BASE_MB = 518.0
TORCH_ACTIVATION_FACTOR = 1.56
# Session memory per byte of frozen weights, split by whether a MatMul/Gemm consumes the weight (ORT
# prepacks those). Fitted exactly to two models, VmHWM after InferenceSession() and VmRSS after it,
# minus ORT_BASE_MB: all-MiniLM-L6-v2 (45.7 MB other + 40.5 MB MatMul weights: peak 168, resident
# 127) and SmolLM2-135M (109 MB tied embedding + 405 MB MatMul: peak 810, resident 700), both with
# MALLOC_MMAP_THRESHOLD_ fixed so that glibc's adaptive threshold does not add its noise.
SESSION_PEAK_OTHER, SESSION_PEAK_MATMUL = 2.49, 1.33
RESIDENT_OTHER, RESIDENT_MATMUL = 1.62, 1.29
# One ORT forward's activations (bytes). Fitted to VmHWM growth over the loaded session: MiniLM at
# B x T = 8x32..8x256, 16x128, 32x128, 64x64 (the T² term from 8x128 vs 8x256) and SmolLM2 at 4x128,
# 8x64, 16x64, 1x256 once its 4·B·T·V logits are taken off; the fit is within 12 % at every point.
ACT_BYTES_PER_TOKEN_HIDDEN = 84.0
ACT_BYTES_PER_HEAD_T2 = 12.0

_MATMUL_OPS = ("MatMul", "Gemm")
_HEAD_DIMS = (64, 128, 32, 80, 96, 256, 16)  # usual head sizes, most common first


# -- architecture -------------------------------------------------------------------------------


def _itemsize(data_type: int) -> int:
    return int(np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize)


@dataclass
class Architecture:
    """The numbers the formulas need, inferred from initializer shapes and block placement."""

    task: str
    total_params: int  # fp32 weights (what ``--trainable all`` tunes)
    weight_mb: float  # every initializer, any type
    matmul_mb: float  # the part a MatMul/Gemm consumes
    blocks: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    num_classes: int | None


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    uses: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            uses[name].append(node)
    return uses


def _is_matmul_weight(name: str, uses: dict[str, list[onnx.NodeProto]]) -> bool:
    """A weight only MatMul/Gemm read as their second operand (what ORT prepacks)."""
    nodes = uses.get(name, [])
    return bool(nodes) and all(n.op_type in _MATMUL_OPS and list(n.input).index(name) == 1 for n in nodes)


def _guess_heads(model: onnx.ModelProto, hidden: int) -> int:
    """Heads from the integer constants that reshape activations into (heads, head_dim) pairs."""
    values: set[int] = set()
    for node in model.graph.node:
        if node.op_type != "Constant" or not node.attribute or node.attribute[0].type != onnx.AttributeProto.TENSOR:
            continue
        array = numpy_helper.to_array(node.attribute[0].t)
        if array.dtype.kind == "i" and array.size <= 4:
            values.update(int(v) for v in array.ravel() if 1 < v < hidden)
    pairs = [(n, hidden // n) for n in values if hidden % n == 0 and hidden // n in values]
    usual = [(n, d) for n, d in pairs if d in _HEAD_DIMS]
    if usual:
        return min(usual, key=lambda p: _HEAD_DIMS.index(p[1]))[0]
    if pairs:
        return min(n for n, d in pairs if n <= d) if any(n <= d for n, d in pairs) else min(pairs)[0]
    return max(1, hidden // 64)


def inspect_architecture(model: onnx.ModelProto, path: Path, task: str | None = None) -> Architecture:
    info = inspect_model(model, path, task)
    params = find_params(model)
    uses = _consumers(model)
    weight_bytes = matmul_bytes = 0
    for init in model.graph.initializer:
        size = int(np.prod(init.dims)) * _itemsize(init.data_type)
        weight_bytes += size
        matmul_bytes += size if _is_matmul_weight(init.name, uses) else 0
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    table = next((s for s in shapes.values() if info.embedding_rows and len(s) == 2 and s[0] == info.embedding_rows), None)
    block_params = [p for p in params if p.region == "block"]
    vectors = [p.shape[0] for p in block_params if len(p.shape) == 1]
    hidden = table[1] if table else (max(set(vectors), key=vectors.count) if vectors else 1)
    widths = [max(p.shape) for p in block_params if len(p.shape) == 2]
    return Architecture(
        task=info.task,
        total_params=sum(p.size for p in params),
        weight_mb=weight_bytes / MB,
        matmul_mb=matmul_bytes / MB,
        blocks=len({p.block for p in block_params}),
        hidden=int(hidden),
        heads=_guess_heads(model, int(hidden)),
        intermediate=int(max(widths)) if widths else 4 * int(hidden),
        vocab=int(info.embedding_rows or 0),
        num_classes=info.num_classes,
    )


# -- predictions --------------------------------------------------------------------------------

INFERENCE, EDGETUNE, FIRST_ORDER = "inference", "edgetune", "first-order"
_LORA_QV = TrainableSpec(lora=LoraSpec(rank=8, alpha=16.0, targets=("q", "v")))  # lora:r=8,targets=q,v


@dataclass
class Prediction:
    mode: str
    kind: str  # INFERENCE, EDGETUNE or FIRST_ORDER
    trainable_params: int
    batch: int
    length: int
    peak_mb: float
    parts: dict[str, float] = field(default_factory=dict)  # the terms, MiB

    def to_json(self) -> dict:
        return {**asdict(self), "peak_mb": round(self.peak_mb, 1), "parts": {k: round(v, 1) for k, v in self.parts.items()}}


@dataclass
class _Session:
    other_mb: float = 0.0
    matmul_mb: float = 0.0

    @property
    def peak(self) -> float:
        return SESSION_PEAK_OTHER * self.other_mb + SESSION_PEAK_MATMUL * self.matmul_mb

    @property
    def resident(self) -> float:
        return RESIDENT_OTHER * self.other_mb + RESIDENT_MATMUL * self.matmul_mb


class Planner:
    """Peak-memory predictions for one model; a mode is a ``--trainable`` spec."""

    def __init__(self, onnx_path: str | Path, task: str | None = None, scored_tokens: int | None = None):
        """``scored_tokens``: tokens per example a causal LM's loss scores (None: every token)."""
        self.path = Path(onnx_path)
        self.model = read_skeleton(self.path)
        self.arch = inspect_architecture(self.model, self.path, task)
        self.params = find_params(self.model)
        self.scored_tokens = scored_tokens

    def _scored_rows(self, model: onnx.ModelProto, batch: int, length: int) -> int:
        """Positions whose logits edgetune's tuning graph of ``model`` computes."""
        if self.scored_tokens is None or lm_head(model.graph) is None:
            return batch * length
        return batch * min(self.scored_tokens, length)

    # one ORT forward: activations that do not depend on the split
    def _forward_mb(self, batch: int, length: int, logits_rows: int) -> float:
        a = self.arch
        act = ACT_BYTES_PER_TOKEN_HIDDEN * batch * length * a.hidden + ACT_BYTES_PER_HEAD_T2 * a.heads * batch * length**2
        if a.task == TASK_LM:
            act += 4.0 * logits_rows * a.vocab
        return act / MB

    def inference(self, batch: int, length: int) -> Prediction:
        uses = _consumers(self.model)
        session = _Session()
        for init in self.model.graph.initializer:
            self._add_weight(session, init, uses)
        forward = self._forward_mb(batch, length, logits_rows=batch * length)
        peak = ORT_BASE_MB + max(session.peak, session.resident + forward)
        parts = {"base": ORT_BASE_MB, "session_peak": session.peak, "weights_resident": session.resident,
                 "forward": forward}
        return Prediction(INFERENCE, INFERENCE, 0, batch, length, peak, parts)

    def trainable(self, spec: TrainableSpec) -> tuple[onnx.ModelProto, list[Param]]:
        """The graph as the tuner builds it (LoRA inserted) and its trainable slice (``graph.prepare``)."""
        if spec.sparse is not None or spec.importance is not None:  # both need the weights' values or data
            raise EdgetuneError(f"--trainable '{spec.text}': plan predicts plain and lora: modes only")
        model = copy.deepcopy(self.model)
        selected = select_params(self.params, spec)
        if spec.lora is not None:
            adapters, _ = add_lora(model, spec.lora, self.params, str(self.path))
            selected = selected + adapters
        return model, selected

    def edgetune(self, spec: TrainableSpec, batch: int, length: int) -> Prediction:
        model, selected = self.trainable(spec)
        names = {p.name for p in selected}
        arena = sum(p.size for p in selected) * 4 / MB
        prefix_nodes, suffix_nodes, _ = partition(model.graph.node, names)  # the tuner's split
        uses = _consumers(model)
        prefix, suffix = _Session(), _Session()
        prefix_reads = {n for node in prefix_nodes for n in node_inputs(node)}
        suffix_reads = {n for node in suffix_nodes for n in node_inputs(node)}
        runtime_copies = 0.0
        for init in model.graph.initializer:
            if init.name in names:
                if any(n.op_type in ("Transpose", "Cast") for n in uses.get(init.name, [])):
                    runtime_copies += int(np.prod(init.dims)) * 4 / MB
                continue
            if init.name in prefix_reads:
                self._add_weight(prefix, init, uses)
            if init.name in suffix_reads:
                self._add_weight(suffix, init, uses)
        frozen_blocks = {p.block for p in self.params if p.block is not None and p.name not in names}
        split = bool(prefix_nodes) and bool(suffix_nodes)
        # A frozen weight the prefix only transforms (the Transpose of a tied embedding for the LM
        # head) crosses the cut as a prefix output: one more copy of it per step.
        derived = {init.name: int(np.prod(init.dims)) * _itemsize(init.data_type) for init in model.graph.initializer}
        for node in prefix_nodes:
            inputs = [n for n in node.input if n]
            if node.op_type != "Constant" and inputs and all(n in derived for n in inputs):
                derived.update({out: sum(derived[n] for n in inputs) for out in node.output})
        prefix_outputs = {out for node in prefix_nodes for out in node.output}
        weight_boundary = sum(derived[n] for n in suffix_reads & prefix_outputs if n in derived) / MB
        # the prefix runs a forward's worth of activations only if it holds a whole block
        by_block = defaultdict(list)
        for p in self.params:
            if p.block in frozen_blocks:
                by_block[p.block].append(p.name in prefix_reads)
        prefix_has_blocks = split and any(all(inside) for inside in by_block.values())
        prefix_has_weights = split and any(p.name in prefix_reads for p in self.params)
        scored = self._scored_rows(model, batch, length)
        forward = self._forward_mb(batch, length, logits_rows=scored)
        prefix_forward = self._forward_mb(batch, length, logits_rows=0) if prefix_has_blocks else 0.0
        lm = self.arch.task == TASK_LM
        mask = (4.0 * batch * length * (length if lm else 1)) / MB if split else 0.0
        boundary = (4.0 * batch * length * self.arch.hidden / MB if prefix_has_weights else 0.0) + mask + weight_boundary
        loss = 4.0 * scored * self.arch.vocab / MB if lm else 0.0
        running = prefix.resident + suffix.resident + max(prefix_forward, forward) + boundary + loss + runtime_copies
        peak = EDGETUNE_BASE_MB + arena + max(prefix.peak, prefix.resident + suffix.peak, running)
        parts = {"base": EDGETUNE_BASE_MB, "arena": arena, "prefix_resident": prefix.resident,
                 "suffix_resident": suffix.resident, "forward": forward, "prefix_forward": prefix_forward,
                 "boundary": boundary, "loss": loss, "runtime_copies": runtime_copies}
        return Prediction(spec.text, EDGETUNE, sum(p.size for p in selected), batch, length, peak, parts)

    def first_order(self, batch: int, length: int, checkpointing: bool = False,
                    lora: TrainableSpec | None = None) -> Prediction:
        """PyTorch fp32 + AdamW; ``lora`` a spec with a ``lora:`` term (gradients and state for adapters only)."""
        a = self.arch
        s, b, h = length, batch, a.hidden
        per_block = 34 * s * b * h + 8 * s * b * a.intermediate + 9 * a.heads * s * s * b
        blocks = a.blocks * 4 * s * b * h + 2 * per_block if checkpointing else a.blocks * per_block
        outside = 4 * s * b * h * 2 + (8 * s * b * a.vocab if a.task == TASK_LM else 0)  # embeddings, logits
        weights = a.total_params * 4 / MB
        trained = (sum(p.size for p in self.trainable(lora)[1]) if lora else a.total_params)
        state = trained * 4 * 3 / MB  # gradient + AdamW m and v
        activations = TORCH_ACTIVATION_FACTOR * (blocks + outside) / MB
        name = ("lora" if lora else "full") + (" + checkpointing" if checkpointing else "")
        peak = TORCH_BASE_MB + weights + (trained * 4 / MB if lora else 0.0) + state + activations
        parts = {"base": TORCH_BASE_MB, "weights": weights, "grad_and_adamw": state, "activations": activations}
        return Prediction(f"{name} ({lora.text})" if lora else name, FIRST_ORDER, trained, batch, length, peak, parts)

    def _add_weight(self, session: _Session, init: onnx.TensorProto, uses) -> None:
        size = int(np.prod(init.dims)) * _itemsize(init.data_type) / MB
        if _is_matmul_weight(init.name, uses):
            session.matmul_mb += size
        else:
            session.other_mb += size

    # -- the command's table ----------------------------------------------------------------

    def default_modes(self) -> list[TrainableSpec]:
        """all, the tuner's default, last:2, and LoRA on q,v when the model has such layers."""
        modes = [TrainableSpec((Term(ALL),)), DEFAULT, TrainableSpec((Term(LAST, 2),))]
        linears = find_linears(self.model)
        if any(lin.tail.endswith(("q_proj", "query")) for lin in linears) and any(
            lin.tail.endswith(("v_proj", "value")) for lin in linears
        ):
            modes.append(_LORA_QV)
        return list(dict.fromkeys(modes))

    def table(self, batch: int, length: int, modes: Sequence[TrainableSpec]) -> list[Prediction]:
        rows = [self.inference(batch, length)]
        rows += [self.edgetune(mode, batch, length) for mode in modes]
        lora = next((m for m in modes if m.lora is not None), _LORA_QV if _LORA_QV in self.default_modes() else None)
        rows += [self.first_order(batch, length), self.first_order(batch, length, checkpointing=True)]
        if lora:
            rows.append(self.first_order(batch, length, lora=lora))
        return rows


@dataclass
class Suggestion:
    mode: str
    batch: int
    prediction: Prediction


def suggest(planner: Planner, batch: int, length: int, modes: Sequence[TrainableSpec], budget_mb: float) -> Suggestion:
    """The edgetune mode with the fewest trainable weights that fits at batch 1, at the largest batch ≤ ``batch``.

    Fewest weights first because a zeroth-order estimate's variance grows with the number of
    perturbed weights (docs/architecture.md): that mode learns the most per forward pass.
    """
    ranked = sorted(modes, key=lambda m: sum(p.size for p in planner.trainable(m)[1]))
    for mode in ranked:
        if planner.edgetune(mode, 1, length).peak_mb > budget_mb:
            continue
        low, high = 1, batch  # predictions grow with the batch: the largest that fits by bisection
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if planner.edgetune(mode, mid, length).peak_mb <= budget_mb else (low, mid - 1)
        return Suggestion(mode.text, low, planner.edgetune(mode, low, length))
    smallest = min((planner.edgetune(m, 1, length) for m in modes), key=lambda p: p.peak_mb)
    raise EdgetuneError(
        f"nothing fits in {budget_mb:.0f} MB at --max-length {length}: the smallest prediction is "
        f"{smallest.peak_mb:.0f} MB ({smallest.mode}, batch 1)"
    )
