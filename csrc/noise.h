/*
 * noise.h — the edgetune noise generator: specification and scalar reference.
 *
 * Why this design: ZO training never stores its noise; it regenerates z from (seed, index)
 * in every pass, so the generator must be (1) counter-based (z at index i depends only on
 * seed and i, never on chunking or threads), (2) cheap in SIMD, and (3) bit-identical on
 * every build (scalar, AVX2, AVX-512, NEON, CUDA) so a run log replays exactly on any device.
 * (3) rules out libm: log/sin/cos are written here as fixed polynomials, evaluated with plain
 * IEEE-754 binary32 multiplies and adds in a fixed order (no FMA: compile with
 * -ffp-contract=off / nvcc --fmad=false, never -ffast-math). sqrt is IEEE correctly rounded
 * everywhere, conversions of integers < 2^24 to float are exact.
 *
 * SPECIFICATION (u32/u64 = unsigned wrap-around arithmetic, f32 = binary32 round-to-nearest)
 *
 *   splitmix64(x): z = x + 0x9E3779B97F4A7C15
 *                  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
 *                  z = (z ^ (z >> 27)) * 0x94D049BB133111EB
 *                  return z ^ (z >> 31)
 *   mix32(x):      x ^= x >> 16; x *= 0x7FEB352D; x ^= x >> 15; x *= 0x846CA68B; x ^= x >> 16
 *   keys(seed, hi, domain):  K1 = splitmix64(seed ^ (hi * 0xD1B54A32D192ED03) ^ domain)
 *                            K2 = splitmix64(K1)
 *                            k0 = lo32(K1), k1 = hi32(K1), k2 = lo32(K2)
 *   derive_seed(run, step, query) = splitmix64(splitmix64(splitmix64(run) ^ step) ^ query)
 *
 *   Gaussian, index i (u64): pair j = i >> 1, hi = j >> 32, lo = lo32(j), domain = 0
 *       h = mix32(lo ^ k0); a = mix32(h ^ k1); b = mix32(a ^ k2)
 *       u1 = f32((a >> 8) + 1) * 2^-24                 in [2^-24, 1], exact
 *       L  = logpoly(u1)                                ~ ln(u1) <= 0
 *       r  = sqrt(max(-2*L, 0))
 *       kb = b >> 8 (24 bits; angle 2*pi*kb/2^24)
 *       t  = (kb + 2^21) >> 22;  quadrant = t & 3;  f = (i32)kb - (i32)(t << 22)   in [-2^21, 2^21)
 *       x  = f32(f) * 0x1.921fb6p-22                   (= f32(2*pi) * 2^-24), |x| <= pi/4
 *       (sx, cx) = sinpoly(x), cospoly(x)
 *       quadrant 0: (C,S) = ( cx,  sx)   1: (-sx,  cx)   2: (-cx, -sx)   3: ( sx, -cx)
 *       z(2j) = r*C, z(2j+1) = r*S
 *     logpoly(u) (Cephes logf): m = mantissa of u in [0.5,1), e = exponent so u = m*2^e;
 *       if m < 0.70710678118654752440f: e = e-1, m = m+m;   x = m - 1
 *       zz = x*x
 *       y = 7.0376836292E-2f; then y = y*x + c for c in
 *           -1.1514610310E-1f, 1.1676998740E-1f, -1.2420140846E-1f, 1.4249322787E-1f,
 *           -1.6668057665E-1f, 2.0000714765E-1f, -2.4999993993E-1f, 3.3333331174E-1f
 *       y = (y*x)*zz;  fe = f32(e)
 *       y = y + (-2.12194440E-4f*fe);  y = y + (-0.5f*zz);  r = x + y;  r = r + 0.693359375f*fe
 *     sinpoly(x) (Cephes sinf):  zz = x*x; y = ((-1.9515295891E-4f*zz + 8.3321608736E-3f)*zz
 *                               + -1.6666654611E-1f)*zz; y = y*x; s = y + x
 *     cospoly(x) (Cephes cosf):  zz = x*x; y = ((2.443315711809948E-5f*zz + -1.388731625493765E-3f)*zz
 *                               + 4.166664568298827E-2f)*zz; y = y*zz; y = y + (-0.5f*zz); c = y + 1.0f
 *     (Every "a*b + c" above is a rounded multiply followed by a rounded add.)
 *     Range: |z| <= sqrt(2*24*ln 2) = 5.77; mean 0, variance 1 to ~1e-6.
 *
 *   Rademacher, index i: word w = i >> 5, hi = w >> 32, lo = lo32(w),
 *       domain = 0x9E6C63D0676A9A99;  word = mix32(mix32(lo ^ k0) ^ k1)
 *       bit = (word >> (i & 31)) & 1;  z = bit ? -1.0f : +1.0f
 *
 * Everything below is `static inline` on purpose: this header is included by translation
 * units compiled with different -m flags; non-static inline functions would be merged by the
 * linker and an AVX-512 copy could end up called on a CPU without AVX-512.
 */
