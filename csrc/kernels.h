/* kernels.h — internal: one table of kernels per instruction set, chosen at run time. */
#ifndef EDGETUNE_KERNELS_H
#define EDGETUNE_KERNELS_H
#include <stddef.h>
#include <stdint.h>

/* One ZO-Adam update whose moments are rebuilt from a window of past steps' (seed, g) pairs:
 * the estimate of window step s is ghat_s = sum_i c_i * z(seed_i) over its queries[s] (seed, coef)
 * pairs, which follow the earlier steps' pairs in seeds/coefs, and
 *   theta = buf + restore_scale*z(restore_seed)                      (if has_restore)
 *   m = sum_s m_weights[s]*ghat_s,  v = sum_s v_weights[s]*(ghat_s*ghat_s)   (s in order)
 *   buf = decay*theta - lr*(m / (sqrt(v) + delta))  [+ next_scale*z(next_seed) if has_next]
 * Bias correction is folded into the weights by the caller. */
typedef struct et_adam_window {
    const uint64_t *seeds;
    const float *coefs;
    const float *m_weights;
    const float *v_weights;
    const uint32_t *queries;
    size_t steps;
    float decay, lr, delta;
    int has_restore, has_next;
    uint64_t restore_seed, next_seed;
    float restore_scale, next_scale;
} et_adam_window;

/* dist: 0 = gaussian, 1 = rademacher (same values as et_noise). All kernels are
 * single-threaded; the caller (dispatch.cpp) splits work across the pool. */
typedef struct et_isa_table {
    const char *name;
    void (*fill)(uint64_t seed, uint64_t start, size_t count, int dist, float *out);
    void (*perturb)(float *buf, size_t n, uint64_t seed, float scale, int dist, uint64_t offset);
    void (*combine)(float *buf, size_t n, float decay, const uint64_t *seeds, const float *coefs,
                    size_t k, int dist, uint64_t offset);
    void (*adam_window)(float *buf, size_t n, const et_adam_window *w, int dist, uint64_t offset);
    /* dst[p*stride + i] = src[i] + scales[p] * z(seeds[p], offset + i) for p < k (P-RGE copies) */
    void (*perturb_copies)(const float *src, size_t n, float *dst, size_t stride, const uint64_t *seeds,
                           const float *scales, size_t k, int dist, uint64_t offset);
} et_isa_table;

extern const et_isa_table et_isa_scalar;
#ifdef ET_HAVE_AVX2
extern const et_isa_table et_isa_avx2;
#endif
#ifdef ET_HAVE_AVX512
extern const et_isa_table et_isa_avx512;
#endif
#ifdef ET_HAVE_NEON
extern const et_isa_table et_isa_neon;
#endif
#endif
