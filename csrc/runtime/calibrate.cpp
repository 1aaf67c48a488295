#include "calibrate.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <tuple>

#include "core.h"
#include "error.h"

namespace et::rt {

namespace {
// calibrate.py
constexpr double CONFIDENCE = 0.25, LR_LOW = 1e-7, LR_HIGH = 1.0, FALLBACK_FRACTION = 0.04, ROUNDING = 1.0 / 8388608.0;  // 2^-23
// guard.py
constexpr double ALPHA = 0.1, SPIKE = 5.0, SIGMAS = 4.0, RELATIVE = 0.02;
constexpr uint64_t PATIENCE = 10, FAR_STEPS = 4;
const double EMA_SD = std::sqrt(ALPHA / (2 - ALPHA));  // the EMA's standard deviation in those of one loss

// Python's x ** 2 calls libm pow (never folded to x*x, which can differ in the last bit)
double square(double x) {
    static volatile double two = 2.0;
    return std::pow(x, two);
}

double clip(double x, double low, double high) { return std::min(std::max(x, low), high); }

double mean(const std::vector<double> &v) { return np_sum(v.data(), v.size()) / (double)v.size(); }

// np.std(v, ddof)
double stdev(const std::vector<double> &v, size_t ddof = 0) {
    const double m = mean(v);
    std::vector<double> d(v.size());
    for (size_t i = 0; i < v.size(); ++i) d[i] = (v[i] - m) * (v[i] - m);
    return std::sqrt(np_sum(d.data(), d.size()) / (double)(v.size() - ddof));
}

double rms(const std::vector<double> &v) {
    std::vector<double> sq(v.size());
    for (size_t i = 0; i < v.size(); ++i) sq[i] = v[i] * v[i];
    return std::sqrt(mean(sq));
}

// _bound: (mean zᵀHz + 2 standard errors, the standard error)
std::pair<double, double> bound(const std::vector<double> &curvatures) {
    const double se = curvatures.size() > 1 ? stdev(curvatures, 1) / std::sqrt((double)curvatures.size()) : 0.0;
    return {mean(curvatures) + 2 * se, se};
}

// _measurable: a second difference within a few rounding steps of L says nothing about the curvature
bool measurable(double curvature, double loss) {
    return std::isfinite(curvature) && curvature * square(CAL_PROBE_H) > 64 * ROUNDING * std::max(std::fabs(loss), 1e-30);
}

// uncertain: another round may change lr (the curvature is measurable and the mean's standard error is over
// CONFIDENCE of its bound, or the bound is not positive)
bool uncertain(const std::vector<double> &curvatures, const std::vector<double> &base) {
    if (!measurable(rms(curvatures), mean(base))) return false;
    const auto [b, se] = bound(curvatures);
    return b <= 0 || se > CONFIDENCE * b;
}

// _auto_eps: 2ε·g at least 10^4 rounding steps of L and at most a tenth of |g|/zᵀHz; the geometric middle
double auto_eps(double grad_rms, double curvature, double rounding) {
    const double low = 1e4 * rounding / std::max(grad_rms, 1e-30);
    const double high = curvature > 0 ? 0.1 * grad_rms / curvature : 1e-1;
    const double middle = high > low ? std::sqrt(low * high) : low;
    return clip(middle, 1e-5, 1e-1);
}

Calibration choose(const std::vector<double> &curvatures, const std::vector<double> &grads,
                   const std::vector<double> &base, bool eps_auto, double eps, uint64_t forwards) {
    Calibration c;
    c.loss = mean(base);
    c.loss_noise = stdev(base);
    std::tie(c.curvature, c.curvature_se) = bound(curvatures);
    c.grad_rms = rms(grads);
    const double rounding = ROUNDING * std::max(std::fabs(c.loss), 1e-30);
    if (!measurable(c.curvature, c.loss)) c.curvature = rms(curvatures);  // a saddle: the curvature's scale
    const bool usable = measurable(c.curvature, c.loss);
    double lr = usable ? CAL_C_LR / c.curvature
                       : FALLBACK_FRACTION * std::max(std::fabs(c.loss), 1e-12) / std::max(square(c.grad_rms), 1e-30);
    c.lr = clip(lr, LR_LOW, LR_HIGH);
    c.eps = eps_auto ? auto_eps(c.grad_rms, usable ? c.curvature : 0.0, rounding) : eps;
    c.probes = (uint32_t)curvatures.size();
    c.forwards = forwards;
    c.fallback = !usable;
    return c;
}

// θ saved to an unlinked temporary file (its pages sit in the page cache, outside the process's RSS; a copy
// in memory would double a fully tuned slice); a copy in memory only where no file can be written
class Saved {
public:
    Saved(float *buf, size_t n) : buf_(buf), n_(n), file_(std::tmpfile()) {
        if (file_ && (std::fwrite(buf, sizeof(float), n, file_) != n || std::fflush(file_) != 0)) {
            std::fclose(file_);
            file_ = nullptr;
        }
        if (!file_) copy_.assign(buf, buf + n);
    }
    ~Saved() {
        try { restore(); } catch (...) {}
        if (file_) std::fclose(file_);
    }
    void restore() {
        if (!file_) {
            std::memcpy(buf_, copy_.data(), n_ * sizeof(float));
            return;
        }
        std::rewind(file_);
        if (std::fread(buf_, sizeof(float), n_, file_) != n_) fail(ET_ERR_IO, "lr auto: short read of the saved weights");
    }

private:
    float *buf_;
    size_t n_;
    std::FILE *file_;
    std::vector<float> copy_;
};
}  // namespace

double np_sum(const double *a, size_t n) {
    if (n < 8) {
        double res = -0.0;
        for (size_t i = 0; i < n; ++i) res += a[i];
        return res;
    }
    if (n <= 128) {
        double r[8];
        for (int j = 0; j < 8; ++j) r[j] = a[j];
        size_t i = 8;
        for (; i < n - n % 8; i += 8)
            for (int j = 0; j < 8; ++j) r[j] += a[i + j];
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; ++i) res += a[i];
        return res;
    }
    size_t n2 = n / 2;
    n2 -= n2 % 8;
    return np_sum(a, n2) + np_sum(a + n2, n - n2);
}

