/* dispatch.cpp — picks the best kernel table for this CPU at run time and splits kernel
 * calls over the thread pool. */
#include <algorithm>
#include <atomic>
#include <thread>

#include "core.h"
#include "kernels.h"
#include "noise.h"
#include "thread_pool.h"

namespace et {
namespace {

bool isa_supported(const et_isa_table *t) {
    std::string n = t->name;
    if (n == "scalar") return true;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (n == "avx2") return __builtin_cpu_supports("avx2");
    if (n == "avx512") return __builtin_cpu_supports("avx512f");
#endif
    if (n == "neon") return true;  // Advanced SIMD is mandatory on AArch64
    return false;
}

std::vector<const et_isa_table *> compiled_tables() {
    std::vector<const et_isa_table *> v{&et_isa_scalar};
#ifdef ET_HAVE_AVX2
    v.push_back(&et_isa_avx2);
#endif
#ifdef ET_HAVE_AVX512
    v.push_back(&et_isa_avx512);
#endif
#ifdef ET_HAVE_NEON
    v.push_back(&et_isa_neon);
#endif
    return v;
}

const et_isa_table *best_table() {
    const et_isa_table *best = &et_isa_scalar;
    for (auto *t : compiled_tables())
        if (isa_supported(t)) best = t;  // listed in increasing preference
    return best;
}

std::atomic<const et_isa_table *> &active() {
    static std::atomic<const et_isa_table *> a{best_table()};
    return a;
}

// Split [0, n) into parts aligned to 1024 elements (whole cache lines, whole noise blocks);
// alignment only matters for speed, never for the values.
template <class F>
void parallel(size_t n, F &&body) {
    const size_t min_per_thread = 1 << 16;
    int parts = (int)std::min<size_t>((size_t)global_pool().threads(), std::max<size_t>(1, n / min_per_thread));
    if (parts <= 1) {
        body(0, n);
        return;
    }
    size_t per = ((n + parts - 1) / parts + 1023) & ~(size_t)1023;
    global_pool().run(parts, [&](int p) {
        size_t b = std::min(n, per * (size_t)p), e = std::min(n, b + per);
        if (b < e) body(b, e);
    });
}

}  // namespace

uint64_t derive_seed(uint64_t run_seed, uint64_t step, uint64_t query) {
    return et_derive_seed_impl(run_seed, step, query);
}

void epoch_permutation(uint64_t seed, uint64_t epoch, uint64_t n, uint64_t *out) {
    for (uint64_t i = 0; i < n; ++i) out[i] = i;
    const uint64_t key = et_derive_seed_impl(seed, epoch, 0x5045524DULL);  // "PERM": a stream apart from the noise's
    for (uint64_t i = n; i-- > 1;) {
        // Lemire's multiply-shift maps the hash onto [0, i]: no division, no rejection loop to specify
        const uint64_t h = et_splitmix64(key + i);
        const uint64_t j = (uint64_t)(((unsigned __int128)h * (i + 1)) >> 64);
        const uint64_t t = out[i];
        out[i] = out[j];
        out[j] = t;
    }
}

void noise_fill(uint64_t seed, uint64_t offset, size_t count, int dist, float *out) {
    const et_isa_table *t = active().load();
    parallel(count, [&](size_t b, size_t e) { t->fill(seed, offset + b, e - b, dist, out + b); });
}

void perturb(float *buf, size_t n, uint64_t seed, float scale, int dist, uint64_t offset) {
    const et_isa_table *t = active().load();
    parallel(n, [&](size_t b, size_t e) { t->perturb(buf + b, e - b, seed, scale, dist, offset + b); });
}

void combine(float *buf, size_t n, float decay, const uint64_t *seeds, const float *coefs, size_t k,
             int dist, uint64_t offset) {
    const et_isa_table *t = active().load();
    parallel(n, [&](size_t b, size_t e) { t->combine(buf + b, e - b, decay, seeds, coefs, k, dist, offset + b); });
}

void adam_window(float *buf, size_t n, const AdamWindow &w, int dist, uint64_t offset) {
    const et_adam_window k{w.seeds.data(), w.coefs.data(), w.m_weights.data(), w.v_weights.data(),
                           w.queries.data(), w.queries.size(), w.decay, w.lr, w.delta, w.has_restore, w.has_next,
                           w.restore_seed, w.next_seed, w.restore_scale, w.next_scale};
    const et_isa_table *t = active().load();
    parallel(n, [&](size_t b, size_t e) { t->adam_window(buf + b, e - b, &k, dist, offset + b); });
}

void perturb_copies(const float *src, size_t n, float *dst, size_t stride, const uint64_t *seeds,
                    const float *scales, size_t k, int dist, uint64_t offset) {
    const et_isa_table *t = active().load();
    parallel(n, [&](size_t b, size_t e) {
        t->perturb_copies(src + b, e - b, dst + b, stride, seeds, scales, k, dist, offset + b);
    });
}

void set_num_threads(int n) {
    if (n <= 0) n = (int)std::max(1u, std::thread::hardware_concurrency());
    global_pool().set_threads(std::min(n, 256));
}

int get_num_threads() { return global_pool().threads(); }

const char *simd_level() { return active().load()->name; }

std::vector<std::string> available_isas() {
    std::vector<std::string> v;
    for (auto *t : compiled_tables())
        if (isa_supported(t)) v.push_back(t->name);
    return v;
}

bool set_isa(const std::string &name) {
    if (name == "auto") {
        active().store(best_table());
        return true;
    }
    for (auto *t : compiled_tables())
        if (name == t->name && isa_supported(t)) {
            active().store(t);
            return true;
        }
    return false;
}

}  // namespace et
