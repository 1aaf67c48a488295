"""ZO-MicroAdam: Adam moments from a window of Top-K compressed estimates with 4-bit error feedback.

For when regenerating the window's m·q noise streams at every update (zo-adam) costs too much — a long
window, Gaussian noise on a slow core. As in MicroAdam (arXiv 2405.15593), each step's dense estimate
ĝ_t = (1/q) Σ_i g_i z(seed_i) plus the dequantised error feedback e is compressed to its k largest
entries (k = topk_density · n); the rest becomes the new e, quantised to 4 bits per value with a float32
minimum and step per block of 128. The moments come from the sparse window only:

    m = Σ_k a_k s_{t−k},   v = Σ_k b_k s_{t−k}²,   θ_I ← θ_I − lr·m_I/(√v_I + δ)

over the indices I held in the window (weights a_k, b_k as in zo-adam, normalised over the window).
Weight decay applies to all of θ, in the pass that restores the last perturbation.

What lives where: the restore and the noise of ĝ are the C++ kernels (``combine`` into a chunk
buffer, so ĝ is never held whole); Top-K, the quantisation and the sparse update are numpy over
chunks of 64K values, float32 in a fixed order except the moment sums, which ``np.bincount``
accumulates in float64 in index order: deterministic on every platform. Two passes over ĝ per step:
one finds the global Top-K, the second writes the residual into e. Ties in |a| go to the lowest index
(with Rademacher noise and one query all |ĝ| are equal until e differs), so the selection never
depends on a sort's implementation.

State per trainable parameter: the window, m · density · (4-byte index + 4-byte value), and e,
0.5 + 8/128 bytes; with the defaults (m = 10, density 1 %) 0.8 + 0.5625 = 1.36 bytes, against 8 for
Adam's two float32 moments.
"""

from __future__ import annotations

import base64
from collections import deque
from typing import Any

import numpy as np

from edgetune import _core
from edgetune.errors import EdgetuneError
from edgetune.zo.schedules import Schedule
from edgetune.zo.window import ADAM_DELTA, WindowedZO, ema_weights

QUANT_BLOCK = 128  # values per 4-bit quantisation block (one float32 minimum and step each)
_CHUNK = 1 << 16  # values of ĝ in memory at a time; a multiple of QUANT_BLOCK
_LEVELS = 15  # 4 bits

