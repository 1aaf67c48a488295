/* core.h — internal C++ interface of the core (used by the C API and the Python bindings).
 * Kernels here are multi-threaded on the global pool; results never depend on the thread
 * count because each value is a pure function of (seed, global index). */
#ifndef EDGETUNE_CORE_H
#define EDGETUNE_CORE_H
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace et {

enum Dist { GAUSSIAN = 0, RADEMACHER = 1 };

uint64_t derive_seed(uint64_t run_seed, uint64_t step, uint64_t query);
// out[0..n) = the example order of `epoch` (edgetune.h et_epoch_permutation specifies it)
void epoch_permutation(uint64_t seed, uint64_t epoch, uint64_t n, uint64_t *out);
void noise_fill(uint64_t seed, uint64_t offset, size_t count, int dist, float *out);
void perturb(float *buf, size_t n, uint64_t seed, float scale, int dist, uint64_t offset);
void combine(float *buf, size_t n, float decay, const uint64_t *seeds, const float *coefs, size_t k,
             int dist, uint64_t offset);

// One ZO-Adam update with moments rebuilt from a window of (seed, g) pairs; fields as in kernels.h.
struct AdamWindow {
    std::vector<uint64_t> seeds;     // each step's queries in turn, steps in the order of the weights
    std::vector<float> coefs;        // g / q for each seed
    std::vector<float> m_weights;    // per step, bias correction folded in
    std::vector<float> v_weights;
    std::vector<uint32_t> queries;   // per step
    float decay = 1.0f, lr = 0.0f, delta = 1e-8f;
    bool has_restore = false, has_next = false;
    uint64_t restore_seed = 0, next_seed = 0;
    float restore_scale = 0.0f, next_scale = 0.0f;
};
void adam_window(float *buf, size_t n, const AdamWindow &w, int dist, uint64_t offset);
// dst[p*stride + i] = src[i] + scales[p]*z(seeds[p], offset + i), p < k: perturbed copies, src untouched.
void perturb_copies(const float *src, size_t n, float *dst, size_t stride, const uint64_t *seeds,
                    const float *scales, size_t k, int dist, uint64_t offset);

void set_num_threads(int n);   // n <= 0: hardware threads
int get_num_threads();

const char *simd_level();                 // active ISA
std::vector<std::string> available_isas();  // compiled and supported by this CPU, scalar first
bool set_isa(const std::string &name);    // "auto" restores the best; false if unavailable

}  // namespace et
#endif
