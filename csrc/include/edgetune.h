/*
 * edgetune.h — C API of the edgetune core: zeroth-order (SPSA / MeZO) fine-tuning
 * with forward passes only. The core owns the trainable parameter arena and the ZO
 * arithmetic; the application owns the inference engine (ORT, ExecuTorch, TFLite ...).
 *
 * Usage (ask/tell loop):
 *
 *   et_tuner_params p;
 *   et_tuner_default_params(&p);              // always start from the defaults
 *   p.n_params = n; p.lr = 1e-4f; p.eps = 1e-3f; p.queries = 1; p.max_steps = 1000;
 *   et_tuner *t = NULL;
 *   if (et_tuner_create(&p, &t) != ET_OK) abort();
 *   float *w; size_t n_w;
 *   et_tuner_arena(t, &w, &n_w);              // borrowed; copy initial weights in,
 *   memcpy(w, init, n_w * sizeof(float));     // then bind w as the engine's inputs (zero-copy)
 *   et_probe probe;
 *   while (et_tuner_ask(t, &probe) == ET_OK) {      // arena now holds the perturbed weights
 *       float loss = run_engine_forward(batch_for_step(probe.step));
 *       et_status s = et_tuner_tell(t, &probe, loss);
 *       if (s == ET_ERR_NONFINITE_LOSS) break;      // arena was restored to clean weights
 *   }
 *   // after ET_DONE the arena holds the tuned weights (clean, unperturbed)
 *   et_tuner_free(t);
 *
 * Conventions
 *   - Every fallible call returns et_status and writes results through pointers.
 *     Output pointers are left untouched on error unless stated.
 *   - No C++ exception crosses this boundary: internal failures map to a status.
 *   - Ownership: pointers passed IN are borrowed for the duration of the call only.
 *     Pointers handed OUT are either owned by the caller (stated: "caller frees") or
 *     borrowed from an object (stated: "valid until <object> is freed").
 *   - Structs passed by pointer start with `struct_size` (set by *_default_params),
 *     so older/newer callers can be told apart.
 *
 * Thread safety
 *   - Pure functions (et_version, et_status_string, et_derive_seed, et_noise_fill,
 *     et_perturb/et_combine on disjoint buffers) are safe from any thread.
 *   - An et_tuner is NOT internally locked: use each tuner from one thread at a time.
 *     Different tuners may be used concurrently from different threads.
 *   - The kernel thread pool is process-global (et_set_num_threads); concurrent kernel
 *     calls are serialised on it. Results never depend on the thread count.
 *
 * ZO-SGD step (exact; the Python trainer reproduces it with numpy float32 math)
 *   For step t (0-based) and queries i = 0..q-1: s_i = et_derive_seed(seed, t, i);
 *   z_i(k) = noise(s_i, k) as specified in noise.h (global index k = element index
 *   in the arena). lr and eps are latched at the start of a step. The arena is clean
 *   (unperturbed) at the start of every step.
 *     start of step:   perturb(+eps, s_0)            ask -> {t, 0, +1}; app evaluates L+
 *     tell(L+) query i: perturb(-2*eps, s_i)          ask -> {t, i, -1}; app evaluates L-
 *     tell(L-) query i:
 *         float g     = (Lp - Lm) / (2.0f*eps);
 *         float decay = (i == q-1) ? 1.0f - lr*wd : 1.0f;
 *         float c_cur = decay*eps - (lr/(float)q)*g;
 *         combine(decay, seeds = [s_i] + ([s_{i+1}] if i+1<q),
 *                        coefs = [c_cur] + ([eps] if i+1<q))
 *     where perturb(a, s):  buf[k] = buf[k] + a*z_s(k)
 *           combine:        acc = decay*buf[k]; for each (s,c): acc = acc + c*z_s(k); buf[k] = acc
 *     (all float32, in this order, no fused multiply-add). After the last query the
 *     arena holds the updated weights. One step = 2q+1 passes over the arena.
 *   Non-finite loss in tell: the current perturbation is undone (perturb(-eps, s_i)
 *   after L+, perturb(+eps, s_i) after L-), the call returns ET_ERR_NONFINITE_LOSS,
 *   and the next ask re-issues the same probe {t, i, +1} (re-perturbing), so the app
 *   may retry with another batch or stop. Updates of earlier queries of the step stay.
 */