#ifndef EDGETUNE_NOISE_H
#define EDGETUNE_NOISE_H

#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define ET_HD static inline __host__ __device__
#else
#define ET_HD static inline
#endif

#define ET_DOMAIN_GAUSS 0x0000000000000000ULL
#define ET_DOMAIN_RAD 0x9E6C63D0676A9A99ULL

/* polynomial coefficients (see spec) */
#define ET_LOG_SQRTHF 0.70710678118654752440f
#define ET_LOG_P0 7.0376836292E-2f
#define ET_LOG_P1 -1.1514610310E-1f
#define ET_LOG_P2 1.1676998740E-1f
#define ET_LOG_P3 -1.2420140846E-1f
#define ET_LOG_P4 1.4249322787E-1f
#define ET_LOG_P5 -1.6668057665E-1f
#define ET_LOG_P6 2.0000714765E-1f
#define ET_LOG_P7 -2.4999993993E-1f
#define ET_LOG_P8 3.3333331174E-1f
#define ET_LOG_Q1 -2.12194440E-4f
#define ET_LOG_Q2 0.693359375f
#define ET_SIN_S0 -1.9515295891E-4f
#define ET_SIN_S1 8.3321608736E-3f
#define ET_SIN_S2 -1.6666654611E-1f
#define ET_COS_C0 2.443315711809948E-5f
#define ET_COS_C1 -1.388731625493765E-3f
#define ET_COS_C2 4.166664568298827E-2f
#define ET_ANGLE_SCALE 0x1.921fb6p-22f
#define ET_U24_SCALE 0x1p-24f

ET_HD uint64_t et_splitmix64(uint64_t x) {
    uint64_t z = x + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

ET_HD uint32_t et_mix32(uint32_t x) {
    x ^= x >> 16; x *= 0x7FEB352DU; x ^= x >> 15; x *= 0x846CA68BU; x ^= x >> 16;
    return x;
}

ET_HD uint64_t et_derive_seed_impl(uint64_t run, uint64_t step, uint64_t query) {
    return et_splitmix64(et_splitmix64(et_splitmix64(run) ^ step) ^ query);
}

typedef struct et_keys { uint32_t k0, k1, k2; } et_keys;

ET_HD et_keys et_make_keys(uint64_t seed, uint64_t hi, uint64_t domain) {
    uint64_t K1 = et_splitmix64(seed ^ (hi * 0xD1B54A32D192ED03ULL) ^ domain);
    uint64_t K2 = et_splitmix64(K1);
    et_keys k;
    k.k0 = (uint32_t)K1; k.k1 = (uint32_t)(K1 >> 32); k.k2 = (uint32_t)K2;
    return k;
}

ET_HD uint32_t et_f2u(float f) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(f);
#else
    uint32_t u; memcpy(&u, &f, 4); return u;
#endif
}
ET_HD float et_u2f(uint32_t u) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f; memcpy(&f, &u, 4); return f;
#endif
}

