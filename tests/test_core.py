"""Tests of the compiled core, edgetune._core: noise quality and bit-identity, kernels against a
numpy float32 reference (bitwise), thread-count independence, the Arena, errors, and the C-API
tuner."""
import glob
import importlib.machinery
import importlib.util
import os
import site
import sys

import numpy as np
import pytest

from tests import reference_noise as ref_noise


def _load_core():
    """The compiled extension. With `pythonpath = .` the source tree's edgetune/ is imported; if it
    holds no compiled _core (plain checkout), fall back to the installed wheel's extension."""
    try:
        import edgetune._core as c
        if hasattr(c, "simd_level"):
            return c
    except ImportError:
        pass
    dirs = site.getsitepackages() + [site.getusersitepackages()] + sys.path
    for d in dirs:
        for path in glob.glob(os.path.join(d, "edgetune", "_core*" + importlib.machinery.EXTENSION_SUFFIXES[0])):
            loader = importlib.machinery.ExtensionFileLoader("edgetune._core", path)
            spec = importlib.util.spec_from_file_location("edgetune._core", path, loader=loader)
            mod = importlib.util.module_from_spec(spec)
            loader.exec_module(mod)
            return mod
    pytest.skip("compiled edgetune._core not found (pip install . first)", allow_module_level=True)


core = _load_core()
f32 = np.float32
DISTS = ["gaussian", "rademacher"]


@pytest.fixture(autouse=True)
def _restore_globals():
    yield
    core.set_isa("auto")
    core.set_num_threads(1)


def test_info():
    assert core.simd_level() in ("scalar", "avx2", "avx512", "neon")
    isas = core.available_isas()
    assert isas[0] == "scalar" and core.simd_level() == isas[-1]
    assert core.get_num_threads() >= 1
    assert isinstance(core.cuda_available(), bool)


@pytest.mark.parametrize("dist", DISTS)
def test_noise_moments(dist):
    n = 1_000_000
    z = core.noise(1234, 0, n, dist).astype(np.float64)
    assert z.dtype == np.float64 and z.shape == (n,)
    tol = 5 / np.sqrt(n)
    assert abs(z.mean()) < tol
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / n) + 1e-6
    if dist == "gaussian":
        assert abs(np.mean(z**4) - 3) < 0.05
        assert abs(np.mean(z**3)) < 0.02
        assert 5.0 < np.abs(z).max() < 5.8  # tails truncated at sqrt(48 ln 2)
    else:
        assert set(np.unique(z)) == {-1.0, 1.0}
    other = core.noise(1235, 0, n, dist)
    assert abs(np.mean(z * other)) < tol  # different seeds uncorrelated
    assert abs(np.mean(z[:-1] * z[1:])) < tol  # neighbouring indices uncorrelated
    assert abs(np.mean(z[: n // 2] * z[n // 2:])) < tol * np.sqrt(2)


def test_derive_seed_distinct():
    seeds = {core.derive_seed(7, t, i) for t in range(100) for i in range(8)}
    assert len(seeds) == 800
    assert core.derive_seed(7, 1, 2) == core.derive_seed(7, 1, 2)
    assert 0 <= core.derive_seed(2**64 - 1, 2**64 - 1, 0) < 2**64


GOLDEN = os.path.join(os.path.dirname(__file__), "c", "noise_golden.txt")


def read_golden(path: str) -> list[tuple[int, int, int, int, int, list[int] | None]]:
    """The golden file's cases: (dist, seed, offset, count, fnv1a64, bit patterns or None past 128 values)."""
    with open(path) as f:
        lines = [line.split() for line in f if not line.startswith("#")]
    cases, at = [], 0
    while at < len(lines):
        dist, seed, offset, count = (int(v) for v in lines[at][:4])
        digest, at = int(lines[at][4], 16), at + 1
        bits = None
        if count <= 128:
            rows = -(-count // 8)
            bits = [int(v, 16) for row in lines[at:at + rows] for v in row]
            at += rows
        cases.append((dist, seed, offset, count, digest, bits))
    return cases


def test_golden_noise_is_the_spec():
    """tests/reference_noise.py implements csrc/noise.h's written specification independently; the golden
    file (written by the C code) and every compiled ISA must equal it bit for bit, so a changed generator
    with a regenerated golden file fails here."""
    cases = read_golden(GOLDEN)
    assert len(cases) == 8 and {c[0] for c in cases} == {0, 1} and max(c[3] for c in cases) == 1_000_000
    for dist, seed, offset, count, digest, bits in cases:
        expected = ref_noise.noise(seed, offset, count, dist)
        assert ref_noise.fnv1a64(expected) == digest, (dist, seed, offset)
        if bits is not None:
            assert expected.view(np.uint32).tolist() == bits, (dist, seed, offset)
        for isa in core.available_isas():
            core.set_isa(isa)
            got = core.noise(seed, offset, count, DISTS[dist])
            np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32), err_msg=isa)


@pytest.mark.parametrize("dist", DISTS)
def test_noise_matches_the_spec_across_key_boundaries(dist):
    """Ranges that cross a change of the keys' high word (2^32 Gaussian pairs, 2^32 Rademacher words)."""
    for base in [(1 << 33) - 50, (1 << 37) - 70, 2**64 - 300]:
        expected = ref_noise.noise(77, base, 299, dist)  # the last ends at index 2^64 - 2
        got = core.noise(77, base, expected.size, dist)
        np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32), err_msg=str(base))


