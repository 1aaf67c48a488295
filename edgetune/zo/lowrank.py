"""LOZO (arXiv 2410.07698): ZO-SGD whose perturbation of each weight matrix is low-rank.

For a matrix W (m×n) in the slice, query i of step t perturbs along

    Z = U Vᵀ / √r,   U = noise(seed_i) (m×r, fresh every query),   V = noise(seed_V(t // ν)) (n×r)

V is drawn again only every ν steps (``lozo_interval``): it is a pure function of the run's seed and the
window t // ν, so nothing is stored and a resume or ``edgetune replay`` draws it again. Every other tensor
(biases, norms, a matrix with a side of r or fewer) gets ZO-SGD's dense noise at its arena offsets. With
independent zero-mean unit-variance U and V, E[Z_ij Z_kl] = δ_ik δ_jl: Z has the same second moments as
dense noise, so zᵀHz, and hence --lr auto's calibration and lr's meaning, carry over from ZO-SGD.

Cost: a matrix's noise is m·r + n·r draws instead of m·n, but forming Z is r multiply-adds per weight.
The step is ZO-SGD's (:class:`ZOSGD`: the same fused coefficients, queries policy and records); only the
arena passes differ. All queries of a step share V, so a pass θ ← decay·θ + Σ_s c_s·Z_s is one rank-r
update: W = Σ_s c_s·(U_s/√r) (m×r, the seeds in order), then, in float32, each operation rounded in a
fixed order (no FMA, no BLAS: a matmul's summation order depends on the library and the CPU),

    θ ← decay·θ;  P ← W[:,0] ⊗ V[:,0];  P ← P + W[:,k] ⊗ V[:,k] for k = 1 … r − 1;  θ ← θ + P

so a replay on any machine lands on the same bits. Steps are never chained (the next step's first
perturbation may use another V); that costs one memory pass per step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgetune import _core
from edgetune.zo.base import ZOBase
from edgetune.zo.subset import Span
from edgetune.zo.zosgd import ZOSGD, StepRecord

f32 = np.float32
_V_SALT = 0x4C4F_5A4F_5600_0000  # "LOZOV": V's seeds, a stream apart from the queries' own


@dataclass(frozen=True)
class Matrix:
    """A 2-D tensor of the arena: where it starts and its shape."""

    offset: int
    rows: int
    cols: int

    @property
    def end(self) -> int:
        return self.offset + self.rows * self.cols


def arena_tensors(weights: Mapping[str, np.ndarray], buffer: np.ndarray) -> list[tuple[int, tuple[int, ...]]]:
    """(arena offset, shape) of each view in ``weights`` (views into ``buffer``), by offset."""
    base = buffer.ctypes.data
    return sorted(((view.ctypes.data - base) // buffer.itemsize, tuple(view.shape)) for view in weights.values())


class LOZO(ZOSGD):
    """ZO-SGD over the arena with rank-``rank`` perturbations of its matrices (see the module docstring)."""

    name = "lozo"
    uses_layout = True  # build_optimizer hands it the arena's tensors

    def __init__(self, buffer: np.ndarray, seed: int, lr, eps, layout: Sequence[tuple[int, tuple[int, ...]]],
                 rank: int = 2, interval: int = 50, **kwargs):
        super().__init__(buffer, seed, lr, eps, **kwargs)
        if rank < 1 or interval < 1:
            raise ValueError(f"LOZO rank {rank} and interval {interval} must be >= 1")
        self.rank, self.interval = rank, interval
        self.matrices = [Matrix(offset, *shape) for offset, shape in layout
                         if len(shape) == 2 and min(shape) > rank]
        self.dense = _complement([(m.offset, m.end) for m in self.matrices], len(buffer))
        self._window = 0  # t // ν of the step being taken or replayed: which V
        self._v: dict[int, tuple[int, np.ndarray]] = {}  # matrix offset -> (window, V) drawn for it
        largest = max((m.rows * m.cols for m in self.matrices), default=0)
        self._scratch = np.empty((2, largest), f32)  # the outer products' sum and term

    @classmethod
    def from_config(cls, config, buffer: np.ndarray, weights: Mapping[str, np.ndarray]) -> LOZO:
        return cls(**ZOBase.settings(config, buffer), layout=arena_tensors(weights, buffer), rank=config.lozo_rank,
                   interval=config.lozo_interval)

    def step(self, t: int, loss_fn: Callable[[], float], chain: bool = False) -> StepRecord:
        self._window = t // self.interval
        return super().step(t, loss_fn, chain=False)

    def replay(self, record: StepRecord) -> None:
        self._window = record.step // self.interval
        super().replay(record)

    def _u(self, matrix: Matrix, seed: int) -> np.ndarray:
        u = _core.noise(seed, matrix.offset, matrix.rows * self.rank, self.noise).reshape(matrix.rows, self.rank)
        u *= f32(1 / np.sqrt(self.rank))
        return u

    def _outer(self, w: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Σ_k w[:,k] ⊗ v[:,k], rounded after each product and each sum, k in order; a view of the scratch
        (reused: fresh temporaries of a matrix's size cost more in page faults than the arithmetic)."""
        size = w.shape[0] * v.shape[0]
        z = self._scratch[0, :size].reshape(w.shape[0], v.shape[0])
        product = self._scratch[1, :size].reshape(z.shape)
        np.multiply(w[:, :1], v[:, 0], out=z)
        for k in range(1, self.rank):
            np.multiply(w[:, k:k + 1], v[:, k], out=product)
            z += product
        return z

    def _v_of(self, matrix: Matrix) -> np.ndarray:
        held = self._v.get(matrix.offset)
        if held is None or held[0] != self._window:
            seed = _core.derive_seed(self.seed ^ _V_SALT, self._window, 0)
            v = _core.noise(seed, matrix.offset, matrix.cols * self.rank, self.noise).reshape(matrix.cols, self.rank)
            held = self._v[matrix.offset] = (self._window, v)
        return held[1]

    def _perturb(self, spans: list[Span], seed: int, scale: float) -> None:
        """θ += scale·Z(seed): dense noise outside the matrices, U Vᵀ/√r on each."""
        self._combine(spans, 1.0, [seed], [scale])

    def _combine(self, spans: list[Span], decay: float, seeds: list[int], coefs: list[float]) -> None:
        """θ ← decay·θ + Σ coefs[k]·Z(seeds[k]): the core's pass on the dense spans, one rank-r update per matrix
        (the seeds are one step's: they share V)."""
        super()._combine(self.dense, decay, seeds, coefs)
        for matrix in self.matrices:
            w = np.zeros((matrix.rows, self.rank), f32)
            for seed, coef in zip(seeds, coefs):
                u = self._u(matrix, seed)
                u *= f32(coef)
                w += u
            view = self._view(matrix)
            if decay != 1:
                view *= f32(decay)
            view += self._outer(w, self._v_of(matrix))

    def perturbation(self, matrix: Matrix, seed: int) -> np.ndarray:
        """Z = U Vᵀ/√r of ``matrix`` for the query ``seed`` in the current window, float32 (rows × cols)."""
        return self._outer(self._u(matrix, seed), self._v_of(matrix)).copy()

    def _view(self, matrix: Matrix) -> np.ndarray:
        return self.buffer[matrix.offset:matrix.end].reshape(matrix.rows, matrix.cols)

    def noise_draws(self) -> int:
        """Noise values one perturbation draws (V amortised over its window not counted): against len(θ) dense."""
        low = sum(m.rows * self.rank for m in self.matrices)
        return low + sum(end - start for start, end in self.dense)


def _complement(ranges: list[Span], size: int) -> list[Span]:
    """The parts of [0, size) outside ``ranges`` (disjoint), in order, empty parts dropped."""
    out, start = [], 0
    for begin, end in sorted(ranges):
        if begin > start:
            out.append((start, begin))
        start = max(start, end)
    if start < size:
        out.append((start, size))
    return out
