"""Kernel throughput of the edgetune core: ns per parameter per pass.

Measures perturb (gaussian, rademacher) and the fused combine pass (2 seeds: restore + update +
next perturbation, the per-query pass of a ZO-SGD step) against a plain numpy axpy and against
numpy's default_rng().standard_normal + axpy (what a pure-numpy ZO step would do), at N = 10M,
with 1 and 2 kernel threads, for every ISA available here. Best of `--reps` runs.

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


def best_ns(fn, n, reps):
    fn()  # warm-up (page faults, pool start)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts) * 1e9 / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    a = ap.parse_args()
    n, reps = a.n, a.reps
    buf = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    z = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    s = np.float32(1e-3)

    rows = []

    def axpy():
        buf.__iadd__(s * z)

    rng = np.random.default_rng(2)

    def rng_axpy():
        buf.__iadd__(s * rng.standard_normal(n, dtype=np.float32))

    base_axpy = best_ns(axpy, n, reps)
    base_rng = best_ns(rng_axpy, n, reps)
    rows.append(dict(kernel="numpy axpy (buf += s*z, z precomputed)", isa="numpy", threads=1, ns=base_axpy))
    rows.append(dict(kernel="numpy default_rng().standard_normal + axpy", isa="numpy", threads=1, ns=base_rng))

    isas = core.available_isas()
    for isa in isas:
        core.set_isa(isa)
        for threads in (1, 2):
            if isa != isas[-1] and threads == 2:
                continue  # only the dispatched ISA at 2 threads
            core.set_num_threads(threads)
            for dist in ("gaussian", "rademacher"):
                rows.append(dict(kernel=f"perturb {dist}", isa=isa, threads=threads,
                                 ns=best_ns(lambda: core.perturb(buf, 7, 1e-3, dist), n, reps)))
                rows.append(dict(kernel=f"combine {dist} (2 seeds, fused)", isa=isa, threads=threads,
                                 ns=best_ns(lambda: core.combine(buf, 1.0, [7, 8], [-1e-3, 1e-3], dist), n, reps)))
    core.set_isa("auto")
    core.set_num_threads(1)
    for r in rows:
        r["vs_numpy_axpy"] = r["ns"] / base_axpy
        r["speedup_vs_numpy_rng"] = base_rng / r["ns"]

    meta = dict(loadavg_1min=os.getloadavg()[0], n=n, reps=reps, simd_level=core.simd_level(), available_isas=isas, machine=platform.machine(),
                processor=platform.processor(), cpu_count=os.cpu_count(), numpy=np.__version__,
                note="ns per parameter per pass, best of reps; one process, ratios are the robust figures")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "kernels.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=2)
    lines = [f"# Kernel throughput (N = {n:,}, best of {reps})", "",
             f"machine {meta['machine']}, {meta['cpu_count']} CPUs, active ISA `{meta['simd_level']}`, "
             f"available {', '.join(isas)}; numpy {np.__version__}; 1-min load average {meta['loadavg_1min']:.2f} "
             "(other processes on the machine distort absolute times and thread scaling).", "",
             "| kernel | ISA | threads | ns/param/pass | × numpy axpy | speed-up vs numpy rng+axpy |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['kernel']} | {r['isa']} | {r['threads']} | {r['ns']:.3f} | {r['vs_numpy_axpy']:.2f} | "
                     f"{r['speedup_vs_numpy_rng']:.1f}× |")
    md = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "kernels.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