def test_derive_seed_is_the_spec():
    for args in [(0, 0, 0), (7, 1, 2), (2**64 - 1, 2**64 - 1, 0), (0xDEADBEEF, 12345, 7)]:
        assert core.derive_seed(*args) == ref_noise.derive_seed(*args), args


@pytest.mark.parametrize("dist", DISTS)
def test_noise_is_counter_based(dist):
    full = core.noise(99, 0, 10_000, dist)
    for off, cnt in [(0, 1), (1, 3), (33, 100), (4095, 1000), (9999, 1)]:
        np.testing.assert_array_equal(core.noise(99, off, cnt, dist), full[off:off + cnt])
    # high offsets, across the 2^32-pair / 2^32-word key boundaries
    for base in [(1 << 33) - 50, (1 << 37) - 70]:
        a = core.noise(5, base, 200, dist)
        b = np.concatenate([core.noise(5, base + k, 1, dist) for k in range(200)])
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dist", DISTS)
def test_isas_bit_identical(dist):
    ref = None
    for isa in core.available_isas():
        core.set_isa(isa)
        assert core.simd_level() == isa
        z = core.noise(0xDEADBEEF, 12345, 300_001, dist)
        if ref is None:
            ref = z
        else:
            np.testing.assert_array_equal(z.view(np.uint32), ref.view(np.uint32), err_msg=isa)


def test_set_isa_errors():
    with pytest.raises(ValueError):
        core.set_isa("sse9")
    core.set_isa("auto")
    assert core.simd_level() == core.available_isas()[-1]


