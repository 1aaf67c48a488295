/* kernels_neon.cpp — 4 Box-Muller pairs (8 normals) per block for AArch64 Advanced SIMD.
 * Mirrors et_gauss_pair() in noise.h operation by operation (vmul then vadd; no vfma). */
#include <arm_neon.h>
#include "kernels.h"
#include "noise.h"

namespace {
#define ET_LANES 4
#define V float32x4_t
#define VI uint32x4_t

static inline VI mix32(VI x) {
    x = veorq_u32(x, vshrq_n_u32(x, 16));
    x = vmulq_u32(x, vdupq_n_u32(0x7FEB352DU));
    x = veorq_u32(x, vshrq_n_u32(x, 15));
    x = vmulq_u32(x, vdupq_n_u32(0x846CA68BU));
    x = veorq_u32(x, vshrq_n_u32(x, 16));
    return x;
}
static inline V madd(V a, V b, V c) { return vaddq_f32(vmulq_f32(a, b), c); }
static inline V cst(float f) { return vdupq_n_f32(f); }

static inline void gauss_block(et_keys k, uint32_t lo0, float *out) {
    static const uint32_t iota_[4] = {0, 1, 2, 3};
    const VI one = vdupq_n_u32(1);
    VI j = vaddq_u32(vdupq_n_u32(lo0), vld1q_u32(iota_));
    VI h = mix32(veorq_u32(j, vdupq_n_u32(k.k0)));
    VI a = mix32(veorq_u32(h, vdupq_n_u32(k.k1)));
    VI b = mix32(veorq_u32(a, vdupq_n_u32(k.k2)));
    V u1 = vmulq_f32(vcvtq_f32_u32(vaddq_u32(vshrq_n_u32(a, 8), one)), cst(ET_U24_SCALE));
    VI bits = vreinterpretq_u32_f32(u1);
    int32x4_t e = vsubq_s32(vreinterpretq_s32_u32(vshrq_n_u32(bits, 23)), vdupq_n_s32(126));
    V m = vreinterpretq_f32_u32(vorrq_u32(vandq_u32(bits, vdupq_n_u32(0x007FFFFFU)), vdupq_n_u32(0x3F000000U)));
    VI lt = vcltq_f32(m, cst(ET_LOG_SQRTHF));
    e = vaddq_s32(e, vreinterpretq_s32_u32(lt));  /* all-ones = -1 */
    m = vbslq_f32(lt, vaddq_f32(m, m), m);
    V x = vsubq_f32(m, cst(1.0f));
    V zz = vmulq_f32(x, x);
    V y = cst(ET_LOG_P0);
    y = madd(y, x, cst(ET_LOG_P1)); y = madd(y, x, cst(ET_LOG_P2)); y = madd(y, x, cst(ET_LOG_P3));
    y = madd(y, x, cst(ET_LOG_P4)); y = madd(y, x, cst(ET_LOG_P5)); y = madd(y, x, cst(ET_LOG_P6));
    y = madd(y, x, cst(ET_LOG_P7)); y = madd(y, x, cst(ET_LOG_P8));
    y = vmulq_f32(vmulq_f32(y, x), zz);
    V fe = vcvtq_f32_s32(e);
    y = madd(cst(ET_LOG_Q1), fe, y);
    y = madd(cst(-0.5f), zz, y);
    V L = vaddq_f32(x, y);
    L = madd(cst(ET_LOG_Q2), fe, L);
    V r = vsqrtq_f32(vmaxq_f32(vmulq_f32(cst(-2.0f), L), vdupq_n_f32(0.0f)));
    VI kb = vshrq_n_u32(b, 8);
    VI t = vshrq_n_u32(vaddq_u32(kb, vdupq_n_u32(1u << 21)), 22);
    int32x4_t f = vreinterpretq_s32_u32(vsubq_u32(kb, vshlq_n_u32(t, 22)));
    V xa = vmulq_f32(vcvtq_f32_s32(f), cst(ET_ANGLE_SCALE));
    V z2 = vmulq_f32(xa, xa);
    V s = madd(cst(ET_SIN_S0), z2, cst(ET_SIN_S1));
    s = madd(s, z2, cst(ET_SIN_S2));
    s = vmulq_f32(s, z2);
    s = vmulq_f32(s, xa);
    V sx = vaddq_f32(s, xa);
    V c = madd(cst(ET_COS_C0), z2, cst(ET_COS_C1));
    c = madd(c, z2, cst(ET_COS_C2));
    c = vmulq_f32(c, z2);
    c = vmulq_f32(c, z2);
    c = madd(cst(-0.5f), z2, c);
    V cx = vaddq_f32(c, cst(1.0f));
    VI swap = vtstq_u32(t, one);
    V C = vbslq_f32(swap, sx, cx);
    V S = vbslq_f32(swap, cx, sx);
    VI two = vdupq_n_u32(2);
    VI negc = vshlq_n_u32(vandq_u32(vaddq_u32(t, one), two), 30);
    VI negs = vshlq_n_u32(vandq_u32(t, two), 30);
    C = vreinterpretq_f32_u32(veorq_u32(vreinterpretq_u32_f32(C), negc));
    S = vreinterpretq_f32_u32(veorq_u32(vreinterpretq_u32_f32(S), negs));
    V z0 = vmulq_f32(r, C), z1 = vmulq_f32(r, S);
    vst1q_f32(out, vzip1q_f32(z0, z1));
    vst1q_f32(out + 4, vzip2q_f32(z0, z1));
}

static inline void rad_expand(uint32_t word, float *out) {
    static const uint32_t lane_[4] = {1, 2, 4, 8};
    const VI lane = vld1q_u32(lane_);
    const VI sign = vdupq_n_u32(0x80000000U);
    const VI onef = vreinterpretq_u32_f32(vdupq_n_f32(1.0f));
    for (int g = 0; g < 8; ++g) {
        VI set = vtstq_u32(vdupq_n_u32((word >> (4 * g)) & 0xFu), lane);
        vst1q_f32(out + 4 * g, vreinterpretq_f32_u32(veorq_u32(onef, vandq_u32(set, sign))));
    }
}
#include "kernels_impl.h"
}  // namespace

extern const et_isa_table et_isa_neon = {"neon", k_fill, k_perturb, k_combine, k_adam_window, k_perturb_copies};