std::string fmt_g(double x, int digits) {
    if (std::isnan(x)) return "nan";
    if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*g", digits, x);
    return buf;
}

std::string Calibration::line() const {
    const std::string why = fallback ? "from gradient scale " + fmt_g(grad_rms, 3) + " (zᵀHz " + fmt_g(curvature, 3) + " not usable)"
                                     : "from zᵀHz " + fmt_g(curvature, 3);
    return "lr auto: " + fmt_g(lr, 4) + " " + why + " (" + std::to_string(probes) + " probes), eps " + fmt_g(eps, 3);
}

Calibration calibrate(float *buf, size_t n, const std::vector<std::pair<size_t, size_t>> &spans, uint64_t seed, int noise, const std::vector<std::function<void()>> &binders,
                      const std::function<double()> &loss, bool eps_auto, double eps) {
    std::vector<double> base, curvatures, grads;
    const size_t batches = binders.size();
    const double h2 = square(CAL_PROBE_H);
    auto perturb = [&](uint64_t z, float scale) {
        for (const auto &[start, end] : spans) et::perturb(buf + start, end - start, z, scale, noise, start);
    };
    size_t done = 0;
    {
        Saved saved(buf, n);
        // a first round of probes, then rounds of as many more while uncertain() says so, up to CAL_MAX_PROBES
        while (done == 0 || (done + CAL_PROBES <= CAL_MAX_PROBES && uncertain(curvatures, base))) {
        for (size_t b = 0; b < batches; ++b) {
            binders[b]();
            if (base.size() < batches) base.push_back(loss());  // θ is the same in every round
            for (size_t i = done + b % batches; i < done + CAL_PROBES; i += batches) {
                const uint64_t z = et::derive_seed(seed, CAL_PROBE_STEP, i);
                perturb(z, (float)CAL_PROBE_H);
                const double plus = loss();
                perturb(z, (float)(-2 * CAL_PROBE_H));
                const double minus = loss();
                saved.restore();
                curvatures.push_back((plus + minus - 2 * base[b]) / h2);
                grads.push_back((plus - minus) / (2 * CAL_PROBE_H));
            }
        }
        done += CAL_PROBES;
        }
    }
    return choose(curvatures, grads, base, eps_auto, eps, batches + 2 * done);
}

