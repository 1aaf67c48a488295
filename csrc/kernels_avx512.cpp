/* kernels_avx512.cpp — 16 Box-Muller pairs (32 normals) per block; compiled with -mavx512f.
 * Mirrors et_gauss_pair() in noise.h operation by operation (mul, then add; no FMA). */
#include <immintrin.h>
#include "kernels.h"
#include "noise.h"

namespace {
#define ET_LANES 16
#define V __m512
#define VI __m512i

static inline VI mix32(VI x) {
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
    x = _mm512_mullo_epi32(x, _mm512_set1_epi32(0x7FEB352D));
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
    x = _mm512_mullo_epi32(x, _mm512_set1_epi32((int)0x846CA68BU));
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
    return x;
}
static inline V madd(V a, V b, V c) { return _mm512_add_ps(_mm512_mul_ps(a, b), c); }
static inline V cst(float f) { return _mm512_set1_ps(f); }

static inline void gauss_block(et_keys k, uint32_t lo0, float *out) {
    const VI iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const VI one = _mm512_set1_epi32(1);
    VI j = _mm512_add_epi32(_mm512_set1_epi32((int)lo0), iota);
    VI h = mix32(_mm512_xor_si512(j, _mm512_set1_epi32((int)k.k0)));
    VI a = mix32(_mm512_xor_si512(h, _mm512_set1_epi32((int)k.k1)));
    VI b = mix32(_mm512_xor_si512(a, _mm512_set1_epi32((int)k.k2)));
    /* log */
    V u1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_srli_epi32(a, 8), one)), cst(ET_U24_SCALE));
    VI bits = _mm512_castps_si512(u1);
    VI e = _mm512_sub_epi32(_mm512_srli_epi32(bits, 23), _mm512_set1_epi32(126));
    V m = _mm512_castsi512_ps(_mm512_or_si512(_mm512_and_si512(bits, _mm512_set1_epi32(0x007FFFFF)),
                                              _mm512_set1_epi32(0x3F000000)));
    __mmask16 lt = _mm512_cmp_ps_mask(m, cst(ET_LOG_SQRTHF), _CMP_LT_OQ);
    e = _mm512_mask_sub_epi32(e, lt, e, one);
    m = _mm512_mask_add_ps(m, lt, m, m);
    V x = _mm512_sub_ps(m, cst(1.0f));
    V zz = _mm512_mul_ps(x, x);
    V y = cst(ET_LOG_P0);
    y = madd(y, x, cst(ET_LOG_P1)); y = madd(y, x, cst(ET_LOG_P2)); y = madd(y, x, cst(ET_LOG_P3));
    y = madd(y, x, cst(ET_LOG_P4)); y = madd(y, x, cst(ET_LOG_P5)); y = madd(y, x, cst(ET_LOG_P6));
    y = madd(y, x, cst(ET_LOG_P7)); y = madd(y, x, cst(ET_LOG_P8));
    y = _mm512_mul_ps(_mm512_mul_ps(y, x), zz);
    V fe = _mm512_cvtepi32_ps(e);
    y = madd(cst(ET_LOG_Q1), fe, y);
    y = madd(cst(-0.5f), zz, y);
    V L = _mm512_add_ps(x, y);
    L = madd(cst(ET_LOG_Q2), fe, L);
    V r = _mm512_sqrt_ps(_mm512_max_ps(_mm512_mul_ps(cst(-2.0f), L), _mm512_setzero_ps()));
    /* sincos */
    VI kb = _mm512_srli_epi32(b, 8);
    VI t = _mm512_srli_epi32(_mm512_add_epi32(kb, _mm512_set1_epi32(1 << 21)), 22);
    VI f = _mm512_sub_epi32(kb, _mm512_slli_epi32(t, 22));
    V xa = _mm512_mul_ps(_mm512_cvtepi32_ps(f), cst(ET_ANGLE_SCALE));
    V z2 = _mm512_mul_ps(xa, xa);
    V s = madd(cst(ET_SIN_S0), z2, cst(ET_SIN_S1));
    s = madd(s, z2, cst(ET_SIN_S2));
    s = _mm512_mul_ps(s, z2);
    s = _mm512_mul_ps(s, xa);
    V sx = _mm512_add_ps(s, xa);
    V c = madd(cst(ET_COS_C0), z2, cst(ET_COS_C1));
    c = madd(c, z2, cst(ET_COS_C2));
    c = _mm512_mul_ps(c, z2);
    c = _mm512_mul_ps(c, z2);
    c = madd(cst(-0.5f), z2, c);
    V cx = _mm512_add_ps(c, cst(1.0f));
    __mmask16 swap = _mm512_test_epi32_mask(t, one);
    V C = _mm512_mask_blend_ps(swap, cx, sx);
    V S = _mm512_mask_blend_ps(swap, sx, cx);
    VI two = _mm512_set1_epi32(2);
    VI negc = _mm512_slli_epi32(_mm512_and_si512(_mm512_add_epi32(t, one), two), 30);
    VI negs = _mm512_slli_epi32(_mm512_and_si512(t, two), 30);
    C = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(C), negc));
    S = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(S), negs));
    V z0 = _mm512_mul_ps(r, C), z1 = _mm512_mul_ps(r, S);
    const VI ilo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const VI ihi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    _mm512_storeu_ps(out, _mm512_permutex2var_ps(z0, ilo, z1));
    _mm512_storeu_ps(out + 16, _mm512_permutex2var_ps(z0, ihi, z1));
}

static inline void rad_expand(uint32_t word, float *out) {
    const V p = _mm512_set1_ps(1.0f), n = _mm512_set1_ps(-1.0f);
    _mm512_storeu_ps(out, _mm512_mask_blend_ps((__mmask16)(word & 0xFFFF), p, n));
    _mm512_storeu_ps(out + 16, _mm512_mask_blend_ps((__mmask16)(word >> 16), p, n));
}
#include "kernels_impl.h"
}  // namespace

extern const et_isa_table et_isa_avx512 = {"avx512", k_fill, k_perturb, k_combine, k_adam_window, k_perturb_copies};
