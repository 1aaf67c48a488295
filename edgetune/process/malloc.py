"""A predictable peak: pin glibc's mmap threshold in a process edgetune owns (the CLI).

glibc serves allocations of 128 KiB and more with ``mmap`` and returns them on ``free``, but raises that
threshold to the size of any such block that is freed: later blocks below the new threshold come from the
heap and stay resident after ``free``. Which blocks are freed first while ONNX Runtime loads a model
depends on thread timing, so the same job peaked in two modes (MiniLM, LoRA q,v, 16 x 64: 264-266 MB in 7
of 10 runs, 247-248 MB in 3); with the threshold pinned, 10 of 10 runs peaked at 248 MB
(``benchmarks/bench_job_peak.py``). Pinning it (any explicit ``M_MMAP_THRESHOLD`` turns the adjustment off)
keeps large blocks returned to the system when freed. A library embedded in an app leaves the app's
allocator alone: only the command line calls this.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own default, now fixed


def pin_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at its default; False where there is no glibc (macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl has no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