/* logpoly: u in [2^-24, 1] (normal, positive). */
ET_HD float et_logpoly(float u) {
    uint32_t bits = et_f2u(u);
    int32_t e = (int32_t)(bits >> 23) - 126;
    float m = et_u2f((bits & 0x007FFFFFu) | 0x3F000000u);  /* [0.5, 1) */
    if (m < ET_LOG_SQRTHF) { e = e - 1; m = m + m; }
    float x = m - 1.0f;
    float zz = x * x;
    float y = ET_LOG_P0;
    y = y * x + ET_LOG_P1; y = y * x + ET_LOG_P2; y = y * x + ET_LOG_P3; y = y * x + ET_LOG_P4;
    y = y * x + ET_LOG_P5; y = y * x + ET_LOG_P6; y = y * x + ET_LOG_P7; y = y * x + ET_LOG_P8;
    y = (y * x) * zz;
    float fe = (float)e;
    y = y + ET_LOG_Q1 * fe;
    y = y + (-0.5f) * zz;
    float r = x + y;
    r = r + ET_LOG_Q2 * fe;
    return r;
}

ET_HD float et_sinpoly(float x) {
    float zz = x * x;
    float y = ET_SIN_S0 * zz + ET_SIN_S1;
    y = y * zz + ET_SIN_S2;
    y = y * zz;
    y = y * x;
    return y + x;
}

ET_HD float et_cospoly(float x) {
    float zz = x * x;
    float y = ET_COS_C0 * zz + ET_COS_C1;
    y = y * zz + ET_COS_C2;
    y = y * zz;
    y = y * zz;
    y = y + (-0.5f) * zz;
    return y + 1.0f;
}

/* Two normals for pair index with low word `lo` under keys k. */
ET_HD void et_gauss_pair(et_keys k, uint32_t lo, float *z0, float *z1) {
    uint32_t h = et_mix32(lo ^ k.k0);
    uint32_t a = et_mix32(h ^ k.k1);
    uint32_t b = et_mix32(a ^ k.k2);
    float u1 = (float)(int32_t)((a >> 8) + 1u) * ET_U24_SCALE;
    float L = et_logpoly(u1);
    float v = -2.0f * L;
    v = v > 0.0f ? v : 0.0f;
#ifdef __CUDA_ARCH__
    float r = __fsqrt_rn(v);
#else
    float r = __builtin_sqrtf(v);
#endif
    uint32_t kb = b >> 8;
    uint32_t t = (kb + (1u << 21)) >> 22;
    uint32_t quad = t & 3u;
    int32_t f = (int32_t)kb - (int32_t)(t << 22);
    float x = (float)f * ET_ANGLE_SCALE;
    float sx = et_sinpoly(x), cx = et_cospoly(x);
    float C = (quad & 1u) ? sx : cx;
    float S = (quad & 1u) ? cx : sx;
    /* negate by flipping the sign bit (exact): C negative in quadrants 1,2; S in 2,3 */
    uint32_t negc = ((quad + 1u) & 2u) << 30, negs = (quad & 2u) << 30;
    C = et_u2f(et_f2u(C) ^ negc);
    S = et_u2f(et_f2u(S) ^ negs);
    *z0 = r * C;
    *z1 = r * S;
}

ET_HD uint32_t et_rad_word(et_keys k, uint32_t lo) {
    return et_mix32(et_mix32(lo ^ k.k0) ^ k.k1);
}

/* One value, straight from the spec (slow; for tests, heads and tails). */
ET_HD float et_noise_one(uint64_t seed, uint64_t i, int dist) {
    if (dist == 1) {
        uint64_t w = i >> 5;
        et_keys k = et_make_keys(seed, w >> 32, ET_DOMAIN_RAD);
        uint32_t word = et_rad_word(k, (uint32_t)w);
        return ((word >> (i & 31)) & 1u) ? -1.0f : 1.0f;
    }
    uint64_t j = i >> 1;
    et_keys k = et_make_keys(seed, j >> 32, ET_DOMAIN_GAUSS);
    float z0, z1;
    et_gauss_pair(k, (uint32_t)j, &z0, &z1);
    return (i & 1) ? z1 : z0;
}

#endif /* EDGETUNE_NOISE_H */
