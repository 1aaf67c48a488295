"""Kernel throughput of the edgetune core against numpy doing the same work: ns per parameter per pass.

Every edgetune row is compared with numpy generating the *same distribution* and adding it in place,
with no temporaries (buffers allocated once, outside the timed region):

- Gaussian: ``rng.standard_normal(out=z); np.multiply(z, eps, out=z); np.add(theta, z, out=theta)``.
- Rademacher: ``rng.random(out=z); np.subtract(z, 0.5, out=z); np.copysign(eps, z, out=z);
  np.add(theta, z, out=theta)``. ``Generator.random`` is the only uniform source with ``out=``;
  ``rng.bytes(n)`` + ``copysign`` is a little faster here but allocates an n-byte buffer per call,
  ``rng.integers`` has no ``out=``, and processing in cache-sized chunks did not help (the generator,
  not memory, is the bottleneck).
- Memory floor: ``np.add(theta, s_z, out=theta)`` with ``s_z = eps * z`` precomputed: one pass that
  reads two arrays and writes one, what any method that stores its noise pays at least.

``perturb`` is theta += eps * z(seed); ``combine`` with two seeds is the fused per-query pass of a
ZO-SGD step (restore + update + next perturbation), which numpy would do as two same-distribution
generate-and-add passes, so its numpy reference is twice the perturb reference. numpy is
single-threaded; the edgetune kernels run at 1 and 2 threads for every ISA available here.
Best of ``--reps`` runs, after one warm-up.

    python benchmarks/bench_kernels.py [--n 10000000] [--reps 7]

Writes benchmarks/results/kernels.json and benchmarks/results/kernels.md.
"""
import argparse
import json
import os
import platform
import time

import numpy as np

import edgetune._core as core

HERE = os.path.dirname(os.path.abspath(__file__))
DISTS = ("gaussian", "rademacher")


def best_ns(fn, n, reps):
    fn()  # warm-up (page faults, pool start)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts) * 1e9 / n


def numpy_kernels(theta: np.ndarray, eps: np.float32) -> dict:
    """numpy's in-place, allocation-free equivalents of the edgetune kernels (see the module docstring)."""
    rng = np.random.default_rng(2)
    z = np.empty_like(theta)
    s_z = eps * np.random.default_rng(1).standard_normal(theta.size, dtype=np.float32)
    half = np.float32(0.5)

    def floor():
        np.add(theta, s_z, out=theta)

    def gaussian():
        rng.standard_normal(out=z, dtype=np.float32)
        np.multiply(z, eps, out=z)
        np.add(theta, z, out=theta)

    def rademacher():
        rng.random(out=z, dtype=np.float32)
        np.subtract(z, half, out=z)
        np.copysign(eps, z, out=z)
        np.add(theta, z, out=theta)

    return {"floor": floor, "gaussian": gaussian, "rademacher": rademacher}


def measure(n: int, reps: int) -> tuple[list[dict], list[str]]:
    theta = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    eps = np.float32(1e-3)
    ref = {name: best_ns(fn, n, reps) for name, fn in numpy_kernels(theta, eps).items()}
    rows = [dict(kernel="numpy in-place add of a precomputed eps*z (memory floor)", isa="numpy", threads=1,
                 ns=ref["floor"], numpy_ns=None),
            dict(kernel="numpy gaussian: standard_normal(out=) + in-place axpy", isa="numpy", threads=1,
                 ns=ref["gaussian"], numpy_ns=ref["gaussian"]),
            dict(kernel="numpy rademacher: random(out=) + copysign + in-place add", isa="numpy", threads=1,
                 ns=ref["rademacher"], numpy_ns=ref["rademacher"])]
    isas = core.available_isas()
    for isa in isas:
        core.set_isa(isa)
        for threads in (1, 2):
            core.set_num_threads(threads)
            for dist in DISTS:
                rows.append(dict(kernel=f"perturb {dist}", isa=isa, threads=threads, numpy_ns=ref[dist],
                                 ns=best_ns(lambda: core.perturb(theta, 7, 1e-3, dist), n, reps)))
                rows.append(dict(kernel=f"combine {dist} (2 seeds, fused)", isa=isa, threads=threads,
                                 numpy_ns=2 * ref[dist],
                                 ns=best_ns(lambda: core.combine(theta, 1.0, [7, 8], [-1e-3, 1e-3], dist), n, reps)))
    core.set_isa("auto")
    core.set_num_threads(1)
    for r in rows:
        r["vs_floor"] = r["ns"] / ref["floor"]
        r["speedup_vs_numpy_same_dist"] = None if r["numpy_ns"] is None else r["numpy_ns"] / r["ns"]
    return rows, isas


def table(rows: list[dict], meta: dict) -> str:
    lines = [f"# Kernel throughput (N = {meta['n']:,}, best of {meta['reps']})", "",
             f"machine {meta['machine']}, {meta['cpu_count']} CPUs, active ISA `{meta['simd_level']}`, "
             f"available {', '.join(meta['available_isas'])}; numpy {meta['numpy']} (single-threaded); "
             f"load average {meta['loadavg_start']} at start, {meta['loadavg_end']} at end "
             "(another benchmark shared the machine: absolute times and thread scaling are distorted; "
             "same-distribution ratios are the robust figures).", "",
             "| kernel | ISA | threads | ns/param/pass | numpy, same distribution (ns) | speed-up vs numpy, same distribution | × memory floor |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ref = "" if r["numpy_ns"] is None else f"{r['numpy_ns']:.3f}"
        speed = "" if r["speedup_vs_numpy_same_dist"] is None else f"{r['speedup_vs_numpy_same_dist']:.1f}×"
        lines.append(f"| {r['kernel']} | {r['isa']} | {r['threads']} | {r['ns']:.3f} | {ref} | {speed} | "
                     f"{r['vs_floor']:.2f} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    a = ap.parse_args()
    load_start = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    rows, isas = measure(a.n, a.reps)
    meta = dict(loadavg_start=load_start, loadavg_end=" / ".join(f"{x:.2f}" for x in os.getloadavg()),
                n=a.n, reps=a.reps, simd_level=core.simd_level(), available_isas=isas,
                machine=platform.machine(), processor=platform.processor(), cpu_count=os.cpu_count(),
                numpy=np.__version__,
                note="ns per parameter per pass, best of reps; numpy references are in place with no "
                     "temporaries; combine's numpy reference is two same-distribution passes")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "kernels.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=2)
    md = table(rows, meta)
    with open(os.path.join(a.out, "kernels.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
