"""edgetune core: counter-based noise, fused ZO kernels, parameter arena, ask/tell tuner.

Type stubs for the pybind11 extension built from bindings/core_module.cpp; keep the two in step
(tests/test_packaging.py compares names and parameters). Kernels take float32, C-contiguous,
writeable numpy arrays and release the GIL while they run. ``dist`` is "gaussian" or "rademacher".
"""

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

_Float32Array = npt.NDArray[np.float32]

__version__: str
"""The package version (pyproject.toml's), compiled in by CMake."""
cuda_compiled: bool
"""Whether the CUDA kernels were built in; the ``cuda_*`` kernels below exist only then."""

def derive_seed(run_seed: int, step: int, query: int) -> int:
    """The seed of one (step, query) perturbation of a run, a 64-bit hash of the three."""

def epoch_permutation(seed: int, epoch: int, n: int) -> npt.NDArray[np.int64]:
    """The order of n training examples in an epoch of a run (edgetune.h et_epoch_permutation), int64."""

def noise(seed: int, offset: int, count: int, dist: str = "gaussian") -> _Float32Array:
    """z(seed, offset + i) for i < count, float32."""

def perturb(buf: _Float32Array, seed: int, scale: float, dist: str = "gaussian", offset: int = 0) -> None:
    """buf[i] += scale * z(seed, offset + i)."""

def combine(
    buf: _Float32Array, decay: float, seeds: Sequence[int], coefs: Sequence[float], dist: str = "gaussian",
    offset: int = 0,
) -> None:
    """buf[i] = decay*buf[i] + sum_k coefs[k]*z(seeds[k], offset+i), float32, in that order."""

def adam_window(
    buf: _Float32Array, seeds: Sequence[int], coefs: Sequence[float], queries: Sequence[int],
    m_weights: Sequence[float], v_weights: Sequence[float], decay: float, lr: float, delta: float,
    restore: tuple[int, float] | None = None, next: tuple[int, float] | None = None, dist: str = "gaussian",
    offset: int = 0,
) -> None:
    """ZO-Adam step with moments rebuilt from a window of (seed, coef) pairs; restore/next: (seed, scale) or None."""

def perturb_copies(
    src: _Float32Array, dst: _Float32Array, segments: Sequence[tuple[int, int]], seeds: Sequence[int],
    scales: Sequence[float], dist: str = "gaussian",
) -> None:
    """dst[k*offset + p*n + i] = src[offset + i] + scales[p]*z(seeds[p], offset + i) per segment; src is not written."""

def set_num_threads(n: int) -> None:
    """Size the process-global kernel thread pool (0 = hardware threads); results never depend on it."""

def get_num_threads() -> int:
    """The kernel thread pool's size."""

def simd_level() -> str:
    """The ISA the kernels dispatch to now: "scalar", "avx2", "avx512" or "neon"."""

def available_isas() -> list[str]:
    """The ISAs compiled in and supported by this CPU, scalar first."""

def set_isa(name: str) -> None:
    """Force an ISA (or "auto"); ValueError if it is not compiled in or not supported here."""

def cuda_available() -> bool:
    """Whether the CUDA kernels are compiled in and a GPU is usable."""

def cuda_noise(seed: int, offset: int, count: int, dist: str = "gaussian") -> _Float32Array:
    """Noise generated on the GPU and copied back (for bit-identity checks); CUDA builds only."""

def cuda_perturb(dev_ptr: int, n: int, seed: int, scale: float, dist: str = "gaussian", offset: int = 0) -> None:
    """perturb on a device pointer (e.g. a torch/cupy tensor's data_ptr()); CUDA builds only."""

def cuda_combine(
    dev_ptr: int, n: int, decay: float, seeds: Sequence[int], coefs: Sequence[float], dist: str = "gaussian",
    offset: int = 0,
) -> None:
    """combine on a device pointer; CUDA builds only."""

class Arena:
    """One contiguous 64-byte aligned fp32 block with named, 16-float aligned views and layer groups."""

    def __init__(self) -> None: ...
    def add(self, name: str, shape: Sequence[int], group: int = 0) -> int:
        """Reserve a named view of this shape in a layer group (before finalize); returns its offset."""
    def finalize(self) -> None:
        """Allocate the block, zero-filled; views and buffers are available from then on."""
    @property
    def size(self) -> int:
        """Floats in the block, alignment padding included."""
    @property
    def finalized(self) -> bool:
        """Whether finalize has run."""
    def __len__(self) -> int: ...
    def __contains__(self, name: str, /) -> bool: ...
    def names(self) -> list[str]:
        """The view names, in the order they were added."""
    def offset(self, name: str, /) -> int:
        """The view's first float in the block; KeyError for an unknown name."""
    def numel(self, name: str, /) -> int:
        """The view's element count; KeyError for an unknown name."""
    def shape(self, name: str, /) -> tuple[int, ...]:
        """The view's shape; KeyError for an unknown name."""
    def group(self, name: str, /) -> int:
        """The view's layer group; KeyError for an unknown name."""
    def group_range(self, group: int) -> tuple[int, int]:
        """[begin, end) covering the group's views; KeyError if empty, ValueError if interleaved."""
    def tensor(self, name: str) -> _Float32Array:
        """Writeable zero-copy view; keeps the Arena alive."""
    def buffer(self) -> _Float32Array:
        """1-D writeable zero-copy view of the whole block."""
    def data_ptr(self) -> int:
        """Address of the block (64-byte aligned), for zero-copy binding."""

class Tuner:
    """ask/tell ZO-SGD tuner of the C API: Tuner({'n_params': n, ...}) or Tuner(n_params=n, ...).

    Keys: n_params, seed, lr, eps, weight_decay, queries, max_steps, noise ('gaussian'|'rademacher'),
    threads; the rest keep et_tuner_default_params' values.
    """

    def __init__(self, params: Mapping[str, object] | None = None, **kwargs: object) -> None: ...
    def arena(self) -> _Float32Array:
        """Writeable zero-copy view of the tuner's arena; keeps the tuner alive."""
    def ask(self) -> tuple[int, int, int] | None:
        """Perturb for the next evaluation: (step, query, sign), or None when max_steps is reached."""
    def tell(self, probe: tuple[int, int, int], loss: float) -> None:
        """Report the loss; FloatingPointError on a non-finite loss (arena restored, probe re-issued)."""
    def set_lr_eps(self, lr: float, eps: float) -> None:
        """New lr and eps (eps > 0), latched at the start of the next step, not mid-step."""
    @property
    def step(self) -> int:
        """Steps completed."""
    def last_grads(self) -> list[float]:
        """The projected gradients g_i of the last completed step (empty before one)."""
    def last_loss(self) -> float | None:
        """Mean of the last completed step's 2q losses, or None before one."""
    @property
    def params(self) -> dict[str, int | float | str]:
        """The parameters the tuner was created with, defaults filled in."""
