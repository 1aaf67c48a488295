/* kernels_avx2.cpp — 8 Box-Muller pairs (16 normals) per block; compiled with -mavx2 (no -mfma).
 * Mirrors et_gauss_pair() in noise.h operation by operation. */
#include <immintrin.h>
#include "kernels.h"
#include "noise.h"

namespace {
#define ET_LANES 8
#define V __m256
#define VI __m256i

static inline VI mix32(VI x) {
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32(0x7FEB352D));
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32((int)0x846CA68BU));
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
    return x;
}
static inline V madd(V a, V b, V c) { return _mm256_add_ps(_mm256_mul_ps(a, b), c); }
static inline V cst(float f) { return _mm256_set1_ps(f); }

static inline void gauss_block(et_keys k, uint32_t lo0, float *out) {
    const VI iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const VI one = _mm256_set1_epi32(1);
    VI j = _mm256_add_epi32(_mm256_set1_epi32((int)lo0), iota);
    VI h = mix32(_mm256_xor_si256(j, _mm256_set1_epi32((int)k.k0)));
    VI a = mix32(_mm256_xor_si256(h, _mm256_set1_epi32((int)k.k1)));
    VI b = mix32(_mm256_xor_si256(a, _mm256_set1_epi32((int)k.k2)));
    V u1 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_srli_epi32(a, 8), one)), cst(ET_U24_SCALE));
    VI bits = _mm256_castps_si256(u1);
    VI e = _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(126));
    V m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007FFFFF)),
                                              _mm256_set1_epi32(0x3F000000)));
    V lt = _mm256_cmp_ps(m, cst(ET_LOG_SQRTHF), _CMP_LT_OQ);
    e = _mm256_add_epi32(e, _mm256_castps_si256(lt));  /* lt lanes are all-ones = -1 */
    m = _mm256_blendv_ps(m, _mm256_add_ps(m, m), lt);
    V x = _mm256_sub_ps(m, cst(1.0f));
    V zz = _mm256_mul_ps(x, x);
    V y = cst(ET_LOG_P0);
    y = madd(y, x, cst(ET_LOG_P1)); y = madd(y, x, cst(ET_LOG_P2)); y = madd(y, x, cst(ET_LOG_P3));
    y = madd(y, x, cst(ET_LOG_P4)); y = madd(y, x, cst(ET_LOG_P5)); y = madd(y, x, cst(ET_LOG_P6));
    y = madd(y, x, cst(ET_LOG_P7)); y = madd(y, x, cst(ET_LOG_P8));
    y = _mm256_mul_ps(_mm256_mul_ps(y, x), zz);
    V fe = _mm256_cvtepi32_ps(e);
    y = madd(cst(ET_LOG_Q1), fe, y);
    y = madd(cst(-0.5f), zz, y);
    V L = _mm256_add_ps(x, y);
    L = madd(cst(ET_LOG_Q2), fe, L);
    V r = _mm256_sqrt_ps(_mm256_max_ps(_mm256_mul_ps(cst(-2.0f), L), _mm256_setzero_ps()));
    VI kb = _mm256_srli_epi32(b, 8);
    VI t = _mm256_srli_epi32(_mm256_add_epi32(kb, _mm256_set1_epi32(1 << 21)), 22);
    VI f = _mm256_sub_epi32(kb, _mm256_slli_epi32(t, 22));
    V xa = _mm256_mul_ps(_mm256_cvtepi32_ps(f), cst(ET_ANGLE_SCALE));
    V z2 = _mm256_mul_ps(xa, xa);
    V s = madd(cst(ET_SIN_S0), z2, cst(ET_SIN_S1));
    s = madd(s, z2, cst(ET_SIN_S2));
    s = _mm256_mul_ps(s, z2);
    s = _mm256_mul_ps(s, xa);
    V sx = _mm256_add_ps(s, xa);
    V c = madd(cst(ET_COS_C0), z2, cst(ET_COS_C1));
    c = madd(c, z2, cst(ET_COS_C2));
    c = _mm256_mul_ps(c, z2);
    c = _mm256_mul_ps(c, z2);
    c = madd(cst(-0.5f), z2, c);
    V cx = _mm256_add_ps(c, cst(1.0f));
    V swap = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(t, one), one));
    V C = _mm256_blendv_ps(cx, sx, swap);
    V S = _mm256_blendv_ps(sx, cx, swap);
    VI two = _mm256_set1_epi32(2);
    VI negc = _mm256_slli_epi32(_mm256_and_si256(_mm256_add_epi32(t, one), two), 30);
    VI negs = _mm256_slli_epi32(_mm256_and_si256(t, two), 30);
    C = _mm256_castsi256_ps(_mm256_xor_si256(_mm256_castps_si256(C), negc));
    S = _mm256_castsi256_ps(_mm256_xor_si256(_mm256_castps_si256(S), negs));
    V z0 = _mm256_mul_ps(r, C), z1 = _mm256_mul_ps(r, S);
    V lo = _mm256_unpacklo_ps(z0, z1), hi = _mm256_unpackhi_ps(z0, z1);
    _mm256_storeu_ps(out, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
}

static inline void rad_expand(uint32_t word, float *out) {
    const VI lane = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const VI sign = _mm256_set1_epi32((int)0x80000000U);
    const VI onef = _mm256_castps_si256(_mm256_set1_ps(1.0f));
    for (int g = 0; g < 4; ++g) {
        VI w = _mm256_set1_epi32((int)((word >> (8 * g)) & 0xFFu));
        VI set = _mm256_cmpeq_epi32(_mm256_and_si256(w, lane), lane);
        _mm256_storeu_ps(out + 8 * g, _mm256_castsi256_ps(_mm256_xor_si256(onef, _mm256_and_si256(set, sign))));
    }
}
#include "kernels_impl.h"
}  // namespace

extern const et_isa_table et_isa_avx2 = {"avx2", k_fill, k_perturb, k_combine, k_adam_window, k_perturb_copies};
