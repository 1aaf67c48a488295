#include "trainer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "core.h"
#include "edgetune_runtime.h"
#include "error.h"

namespace et::rt {

using json = nlohmann::json;

namespace {
constexpr size_t UNDO_CHUNK = 65535;  // trajectory.MAX_QUERIES: the most undo terms one rollback record holds
constexpr uint64_t RECALIBRATE_STEP = (1ull << 32) + 1;  // loop._shrink's probes: derive_seed(seed, 2^32 + 1, k)
constexpr uint64_t CAL_STREAM_INDEX = 1ull << 16;  // the calibration batches' stream: derive_seed(seed, 2^32, 2^16)
constexpr double END_TOLERANCE = 5e-3;  // loop.END_TOLERANCE: an evaluation loss within 0.5 % of the start is not worse

// Spall's gains (schedules.py): a_k = a/(k+1+A)^0.602, c_k = c/(k+1)^0.101, A = 10 % of the steps
constexpr double SPALL_ALPHA = 0.602, SPALL_GAMMA = 0.101, SPALL_A = 0.1;

std::string fmt(float v) {  // as numpy prints a float32 (nan unsigned)
    if (std::isnan(v)) return "nan";
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

Trainer::Trainer(Engine &engine, const Bundle &bundle, float *arena, size_t count, const Examples &train)
    : engine_(engine), b_(bundle), arena_(arena), count_(count), train_(train) {
    if (bundle.exact_head) {  // TrainingRun._exact_head: ZO over the arena less the head, the head first-order
        head_.reset(new ExactHead(arena, bundle, engine.head_grads()));
        spans_ = ExactHead::lower_spans(bundle);
        lower_ = !spans_.empty();
    } else {
        spans_ = {{0, count}};
    }
}

void Trainer::configure(const et_train_params &p) {
    auto bad = [](const std::string &field, const std::string &why) { fail(ET_ERR_INVALID_ARGUMENT, "train params: " + field + " " + why); };
    if (p.struct_size != sizeof(et_train_params)) bad("struct_size", "is not sizeof(et_train_params)");
    if (p.steps == 0) bad("steps", "must be at least 1");
    if (p.batch_size == 0) bad("batch_size", "must be at least 1");
    if (p.queries == 0 || p.queries > ET_RUNTIME_MAX_QUERIES)
        bad("queries", "must be 1.." + std::to_string(ET_RUNTIME_MAX_QUERIES));
    if (!p.lr_auto && (!std::isfinite(p.lr) || p.lr < 0)) bad("lr", "must be a finite number >= 0 (or lr_auto 1)");
    if (!p.eps_auto && (!std::isfinite(p.eps) || !(p.eps > 0))) bad("eps", "must be a finite number > 0 (or eps_auto 1)");
    if ((p.lr_auto != 0 && p.lr_auto != 1) || (p.eps_auto != 0 && p.eps_auto != 1) || (p.guard != 0 && p.guard != 1))
        bad("lr_auto/eps_auto/guard", "must be 0 or 1");
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
                          old.steps == p.steps && old.lr_auto == p.lr_auto && old.eps_auto == p.eps_auto &&
                          old.guard == p.guard;
        if (!same) fail(ET_ERR_STATE, "train params differ from the run's after step " + std::to_string(done_) +
                                          " (" + describe() + "); free the runtime or resume a checkpoint to start another run");
    }
    // BatchStream caps the batch to the data as the Python one does (every step then uses all examples)
    const uint64_t batch = std::min<uint64_t>(p.batch_size, train_.rows.size());
    if (!stream_ || !configured_ || stream_->batch_size() != batch || p.seed != p_.seed)
        stream_.reset(new BatchStream(train_.rows.size(), batch, p.seed));
    if (!configured_ || done_ == 0) {  // a new run: measured and watched afresh
        guard_ = Guard(guard_rule());
        calibrated_ = false;
        start_ = done_;
    }
    p_ = p;
    configured_ = true;
}

std::string Trainer::describe() const {
    std::ostringstream s;
    s << "seed " << p_.seed << ", batch_size " << p_.batch_size << ", queries " << p_.queries << ", lr " << p_.lr
      << ", eps " << p_.eps << ", weight_decay " << p_.weight_decay << ", schedule " << p_.schedule
      << ", warmup " << p_.warmup << ", noise " << p_.noise << ", steps " << p_.steps << ", lr_auto " << p_.lr_auto
      << ", eps_auto " << p_.eps_auto << ", guard " << p_.guard;
    return s.str();
}

// over the ZO spans, each with the noise of its global arena offsets (ZOBase._perturb / _combine)
void Trainer::perturb(uint64_t seed, float scale) {
    for (const auto &[start, end] : spans_) et::perturb(arena_ + start, end - start, seed, scale, p_.noise, start);
}

void Trainer::combine(float decay, const uint64_t *seeds, const float *coefs, uint32_t k) {
    for (const auto &[start, end] : spans_)
        et::combine(arena_ + start, end - start, decay, seeds, coefs, k, p_.noise, start);
}

double Trainer::head_lr(uint64_t) const {
    // the head's own constant lr; with nothing below it, the run's step size (the guard's scale acts on it)
    return lower_ ? HEAD_LR : HEAD_LR * scale_;
}

void Trainer::nonfinite(uint64_t t, const std::string &what) {
    std::string rows;
    std::vector<uint64_t> sorted = batch_.indices;
    std::sort(sorted.begin(), sorted.end());
    sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
    for (uint64_t r : sorted) rows += (rows.empty() ? "" : ", ") + train_.where[r];
    fail(ET_ERR_NONFINITE_LOSS, "non-finite loss at step " + std::to_string(t) + " (" + what + ") on examples " + rows);
}

// ExactHead.step with no ZO part (the head alone, or the warm-up): one forward at θ, then the head's update
void Trainer::head_step(et_step_record &record) {
    const uint64_t t = done_;
    bind(*stream_, t, batch_);
    head_->begin(t);
    const double loss = engine_.mean_loss_exact();
    head_->accumulate();
    forwards_ += 1;
    if (!std::isfinite(loss)) nonfinite(t, fmt_g(loss, 17));  // θ as found: the guard may roll back, go on
    const double lr = head_lr(t);
    head_->update(lr);
    done_ = t + 1;
    last_loss_ = loss;
    if (can_roll_back()) applied_.emplace_back(t, Terms());  // nothing of ZO to undo; the head has its copies
    record = et_step_record{};
    record.struct_size = sizeof(et_step_record);
    record.step = t;
    record.loss = (float)loss;
    record.lr = (float)lr;
    record.eps = 0.0f;
    record.queries = 0;
    record.forwards = forwards_;
}

void Trainer::raw_step(et_step_record &record) {
    const uint64_t t = done_;
    if (head_ && (!lower_ || (warming() && t < HEAD_WARM_STEPS))) return head_step(record);
    bind(*stream_, t, batch_);
    if (head_) head_->begin(t);
    const float lr = (float)lr_at(t);
    const float eps = (float)eps_at(t);
    const float wd = (float)p_.weight_decay;
    const uint32_t q = p_.queries;
    uint64_t seeds[ET_RUNTIME_MAX_QUERIES];
    float grads[ET_RUNTIME_MAX_QUERIES];
    double losses[2 * ET_RUNTIME_MAX_QUERIES];
    seeds[0] = et::derive_seed(p_.seed, t, 0);
    perturb(seeds[0], eps);
    for (uint32_t i = 0; i < q; ++i) {
        const float plus = engine_.mean_loss();
        if (head_) head_->accumulate();  // the mean of the ± forwards' head gradients: θ's up to O(ε²)
        perturb(seeds[i], -2.0f * eps);
        const float minus = engine_.mean_loss();
        if (head_) head_->accumulate();
        forwards_ += 2;
        if (!std::isfinite(plus) || !std::isfinite(minus)) {
            // back to θ_t before stopping, as ZOSGD._restore_after_failure: the +εz_i pass, with the share of the
            // update the earlier queries' fused passes applied, −(lr/q)·g_j, taken back in the same pass
            if (i == 0) {
                perturb(seeds[0], eps);
            } else {
                float back[ET_RUNTIME_MAX_QUERIES];
                for (uint32_t j = 0; j < i; ++j) back[j] = (lr / (float)q) * grads[j];
                back[i] = eps;
                combine(1.0f, seeds, back, i + 1);
            }
            nonfinite(t, "L+=" + fmt(plus) + ", L-=" + fmt(minus));
        }
        grads[i] = (plus - minus) / (2.0f * eps);
        losses[2 * i] = (double)plus;
        losses[2 * i + 1] = (double)minus;
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
    if (head_) head_->update(head_lr(t));  // from the same θ_t: the ZO step left the head as it was
    done_ = t + 1;
    // the record's loss as ZOSGD.step's float(np.mean(losses)): the guard watches it in double
    last_loss_ = np_sum(losses, 2 * q) / (double)(2 * q);
    if (can_roll_back()) {  // guard.update_terms: θ ← θ + c·z with c = −(lr/q)·g, what a rollback undoes
        Terms terms;
        const float per = lr / (float)q;
        for (uint32_t i = 0; i < q; ++i) terms.emplace_back(seeds[i], -(per * grads[i]));
        applied_.emplace_back(t, std::move(terms));
    }
    record = et_step_record{};
    record.struct_size = sizeof(et_step_record);
    record.step = t;
    record.loss = (float)last_loss_;
    record.lr = lr;
    record.eps = eps;
    record.queries = q;
    for (uint32_t i = 0; i < q; ++i) {
        record.grads[i] = grads[i];
        record.seeds[i] = seeds[i];
    }
    record.forwards = forwards_;
}


double Trainer::lr_at(uint64_t t) const {  // StepSize: the schedule × the guard's scale
    if (head_ && !lower_) return head_lr(t);  // the head alone: its lr is the run's step size
    return schedule_value(p_.schedule, base_lr(), p_.steps, p_.warmup, t, false) * scale_;
}

double Trainer::eps_at(uint64_t t) const {  // eps decays only under spall (Spall's c_k, ZOBase.settings)
    return schedule_value(ET_SCHEDULE_CONSTANT, base_eps(), p_.steps, 0, t, p_.schedule == ET_SCHEDULE_SPALL);
}

void Trainer::bind(const BatchStream &stream, uint64_t t, Batch &batch) {
    engine_.set_batch((BatchBuilder(b_).build(train_, const_cast<BatchStream &>(stream).indices(t), batch), batch));
}

void Trainer::say(const std::string &line) {
    notes_.push_back(line);
    if (p_.note) p_.note(line.c_str(), p_.note_user);
}

// TrainingRun._probe: calibrate.py's probes at θ on the first batches of a stream of their own
Calibration Trainer::probe(uint64_t seed, bool eps_auto, double eps) {
    const uint64_t batch = std::min<uint64_t>(p_.batch_size, train_.rows.size());
    BatchStream stream(train_.rows.size(), batch, et::derive_seed(p_.seed, CAL_PROBE_STEP, CAL_STREAM_INDEX));
    Batch bound;
    std::vector<std::function<void()>> binders;
    for (uint64_t i = 0; i < CAL_BATCHES; ++i) binders.push_back([this, &stream, &bound, i] { bind(stream, i, bound); });
    Calibration c = calibrate(arena_, count_, spans_, seed, p_.noise, binders,
                              [this] { return engine_.mean_loss_exact(); }, eps_auto, eps);
    forwards_ += c.forwards;
    probe_forwards_ += c.forwards;
    return c;
}

bool Trainer::step(et_step_record &record) {
    if (!configured_) fail(ET_ERR_STATE, "no train params set (et_runtime_set_train_params or et_runtime_train)");
    while (done_ < p_.steps) {
        // TrainingRun._calibrate: before the run's first step; under the exact head once the head has warmed up
        // (and never with the head alone: nothing is tuned by ZO)
        if (!calibrated_ && (p_.lr_auto || p_.eps_auto) && zeroth_order() && !(head_ && done_ < HEAD_WARM_STEPS))
            calibrate_now();
        try {
            raw_step(record);
        } catch (const Error &e) {
            if (e.status == ET_ERR_NONFINITE_LOSS && recover()) continue;  // the failed step left no record
            throw;
        }
        if (p_.guard) {  // TrainingRun.watch: where θ before this step is the new best, the head's copy is kept
            const bool act = guard_.observe(record.step, last_loss_);
            if (head_ && guard_.best_step == record.step) head_->mark_best(record.step);
            if (act) guard_acts();
        }
        return true;
    }
    return false;
}

void Trainer::calibrate_now() {
    cal_ = probe(p_.seed, p_.eps_auto != 0, p_.eps);
    calibrated_ = true;
    scale_ = 1.0;  // the optimizer is built again with the measured lr: a fresh step size
    if (p_.guard) guard_ = Guard(cal_.loss_noise, cal_.loss, guard_rule());
    say(cal_.line());
}

void Trainer::replay_undo(const Terms &chunk, float eps) {
    // guard.undo_record replayed as ZOSGD.replay does it: q = the terms (latest first), lr = q, g = c, no decay
    const uint32_t q = (uint32_t)chunk.size();
    const float lr = (float)q, per = lr / (float)q;
    perturb(chunk[0].first, eps);
    for (uint32_t i = 0; i < q; ++i) {
        perturb(chunk[i].first, -2.0f * eps);
        const bool last = i + 1 == q;
        const float decay = 1.0f - lr * 0.0f;
        const float c = (last ? decay * eps : eps) - per * chunk[i].second;
        if (!last) {
            const uint64_t s2[2] = {chunk[i].first, chunk[i + 1].first};
            const float c2[2] = {c, eps};
            combine(decay, s2, c2, 2);
        } else {
            combine(decay, &chunk[i].first, &c, 1);
        }
    }
}

// TrainingRun.roll_back: θ back to before step to_step by the undo of every step since (no copy of the
// weights), in records of at most UNDO_CHUNK terms, each taking a step index as it does in the trajectory
void Trainer::roll_back(uint64_t to_step) {
    std::vector<Terms> undone;
    while (!applied_.empty() && applied_.back().first >= to_step) {
        undone.insert(undone.begin(), std::move(applied_.back().second));
        applied_.pop_back();
    }
    Terms terms;
    for (const Terms &t : undone) terms.insert(terms.end(), t.begin(), t.end());
    const float eps = lower_ ? (float)eps_at(done_) : 0.0f;
    if (head_ && !head_->restore(to_step))  // the head from its kept copy, with its Adam state then
        fail(ET_ERR_STATE, "the exact head's state before step " + std::to_string(to_step) +
                               " was not kept; cannot roll back to it");
    for (size_t end = terms.size(); end > 0; end = end > UNDO_CHUNK ? end - UNDO_CHUNK : 0) {
        Terms chunk(terms.rbegin() + (ptrdiff_t)(terms.size() - end),
                    terms.rbegin() + (ptrdiff_t)(terms.size() - (end > UNDO_CHUNK ? end - UNDO_CHUNK : 0)));
        replay_undo(chunk, eps);
        ++done_;
    }
    if (head_ && terms.empty()) ++done_;  // the head alone: one record that restores it
}

// loop._shrink: lr halved, and under lr auto no larger than the calibration's rule gives where θ returned
std::string Trainer::shrink() {
    scale_ *= GUARD_SHRINK;
    if (!calibrated_ || !p_.lr_auto || !zeroth_order()) return "";
    const Calibration again = probe(et::derive_seed(p_.seed, RECALIBRATE_STEP, guard_.rollbacks), false, base_eps());
    scale_ = std::min(scale_, again.lr / cal_.lr);
    return " (zᵀHz here " + fmt_g(again.curvature, 3) + ", was " + fmt_g(cal_.curvature, 3) + ")";
}

void Trainer::guard_acts() {
    const double lr_before = lr_at(done_);
    const uint64_t done = done_;
    const bool rolled = can_roll_back();
    std::string added;
    if (rolled) {
        roll_back(guard_.best_step);
        added = shrink();
    } else {  // weight decay scales θ: no undo, lr halved only
        scale_ *= GUARD_SHRINK;
    }
    const std::string line = guard_.line(done, lr_before, lr_at(done_), rolled) + added;
    guard_.rolled_back();
    say(line);
}

bool Trainer::recover() {
    if (!p_.guard || !can_roll_back() || guard_.rollbacks >= GUARD_MAX_ROLLBACKS || guard_.best_step >= done_)
        return false;
    const uint64_t failed = done_;
    const double lr_before = lr_at(done_);
    roll_back(guard_.best_step);
    for (size_t i = 0; i < count_; ++i)
        if (!std::isfinite(arena_[i])) return false;  // an update overflowed: undoing inf leaves NaN
    const std::string added = shrink();
    const std::string line = guard_.nonfinite_line(failed, lr_before, lr_at(done_)) + added;
    guard_.rolled_back();
    say(line);
    return true;
}

void Trainer::finish(const std::function<double()> &eval_loss) {
    // loop._end: worse by the evaluation loss (with evaluation data and a `before`), else by the guard's
    // smoothed training loss against the first; θ back to the best state, and to the start when that is worse too
    if (!p_.guard || !can_roll_back() || done_ == start_ || kept_best_ >= 0) return;
    double after = has_before() ? eval_loss() : NAN;
    const bool by_eval = !std::isnan(after);
    const double start = by_eval ? before_ : guard_.start, end = by_eval ? after : guard_.ema;
    const bool worse = by_eval ? end > start + END_TOLERANCE * std::fabs(start) : guard_.worse_than_start();
    uint64_t best = guard_.best_step;
    if (!worse || (!by_eval && !guard_.has_start) || best >= done_) return;
    roll_back(best);
    if (by_eval) {
        after = eval_loss();
        if (after > start + END_TOLERANCE * std::fabs(start) && best > 0) {
            // the best smoothed training loss lags the weights: when its state is worse too, the start it is
            best = 0;
            roll_back(best);
            after = eval_loss();
        }
    }
    kept_best_ = (int64_t)best;
    say("kept best: the run ended worse than it began (loss " + fmt_g(start, 4) + " → " + fmt_g(end, 4) +
        "); kept θ before step " + std::to_string(best) +
        (by_eval ? ", loss " + fmt_g(after, 4) : " (smoothed training loss " + fmt_g(guard_.best, 4) + ")"));
}

json Trainer::state() const {
    json applied = json::array();
    for (const auto &[step, terms] : applied_) {
        json t = json::array();
        for (const auto &[seed, c] : terms) t.push_back({seed, (double)c});
        applied.push_back({step, t});
    }
    const Guard &g = guard_;
    auto maybe = [](bool has, double v) { return has && std::isfinite(v) ? json(v) : json(nullptr); };
    json guard = {{"ema", maybe(g.has_ema, g.ema)}, {"deviation", g.deviation}, {"best", maybe(true, g.best)},
                  {"best_step", g.best_step}, {"rising", g.rising}, {"rollbacks", g.rollbacks},
                  {"start", maybe(g.has_start, g.start)}, {"observed", g.observed}, {"above", g.above}};
    json cal = nullptr;
    if (calibrated_)
        cal = {{"lr", cal_.lr}, {"eps", cal_.eps}, {"curvature", cal_.curvature},
               {"curvature_se", cal_.curvature_se}, {"loss", cal_.loss},
               {"loss_noise", cal_.loss_noise}, {"grad_rms", cal_.grad_rms}, {"probes", cal_.probes},
               {"forwards", cal_.forwards}, {"fallback", cal_.fallback}};
    return {{"step", done_}, {"forwards", forwards_}, {"start", start_}, {"scale", scale_}, {"guard", guard},
            {"calibration", cal}, {"probe_forwards", probe_forwards_}, {"applied", applied},
            {"kept_best", kept_best_ >= 0 ? json(kept_best_) : json(nullptr)}, {"notes", notes_},
            {"before", has_before() ? json(before_) : json(nullptr)},
            {"head", head_ ? head_->state() : json(nullptr)}};
}

void Trainer::load_state(const json &st) {
    // a checkpoint before the guard holds step and forwards only: its run had neither guard nor calibration
    done_ = st.at("step").get<uint64_t>();
    forwards_ = st.value("forwards", (uint64_t)0);
    start_ = done_;
    scale_ = st.value("scale", 1.0);
    probe_forwards_ = st.value("probe_forwards", (uint64_t)0);
    kept_best_ = st.contains("kept_best") && !st["kept_best"].is_null() ? st["kept_best"].get<int64_t>() : -1;
    if (st.contains("notes")) notes_ = st["notes"].get<std::vector<std::string>>();
    before_ = st.contains("before") && !st["before"].is_null() ? st["before"].get<double>() : NAN;
    if (st.contains("guard")) {
        const json &g = st["guard"];
        guard_ = Guard(guard_rule());
        guard_.has_ema = !g["ema"].is_null();
        guard_.ema = guard_.has_ema ? g["ema"].get<double>() : 0.0;
        guard_.deviation = g.at("deviation").get<double>();
        guard_.best = g["best"].is_null() ? INFINITY : g["best"].get<double>();
        guard_.best_step = g.at("best_step").get<uint64_t>();
        guard_.rising = g.at("rising").get<uint64_t>();
        guard_.rollbacks = g.at("rollbacks").get<uint64_t>();
        guard_.has_start = !g["start"].is_null();
        guard_.start = guard_.has_start ? g["start"].get<double>() : 0.0;
        guard_.observed = g.value("observed", (uint64_t)0);
        guard_.above = g.value("above", (uint64_t)0);
    }
    calibrated_ = st.contains("calibration") && !st["calibration"].is_null();
    if (calibrated_) {
        const json &c = st["calibration"];
        cal_.lr = c.at("lr"); cal_.eps = c.at("eps"); cal_.curvature = c.at("curvature"); cal_.loss = c.at("loss");
        cal_.curvature_se = c.value("curvature_se", 0.0);
        cal_.loss_noise = c.at("loss_noise"); cal_.grad_rms = c.at("grad_rms"); cal_.probes = c.at("probes");
        cal_.forwards = c.at("forwards"); cal_.fallback = c.at("fallback");
    } else if (p_.lr_auto || p_.eps_auto) {
        // the exact head calibrates once its warm-up is over, and never with the head alone
        const uint64_t uncalibrated = head_ ? (lower_ ? HEAD_WARM_STEPS : p_.steps) : 0;
        if (done_ > uncalibrated) fail(ET_ERR_STATE, "the checkpoint holds no calibration, but the run has lr/eps auto");
    }
    if (head_ && st.contains("head") && !st["head"].is_null()) head_->load_state(st["head"]);
    else if (head_ && done_ > 0) fail(ET_ERR_STATE, "the checkpoint holds no exact-head state, but the bundle's head is exact");
    applied_.clear();
    if (st.contains("applied"))
        for (const json &a : st["applied"]) {
            Terms terms;
            for (const json &t : a.at(1)) terms.emplace_back(t.at(0).get<uint64_t>(), (float)t.at(1).get<double>());
            applied_.emplace_back(a.at(0).get<uint64_t>(), std::move(terms));
        }
}

void Trainer::summary(et_run_summary &s) const {
    const uint32_t size = s.struct_size;
    s = et_run_summary{};
    s.struct_size = size;
    s.lr = configured_ && (!p_.lr_auto || calibrated_) ? base_lr() : NAN;
    s.eps = configured_ && (!p_.eps_auto || calibrated_) ? base_eps() : NAN;
    s.calibrated = calibrated_;
    if (calibrated_) {
        s.fallback = cal_.fallback;
        s.curvature = cal_.curvature;
        s.calibration_loss = cal_.loss;
        s.loss_noise = cal_.loss_noise;
        s.grad_rms = cal_.grad_rms;
        s.probes = cal_.probes;
    }
    s.calibration_forwards = probe_forwards_;
    s.rollbacks = (uint32_t)guard_.rollbacks;
    s.lr_scale = scale_;
    s.kept_best = kept_best_ >= 0;
    s.best_step = kept_best_ >= 0 ? (uint64_t)kept_best_ : 0;
    s.notes = (uint32_t)notes_.size();
}

}  // namespace et::rt