Guard::Guard(double loss_noise, double loss, GuardRule rule)
    : rule(rule), has_ema(true), has_start(true), ema(loss), deviation(loss_noise * std::sqrt(2 / M_PI)), start(loss) {}

double Guard::spread() const {
    const double sigma = deviation * std::sqrt(M_PI / 2);  // a mean absolute deviation of a normal is 0.8σ
    return std::max(SIGMAS * sigma * EMA_SD, RELATIVE * std::fabs(best));
}

double Guard::threshold() const {
    if (rule != GuardRule::BELOW_HEAD) return spread();
    // the best, the lowest of n EMAs, lies about √(2 ln(αn)) of their standard deviations below the loss
    const double lowest = std::sqrt(2 * std::log(std::max(ALPHA * (double)observed, 1.0)));
    return spread() + lowest * deviation * std::sqrt(M_PI / 2) * EMA_SD;
}

void Guard::fold_robust(double loss) {
    const double bound = spread() / EMA_SD;
    above = loss > best + SPIKE * threshold() / EMA_SD ? above + 1 : 0;
    deviation = (1 - ALPHA) * deviation + ALPHA * std::min(std::fabs(loss - ema), bound);
    ema = (1 - ALPHA) * ema + ALPHA * std::min(loss, ema + bound);
}

bool Guard::observe(uint64_t step, double loss) {
    ++observed;
    if (!has_ema) {
        ema = start = loss;
        has_ema = has_start = true;
    } else if (rule == GuardRule::BELOW_HEAD) {
        fold_robust(loss);
    } else {
        if (std::fabs(loss - ema) <= spread() / EMA_SD)  // within the batches' spread (SIGMAS σ of one loss)
            deviation = (1 - ALPHA) * deviation + ALPHA * std::fabs(loss - ema);
        ema = (1 - ALPHA) * ema + ALPHA * loss;
    }
    if (ema < best) {
        best = ema;
        best_step = step;
        rising = 0;
        return false;
    }
    const double rise = ema - best;
    rising = rise > threshold() ? rising + 1 : 0;
    const bool far = rule == GuardRule::BELOW_HEAD ? above >= FAR_STEPS : rise > SPIKE * threshold() && rising >= 2;
    // the head alone: a convex first-order fit whose rise is its batches' noise (non-finite losses still roll back)
    return (rising >= PATIENCE || far) && rollbacks < GUARD_MAX_ROLLBACKS && rule != GuardRule::HEAD_ALONE;
}

void Guard::rolled_back() {
    ema = best;
    rising = 0;
    above = 0;
    ++rollbacks;
}

bool Guard::worse_than_start() const { return has_ema && has_start && ema > start + threshold(); }

std::string Guard::line(uint64_t done, double lr_before, double lr_after, bool rolled) const {
    const std::string rise = "guard: loss rose from " + fmt_g(best, 4) + " to " + fmt_g(ema, 4) + " over " +
                             std::to_string((int64_t)done - (int64_t)best_step) + " steps; ";
    if (rolled)
        return rise + "rolled back to step " + std::to_string(best_step) + ", lr " + fmt_g(lr_before, 3) + " → " +
               fmt_g(lr_after, 3);
    return rise + "lr " + fmt_g(lr_before, 3) + " → " + fmt_g(lr_after, 3) +
           " (this optimizer cannot roll back: it keeps its state)";
}

std::string Guard::nonfinite_line(uint64_t failed, double lr_before, double lr_after) const {
    return "guard: non-finite loss at step " + std::to_string(failed) + "; rolled back to step " +
           std::to_string(best_step) + ", lr " + fmt_g(lr_before, 3) + " → " + fmt_g(lr_after, 3);
}

}  // namespace et::rt