f32 = np.float32


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest |values|, ascending; ties at the threshold go to the lowest indices."""
    if k >= values.size:
        return np.arange(values.size)
    magnitude = np.abs(values)
    threshold = np.partition(magnitude, values.size - k)[values.size - k]  # the k-th largest, as a value
    chosen = magnitude > threshold
    chosen[np.flatnonzero(magnitude == threshold)[: k - np.count_nonzero(chosen)]] = True
    return np.flatnonzero(chosen)


class QuantizedErrorFeedback:
    """A float32 vector held as 4-bit codes with a minimum and a step per block: x ≈ low + code·step."""

    def __init__(self, size: int):
        blocks = -(-size // QUANT_BLOCK)
        self.size = size
        self.codes = np.zeros(-(-size // 2), np.uint8)  # two codes a byte, the even index in the low nibble
        self.low = np.zeros(blocks, f32)
        self.step = np.zeros(blocks, f32)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Dequantised values [start, stop); ``start`` is a multiple of QUANT_BLOCK."""
        first, blocks = start // QUANT_BLOCK, -(-(stop - start) // QUANT_BLOCK)
        packed = self.codes[start // 2 : start // 2 + blocks * QUANT_BLOCK // 2]
        codes = np.zeros((blocks, QUANT_BLOCK), np.uint8)
        flat = codes.reshape(-1)
        flat[0 : 2 * packed.size : 2], flat[1 : 2 * packed.size : 2] = packed & 0xF, packed >> 4
        low, step = self.low[first : first + blocks, None], self.step[first : first + blocks, None]
        return (low + codes.astype(f32) * step).reshape(-1)[: stop - start]

    def write(self, start: int, values: np.ndarray) -> None:
        """Quantise ``values`` into [start, start + len); ``start`` is a multiple of QUANT_BLOCK."""
        n = values.size
        padded = np.pad(values, (0, -n % QUANT_BLOCK), mode="edge").reshape(-1, QUANT_BLOCK)
        low, high = padded.min(axis=1), padded.max(axis=1)
        step = (high - low) / f32(_LEVELS)
        safe = np.where(step > 0, step, f32(1))
        codes = np.clip(np.rint((padded - low[:, None]) / safe[:, None]), 0, _LEVELS).astype(np.uint8).ravel()[:n]
        if n % 2:
            codes = np.append(codes, np.uint8(0))
        first = start // QUANT_BLOCK
        self.low[first : first + low.size] = low
        self.step[first : first + step.size] = step
        self.codes[start // 2 : start // 2 + codes.size // 2] = codes[0::2] | (codes[1::2] << 4)

    def nbytes(self) -> int:
        return self.codes.nbytes + self.low.nbytes + self.step.nbytes

    def state_dict(self) -> dict[str, str]:
        return {"codes": _encode(self.codes), "low": _encode(self.low), "step": _encode(self.step)}

    def load_state_dict(self, state: dict[str, str]) -> None:
        for name in ("codes", "low", "step"):
            current = getattr(self, name)
            current[...] = _decode(state[name], current.dtype, current.size)


class ZOMicroAdam(WindowedZO):
    """ZO-Adam over a window of Top-K compressed estimates plus a 4-bit error feedback buffer."""

    name = "zo-microadam"

    def __init__(self, buffer: np.ndarray, seed: int, lr: Schedule, eps: Schedule, window: int = 10,
                 beta1: float = 0.9, beta2: float = 0.99, density: float = 0.01, **kwargs: Any):
        super().__init__(buffer, seed, lr, eps, **kwargs)
        if buffer.size >= 2**32:
            raise ValueError("zo-microadam stores uint32 indices: the arena must hold fewer than 2**32 values")
        self.beta1 = beta1
        self.beta2 = beta2
        self.k = max(1, round(density * buffer.size))
        self.window: deque[tuple[int, np.ndarray, np.ndarray]] = deque(maxlen=window)  # (step, indices, values)
        self.feedback = QuantizedErrorFeedback(buffer.size)

    @classmethod
    def from_config(cls, config, buffer: np.ndarray) -> ZOMicroAdam:
        return cls(**cls.settings(config, buffer), window=config.window, beta1=config.beta1,
                   beta2=config.beta2, density=config.topk_density)

    def _update(self, t, seeds, grads, lr, eps, decay, nxt):
        _core.combine(self.buffer, float(decay), [seeds[-1]], [float(decay * eps)], self.noise)  # restore, decay
        self.window.appendleft((t, *self._compress(seeds, grads)))
        self._sparse_adam_step(lr)
        if nxt is not None:
            _core.perturb(self.buffer, nxt[0], nxt[1], self.noise)

    def _compress(self, seeds: list[int], grads: list[float]) -> tuple[np.ndarray, np.ndarray]:
        """Top-K of ĝ + e (indices, values); the rest of it becomes the new error feedback."""
        coefs = [float(f32(g) / f32(len(grads))) for g in grads]

        def with_feedback(start: int, stop: int) -> np.ndarray:
            estimate = np.zeros(stop - start, f32)
            _core.combine(estimate, 0.0, seeds, coefs, self.noise, offset=start)
            return estimate + self.feedback.read(start, stop)

        n = self.buffer.size
        indices, values = np.empty(0, np.int64), np.empty(0, f32)
        for start in range(0, n, _CHUNK):
            chunk = with_feedback(start, min(start + _CHUNK, n))
            local = top_k(chunk, self.k)
            indices = np.concatenate([indices, local + start])  # still ascending: earlier chunks first
            values = np.concatenate([values, chunk[local]])
            keep = top_k(values, self.k)
            indices, values = indices[keep], values[keep]
        for start in range(0, n, _CHUNK):
            stop = min(start + _CHUNK, n)
            chunk = with_feedback(start, stop)
            chunk[indices[np.searchsorted(indices, start) : np.searchsorted(indices, stop)] - start] = 0
            self.feedback.write(start, chunk)
        return indices.astype(np.uint32), values

    def _sparse_adam_step(self, lr: np.float32) -> None:
        a = ema_weights(self.beta1, len(self.window))
        b = ema_weights(self.beta2, len(self.window))
        indices = np.concatenate([i for _, i, _ in self.window])
        m_terms = np.concatenate([f32(w) * v for w, (_, _, v) in zip(a, self.window)])
        v_terms = np.concatenate([f32(w) * (v * v) for w, (_, _, v) in zip(b, self.window)])
        touched, slot = _unique_sorted_runs(indices)
        m = np.bincount(slot, weights=m_terms, minlength=touched.size).astype(f32)
        v = np.bincount(slot, weights=v_terms, minlength=touched.size).astype(f32)
        self.buffer[touched] = self.buffer[touched] - lr * (m / (np.sqrt(v) + f32(ADAM_DELTA)))

    def state_nbytes(self) -> int:
        return sum(i.nbytes + v.nbytes for _, i, v in self.window) + self.feedback.nbytes()

    def state_dict(self) -> dict[str, Any]:
        window = [{"step": t, "indices": _encode(i), "values": _encode(v)} for t, i, v in self.window]
        return {"window": window, "feedback": self.feedback.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window.clear()
        for entry in reversed(state.get("window", [])):
            self.window.appendleft((int(entry["step"]), _decode(entry["indices"], np.uint32),
                                    _decode(entry["values"], f32)))
        if "feedback" in state:
            self.feedback.load_state_dict(state["feedback"])


def _unique_sorted_runs(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(indices, return_inverse=True)`` for a concatenation of ascending runs: a stable
    sort (timsort merges the runs) instead of np.unique's quicksort."""
    order = np.argsort(indices, kind="stable")
    ordered = indices[order]
    first = np.empty(ordered.size, bool)
    first[:1], first[1:] = True, ordered[1:] != ordered[:-1]
    slot = np.empty(ordered.size, np.intp)
    slot[order] = np.cumsum(first) - 1
    return ordered[first], slot


def _encode(array: np.ndarray) -> str:
    """Little-endian bytes as base64 text, for the JSON state of a checkpoint."""
    return base64.b64encode(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()).decode("ascii")


def _decode(text: str, dtype: np.dtype, size: int | None = None) -> np.ndarray:
    array = np.frombuffer(base64.b64decode(text), dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)
    if size is not None and array.size != size:
        raise EdgetuneError(f"checkpoint: zo-microadam state holds {array.size} values where {size} are expected")
    return array
