#include "session.h"

#include <algorithm>

#include "error.h"

namespace et::rt {

namespace {
bool contains(const std::vector<std::string> &v, const std::string &s) {
    return std::find(v.begin(), v.end(), s) != v.end();
}
}  // namespace

Engine::Engine(const Ort &ort, const Bundle &bundle, float *arena, int threads) : ort_(ort), b_(bundle) {
    const OrtApi *api = ort.api;
    ort.check(api->CreateSessionOptions(&options_), "session options");
    // as edgetune/engine/session.py: the env's shared CPU arena, no spinning workers (they steal the cores
    // the perturbation kernel needs between forwards), initializers outside the arena, errors only
    ort.check(api->AddSessionConfigEntry(options_, "session.use_env_allocators", "1"), "session options");
    if (threads > 0) ort.check(api->SetIntraOpNumThreads(options_, threads), "session options");
    ort.check(api->SetInterOpNumThreads(options_, 1), "session options");
    ort.check(api->AddSessionConfigEntry(options_, "session.intra_op.allow_spinning", "0"), "session options");
    ort.check(api->AddSessionConfigEntry(options_, "session.inter_op.allow_spinning", "0"), "session options");
    ort.check(api->AddSessionConfigEntry(options_, "session.use_device_allocator_for_initializers", "1"),
              "session options");
    ort.check(api->SetSessionLogSeverityLevel(options_, 3), "session options");
    ort.check(api->SetSessionGraphOptimizationLevel(options_, ORT_ENABLE_ALL), "session options");
    if (!b_.prefix.empty()) {
        prefix_ = open(b_.prefix);
        prefix_inputs_ = names(prefix_, true);
    }
    suffix_ = open(b_.suffix);
    suffix_inputs_ = names(suffix_, true);
    ort.check(api->CreateIoBinding(suffix_, &binding_), "IOBinding");
    for (const TensorSpec &t : b_.tensors) {
        if (!contains(suffix_inputs_, t.name))
            fail(ET_ERR_BUNDLE, b_.suffix + ": has no input '" + t.name + "' for the arena's tensor of that name");
        arena_values_.push_back(tensor(arena + t.offset, t.numel * sizeof(float), t.shape,
                                       ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT));
        ort.check(api->BindInput(binding_, t.name.c_str(), arena_values_.back().get()), "binding '" + t.name + "'");
    }
    ort.check(api->BindOutputToDevice(binding_, b_.loss_output.c_str(), ort.cpu), "binding the loss output");
    if (b_.exact_head) {  // after the loss: mean_loss reads the first bound output
        const char *names[2] = {"head_grad_W", "head_grad_b"};
        const int tensors[2] = {b_.head_weight, b_.head_bias};
        const std::vector<std::string> outputs = this->names(suffix_, false);
        head_grads_.reserve(2);  // the bound views point into these arrays: no reallocation
        for (int k = 0; k < 2 && tensors[k] >= 0; ++k) {
            const TensorSpec &t = b_.tensors[tensors[k]];
            if (!contains(outputs, names[k]))
                fail(ET_ERR_BUNDLE, b_.suffix + ": has no output '" + names[k] + "' (manifest.json says head exact)");
            head_grads_.emplace_back(t.numel, 0.0f);
            head_grad_values_.push_back(tensor(head_grads_.back().data(), t.numel * sizeof(float), t.shape,
                                               ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT));
            ort.check(api->BindOutput(binding_, names[k], head_grad_values_.back().get()),
                      std::string("binding the output '") + names[k] + "'");
        }
    }
}

std::vector<std::pair<const float *, size_t>> Engine::head_grads() const {
    std::vector<std::pair<const float *, size_t>> out;
    for (const std::vector<float> &g : head_grads_) out.emplace_back(g.data(), g.size());
    return out;
}

Engine::~Engine() {
    const OrtApi *api = ort_.api;
    batch_values_.clear();
    arena_values_.clear();
    head_grad_values_.clear();
    if (binding_) api->ReleaseIoBinding(binding_);
    if (suffix_) api->ReleaseSession(suffix_);
    if (prefix_) api->ReleaseSession(prefix_);
    if (options_) api->ReleaseSessionOptions(options_);
}

OrtSession *Engine::open(const std::string &path) {
    OrtSession *s = nullptr;
    ort_.check(ort_.api->CreateSession(ort_.env, path.c_str(), options_, &s), "ONNX Runtime cannot load " + path);
    return s;
}

std::vector<std::string> Engine::names(OrtSession *s, bool inputs) const {
    const OrtApi *api = ort_.api;
    size_t n = 0;
    ort_.check(inputs ? api->SessionGetInputCount(s, &n) : api->SessionGetOutputCount(s, &n), "graph inputs");
    std::vector<std::string> out;
    for (size_t i = 0; i < n; ++i) {
        char *name = nullptr;
        ort_.check(inputs ? api->SessionGetInputName(s, i, ort_.allocator, &name)
                          : api->SessionGetOutputName(s, i, ort_.allocator, &name), "graph input names");
        out.emplace_back(name);
        ort_.allocator->Free(ort_.allocator, name);
    }
    return out;
}

Value Engine::tensor(void *data, size_t bytes, const std::vector<int64_t> &shape,
                     ONNXTensorElementDataType type) const {
    OrtValue *v = nullptr;
    ort_.check(ort_.api->CreateTensorWithDataAsOrtValue(ort_.cpu, data, bytes, shape.data(), shape.size(), type, &v),
               "creating a tensor");
    return Value(v, ValueDeleter{ort_.api});
}

void Engine::feeds(const Batch &batch, std::vector<std::string> &names, std::vector<Value> &values,
                   std::vector<std::vector<int32_t>> &narrowed) {
    const std::vector<int64_t> shape2 = {(int64_t)batch.rows, (int64_t)batch.length};
    std::vector<std::string> data_names;
    std::vector<Value> data_values;
    narrowed.clear();
    narrowed.reserve(b_.inputs.size() + 1);
    auto add = [&](const InputSpec &spec, const std::vector<int64_t> &array, const std::vector<int64_t> &shape) {
        void *data = const_cast<int64_t *>(array.data());
        size_t bytes = array.size() * sizeof(int64_t);
        auto type = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
        if (spec.int32) {
            narrowed.emplace_back(array.begin(), array.end());
            data = narrowed.back().data();
            bytes = array.size() * sizeof(int32_t);
            type = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
        }
        data_names.push_back(spec.name);
        data_values.push_back(tensor(data, bytes, shape, type));
    };
    for (size_t k = 0; k < b_.inputs.size(); ++k) add(b_.inputs[k], batch.inputs[k], shape2);
    add(b_.labels_input, batch.labels, b_.labels_per_token ? shape2 : std::vector<int64_t>{(int64_t)batch.rows});
    names.clear();
    values.clear();
    if (prefix_) {
        std::vector<const char *> in_names;
        std::vector<const OrtValue *> in_values;
        for (size_t i = 0; i < data_names.size(); ++i)
            if (contains(prefix_inputs_, data_names[i])) {
                in_names.push_back(data_names[i].c_str());
                in_values.push_back(data_values[i].get());
            }
        std::vector<const char *> out_names;
        for (const std::string &n : b_.boundary) out_names.push_back(n.c_str());
        std::vector<OrtValue *> outs(out_names.size(), nullptr);
        ort_.check(ort_.api->Run(prefix_, nullptr, in_names.data(), in_values.data(), in_names.size(),
                                 out_names.data(), out_names.size(), outs.data()),
                   "running the frozen prefix " + b_.prefix);
        for (size_t i = 0; i < outs.size(); ++i) {
            names.push_back(b_.boundary[i]);
            values.emplace_back(outs[i], ValueDeleter{ort_.api});
        }
    }
    for (size_t i = 0; i < data_names.size(); ++i)
        if (contains(suffix_inputs_, data_names[i])) {
            names.push_back(data_names[i]);
            values.push_back(std::move(data_values[i]));
        }
}

void Engine::set_batch(const Batch &batch) {
    std::vector<std::string> names;
    std::vector<Value> values;
    std::vector<std::vector<int32_t>> narrowed;
    feeds(batch, names, values, narrowed);
    for (size_t i = 0; i < names.size(); ++i)
        ort_.check(ort_.api->BindInput(binding_, names[i].c_str(), values[i].get()), "binding '" + names[i] + "'");
    batch_values_ = std::move(values);  // after the new ones are bound: the old ones are no longer referenced
    narrowed_ = std::move(narrowed);
}

// out of line: inlined, GCC 12 at -O3 kept the double where trainer.cpp widens the float again (the step's
// record loss was then not Python's float(np.mean) of the two float32 losses)
float Engine::mean_loss() { return (float)mean_loss_exact(); }

double Engine::mean_loss_exact() {
    const OrtApi *api = ort_.api;
    ort_.check(api->RunWithBinding(suffix_, nullptr, binding_), "running the trainable suffix " + b_.suffix);
    OrtValue **outs = nullptr;
    size_t n = 0;
    ort_.check(api->GetBoundOutputValues(binding_, ort_.allocator, &outs, &n), "reading the loss");
    Value loss(outs[0], ValueDeleter{api});
    for (size_t i = 1; i < n; ++i) api->ReleaseValue(outs[i]);
    ort_.allocator->Free(ort_.allocator, outs);
    OrtTensorTypeAndShapeInfo *info = nullptr;
    size_t count = 0;
    ort_.check(api->GetTensorTypeAndShape(loss.get(), &info), "reading the loss");
    OrtStatus *s = api->GetTensorShapeElementCount(info, &count);
    api->ReleaseTensorTypeAndShapeInfo(info);
    ort_.check(s, "reading the loss");
    float *data = nullptr;
    ort_.check(api->GetTensorMutableData(loss.get(), (void **)&data), "reading the loss");
    if (!count) fail(ET_ERR_ENGINE, b_.suffix + ": the loss output is empty");
    // the contract's defined order: sequential double accumulation in row order, divided by n in double
    double acc = 0.0;
    for (size_t i = 0; i < count; ++i) acc += (double)data[i];
    return acc / (double)count;
}

void Engine::evaluate(const Batch &batch, std::vector<float> &losses, std::vector<float> &logits, size_t &classes) {
    const OrtApi *api = ort_.api;
    std::vector<std::string> names;
    std::vector<Value> values;
    std::vector<std::vector<int32_t>> narrowed;
    feeds(batch, names, values, narrowed);
    std::vector<const char *> in_names;
    std::vector<const OrtValue *> in_values;
    for (size_t i = 0; i < names.size(); ++i) {
        in_names.push_back(names[i].c_str());
        in_values.push_back(values[i].get());
    }
    for (size_t i = 0; i < b_.tensors.size(); ++i) {
        in_names.push_back(b_.tensors[i].name.c_str());
        in_values.push_back(arena_values_[i].get());
    }
    std::vector<const char *> out_names = {b_.loss_output.c_str()};
    // the logits give the class: a classifier's, or a verbaliser's words' at the position before the word
    const bool with_logits = !b_.logits_output.empty() && (b_.task == "classify" || !b_.verbalizer_ids.empty());
    if (with_logits) out_names.push_back(b_.logits_output.c_str());
    std::vector<OrtValue *> outs(out_names.size(), nullptr);
    ort_.check(api->Run(suffix_, nullptr, in_names.data(), in_values.data(), in_names.size(), out_names.data(),
                        out_names.size(), outs.data()),
               "running the suffix for evaluation");
    std::vector<Value> owned;
    for (OrtValue *v : outs) owned.emplace_back(v, ValueDeleter{api});
    auto read = [&](OrtValue *v, std::vector<float> &out, std::vector<int64_t> &shape) {
        OrtTensorTypeAndShapeInfo *info = nullptr;
        ort_.check(api->GetTensorTypeAndShape(v, &info), "reading an output");
        size_t dims = 0, count = 0;
        OrtStatus *s = api->GetDimensionsCount(info, &dims);
        if (!s) {
            shape.assign(dims, 0);
            s = api->GetDimensions(info, shape.data(), dims);
        }
        if (!s) s = api->GetTensorShapeElementCount(info, &count);
        api->ReleaseTensorTypeAndShapeInfo(info);
        ort_.check(s, "reading an output's shape");
        float *data = nullptr;
        ort_.check(api->GetTensorMutableData(v, (void **)&data), "reading an output");
        out.assign(data, data + count);
    };
    std::vector<int64_t> shape;
    read(outs[0], losses, shape);
    classes = 0;
    logits.clear();
    if (with_logits) {
        read(outs[1], logits, shape);
        classes = shape.empty() ? 0 : (size_t)shape.back();
    }
}

}  // namespace et::rt
