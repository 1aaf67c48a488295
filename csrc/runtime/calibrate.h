/* calibrate.h — `lr auto` / `eps auto` and the guard, ported from edgetune/zo/calibrate.py and
 * edgetune/zo/guard.py with their arithmetic (double, numpy's summation order), so that the C runtime and
 * `edgetune tune --bundle` calibrate to the same lr, watch the same losses and roll back at the same steps. */
#ifndef EDGETUNE_RUNTIME_CALIBRATE_H
#define EDGETUNE_RUNTIME_CALIBRATE_H
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace et::rt {

// calibrate.py's constants
constexpr double CAL_C_LR = 0.05;
constexpr uint32_t CAL_PROBES = 8, CAL_MAX_PROBES = 32, CAL_BATCHES = 4;  // a round of probes, the most, batches
constexpr double CAL_PROBE_H = 3e-3;
constexpr uint64_t CAL_PROBE_STEP = 1ull << 32;  // the probes' seeds: derive_seed(seed, 2^32, i)

// numpy's np.add.reduce over float64 (pairwise, 8-way unrolled): np.mean / np.std reproduced bit for bit
double np_sum(const double *a, size_t n);

struct Calibration {  // calibrate.py's Calibration (summary "calibration")
    double lr = 0, eps = 0;
    double curvature = 0;  // the one lr is from: mean zᵀHz + 2 standard errors (RMS zᵀHz at a saddle)
    double curvature_se = 0, loss = 0, loss_noise = 0, grad_rms = 0;
    uint32_t probes = 0;
    uint64_t forwards = 0;
    bool fallback = false;
    std::string line() const;  // "lr auto: ... (8 probes), eps ..."
};

// Probes θ = buf (left bit for bit as it was: saved to an unlinked temporary file, restored after each probe).
// binders[b]() binds calibration batch b; loss() is the bound batch's mean loss in double at the current θ.
// eps_auto: choose ε too, else `eps` is reported as given. spans: the [start, end) ranges of buf the steps
// perturb (the exact head's are not among them: its curvature must not set the lower layers' lr), each with
// the noise of its global offsets.
Calibration calibrate(float *buf, size_t n, const std::vector<std::pair<size_t, size_t>> &spans, uint64_t seed, int noise, const std::vector<std::function<void()>> &binders,
                      const std::function<double()> &loss, bool eps_auto, double eps);

// guard.py's Guard: an EMA of the step losses against the best EMA; observe() says when to roll back
constexpr uint32_t GUARD_MAX_ROLLBACKS = 8;
constexpr double GUARD_SHRINK = 0.5;

// guard.py's rules, by what tunes the slice: ZO all of it; ZO below the exact head (a rise test robust to a
// fitted head's heavy-tailed losses); the exact head alone (no rollback for a rise, only for a non-finite loss)
enum class GuardRule { ZO, BELOW_HEAD, HEAD_ALONE };

struct Guard {
    GuardRule rule = GuardRule::ZO;  // the run's (a checkpoint's state does not hold it)
    bool has_ema = false, has_start = false;
    double ema = 0, deviation = 0, best = INFINITY, start = 0;
    uint64_t best_step = 0, rising = 0, rollbacks = 0;
    uint64_t observed = 0, above = 0;  // BELOW_HEAD: the steps folded in; losses in a row far above the best

    explicit Guard(GuardRule rule = GuardRule::ZO) : rule(rule) {}
    // seeded by the calibration: its spread sets the first threshold, its mean loss the EMA and the start (one
    // batch's loss would: a lucky first batch below the mean reads a falling mean loss as a rise)
    Guard(double loss_noise, double loss, GuardRule rule);
    double spread() const;     // SIGMAS σ of the EMA, at least RELATIVE of the best
    double threshold() const;  // the spread; under BELOW_HEAD raised by where the lowest of n EMAs lies
    bool observe(uint64_t step, double loss);  // true: roll back now
    void rolled_back();
    bool worse_than_start() const;
    void fold_robust(double loss);  // BELOW_HEAD's Huber EMA and deviation
    std::string line(uint64_t done, double lr_before, double lr_after, bool rolled) const;
    std::string nonfinite_line(uint64_t failed, double lr_before, double lr_after) const;
};

// Python's f"{x:.{digits}g}"
std::string fmt_g(double x, int digits);

}  // namespace et::rt
#endif
