/* test_window.cpp — the adam_window kernel (ZO-Adam with moments rebuilt from a window of (seed, g)
 * pairs): every compiled ISA gives the scalar kernel's bits, at several thread counts, and the scalar
 * bits hash to the value the x86-64 build gives, so an AArch64/NEON run under qemu proves the update is
 * bit-identical across architectures.  test_window --print  prints the hash (to update EXPECTED). */
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <vector>

#include "core.h"

namespace {

// hash*31 + fnv1a64 of the scalar result bits, dist 0 then 1. Not the code's own say-so: tests/test_window.py
// (test_window_cpp_expected_hash_is_the_spec) reproduces it from et_adam_window's documented formula and
// tests/reference_noise.py, an independent reading of the noise spec in csrc/noise.h.
const uint64_t EXPECTED = 0x30d588372d1b806bULL;

uint64_t fnv1a(const std::vector<float> &v) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (float f : v) {
        uint32_t u;
        std::memcpy(&u, &f, 4);
        for (int b = 0; b < 4; ++b) { h ^= (u >> (8 * b)) & 0xFF; h *= 0x100000001b3ULL; }
    }
    return h;
}

std::vector<float> run(int dist, int threads) {
    const size_t n = 70001;  // several chunks per thread and an odd tail
    std::vector<float> buf(n);
    for (size_t i = 0; i < n; ++i) buf[i] = (float)((int)(i % 201) - 100) * 0.01f;
    et::AdamWindow w;
    w.queries = {2, 1, 3};
    w.seeds = {11, 12, 13, 0xDEADBEEFCAFEF00DULL, 15, 16};
    w.coefs = {0.5f, -0.25f, 1.5f, -0.75f, 0.125f, 2.0f};
    w.m_weights = {0.5f, 0.3f, 0.2f};
    w.v_weights = {0.4f, 0.35f, 0.25f};
    w.decay = 0.999f; w.lr = 1e-2f; w.delta = 1e-8f;
    w.has_restore = w.has_next = true;
    w.restore_seed = 5; w.restore_scale = 1e-3f;
    w.next_seed = 6; w.next_scale = 2e-3f;
    et::set_num_threads(threads);
    et::adam_window(buf.data(), n, w, dist, 13);
    return buf;
}

}  // namespace

int main(int argc, char **argv) {
    int failures = 0;
    uint64_t hash = 0;
    for (int dist = 0; dist < 2; ++dist) {
        et::set_isa("scalar");
        std::vector<float> ref = run(dist, 1);
        hash = hash * 31 + fnv1a(ref);
        for (const std::string &isa : et::available_isas()) {
            et::set_isa(isa);
            for (int threads : {1, 3}) {
                std::vector<float> got = run(dist, threads);
                bool same = std::memcmp(got.data(), ref.data(), ref.size() * sizeof(float)) == 0;
                std::printf("adam_window: isa %s, dist %d, %d threads: %s\n", isa.c_str(), dist, threads,
                            same ? "scalar bits" : "DIFFERS");
                failures += !same;
            }
        }
    }
    if (argc > 1 && std::strcmp(argv[1], "--print") == 0) std::printf("0x%016" PRIx64 "\n", hash);
    if (hash != EXPECTED) {
        std::printf("adam_window: FAIL hash 0x%016" PRIx64 " differs from the x86-64 bits\n", hash);
        ++failures;
    } else {
        std::printf("adam_window: scalar bits equal the x86-64 golden hash\n");
    }
    return failures ? 1 : 0;
}
