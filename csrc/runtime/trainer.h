/* trainer.h — ZO-SGD steps through the core's kernels, exactly as edgetune/zo/zosgd.py takes them with a
 * fixed query count (unchained: chaining only fuses passes, never changes a bit), with the lr/eps schedules
 * of edgetune/zo/schedules.py and the Python tuner's non-finite loss handling. */
#ifndef EDGETUNE_RUNTIME_TRAINER_H
#define EDGETUNE_RUNTIME_TRAINER_H
#include <cstdint>
#include <string>

#include "data.h"
#include "edgetune_runtime.h"
#include "session.h"

namespace et::rt {

// schedules.py's Schedule.__call__, in double as Python evaluates it
double schedule_value(int kind, double base, uint64_t total, uint64_t warmup, uint64_t step, bool spall_eps);

class Trainer {
public:
    Trainer(Engine &engine, const Bundle &bundle, float *arena, size_t count, const Examples &train)
        : engine_(engine), b_(bundle), arena_(arena), count_(count), train_(train) {}

    // checks p (one message naming the field) and latches it
    void configure(const et_train_params &p);
    bool configured() const { return configured_; }
    const et_train_params &params() const { return p_; }
    // one step; false when the run has taken p.steps steps. Throws Error(ET_ERR_NONFINITE_LOSS) with the
    // weights back at the step's clean ones.
    bool step(et_step_record &record);
    uint64_t done() const { return done_; }
    uint64_t forwards() const { return forwards_; }
    void restore(uint64_t done, uint64_t forwards) { done_ = done; forwards_ = forwards; }
    // the trajectory-defining fields of p, as text (checkpoints compare them)
    std::string describe() const;

private:
    void perturb(uint64_t seed, float scale);
    void combine(float decay, const uint64_t *seeds, const float *coefs, uint32_t k);

    Engine &engine_;
    const Bundle &b_;
    float *arena_;
    size_t count_;
    const Examples &train_;
    et_train_params p_{};
    bool configured_ = false;
    uint64_t done_ = 0, forwards_ = 0;
    std::unique_ptr<BatchStream> stream_;
    Batch batch_;
};

}  // namespace et::rt
#endif
