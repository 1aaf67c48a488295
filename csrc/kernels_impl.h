/*
 * kernels_impl.h — ISA-independent kernel drivers, included once by each kernels_<isa>.cpp
 * after it defines:
 *   ET_LANES                                  pairs per gauss_block
 *   static void gauss_block(et_keys, uint32_t lo0, float *out)   2*ET_LANES normals for
 *                                             pairs lo0 .. lo0+ET_LANES-1 (no 2^32 wrap inside)
 *   static void rad_expand(uint32_t word, float *out)            32 values of +-1
 * Heads/tails use the scalar reference from noise.h, which the block code matches bit for bit.
 * Perturb/combine generate noise into an L1-sized scratch chunk and then stream over the
 * parameters once; the float ops keep the exact order of the spec (and no FMA: the build
 * uses -ffp-contract=off), so auto-vectorised loops stay bit-identical to scalar code.
 * No STL in here: these TUs are compiled with ISA flags (see noise.h on ODR).
 */
#define ET_CHUNK 2048

static void fill_gauss(uint64_t seed, uint64_t start, size_t count, float *out) {
    uint64_t i = start;
    const uint64_t end = start + count;
    uint64_t cur_hi = ~0ULL;
    et_keys k = {0, 0, 0};
    float z0, z1;
    if (i < end && (i & 1)) {  /* odd start: second value of a pair */
        uint64_t j = i >> 1;
        et_gauss_pair(et_make_keys(seed, j >> 32, ET_DOMAIN_GAUSS), (uint32_t)j, &z0, &z1);
        *out++ = z1; ++i;
    }
    while (end - i >= 2 * ET_LANES) {
        uint64_t j = i >> 1;
        uint32_t lo = (uint32_t)j;
        if ((j >> 32) != cur_hi) { cur_hi = j >> 32; k = et_make_keys(seed, cur_hi, ET_DOMAIN_GAUSS); }
        if (lo > 0xFFFFFFFFu - (ET_LANES - 1)) {  /* block straddles a 2^32-pair boundary */
            for (int l = 0; l < ET_LANES; ++l) {
                uint64_t jj = j + l;
                et_gauss_pair(et_make_keys(seed, jj >> 32, ET_DOMAIN_GAUSS), (uint32_t)jj, &out[2 * l], &out[2 * l + 1]);
            }
        } else {
            gauss_block(k, lo, out);
        }
        out += 2 * ET_LANES; i += 2 * ET_LANES;
    }
    while (i < end) {
        uint64_t j = i >> 1;
        et_gauss_pair(et_make_keys(seed, j >> 32, ET_DOMAIN_GAUSS), (uint32_t)j, &z0, &z1);
        *out++ = z0; ++i;
        if (i < end) { *out++ = z1; ++i; }
    }
}

static void fill_rad(uint64_t seed, uint64_t start, size_t count, float *out) {
    uint64_t i = start;
    const uint64_t end = start + count;
    while (i < end && (i & 31)) { *out++ = et_noise_one(seed, i, 1); ++i; }
    uint64_t cur_hi = ~0ULL;
    et_keys k = {0, 0, 0};
    while (end - i >= 32) {
        uint64_t w = i >> 5;
        if ((w >> 32) != cur_hi) { cur_hi = w >> 32; k = et_make_keys(seed, cur_hi, ET_DOMAIN_RAD); }
        rad_expand(et_rad_word(k, (uint32_t)w), out);
        out += 32; i += 32;
    }
    while (i < end) { *out++ = et_noise_one(seed, i, 1); ++i; }
}

static void k_fill(uint64_t seed, uint64_t start, size_t count, int dist, float *out) {
    if (dist == 1) fill_rad(seed, start, count, out);
    else fill_gauss(seed, start, count, out);
}

static void k_perturb(float *buf, size_t n, uint64_t seed, float scale, int dist, uint64_t offset) {
    alignas(64) float z[ET_CHUNK];
    for (size_t c = 0; c < n; c += ET_CHUNK) {
        size_t m = n - c < ET_CHUNK ? n - c : ET_CHUNK;
        k_fill(seed, offset + c, m, dist, z);
        float *b = buf + c;
        for (size_t i = 0; i < m; ++i) b[i] = b[i] + scale * z[i];
    }
}

