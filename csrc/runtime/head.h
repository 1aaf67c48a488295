/* head.h — the exact head of edgetune/zo/exact_head.py: a classifier's last linear layer updated first-order
 * (Adam, float32, numpy's operation order: bit-identical) from the gradient the suffix graph outputs with
 * every forward (graph/head_grad.py), while ZO tunes the rest of the slice (the arena less the head's ranges).
 * The head stays in the arena; the run keeps copies of it (values and Adam state) where the guard may return:
 * before step 0 ("start") and before the best step ("best"). */
#ifndef EDGETUNE_RUNTIME_HEAD_H
#define EDGETUNE_RUNTIME_HEAD_H
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "bundle.h"

namespace et::rt {

using Span = std::pair<size_t, size_t>;  // [start, end) floats of the arena

constexpr uint64_t HEAD_WARM_STEPS = 50;  // loop.WARM_STEPS: under lr auto the head learns alone first
constexpr double HEAD_LR = 3e-3;          // exact_head.DEFAULT_LR["adam"]
constexpr double HEAD_L2 = 0.01;          // options.HEAD_L2: λ/2·‖W‖² joins the weight's loss (not the bias's)

struct HeadState {  // exact_head.HeadState: the head before step `step`
    uint64_t step = 0;
    std::vector<float> values, m, v;  // weight then bias, raveled
    uint64_t updates = 0;
};

class ExactHead {
public:
    // grads: the bound gradient outputs (weight's, then bias's), written by every forward
    ExactHead(float *arena, const Bundle &b, std::vector<std::pair<const float *, size_t>> grads);

    // WithoutHead: the arena ranges of every tensor but the head's, adjacent ones merged (empty: the head alone)
    static std::vector<Span> lower_spans(const Bundle &b);

    void begin(uint64_t t);   // before step t: the head captured (kept as "start" at t == 0), the sums zeroed
    void accumulate();        // after a forward: its gradients added to the step's sums
    void update(double lr);   // the head's Adam step from the mean of the step's gradients
    void mark_best(uint64_t step);  // the guard's best is θ before `step`, the step just taken
    // θ's head and its Adam state back to the kept copy before `step`; false: none was kept
    bool restore(uint64_t step);
    nlohmann::json state() const;
    void load_state(const nlohmann::json &state);

private:
    std::vector<float> values() const;
    void set_values(const std::vector<float> &values);
    HeadState capture(uint64_t t) const;

    std::vector<std::pair<float *, size_t>> views_;  // the head's tensors in the arena
    std::vector<std::pair<const float *, size_t>> grads_;
    size_t n_ = 0;
    std::vector<float> sums_, m_, v_;
    uint64_t updates_ = 0, forwards_ = 0;
    bool has_before_ = false;
    HeadState before_;
    std::map<std::string, HeadState> marks_;  // "best", "start"
};

}  // namespace et::rt
#endif