#ifndef EDGETUNE_H
#define EDGETUNE_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#  define ET_API __declspec(dllexport)
#else
#  define ET_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum et_status {
    ET_OK = 0,
    ET_DONE = 1,                   /* ask: max_steps reached, nothing more to evaluate */
    ET_ERR_INVALID_ARGUMENT = -1,  /* NULL pointer, bad value, bad struct_size */
    ET_ERR_OUT_OF_MEMORY = -2,
    ET_ERR_BAD_PROBE = -3,         /* tell with a probe that is not the pending one */
    ET_ERR_STATE = -4,             /* call not valid now (e.g. tell before ask) */
    ET_ERR_NONFINITE_LOSS = -5,    /* tell got NaN/Inf; arena restored, probe re-issued */
    ET_ERR_UNSUPPORTED = -6,       /* e.g. ISA not compiled in / not supported by the CPU */
    ET_ERR_INTERNAL = -7
} et_status;

/* The default is Rademacher, as in the Python trainer, so an app and `edgetune tune` run the same
 * algorithm unless told otherwise. Its kernel is ~5x faster than the Gaussian one (one hash bit
 * per value instead of Box-Muller: 0.42 vs 2.1 ns/parameter/pass on AVX2), and it computes no
 * log/sin/cos, so no port (another ISA, a GPU, another compiler's FMA contraction) can change its
 * bits: exact replay across devices holds by construction. The Gaussian matches across builds only
 * while its polynomials are evaluated as noise.h specifies. SPSA is unbiased with either. */
typedef enum et_noise {
    ET_NOISE_GAUSSIAN = 0,         /* Box-Muller with polynomial log/sincos (noise.h) */
    ET_NOISE_RADEMACHER = 1        /* +-1 from one hash bit (the default) */
} et_noise;

typedef struct et_tuner et_tuner;  /* opaque */

typedef struct et_tuner_params {
    uint32_t struct_size;   /* = sizeof(et_tuner_params); set by et_tuner_default_params */
    uint32_t queries;       /* q >= 1 SPSA queries per step (default 1) */
    uint64_t n_params;      /* trainable floats in the arena (> 0) */
    uint64_t seed;          /* run seed (default 0) */
    uint64_t max_steps;     /* ask returns ET_DONE after this many steps; 0 = unbounded */
    float lr;               /* learning rate (default 1e-4) */
    float eps;              /* perturbation scale (default 1e-3, > 0) */
    float weight_decay;     /* decoupled, applied once per step (default 0) */
    int32_t noise;          /* et_noise (default ET_NOISE_RADEMACHER, see et_noise) */
    int32_t threads;        /* > 0: set the global kernel pool size; 0: leave as is */
} et_tuner_params;

typedef struct et_probe {
    uint64_t step;          /* 0-based step */
    uint32_t query;         /* 0..q-1 */
    int32_t sign;           /* +1 or -1: the arena holds theta + sign*eps*z */
    uint64_t seed;          /* derive_seed(run seed, step, query), for logging */
} et_probe;

/* Library info; static strings, never free. */
ET_API const char *et_version(void);                 /* the package version, as in pyproject.toml */
ET_API const char *et_status_string(et_status s);    /* "ok", "invalid argument", ... */
ET_API const char *et_simd_level(void);              /* "scalar"|"avx2"|"avx512"|"neon" (active) */

/* ISA selection, mainly for tests. names: caller-owned array of cap entries receiving static
 * strings (never free); returns how many ISAs are usable here (scalar first). */
