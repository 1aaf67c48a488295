/* kernels_scalar.cpp — portable reference kernels (the spec in noise.h, one pair at a time). */
#include "kernels.h"
#include "noise.h"

namespace {
#define ET_LANES 1
static inline void gauss_block(et_keys k, uint32_t lo0, float *out) { et_gauss_pair(k, lo0, &out[0], &out[1]); }
static inline void rad_expand(uint32_t word, float *out) {
    for (int b = 0; b < 32; ++b) out[b] = ((word >> b) & 1u) ? -1.0f : 1.0f;
}
#include "kernels_impl.h"
}  // namespace

extern const et_isa_table et_isa_scalar = {"scalar", k_fill, k_perturb, k_combine, k_adam_window, k_perturb_copies};
