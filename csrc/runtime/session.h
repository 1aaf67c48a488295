/* session.h — the bundle's graphs in ONNX Runtime, set up as edgetune/engine/session.py and runner.py set
 * them up: the same session options, the arena's tensors bound zero-copy to the suffix with IOBinding (the
 * core perturbs the arena in place between runs), the frozen prefix run once per batch. */
#ifndef EDGETUNE_RUNTIME_SESSION_H
#define EDGETUNE_RUNTIME_SESSION_H
#include <memory>
#include <string>
#include <vector>

#include "bundle.h"
#include "data.h"
#include "ort.h"

namespace et::rt {

struct ValueDeleter {
    const OrtApi *api;
    void operator()(OrtValue *v) const { if (v) api->ReleaseValue(v); }
};
using Value = std::unique_ptr<OrtValue, ValueDeleter>;

class Engine {
public:
    // arena: bundle.arena_count floats, owned by the caller, outliving the engine
    Engine(const Ort &ort, const Bundle &bundle, float *arena, int threads);
    ~Engine();
    Engine(const Engine &) = delete;
    Engine &operator=(const Engine &) = delete;

    // Bind `batch` for the training runs; runs the prefix once. The batch must outlive later mean_loss calls.
    void set_batch(const Batch &batch);
    // The bound batch's mean loss at the arena's current weights: sequential double sum of the
    // per-example float32 losses in row order, / rows, as LossEngine.mean_loss.
    float mean_loss();
    // the same in double before the cast: LossEngine.mean_loss's float, what lr auto's probes compute with
    double mean_loss_exact();
    // an exact-head bundle's gradient outputs (head_grad_W, then head_grad_b where the head has a bias), bound to
    // these arrays: every training forward writes them (LossEngine.bind_output); empty for a zo bundle
    std::vector<std::pair<const float *, size_t>> head_grads() const;
    // Evaluation path (plain Run, numpy-style feeds): per-example losses and the logits [rows, classes].
    void evaluate(const Batch &batch, std::vector<float> &losses, std::vector<float> &logits, size_t &classes);

private:
    struct Session;
    OrtSession *open(const std::string &path);
    std::vector<std::string> names(OrtSession *s, bool inputs) const;
    Value tensor(void *data, size_t bytes, const std::vector<int64_t> &shape, ONNXTensorElementDataType type) const;
    // the data feeds (batch inputs, labels, prefix outputs) of `batch` as (name, value), in suffix-input terms
    void feeds(const Batch &batch, std::vector<std::string> &names, std::vector<Value> &values,
               std::vector<std::vector<int32_t>> &narrowed);

    const Ort &ort_;
    const Bundle &b_;
    OrtSessionOptions *options_ = nullptr;
    OrtSession *prefix_ = nullptr, *suffix_ = nullptr;
    OrtIoBinding *binding_ = nullptr;
    std::vector<std::string> prefix_inputs_, suffix_inputs_;
    std::vector<Value> arena_values_;        // views of the arena, bound once
    std::vector<Value> batch_values_;        // the bound batch's (views of its arrays, prefix outputs)
    std::vector<std::vector<int32_t>> narrowed_;  // int32 copies of int64 inputs the graph takes as int32
    std::vector<std::vector<float>> head_grads_;  // the bound gradient outputs' arrays
    std::vector<Value> head_grad_values_;        // views of them, bound once
};

}  // namespace et::rt
#endif