ET_API uint32_t et_available_isas(const char **names, uint32_t cap);
/* Force an ISA ("scalar", "avx2", "avx512", "neon") or "auto" (best usable). Process-global. */
ET_API et_status et_set_isa(const char *name);

/* Kernel thread pool (process-global, default 1 thread; n = 0 -> hardware threads). */
ET_API et_status et_set_num_threads(int32_t n);
ET_API int32_t et_get_num_threads(void);

/* Pure functions. */
ET_API uint64_t et_derive_seed(uint64_t run_seed, uint64_t step, uint64_t query);
/* out[i] = z(seed, offset + i) for i < count. out: caller-owned, count floats. */
ET_API et_status et_noise_fill(uint64_t seed, uint64_t offset, size_t count, et_noise dist, float *out);
/* buf[i] = buf[i] + scale*z(seed, offset+i). buf: caller-owned, n floats, modified in place. */
ET_API et_status et_perturb(float *buf, size_t n, uint64_t seed, float scale, et_noise dist, uint64_t offset);
/* buf[i] = decay*buf[i] + sum_k coefs[k]*z(seeds[k], offset+i) (order as in the step spec).
 * seeds/coefs: caller-owned arrays of k entries (may be NULL when k == 0). */
ET_API et_status et_combine(float *buf, size_t n, float decay, const uint64_t *seeds, const float *coefs,
                            uint32_t k, et_noise dist, uint64_t offset);

/* The order of the training examples in epoch `epoch` of a run (both runtimes draw batches from it):
 * out[i] = i for i < n, then Fisher-Yates from the back with the core's counter-based hash (noise.h):
 *   k = et_derive_seed(seed, epoch, 0x5045524D)
 *   for i = n-1 down to 1:  h = splitmix64(k + i);  j = (u64)(((u128)h * (i+1)) >> 64);  swap(out[i], out[j])
 * A pure function of (seed, epoch, n): no state, no platform dependence. out: caller-owned, n entries. */
ET_API et_status et_epoch_permutation(uint64_t seed, uint64_t epoch, uint64_t n, uint64_t *out);

/* Tuner. */
ET_API void et_tuner_default_params(et_tuner_params *p);   /* p: caller-owned; fully overwritten */
/* params: borrowed. *out: new tuner, caller frees with et_tuner_free. Arena is zero-filled. */
ET_API et_status et_tuner_create(const et_tuner_params *params, et_tuner **out);
ET_API void et_tuner_free(et_tuner *t);                    /* NULL is a no-op */
/* *data: borrowed pointer to the 64-byte aligned arena (n floats), valid until et_tuner_free.
 * Write initial weights before the first ask; do not write between ask and tell. */
ET_API et_status et_tuner_arena(et_tuner *t, float **data, size_t *n);
/* Next evaluation. ET_OK: *probe filled, arena perturbed for it (asking again without a tell
 * returns the same probe). ET_DONE: max_steps reached, arena clean. */
ET_API et_status et_tuner_ask(et_tuner *t, et_probe *probe);
/* Report the loss for the pending probe (probe: borrowed, must equal the one from ask). */
ET_API et_status et_tuner_tell(et_tuner *t, const et_probe *probe, float loss);
/* New lr/eps; latched at the next step start (not mid-step). eps must be > 0. */
ET_API et_status et_tuner_set_lr_eps(et_tuner *t, float lr, float eps);
/* Completed steps so far. */
ET_API et_status et_tuner_step(const et_tuner *t, uint64_t *steps_done);
/* Projected gradients g_0..g_{q-1} of the last completed step. g: caller-owned, cap floats;
 * *n receives q (values written: min(q, cap)). ET_ERR_STATE if no step has completed. */
ET_API et_status et_tuner_last_grads(const et_tuner *t, float *g, uint32_t cap, uint32_t *n);
/* Mean of all 2q losses of the last completed step. */
ET_API et_status et_tuner_last_loss(const et_tuner *t, float *loss);

#ifdef __cplusplus
}
#endif
#endif /* EDGETUNE_H */
