/* tuner.h — the ask/tell ZO-SGD state machine behind et_tuner (spec: include/edgetune.h). */
#ifndef EDGETUNE_TUNER_H
#define EDGETUNE_TUNER_H
#include <cstddef>
#include <cstdint>
#include <vector>

#include "edgetune.h"

namespace et {

class Tuner {
public:
    explicit Tuner(const et_tuner_params &p);  // throws std::bad_alloc
    ~Tuner();
    Tuner(const Tuner &) = delete;
    Tuner &operator=(const Tuner &) = delete;

    float *arena() { return data_; }
    size_t size() const { return (size_t)p_.n_params; }
    et_status ask(et_probe *probe);
    et_status tell(const et_probe &probe, float loss);
    void set_lr_eps(float lr, float eps) { next_lr_ = lr; next_eps_ = eps; }
    uint64_t steps_done() const { return step_; }
    bool has_last() const { return has_last_; }
    const std::vector<float> &last_grads() const { return last_grads_; }
    float last_loss() const { return last_loss_; }

private:
    enum Phase { PLUS, MINUS };
    uint64_t seed_at(uint32_t i) const;
    void perturb(uint64_t s, float scale);

    et_tuner_params p_;
    float *data_ = nullptr;
    float next_lr_, next_eps_;
    float lr_ = 0, eps_ = 0;      // latched at step start
    uint64_t step_ = 0;           // current (= completed) steps
    uint32_t query_ = 0;
    Phase phase_ = PLUS;
    bool in_step_ = false;        // lr/eps latched for step_
    bool perturbed_ = false;      // arena holds theta + eps*z_query (PLUS) / theta - eps*z (MINUS)
    bool asked_ = false;          // pending probe handed out
    float loss_plus_ = 0;
    double loss_sum_ = 0;
    std::vector<float> grads_;
    std::vector<float> last_grads_;
    float last_loss_ = 0;
    bool has_last_ = false;
};

}  // namespace et
#endif
