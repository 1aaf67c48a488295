/* kernels.h — internal: one table of kernels per instruction set, chosen at run time. */
#ifndef EDGETUNE_KERNELS_H
#define EDGETUNE_KERNELS_H
#include <stddef.h>
#include <stdint.h>

/* dist: 0 = gaussian, 1 = rademacher (same values as et_noise). All kernels are
 * single-threaded; the caller (dispatch.cpp) splits work across the pool. */
typedef struct et_isa_table {
    const char *name;
    void (*fill)(uint64_t seed, uint64_t start, size_t count, int dist, float *out);
    void (*perturb)(float *buf, size_t n, uint64_t seed, float scale, int dist, uint64_t offset);
    void (*combine)(float *buf, size_t n, float decay, const uint64_t *seeds, const float *coefs,
                    size_t k, int dist, uint64_t offset);
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
