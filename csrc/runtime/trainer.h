/* trainer.h — ZO-SGD steps through the core's kernels, exactly as edgetune/zo/zosgd.py takes them with a
 * fixed query count (unchained: chaining only fuses passes, never changes a bit), with the lr/eps schedules
 * of edgetune/zo/schedules.py, lr/eps auto (calibrate.py), and the guard, its rollbacks, non-finite loss
 * recovery and keep-best as edgetune/loop.py's TrainingRun runs them. */
#ifndef EDGETUNE_RUNTIME_TRAINER_H
#define EDGETUNE_RUNTIME_TRAINER_H
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "calibrate.h"
#include "head.h"

#include "data.h"
#include "edgetune_runtime.h"
#include "session.h"

namespace et::rt {

// schedules.py's Schedule.__call__, in double as Python evaluates it
double schedule_value(int kind, double base, uint64_t total, uint64_t warmup, uint64_t step, bool spall_eps);

class Trainer {
public:
    Trainer(Engine &engine, const Bundle &bundle, float *arena, size_t count, const Examples &train);

    // checks p (a full-size struct; one message naming the field) and latches it
    void configure(const et_train_params &p);
    bool configured() const { return configured_; }
    const et_train_params &params() const { return p_; }
    // the next step: calibrates first under lr/eps auto, lets the guard watch it (and roll back), recovers from
    // a non-finite loss as TrainingRun.recover does. false when the run has taken p.steps steps. Throws
    // Error(ET_ERR_NONFINITE_LOSS) with the weights back at the step's clean ones when it cannot recover.
    bool step(et_step_record &record);
    // the end of a finished run: keep-best as loop._end, once. eval_loss: the evaluation split's mean loss at the
    // current weights, NaN without evaluation examples (then the guard's smoothed training loss decides)
    void finish(const std::function<double()> &eval_loss);
    // the evaluation loss before step 0 (fit's `before`): with it, keep-best compares evaluation losses
    void set_before(double loss) { before_ = loss; }
    bool has_before() const { return !std::isnan(before_); }
    uint64_t done() const { return done_; }
    uint64_t forwards() const { return forwards_; }
    // a checkpoint's run state (step, forwards, calibration, guard, lr scale, the undo terms, kept best)
    nlohmann::json state() const;
    void load_state(const nlohmann::json &state);
    // the trajectory-defining fields of p, as text (checkpoints compare them)
    std::string describe() const;
    const std::vector<std::string> &notes() const { return notes_; }
    void summary(et_run_summary &s) const;
    bool exact_head() const { return head_ != nullptr; }

private:
    using Terms = std::vector<std::pair<uint64_t, float>>;  // (seed, c) of θ ← θ + c·z(seed)
    void raw_step(et_step_record &record);
    void head_step(et_step_record &record);  // a step of the head alone: one forward at θ
    double head_lr(uint64_t t) const;
    // --head exact under lr auto: the head learns alone until step HEAD_WARM_STEPS, then the layers below calibrate
    bool warming() const { return head_ && lower_ && (p_.lr_auto || p_.eps_auto) && !calibrated_; }
    bool zeroth_order() const { return !head_ || lower_; }
    // TrainingRun.guard_rule: under the exact head the guard allows for a fitted head's noise; with nothing tuned
    // by ZO it rolls back for a non-finite loss only
    GuardRule guard_rule() const {
        return !head_ ? GuardRule::ZO : lower_ ? GuardRule::BELOW_HEAD : GuardRule::HEAD_ALONE;
    }
    void calibrate_now();
    [[noreturn]] void nonfinite(uint64_t t, const std::string &what);
    void perturb(uint64_t seed, float scale);
    void combine(float decay, const uint64_t *seeds, const float *coefs, uint32_t k);
    double lr_at(uint64_t t) const;
    double eps_at(uint64_t t) const;
    // TrainingRun.resolved: the calibrated lr, 1.0 until measured (the exact head's warm-up takes no ZO step)
    double base_lr() const { return p_.lr_auto ? (calibrated_ ? cal_.lr : 1.0) : p_.lr; }
    double base_eps() const { return p_.eps_auto ? (calibrated_ ? cal_.eps : 1.0) : p_.eps; }
    bool can_roll_back() const { return p_.guard && p_.weight_decay == 0; }
    void bind(const BatchStream &stream, uint64_t t, Batch &batch);
    Calibration probe(uint64_t seed, bool eps_auto, double eps);
    void roll_back(uint64_t to_step);
    void replay_undo(const Terms &chunk, float eps);
    void guard_acts();
    bool recover();
    std::string shrink();
    void say(const std::string &line);

    Engine &engine_;
    const Bundle &b_;
    float *arena_;
    size_t count_;
    const Examples &train_;
    et_train_params p_{};
    bool configured_ = false;
    uint64_t done_ = 0, forwards_ = 0, start_ = 0;
    std::unique_ptr<BatchStream> stream_;
    Batch batch_;
    bool calibrated_ = false;
    Calibration cal_;
    uint64_t probe_forwards_ = 0;
    Guard guard_;
    double scale_ = 1.0;  // StepSize.scale: the guard halves it
    double last_loss_ = 0;  // the last step's loss in double (np.mean of its 2q losses): what the guard sees
    std::deque<std::pair<uint64_t, Terms>> applied_;  // the steps θ holds since the run began, oldest first
    int64_t kept_best_ = -1;
    double before_ = NAN;
    std::vector<std::string> notes_;
    std::unique_ptr<ExactHead> head_;  // an exact-head bundle's head; null: the whole slice by ZO
    std::vector<Span> spans_;          // the arena ranges ZO perturbs: all of it, or all but the head's
    bool lower_ = true;                // ZO has something to tune (the exact head with layers below it)
};

}  // namespace et::rt
#endif