static void k_combine(float *buf, size_t n, float decay, const uint64_t *seeds, const float *coefs,
                      size_t k, int dist, uint64_t offset) {
    alignas(64) float z[ET_CHUNK];
    alignas(64) float acc[ET_CHUNK];
    for (size_t c = 0; c < n; c += ET_CHUNK) {
        size_t m = n - c < ET_CHUNK ? n - c : ET_CHUNK;
        float *b = buf + c;
        for (size_t i = 0; i < m; ++i) acc[i] = decay * b[i];
        for (size_t s = 0; s < k; ++s) {
            k_fill(seeds[s], offset + c, m, dist, z);
            const float cf = coefs[s];
            for (size_t i = 0; i < m; ++i) acc[i] = acc[i] + cf * z[i];
        }
        for (size_t i = 0; i < m; ++i) b[i] = acc[i];
    }
}

/* ZO-Adam from a window of (seed, g) pairs (see et_adam_window): per chunk, regenerate every
 * window step's noise, accumulate m and v, update, all in one pass over the parameters.
 * ghat must be formed per step before squaring: with q > 1 or Gaussian noise, ghat^2 has cross terms. */
static void k_adam_window(float *buf, size_t n, const et_adam_window *w, int dist, uint64_t offset) {
    alignas(64) float z[ET_CHUNK];
    alignas(64) float ghat[ET_CHUNK];
    alignas(64) float m[ET_CHUNK];
    alignas(64) float v[ET_CHUNK];
    for (size_t c = 0; c < n; c += ET_CHUNK) {
        size_t len = n - c < ET_CHUNK ? n - c : ET_CHUNK;
        float *b = buf + c;
        if (w->has_restore) {
            k_fill(w->restore_seed, offset + c, len, dist, z);
            const float r = w->restore_scale;
            for (size_t i = 0; i < len; ++i) b[i] = b[i] + r * z[i];
        }
        for (size_t i = 0; i < len; ++i) { m[i] = 0.0f; v[i] = 0.0f; }
        size_t k = 0;
        for (size_t s = 0; s < w->steps; ++s) {
            for (uint32_t q = 0; q < w->queries[s]; ++q, ++k) {
                k_fill(w->seeds[k], offset + c, len, dist, z);
                const float cf = w->coefs[k];
                if (q == 0) for (size_t i = 0; i < len; ++i) ghat[i] = cf * z[i];
                else for (size_t i = 0; i < len; ++i) ghat[i] = ghat[i] + cf * z[i];
            }
            const float wm = w->m_weights[s], wv = w->v_weights[s];
            for (size_t i = 0; i < len; ++i) {
                m[i] = m[i] + wm * ghat[i];
                v[i] = v[i] + wv * (ghat[i] * ghat[i]);
            }
        }
        const float decay = w->decay, lr = w->lr, delta = w->delta;
        for (size_t i = 0; i < len; ++i) b[i] = decay * b[i] - lr * (m[i] / (__builtin_sqrtf(v[i]) + delta));
        if (w->has_next) {
            k_fill(w->next_seed, offset + c, len, dist, z);
            const float s = w->next_scale;
            for (size_t i = 0; i < len; ++i) b[i] = b[i] + s * z[i];
        }
    }
}

/* The k perturbed copies of src that P-RGE evaluates in one forward, in one read of src; each copy
 * holds the values k_perturb would leave in a copy of src. Consecutive copies with the same seed
 * (a +-eps pair) share one noise fill, so a pair costs one noise pass instead of two. */
static void k_perturb_copies(const float *src, size_t n, float *dst, size_t stride, const uint64_t *seeds,
                             const float *scales, size_t k, int dist, uint64_t offset) {
    alignas(64) float z[ET_CHUNK];
    for (size_t c = 0; c < n; c += ET_CHUNK) {
        size_t m = n - c < ET_CHUNK ? n - c : ET_CHUNK;
        const float *s = src + c;
        for (size_t p = 0; p < k; ++p) {
            if (p == 0 || seeds[p] != seeds[p - 1]) k_fill(seeds[p], offset + c, m, dist, z);
            float *d = dst + p * stride + c;
            const float sc = scales[p];
            for (size_t i = 0; i < m; ++i) d[i] = s[i] + sc * z[i];
        }
    }
}
