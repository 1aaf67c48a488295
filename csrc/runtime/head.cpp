#include "head.h"

#include <algorithm>
#include <cmath>

#include "error.h"

namespace et::rt {

using json = nlohmann::json;

namespace {
constexpr double BETA1 = 0.9, BETA2 = 0.999, ADAM_EPS = 1e-8;  // ExactHead's defaults

// Python's float ** int calls libm pow (never folded at compile time, which may round differently)
double power(double base, uint64_t n) {
    static volatile double exponent_scale = 1.0;
    return std::pow(base, (double)n * exponent_scale);
}

json floats(const std::vector<float> &v) {
    json a = json::array();
    for (float x : v) a.push_back((double)x);  // float32 → double → JSON → double → float32 is exact
    return a;
}

std::vector<float> floats_of(const json &a, size_t n) {
    std::vector<float> v;
    for (const json &x : a) v.push_back((float)x.get<double>());
    if (v.size() != n) fail(ET_ERR_STATE, "the checkpoint's head state holds " + std::to_string(v.size()) +
                                              " floats, the head " + std::to_string(n));
    return v;
}

json state_json(const HeadState &s) {
    return {{"step", s.step}, {"values", floats(s.values)}, {"m", floats(s.m)}, {"v", floats(s.v)},
            {"updates", s.updates}};
}
}  // namespace

ExactHead::ExactHead(float *arena, const Bundle &b, std::vector<std::pair<const float *, size_t>> grads)
    : grads_(std::move(grads)) {
    for (int i : {b.head_weight, b.head_bias})
        if (i >= 0) {
            views_.emplace_back(arena + b.tensors[i].offset, (size_t)b.tensors[i].numel);
            n_ += b.tensors[i].numel;
        }
    sums_.assign(n_, 0.0f);
    m_.assign(n_, 0.0f);
    v_.assign(n_, 0.0f);
}

std::vector<Span> ExactHead::lower_spans(const Bundle &b) {
    std::vector<Span> ranges, spans;
    for (size_t i = 0; i < b.tensors.size(); ++i)
        if ((int)i != b.head_weight && (int)i != b.head_bias)
            ranges.emplace_back(b.tensors[i].offset, b.tensors[i].offset + b.tensors[i].numel);
    std::sort(ranges.begin(), ranges.end());
    for (const Span &r : ranges) {
        if (!spans.empty() && spans.back().second == r.first)
            spans.back().second = r.second;
        else
            spans.push_back(r);
    }
    return spans;
}

std::vector<float> ExactHead::values() const {
    std::vector<float> out;
    out.reserve(n_);
    for (const auto &[p, n] : views_) out.insert(out.end(), p, p + n);
    return out;
}

void ExactHead::set_values(const std::vector<float> &values) {
    size_t at = 0;
    for (const auto &[p, n] : views_) {
        std::copy(values.begin() + (ptrdiff_t)at, values.begin() + (ptrdiff_t)(at + n), p);
        at += n;
    }
}

HeadState ExactHead::capture(uint64_t t) const { return HeadState{t, values(), m_, v_, updates_}; }

void ExactHead::begin(uint64_t t) {
    before_ = capture(t);
    has_before_ = true;
    if (t == 0) marks_["start"] = before_;
    std::fill(sums_.begin(), sums_.end(), 0.0f);
    forwards_ = 0;
}

void ExactHead::accumulate() {
    size_t at = 0;
    for (const auto &[g, n] : grads_) {
        for (size_t i = 0; i < n; ++i) sums_[at + i] += g[i];
        at += n;
    }
    ++forwards_;
}

void ExactHead::update(double lr_double) {
    // ExactHead._update, each numpy float32 operation rounded as numpy rounds it (this file compiles without
    // FMA contraction): g = mean + λ·W (the weight's), m = β1·m + (1−β1)·g, v = β2·v + (1−β2)·g·g,
    // θ −= (lr/c1)·m / (√(v/c2) + ε)
    const float lr = (float)lr_double;
    ++updates_;
    const double correction1 = 1.0 - power(BETA1, updates_), correction2 = 1.0 - power(BETA2, updates_);
    const float b1 = (float)BETA1, one_b1 = (float)(1.0 - BETA1), b2 = (float)BETA2, one_b2 = (float)(1.0 - BETA2);
    const float c2 = (float)correction2, eps = (float)ADAM_EPS, step = lr / (float)correction1;
    const float count = (float)forwards_, l2 = (float)HEAD_L2;
    size_t at = 0;
    for (const auto &[w, n] : views_) {
        const bool weight = at == 0;  // views_ holds the weight first: the L2 term is its alone
        for (size_t i = 0; i < n; ++i) {
            const size_t k = at + i;
            float g = sums_[k] / count;
            if (weight && l2 != 0.0f) g += l2 * w[i];
            m_[k] *= b1;
            m_[k] += one_b1 * g;
            v_[k] *= b2;
            v_[k] += one_b2 * g * g;
            const float denominator = std::sqrt(v_[k] / c2) + eps;
            w[i] -= step * m_[k] / denominator;
        }
        at += n;
    }
}

void ExactHead::mark_best(uint64_t step) {
    if (has_before_ && before_.step == step) marks_["best"] = before_;
}

bool ExactHead::restore(uint64_t step) {
    for (const auto &[name, mark] : marks_)
        if (mark.step == step) {
            const HeadState kept = mark;  // a copy: the marks stay as they are
            set_values(kept.values);
            m_ = kept.m;
            v_ = kept.v;
            updates_ = kept.updates;
            return true;
        }
    return false;
}

json ExactHead::state() const {
    json marks = json::object();
    for (const auto &[name, mark] : marks_) marks[name] = state_json(mark);
    return {{"method", "adam"}, {"updates", updates_}, {"m", floats(m_)}, {"v", floats(v_)}, {"marks", marks}};
}

void ExactHead::load_state(const json &st) {
    if (st.value("method", std::string("adam")) != "adam")
        fail(ET_ERR_STATE, "the checkpoint's head was tuned with " + st["method"].get<std::string>() + ", not adam");
    updates_ = st.at("updates").get<uint64_t>();
    m_ = floats_of(st.at("m"), n_);
    v_ = floats_of(st.at("v"), n_);
    marks_.clear();
    for (const auto &[name, mark] : st.at("marks").items())
        marks_[name] = HeadState{mark.at("step").get<uint64_t>(), floats_of(mark.at("values"), n_),
                                 floats_of(mark.at("m"), n_), floats_of(mark.at("v"), n_),
                                 mark.at("updates").get<uint64_t>()};
    has_before_ = false;
}

}  // namespace et::rt
