#include "tuner.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>

#include "core.h"

namespace et {

Tuner::Tuner(const et_tuner_params &p) : p_(p), next_lr_(p.lr), next_eps_(p.eps) {
    size_t bytes = (((size_t)p.n_params + 15) & ~(size_t)15) * sizeof(float);
    data_ = static_cast<float *>(std::aligned_alloc(64, bytes));
    if (!data_) throw std::bad_alloc();
    std::memset(data_, 0, bytes);
    grads_.resize(p.queries);
}

Tuner::~Tuner() { std::free(data_); }

uint64_t Tuner::seed_at(uint32_t i) const { return derive_seed(p_.seed, step_, i); }

void Tuner::perturb(uint64_t s, float scale) { et::perturb(data_, size(), s, scale, p_.noise, 0); }

et_status Tuner::ask(et_probe *probe) {
    if (p_.max_steps && step_ >= p_.max_steps) return ET_DONE;
    if (!in_step_) {  // step start: latch the schedule
        lr_ = next_lr_;
        eps_ = next_eps_;
        in_step_ = true;
        query_ = 0;
        phase_ = PLUS;
        perturbed_ = false;
        loss_sum_ = 0;
    }
    if (phase_ == PLUS && !perturbed_) {  // step start, or a retry after a non-finite loss
        perturb(seed_at(query_), eps_);
        perturbed_ = true;
    }
    probe->step = step_;
    probe->query = query_;
    probe->sign = phase_ == PLUS ? 1 : -1;
    probe->seed = seed_at(query_);
    asked_ = true;
    return ET_OK;
}

et_status Tuner::tell(const et_probe &probe, float loss) {
    if (!asked_) return ET_ERR_STATE;
    if (probe.step != step_ || probe.query != query_ || probe.sign != (phase_ == PLUS ? 1 : -1))
        return ET_ERR_BAD_PROBE;
    const uint32_t q = p_.queries, i = query_;
    const uint64_t s = seed_at(i);
    asked_ = false;
    if (!std::isfinite(loss)) {  // undo this query's perturbation; next ask re-issues {t, i, +1}
        perturb(s, phase_ == PLUS ? -eps_ : eps_);
        phase_ = PLUS;
        perturbed_ = false;
        return ET_ERR_NONFINITE_LOSS;
    }
    const float eps = eps_, lr = lr_;
    if (phase_ == PLUS) {
        loss_plus_ = loss;
        perturb(s, -2.0f * eps);
        phase_ = MINUS;
        return ET_OK;
    }
    const float Lp = loss_plus_, Lm = loss;
    float g = (Lp - Lm) / (2.0f * eps);
    float decay = (i == q - 1) ? 1.0f - lr * p_.weight_decay : 1.0f;
    float c_cur = decay * eps - (lr / (float)q) * g;
    grads_[i] = g;
    loss_sum_ += (double)Lp + (double)Lm;
    if (i + 1 < q) {
        const uint64_t seeds[2] = {s, seed_at(i + 1)};
        const float coefs[2] = {c_cur, eps};
        et::combine(data_, size(), decay, seeds, coefs, 2, p_.noise, 0);
        query_ = i + 1;
        phase_ = PLUS;
        perturbed_ = true;  // the combine already added +eps*z_{i+1}
        return ET_OK;
    }
    et::combine(data_, size(), decay, &s, &c_cur, 1, p_.noise, 0);
    last_grads_ = grads_;
    last_loss_ = (float)(loss_sum_ / (2.0 * q));
    has_last_ = true;
    ++step_;
    in_step_ = false;
    perturbed_ = false;
    return ET_OK;
}

}  // namespace et
