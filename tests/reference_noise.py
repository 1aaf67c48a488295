"""An independent numpy implementation of edgetune's noise, written from the SPECIFICATION comment at the
top of csrc/noise.h and nothing else (not the C++ bodies), so that the golden file and the compiled
kernels are checked against a second reading of the spec: a change of the generator plus a regenerated
golden file cannot pass unless this file changes too.

Integer steps use numpy uint32/uint64 arrays (wrap-around, as the spec's u32/u64); float steps use
float32 arrays, one rounded operation at a time (numpy never fuses a multiply and an add)."""

from __future__ import annotations

import numpy as np

f32 = np.float32
U64 = (1 << 64) - 1
DOMAIN_GAUSS = 0x0000000000000000
DOMAIN_RAD = 0x9E6C63D0676A9A99

# logpoly's coefficients, in the order the spec's Horner loop uses them after the leading 7.0376836292E-2
LOG_COEFS = [f32(c) for c in ("-1.1514610310E-1", "1.1676998740E-1", "-1.2420140846E-1", "1.4249322787E-1",
                              "-1.6668057665E-1", "2.0000714765E-1", "-2.4999993993E-1", "3.3333331174E-1")]


def splitmix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & U64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & U64
    return z ^ (z >> 31)


def mix32(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def keys(seed: int, hi: int, domain: int) -> tuple[np.uint32, np.uint32, np.uint32]:
    k1 = splitmix64(seed ^ ((hi * 0xD1B54A32D192ED03) & U64) ^ domain)
    k2 = splitmix64(k1)
    return np.uint32(k1 & 0xFFFFFFFF), np.uint32(k1 >> 32), np.uint32(k2 & 0xFFFFFFFF)


def derive_seed(run: int, step: int, query: int) -> int:
    return splitmix64(splitmix64(splitmix64(run) ^ step) ^ query)


def _per_hi(counters: np.ndarray, seed: int, domain: int, fn) -> np.ndarray:
    """fn(keys, lo32 words) over counters (uint64), with the keys of each counter's high 32 bits."""
    hi = counters >> np.uint64(32)
    lo = (counters & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    out = None
    for h in np.unique(hi):
        sel = hi == h
        part = fn(keys(seed, int(h), domain), lo[sel])
        if out is None:
            out = np.empty((counters.size,) + part.shape[1:], part.dtype)
        out[sel] = part
    return out


def logpoly(u: np.ndarray) -> np.ndarray:
    m, e = np.frexp(u)  # u = m * 2**e, m in [0.5, 1): exact
    m, e = m.astype(f32), e.astype(np.int32)
    low = m < f32("0.70710678118654752440")
    e = np.where(low, e - 1, e)
    m = np.where(low, m + m, m)
    x = m - f32(1)
    zz = x * x
    y = np.full_like(x, f32("7.0376836292E-2"))
    for c in LOG_COEFS:
        y = y * x + c
    y = (y * x) * zz
    fe = e.astype(f32)
    y = y + f32("-2.12194440E-4") * fe
    y = y + f32(-0.5) * zz
    r = x + y
    return r + f32(0.693359375) * fe


def sinpoly(x: np.ndarray) -> np.ndarray:
    zz = x * x
    y = ((f32("-1.9515295891E-4") * zz + f32("8.3321608736E-3")) * zz + f32("-1.6666654611E-1")) * zz
    y = y * x
    return y + x


def cospoly(x: np.ndarray) -> np.ndarray:
    zz = x * x
    y = ((f32("2.443315711809948E-5") * zz + f32("-1.388731625493765E-3")) * zz + f32("4.166664568298827E-2")) * zz
    y = y * zz
    y = y + f32(-0.5) * zz
    return y + f32(1)


def gauss_pairs(k: tuple[np.uint32, np.uint32, np.uint32], lo: np.ndarray) -> np.ndarray:
    """(len(lo), 2) float32: z(2j), z(2j+1) for the pairs whose low words are lo."""
    h = mix32(lo ^ k[0])
    a = mix32(h ^ k[1])
    b = mix32(a ^ k[2])
    u1 = ((a >> np.uint32(8)) + np.uint32(1)).astype(f32) * f32(2.0 ** -24)
    r = np.sqrt(np.maximum(f32(-2) * logpoly(u1), f32(0)))
    kb = b >> np.uint32(8)
    t = (kb + np.uint32(1 << 21)) >> np.uint32(22)
    quadrant = t & np.uint32(3)
    f = kb.astype(np.int32) - (t << np.uint32(22)).astype(np.int32)
    x = f.astype(f32) * f32(float.fromhex("0x1.921fb6p-22"))
    sx, cx = sinpoly(x), cospoly(x)
    C = np.select([quadrant == 0, quadrant == 1, quadrant == 2], [cx, -sx, -cx], sx)
    S = np.select([quadrant == 0, quadrant == 1, quadrant == 2], [sx, cx, -sx], -cx)
    return np.stack([r * C, r * S], axis=1)


def rademacher_words(k: tuple[np.uint32, np.uint32, np.uint32], lo: np.ndarray) -> np.ndarray:
    return mix32(mix32(lo ^ k[0]) ^ k[1])


def noise(seed: int, offset: int, count: int, dist: str | int = "gaussian") -> np.ndarray:
    """z(seed, i) for i in [offset, offset + count), float32; dist 'gaussian'/0 or 'rademacher'/1."""
    i = np.arange(count, dtype=np.uint64) + np.uint64(offset)
    if dist in ("rademacher", 1):
        words = _per_hi(i >> np.uint64(5), seed, DOMAIN_RAD, rademacher_words)
        bit = (words >> (i & np.uint64(31)).astype(np.uint32)) & np.uint32(1)
        return np.where(bit == 1, f32(-1), f32(1))
    assert dist in ("gaussian", 0), dist
    pairs = _per_hi(i >> np.uint64(1), seed, DOMAIN_GAUSS, gauss_pairs)
    return pairs[np.arange(count), (i & np.uint64(1)).astype(np.intp)]


def fnv1a64(values: np.ndarray) -> int:
    """FNV-1a over the float32 bit patterns' bytes, least significant byte first (the golden files' hash)."""
    h = 0xcbf29ce484222325
    for byte in values.astype("<f4").tobytes():
        h = ((h ^ byte) * 0x100000001b3) & U64
    return h