@pytest.mark.parametrize("dist", DISTS)
def test_thread_count_independent(dist):
    n = 1_000_003
    outs = []
    for t in (1, 2, 3, 4):
        core.set_num_threads(t)
        assert core.get_num_threads() == t
        buf = np.linspace(-1, 1, n, dtype=f32)
        core.perturb(buf, 11, 1e-3, dist, offset=7)
        core.combine(buf, 0.99, [1, 2, 3], [0.5, -0.25, 1e-3], dist, offset=7)
        outs.append((core.noise(11, 7, n, dist), buf))
    for z, b in outs[1:]:
        np.testing.assert_array_equal(z, outs[0][0])
        np.testing.assert_array_equal(b, outs[0][1])


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("offset", [0, 5, 1 << 20])
def test_perturb_matches_numpy(dist, offset):
    rng = np.random.default_rng(0)
    buf = rng.standard_normal(100_001).astype(f32)
    ref = buf.copy()
    scale = 3.7e-3
    core.perturb(buf, 42, scale, dist, offset)
    z = ref_noise.noise(42, offset, ref.size, dist)
    ref = ref + f32(scale) * z
    np.testing.assert_array_equal(buf.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("k", [0, 1, 2, 5, 17])
def test_combine_matches_numpy(dist, k):
    rng = np.random.default_rng(k)
    n = 50_017
    buf = rng.standard_normal(n).astype(f32)
    seeds = [int(s) for s in rng.integers(0, 2**63, k)]
    coefs = [float(c) for c in rng.standard_normal(k) * 1e-2]
    decay, offset = 0.9995, 3
    acc = f32(decay) * buf
    for s, c in zip(seeds, coefs):
        acc = acc + f32(c) * ref_noise.noise(s, offset, n, dist)
    for isa in core.available_isas():
        core.set_isa(isa)
        b = buf.copy()
        core.combine(b, decay, seeds, coefs, dist, offset)
        np.testing.assert_array_equal(b.view(np.uint32), acc.view(np.uint32), err_msg=isa)


def test_zo_step_fusion_roundtrip():
    """perturb(+eps), perturb(-2eps), combine(c=eps) with lr=0 returns to theta up to rounding."""
    theta = np.random.default_rng(1).standard_normal(10_000).astype(f32)
    buf = theta.copy()
    eps = 1e-3
    core.perturb(buf, 3, eps)
    core.perturb(buf, 3, -2 * eps)
    core.combine(buf, 1.0, [3], [eps])
    np.testing.assert_allclose(buf, theta, atol=1e-6)


def test_bad_buffers():
    good = np.zeros(16, f32)
    with pytest.raises(ValueError, match="float32"):
        core.perturb(np.zeros(16, np.float64), 1, 1.0)
    with pytest.raises(ValueError, match="contiguous"):
        core.perturb(np.zeros(32, f32)[::2], 1, 1.0)
    ro = np.zeros(16, f32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        core.combine(ro, 1.0, [1], [1.0])
    with pytest.raises(ValueError, match="ndarray"):
        core.perturb([0.0] * 4, 1, 1.0)
    with pytest.raises(ValueError, match="dist"):
        core.perturb(good, 1, 1.0, "uniform")
    with pytest.raises(ValueError, match="same length"):
        core.combine(good, 1.0, [1, 2], [1.0])
    with pytest.raises(ValueError):
        core.perturb(good, -1, 1.0)
    with pytest.raises(ValueError):
        core.noise(1, 0, -5)
    with pytest.raises(ValueError):
        core.set_num_threads(-1)
    core.perturb(np.zeros((4, 4), f32), 1, 1.0)  # any C-contiguous shape is fine


def test_arena_views():
    a = core.Arena()
    assert a.add("w1", (3, 5), group=0) == 0
    assert a.add("b1", (5,), group=0) == 16
    assert a.add("w2", (7, 2), group=1) == 32
    assert a.add("scalar", (), group=2) == 48
    with pytest.raises(ValueError, match="duplicate"):
        a.add("w1", (1,))
    a.finalize()
    with pytest.raises(ValueError):
        a.add("late", (1,))
    assert a.size == 64 and a.size % 16 == 0
    assert a.names() == ["w1", "b1", "w2", "scalar"]
    assert a.shape("w1") == (3, 5) and a.group("w2") == 1 and a.offset("w2") == 32
    assert a.group_range(0) == (0, 21) and a.group_range(1) == (32, 46)
    with pytest.raises(KeyError):
        a.group_range(9)
    with pytest.raises(KeyError):
        a.tensor("nope")
    buf = a.buffer()
    assert buf.shape == (64,) and buf.dtype == f32 and not buf.any()
    assert a.data_ptr() % 64 == 0 and buf.ctypes.data == a.data_ptr()
    w1 = a.tensor("w1")
    assert w1.shape == (3, 5) and w1.flags.writeable and w1.flags.c_contiguous
    for name in a.names():
        assert (a.tensor(name).ctypes.data - a.data_ptr()) % 64 == 0
    w1[...] = 2.0
    assert buf[:15].sum() == 30 and buf[15] == 0  # zero-copy, padding untouched
    core.perturb(buf, 1, 1.0)
    assert w1[0, 0] == 2.0 + core.noise(1, 0, 1)[0]  # kernels act on the views in place
    del a, buf
    w1 += 1  # the view keeps the arena alive
    assert w1.shape == (3, 5)


def test_arena_groups_must_be_contiguous():
    a = core.Arena()
    a.add("x", (4,), group=0)
    a.add("y", (4,), group=1)
    a.add("z", (4,), group=0)
    a.finalize()
    with pytest.raises(ValueError, match="contiguous"):
        a.group_range(0)
    assert a.group_range(1) == (16, 20)


def _quad(w, target):
    d = w.astype(np.float64) - target
    return float(0.5 * np.dot(d, d))


@pytest.mark.parametrize("noise", DISTS)
def test_tuner_reduces_quadratic(noise):
    n = 256
    target = np.linspace(-1, 1, n)
    t = core.Tuner({"n_params": n, "lr": 0.01, "eps": 1e-2, "queries": 2}, max_steps=400, seed=3, noise=noise)
    w = t.arena()
    assert w.shape == (n,) and w.ctypes.data % 64 == 0
    l0 = _quad(w, target)
    count = 0
    while (probe := t.ask()) is not None:
        t.tell(probe, _quad(w, target))
        count += 1
    assert count == 400 * 2 * 2 and t.step == 400
    assert _quad(w, target) < 0.5 * l0
    assert len(t.last_grads()) == 2 and t.last_loss() is not None


@pytest.mark.parametrize("dist", DISTS)
def test_tuner_matches_python_reference(dist):
    """The C tuner's step equals the documented float32 recipe done with the kernels from Python."""
    n, q, eps, lr, wd, seed = 1000, 3, f32(1e-3), f32(1e-2), f32(0.1), 9
    target = np.random.default_rng(2).standard_normal(n)
    t = core.Tuner(n_params=n, lr=float(lr), eps=float(eps), weight_decay=float(wd), queries=q, seed=seed,
                   noise=dist)
    w = t.arena()
    w[:] = 0.5
    ref = np.full(n, 0.5, f32)
    for step in range(3):
        seeds = [core.derive_seed(seed, step, i) for i in range(q)]
        core.perturb(ref, seeds[0], float(eps), dist)
        for i in range(q):
            probe = t.ask()
            assert probe == (step, i, 1)
            np.testing.assert_array_equal(w, ref)
            lp = f32(_quad(w, target))
            t.tell(probe, float(lp))
            core.perturb(ref, seeds[i], float(f32(-2) * eps), dist)
            probe = t.ask()
            assert probe == (step, i, -1)
            np.testing.assert_array_equal(w, ref)
            lm = f32(_quad(w, target))
            t.tell(probe, float(lm))
            g = (lp - lm) / (f32(2) * eps)
            decay = f32(1) - lr * wd if i == q - 1 else f32(1)
            c_cur = decay * eps - (lr / f32(q)) * g
            if i + 1 < q:
                core.combine(ref, float(decay), [seeds[i], seeds[i + 1]], [float(c_cur), float(eps)], dist)
            else:
                core.combine(ref, float(decay), [seeds[i]], [float(c_cur)], dist)
        np.testing.assert_array_equal(w, ref)


def test_tuner_nonfinite_and_errors():
    t = core.Tuner(n_params=32, eps=1e-2)
    w = t.arena()
    w[:] = 1.0
    p = t.ask()
    with pytest.raises(FloatingPointError):
        t.tell(p, float("nan"))
    np.testing.assert_allclose(w, 1.0, atol=1e-6)
    assert t.ask() == p  # same probe re-issued
    with pytest.raises(ValueError):
        t.tell((5, 0, 1), 1.0)
    with pytest.raises(ValueError):
        core.Tuner(n_params=0)
    with pytest.raises(ValueError):
        core.Tuner(n_params=4, bogus=1)
    with pytest.raises(ValueError):
        core.Tuner(n_params=4, eps=0.0)
    t.set_lr_eps(1e-3, 1e-3)
    with pytest.raises(ValueError):
        t.set_lr_eps(1e-3, -1.0)


@pytest.mark.gpu
@pytest.mark.parametrize("dist", DISTS)
def test_cuda_noise_bit_identical(dist):
    for off in (0, 1, (1 << 33) - 11):
        g = core.cuda_noise(77, off, 100_003, dist)
        c = core.noise(77, off, 100_003, dist)
        np.testing.assert_array_equal(g.view(np.uint32), c.view(np.uint32))
