/* capi.cpp — the C API: argument checks, and every C++ exception turned into a status. */
#include <cmath>
#include <cstring>
#include <new>
#include <stdexcept>

#include "core.h"
#include "edgetune.h"
#include "tuner.h"

struct et_tuner {
    et::Tuner impl;
    explicit et_tuner(const et_tuner_params &p) : impl(p) {}
};

namespace {
template <class F>
et_status guarded(F &&f) {
    try {
        return f();
    } catch (const std::bad_alloc &) {
        return ET_ERR_OUT_OF_MEMORY;
    } catch (const std::invalid_argument &) {
        return ET_ERR_INVALID_ARGUMENT;
    } catch (...) {
        return ET_ERR_INTERNAL;
    }
}
bool valid_dist(et_noise d) { return d == ET_NOISE_GAUSSIAN || d == ET_NOISE_RADEMACHER; }
}  // namespace

extern "C" {

const char *et_version(void) { return "0.1.0"; }

const char *et_status_string(et_status s) {
    switch (s) {
    case ET_OK: return "ok";
    case ET_DONE: return "done";
    case ET_ERR_INVALID_ARGUMENT: return "invalid argument";
    case ET_ERR_OUT_OF_MEMORY: return "out of memory";
    case ET_ERR_BAD_PROBE: return "probe does not match the pending evaluation";
    case ET_ERR_STATE: return "call not valid in the current state";
    case ET_ERR_NONFINITE_LOSS: return "non-finite loss (arena restored)";
    case ET_ERR_UNSUPPORTED: return "unsupported";
    case ET_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

const char *et_simd_level(void) { return et::simd_level(); }

uint32_t et_available_isas(const char **names, uint32_t cap) {
    try {
        static const char *const known[] = {"scalar", "avx2", "avx512", "neon"};
        auto v = et::available_isas();
        uint32_t n = 0;
        for (auto &s : v) {
            for (const char *k : known)
                if (s == k && names && n < cap) names[n] = k;
            ++n;
        }
        return n;
    } catch (...) {
        return 0;
    }
}

et_status et_set_isa(const char *name) {
    if (!name) return ET_ERR_INVALID_ARGUMENT;
    return guarded([&] { return et::set_isa(name) ? ET_OK : ET_ERR_UNSUPPORTED; });
}

et_status et_set_num_threads(int32_t n) {
    if (n < 0) return ET_ERR_INVALID_ARGUMENT;
    return guarded([&] { et::set_num_threads(n); return ET_OK; });
}

int32_t et_get_num_threads(void) { return et::get_num_threads(); }

uint64_t et_derive_seed(uint64_t run_seed, uint64_t step, uint64_t query) {
    return et::derive_seed(run_seed, step, query);
}

et_status et_noise_fill(uint64_t seed, uint64_t offset, size_t count, et_noise dist, float *out) {
    if ((!out && count) || !valid_dist(dist)) return ET_ERR_INVALID_ARGUMENT;
    return guarded([&] { et::noise_fill(seed, offset, count, dist, out); return ET_OK; });
}

et_status et_perturb(float *buf, size_t n, uint64_t seed, float scale, et_noise dist, uint64_t offset) {
    if ((!buf && n) || !valid_dist(dist)) return ET_ERR_INVALID_ARGUMENT;
    return guarded([&] { et::perturb(buf, n, seed, scale, dist, offset); return ET_OK; });
}

et_status et_combine(float *buf, size_t n, float decay, const uint64_t *seeds, const float *coefs,
                     uint32_t k, et_noise dist, uint64_t offset) {
    if ((!buf && n) || (k && (!seeds || !coefs)) || !valid_dist(dist)) return ET_ERR_INVALID_ARGUMENT;
    return guarded([&] { et::combine(buf, n, decay, seeds, coefs, k, dist, offset); return ET_OK; });
}

void et_tuner_default_params(et_tuner_params *p) {
    if (!p) return;
    std::memset(p, 0, sizeof(*p));
    p->struct_size = sizeof(et_tuner_params);
    p->queries = 1;
    p->n_params = 0;
    p->seed = 0;
    p->max_steps = 0;
    p->lr = 1e-4f;
    p->eps = 1e-3f;
    p->weight_decay = 0.0f;
    p->noise = ET_NOISE_GAUSSIAN;
    p->threads = 0;
}

et_status et_tuner_create(const et_tuner_params *params, et_tuner **out) {
    if (!params || !out) return ET_ERR_INVALID_ARGUMENT;
    if (params->struct_size != sizeof(et_tuner_params)) return ET_ERR_INVALID_ARGUMENT;
    const et_tuner_params &p = *params;
    if (p.n_params == 0 || p.queries == 0 || !(p.eps > 0.0f) || !std::isfinite(p.eps) || !std::isfinite(p.lr) ||
        !std::isfinite(p.weight_decay) || !valid_dist((et_noise)p.noise) || p.threads < 0)
        return ET_ERR_INVALID_ARGUMENT;
    return guarded([&] {
        if (p.threads > 0) et::set_num_threads(p.threads);
        *out = new et_tuner(p);
        return ET_OK;
    });
}

void et_tuner_free(et_tuner *t) { delete t; }

et_status et_tuner_arena(et_tuner *t, float **data, size_t *n) {
    if (!t || !data || !n) return ET_ERR_INVALID_ARGUMENT;
    *data = t->impl.arena();
    *n = t->impl.size();
    return ET_OK;
}

et_status et_tuner_ask(et_tuner *t, et_probe *probe) {
    if (!t || !probe) return ET_ERR_INVALID_ARGUMENT;
    return guarded([&] { return t->impl.ask(probe); });
}

et_status et_tuner_tell(et_tuner *t, const et_probe *probe, float loss) {
    if (!t || !probe) return ET_ERR_INVALID_ARGUMENT;
    return guarded([&] { return t->impl.tell(*probe, loss); });
}

et_status et_tuner_set_lr_eps(et_tuner *t, float lr, float eps) {
    if (!t || !(eps > 0.0f) || !std::isfinite(eps) || !std::isfinite(lr)) return ET_ERR_INVALID_ARGUMENT;
    t->impl.set_lr_eps(lr, eps);
    return ET_OK;
}

et_status et_tuner_step(const et_tuner *t, uint64_t *steps_done) {
    if (!t || !steps_done) return ET_ERR_INVALID_ARGUMENT;
    *steps_done = t->impl.steps_done();
    return ET_OK;
}

et_status et_tuner_last_grads(const et_tuner *t, float *g, uint32_t cap, uint32_t *n) {
    if (!t || !n || (cap && !g)) return ET_ERR_INVALID_ARGUMENT;
    if (!t->impl.has_last()) return ET_ERR_STATE;
    const auto &v = t->impl.last_grads();
    for (uint32_t i = 0; i < cap && i < v.size(); ++i) g[i] = v[i];
    *n = (uint32_t)v.size();
    return ET_OK;
}

et_status et_tuner_last_loss(const et_tuner *t, float *loss) {
    if (!t || !loss) return ET_ERR_INVALID_ARGUMENT;
    if (!t->impl.has_last()) return ET_ERR_STATE;
    *loss = t->impl.last_loss();
    return ET_OK;
}

}  // extern "C"
