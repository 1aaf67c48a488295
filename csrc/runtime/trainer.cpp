#include "trainer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "core.h"
#include "error.h"

namespace et::rt {

namespace {
// Spall's gains (schedules.py): a_k = a/(k+1+A)^0.602, c_k = c/(k+1)^0.101, A = 10 % of the steps
constexpr double SPALL_ALPHA = 0.602, SPALL_GAMMA = 0.101, SPALL_A = 0.1;

std::string fmt(float v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.9g", (double)v);
    return buf;
}
}  // namespace

double schedule_value(int kind, double base, uint64_t total, uint64_t warmup, uint64_t step, bool spall_eps) {
    if (spall_eps) return base / std::pow((double)(step + 1), SPALL_GAMMA);
    if (warmup && step < warmup) return base * (double)(step + 1) / (double)warmup;
    if (kind == ET_SCHEDULE_CONSTANT) return base;
    if (kind == ET_SCHEDULE_SPALL) {
        const double stability = SPALL_A * (double)total;
        return base * std::pow((1 + stability) / ((double)(step + 1) + stability), SPALL_ALPHA);
    }
    // linear to 0 at `total`
    const double span = (double)std::max<int64_t>((int64_t)total - (int64_t)warmup, 1);
    const double progress = std::min(std::max<double>((double)((int64_t)step - (int64_t)warmup), 0.0) / span, 1.0);
    return 0.0 + (base - 0.0) * (1.0 - progress);
}

void Trainer::configure(const et_train_params &p) {
    auto bad = [](const std::string &field, const std::string &why) { fail(ET_ERR_INVALID_ARGUMENT, "train params: " + field + " " + why); };
    if (p.struct_size != sizeof(et_train_params)) bad("struct_size", "is not sizeof(et_train_params)");
    if (p.steps == 0) bad("steps", "must be at least 1");
    if (p.batch_size == 0) bad("batch_size", "must be at least 1");
    if (p.queries == 0 || p.queries > ET_RUNTIME_MAX_QUERIES)
        bad("queries", "must be 1.." + std::to_string(ET_RUNTIME_MAX_QUERIES));
    if (!std::isfinite(p.lr) || p.lr < 0) bad("lr", "must be a finite number >= 0");
    if (!std::isfinite(p.eps) || !(p.eps > 0)) bad("eps", "must be a finite number > 0");
    if (!std::isfinite(p.weight_decay) || p.weight_decay < 0) bad("weight_decay", "must be a finite number >= 0");
    if (p.schedule != ET_SCHEDULE_CONSTANT && p.schedule != ET_SCHEDULE_LINEAR && p.schedule != ET_SCHEDULE_SPALL)
        bad("schedule", "is not an et_schedule");
    if (p.noise != ET_NOISE_RADEMACHER && p.noise != ET_NOISE_GAUSSIAN) bad("noise", "is not an et_noise");
    if (train_.rows.empty()) fail(ET_ERR_DATA, "no training examples (et_runtime_add_example / et_runtime_load_jsonl)");
    if (b_.static_batch && p.batch_size != (uint32_t)b_.static_batch)
        bad("batch_size", std::to_string(p.batch_size) + " differs from the bundle's static batch size " +
                              std::to_string(b_.static_batch));
    if (configured_ && done_ > 0) {
        et_train_params old = p_;
        const bool same = old.seed == p.seed && old.batch_size == p.batch_size && old.queries == p.queries &&
                          old.lr == p.lr && old.eps == p.eps && old.weight_decay == p.weight_decay &&
                          old.schedule == p.schedule && old.warmup == p.warmup && old.noise == p.noise &&
                          old.steps == p.steps;
        if (!same) fail(ET_ERR_STATE, "train params differ from the run's after step " + std::to_string(done_) +
                                          " (" + describe() + "); free the runtime or resume a checkpoint to start another run");
    }
    // BatchStream caps the batch to the data as the Python one does (every step then uses all examples)
    const uint64_t batch = std::min<uint64_t>(p.batch_size, train_.rows.size());
    if (!stream_ || !configured_ || stream_->batch_size() != batch || p.seed != p_.seed)
        stream_.reset(new BatchStream(train_.rows.size(), batch, p.seed));
    p_ = p;
    configured_ = true;
}

std::string Trainer::describe() const {
    std::ostringstream s;
    s << "seed " << p_.seed << ", batch_size " << p_.batch_size << ", queries " << p_.queries << ", lr " << p_.lr
      << ", eps " << p_.eps << ", weight_decay " << p_.weight_decay << ", schedule " << p_.schedule
      << ", warmup " << p_.warmup << ", noise " << p_.noise << ", steps " << p_.steps;
    return s.str();
}

void Trainer::perturb(uint64_t seed, float scale) { et::perturb(arena_, count_, seed, scale, p_.noise, 0); }

void Trainer::combine(float decay, const uint64_t *seeds, const float *coefs, uint32_t k) {
    et::combine(arena_, count_, decay, seeds, coefs, k, p_.noise, 0);
}

bool Trainer::step(et_step_record &record) {
    if (!configured_) fail(ET_ERR_STATE, "no train params set (et_runtime_set_train_params or et_runtime_train)");
    if (done_ >= p_.steps) return false;
    const uint64_t t = done_;
    engine_.set_batch((BatchBuilder(b_).build(train_, stream_->indices(t), batch_), batch_));
    const float lr = (float)schedule_value(p_.schedule, p_.lr, p_.steps, p_.warmup, t, false);
    // eps decays only under spall (Spall's c_k); linear and constant schedules keep it (ZOBase.settings)
    const float eps = (float)schedule_value(ET_SCHEDULE_CONSTANT, p_.eps, p_.steps, 0, t, p_.schedule == ET_SCHEDULE_SPALL);
    const float wd = (float)p_.weight_decay;
    const uint32_t q = p_.queries;
    uint64_t seeds[ET_RUNTIME_MAX_QUERIES];
    float grads[ET_RUNTIME_MAX_QUERIES];
    double loss_sum = 0.0;
    seeds[0] = et::derive_seed(p_.seed, t, 0);
    perturb(seeds[0], eps);
    for (uint32_t i = 0; i < q; ++i) {
        const float plus = engine_.mean_loss();
        perturb(seeds[i], -2.0f * eps);
        const float minus = engine_.mean_loss();
        forwards_ += 2;
        if (!std::isfinite(plus) || !std::isfinite(minus)) {
            perturb(seeds[i], eps);  // back to θ before stopping, as ZOSGD.step does
            std::string rows;
            std::vector<uint64_t> sorted = batch_.indices;
            std::sort(sorted.begin(), sorted.end());
            sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
            for (uint64_t r : sorted) rows += (rows.empty() ? "" : ", ") + train_.where[r];
            fail(ET_ERR_NONFINITE_LOSS, "non-finite loss at step " + std::to_string(t) + " (L+=" + fmt(plus) +
                                            ", L-=" + fmt(minus) + ") on examples " + rows);
        }
        grads[i] = (plus - minus) / (2.0f * eps);
        loss_sum += (double)plus;
        loss_sum += (double)minus;
        // zosgd.fused_update with divisor q: restore θ and apply -(lr/q)·g·z in one pass, with the next
        // query's perturbation folded in; the last pass also applies the weight decay
        const bool last = i + 1 == q;
        const float decay = last ? 1.0f - lr * wd : 1.0f;
        const float c = (last ? decay * eps : eps) - (lr / (float)q) * grads[i];
        if (!last) {
            seeds[i + 1] = et::derive_seed(p_.seed, t, i + 1);
            const uint64_t s2[2] = {seeds[i], seeds[i + 1]};
            const float c2[2] = {c, eps};
            combine(decay, s2, c2, 2);
        } else {
            combine(decay, &seeds[i], &c, 1);
        }
    }
    done_ = t + 1;
    record = et_step_record{};
    record.struct_size = sizeof(et_step_record);
    record.step = t;
    record.loss = (float)(loss_sum / (double)(2 * q));
    record.lr = lr;
    record.eps = eps;
    record.queries = q;
    for (uint32_t i = 0; i < q; ++i) {
        record.grads[i] = grads[i];
        record.seeds[i] = seeds[i];
    }
    record.forwards = forwards_;
    return true;
}

}  // namespace et::rt
