/* runtime.cpp — the et_runtime C API (edgetune_runtime.h): argument checks, the runtime's parts wired
 * together, and every exception turned into a status plus one message. */
#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <nlohmann/json.hpp>

#include "artifacts.h"
#include "bundle.h"
#include "core.h"
#include "data.h"
#include "edgetune_runtime.h"
#include "error.h"
#include "ort.h"
#include "session.h"
#include "tokenizer.h"
#include "trainer.h"

using et::rt::Error;
using et::rt::fail;
using json = nlohmann::json;

namespace {
struct ArenaDeleter {
    void operator()(float *p) const { std::free(p); }
};
using ArenaPtr = std::unique_ptr<float, ArenaDeleter>;

// count floats (rounded up to the core Arena's 16), 64-byte aligned, zeroed; bytes receives the size
ArenaPtr new_arena(uint64_t count, size_t &bytes) {
    bytes = std::max<size_t>((count + 15) / 16 * 16, 16) * sizeof(float);
    ArenaPtr arena(static_cast<float *>(std::aligned_alloc(64, bytes)));
    if (!arena) throw std::bad_alloc();
    std::memset(arena.get(), 0, bytes);
    return arena;
}
constexpr size_t EVAL_BATCH = 64;  // Tuner.evaluate's default batch
}  // namespace

struct et_runtime {
    et::rt::Bundle bundle;
    ArenaPtr arena;
    std::unique_ptr<et::rt::Engine> engine;
    et::rt::Examples sets[2];
    std::unique_ptr<et::rt::Trainer> trainer;
    std::unique_ptr<et::tok::Tokenizer> tokenizer;  // loaded at the first text
    std::string error;
    std::string notes_text;  // et_runtime_notes' buffer

    // the bundle's tokenizer.json, loaded at the first text
    const et::tok::Tokenizer &text_tokenizer() {
        if (bundle.tokenizer_file.empty()) fail(ET_ERR_BUNDLE, bundle.dir + ": the bundle holds no tokenizer.json");
        if (!tokenizer) {
            try {
                tokenizer.reset(new et::tok::Tokenizer(et::tok::Tokenizer::load(bundle.tokenizer_file)));
            } catch (const et::tok::Error &e) {
                fail(ET_ERR_BUNDLE, e.what());
            }
        }
        return *tokenizer;
    }
    // text records as `tune` encodes them for this bundle (edgetune/data/encode.py)
    et::rt::TextEncoder encoder() {
        return et::rt::TextEncoder(bundle, [this]() -> const et::tok::Tokenizer & { return text_tokenizer(); });
    }
    // e (checked and cut as tune cuts) appended to split
    void add(et_split split, et::rt::Example e, const char *fn);
};

namespace {

thread_local std::string open_error;

et_status record(std::string &slot, et_status s, const std::string &message) {
    slot = message;
    return s;
}

template <class F>
et_status guarded(std::string &slot, F &&f) {
    try {
        slot.clear();
        return f();
    } catch (const Error &e) {
        return record(slot, e.status, e.what());
    } catch (const std::bad_alloc &) {
        return record(slot, ET_ERR_OUT_OF_MEMORY, "out of memory");
    } catch (const std::exception &e) {
        return record(slot, ET_ERR_INTERNAL, std::string("internal error: ") + e.what());
    } catch (...) {
        return record(slot, ET_ERR_INTERNAL, "internal error");
    }
}

bool valid_split(et_split s) { return s == ET_SPLIT_TRAIN || s == ET_SPLIT_EVAL; }

int noise_of(const et::rt::Bundle &b) { return b.noise == "gaussian" ? ET_NOISE_GAUSSIAN : ET_NOISE_RADEMACHER; }

std::string digest_hex(uint64_t v) {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", (unsigned long long)v);
    return buf;
}

json params_json(const et_train_params &p) {
    return {{"steps", p.steps}, {"seed", p.seed}, {"batch_size", p.batch_size}, {"queries", p.queries},
            {"lr", p.lr}, {"eps", p.eps}, {"weight_decay", p.weight_decay}, {"schedule", p.schedule},
            {"warmup", p.warmup}, {"noise", p.noise}, {"lr_auto", p.lr_auto}, {"eps_auto", p.eps_auto},
            {"guard", p.guard}};
}

// p as a full-size struct: a caller built before lr_auto/eps_auto/guard/note passes the older size and gets
// them off (its run is the one it had); any other size is refused
et_train_params full_params(const et_train_params *p, const char *where) {
    if (!p) fail(ET_ERR_INVALID_ARGUMENT, std::string(where) + ": NULL params");
    if (p->struct_size != sizeof(et_train_params) && p->struct_size != ET_TRAIN_PARAMS_V1_SIZE)
        fail(ET_ERR_INVALID_ARGUMENT, std::string(where) + ": params.struct_size " + std::to_string(p->struct_size) +
                                          " is neither sizeof(et_train_params) (" + std::to_string(sizeof(et_train_params)) +
                                          ") nor ET_TRAIN_PARAMS_V1_SIZE (" + std::to_string(ET_TRAIN_PARAMS_V1_SIZE) + ")");
    et_train_params full;
    std::memset(&full, 0, sizeof full);
    std::memcpy(&full, p, p->struct_size);
    full.struct_size = sizeof(et_train_params);
    return full;
}

// Row r's predicted class: argmax of its logits (classify), or, for a verbaliser, argmax over the words' tokens of
// the logits at the position before the word (Tuner._verbalizer_predictions): its row of token_logits (one row per
// labelled position, one per example in order) or of logits [rows, length, vocabulary]. Ties: the first.
int64_t predicted(const et::rt::Bundle &b, const et::rt::Batch &batch, size_t r, const std::vector<float> &logits,
                  size_t width) {
    const float *row = logits.data() + r * width;
    std::vector<int64_t> candidates;
    if (b.verbalizer_ids.empty()) {
        for (size_t c = 0; c < width; ++c) candidates.push_back((int64_t)c);
    } else {
        candidates = b.verbalizer_ids;
        if (b.logits_output != "token_logits") {
            size_t word = 0;  // the one target of row r
            while (batch.labels[r * batch.length + word] == et::rt::IGNORE_INDEX) ++word;
            row = logits.data() + (r * batch.length + word - 1) * width;
        }
    }
    size_t best = 0;
    for (size_t c = 1; c < candidates.size(); ++c)
        if (row[candidates[c]] > row[candidates[best]]) best = c;
    return (int64_t)best;
}

void evaluate(et_runtime *rt, et_split split, et_metrics *m) {
    const et::rt::Examples &set = rt->sets[split];
    if (set.rows.empty()) fail(ET_ERR_DATA, std::string("no ") + (split == ET_SPLIT_TRAIN ? "training" : "evaluation") + " examples to evaluate");
    et::rt::BatchBuilder builder(rt->bundle);
    const size_t batch_rows = rt->bundle.static_batch ? (size_t)rt->bundle.static_batch : EVAL_BATCH;
    double loss_sum = 0.0;
    uint64_t correct = 0;
    et::rt::Batch batch;
    std::vector<float> losses, logits;
    for (size_t start = 0; start < set.rows.size(); start += batch_rows) {
        std::vector<uint64_t> rows;
        for (size_t i = start; i < std::min(set.rows.size(), start + batch_rows); ++i) rows.push_back(i);
        const size_t real = rows.size();
        while (rt->bundle.static_batch && rows.size() < batch_rows) rows.push_back(rows.back());  // fill, not counted
        builder.build(set, rows, batch);
        size_t classes = 0;
        rt->engine->evaluate(batch, losses, logits, classes);
        for (size_t r = 0; r < real; ++r) {
            if (!std::isfinite(losses[r]))
                fail(ET_ERR_NONFINITE_LOSS, "the loss on " + set.where[rows[r]] + " is not finite; the model computes "
                                            "non-finite logits (broken weights, or a tuning run that diverged)");
            loss_sum += losses[r];
            if (classes) correct += predicted(rt->bundle, batch, r, logits, classes) == set.rows[rows[r]].label;
        }
    }
    et_metrics out{};
    out.struct_size = sizeof(et_metrics);
    out.examples = set.rows.size();
    out.loss = loss_sum / (double)set.rows.size();
    const bool classes = rt->bundle.task == "classify" || !rt->bundle.verbalizer_ids.empty();
    out.accuracy = classes ? (double)correct / (double)set.rows.size() : NAN;
    *m = out;
}

// fit's `before`: the evaluation split's loss before step 0, when the app added evaluation examples (keep-best
// compares with it; without the guard nothing reads it)
void start(et_runtime *rt) {
    if (!rt->trainer->params().guard || rt->trainer->done() > 0 || rt->trainer->has_before() ||
        rt->sets[ET_SPLIT_EVAL].rows.empty())
        return;
    et_metrics m;
    evaluate(rt, ET_SPLIT_EVAL, &m);
    rt->trainer->set_before(m.loss);
}

// keep-best at the end of the run (loop._end): by the evaluation loss when there was a `before`
void finish(et_runtime *rt) {
    rt->trainer->finish([rt] {
        if (rt->sets[ET_SPLIT_EVAL].rows.empty()) return (double)NAN;
        et_metrics m;
        evaluate(rt, ET_SPLIT_EVAL, &m);
        return m.loss;
    });
}

void make_dir(const std::string &dir) {
    if (mkdir(dir.c_str(), 0777) != 0 && errno != EEXIST) fail(ET_ERR_IO, dir + ": cannot be created (" + std::strerror(errno) + ")");
    struct stat st;
    if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) fail(ET_ERR_IO, dir + ": not a folder");
}

}  // namespace

extern "C" {

void et_runtime_default_options(et_runtime_options *o) {
    if (!o) return;
    std::memset(o, 0, sizeof *o);
    o->struct_size = sizeof(et_runtime_options);
    o->threads = 0;
    o->ort_library = nullptr;
    o->verify_sha256 = 1;
}

et_status et_runtime_open(const char *bundle_dir, const et_runtime_options *options, et_runtime **out) {
    return guarded(open_error, [&] {
        if (!bundle_dir || !out) fail(ET_ERR_INVALID_ARGUMENT, "et_runtime_open: bundle_dir and out must not be NULL");
        et_runtime_options o;
        et_runtime_default_options(&o);
        if (options) {
            if (options->struct_size != sizeof(et_runtime_options))
                fail(ET_ERR_INVALID_ARGUMENT, "et_runtime_open: options.struct_size is not sizeof(et_runtime_options)");
            o = *options;
        }
        if (o.threads < 0) fail(ET_ERR_INVALID_ARGUMENT, "et_runtime_open: options.threads must be >= 0");
        std::unique_ptr<et_runtime> rt(new et_runtime());
        rt->bundle = et::rt::read_bundle(bundle_dir, o.verify_sha256 != 0);
        const et::rt::Ort &ort = et::rt::load_ort(o.ort_library);
        if (o.threads > 0) et::set_num_threads(o.threads);
        size_t bytes = 0;
        rt->arena = new_arena(rt->bundle.arena_count, bytes);
        et::rt::read_arena(rt->bundle, rt->arena.get());
        rt->engine.reset(new et::rt::Engine(ort, rt->bundle, rt->arena.get(), o.threads));
        rt->trainer.reset(new et::rt::Trainer(*rt->engine, rt->bundle, rt->arena.get(), rt->bundle.arena_count,
                                              rt->sets[ET_SPLIT_TRAIN]));
        *out = rt.release();
        return ET_OK;
    });
}

void et_runtime_free(et_runtime *rt) { delete rt; }

const char *et_runtime_last_error(const et_runtime *rt) { return rt ? rt->error.c_str() : open_error.c_str(); }

const char *et_runtime_task(const et_runtime *rt) { return rt ? rt->bundle.task.c_str() : nullptr; }

uint32_t et_runtime_num_labels(const et_runtime *rt) { return rt ? (uint32_t)rt->bundle.labels.size() : 0; }

const char *et_runtime_label_name(const et_runtime *rt, uint32_t i) {
    return rt && i < rt->bundle.labels.size() ? rt->bundle.labels[i].c_str() : nullptr;
}

void et_runtime::add(et_split split, et::rt::Example e, const char *fn) {
    if (!valid_split(split)) fail(ET_ERR_INVALID_ARGUMENT, std::string(fn) + ": split is not an et_split");
    if (split == ET_SPLIT_TRAIN && trainer->done() > 0)
        fail(ET_ERR_STATE, std::string(fn) + ": the run has taken steps on the training examples; they cannot change now");
    auto &set = sets[split];
    const std::string where = "example " + std::to_string(set.rows.size());
    et::rt::check_example(bundle, e, std::string(fn) + ": " + where);
    set.where.push_back(where);
    set.rows.push_back(std::move(e));
}

et_status et_runtime_add_text(et_runtime *rt, et_split split, const char *text, int64_t label) {
    if (!rt) return ET_ERR_INVALID_ARGUMENT;
    return guarded(rt->error, [&] {
        if (!text) fail(ET_ERR_INVALID_ARGUMENT, "et_runtime_add_text: NULL text");
        const size_t classes = rt->bundle.labels.size();
        if (classes && (label < 0 || (size_t)label >= classes))
            fail(ET_ERR_DATA, "et_runtime_add_text: label " + std::to_string(label) + " is not below the " +
                                  std::to_string(classes) + " classes");
        et::rt::Example e;
        rt->encoder().text(text, label, "et_runtime_add_text", e);
        rt->add(split, std::move(e), "et_runtime_add_text");
        return ET_OK;
    });
}

et_status et_runtime_add_prompt(et_runtime *rt, et_split split, const char *prompt, const char *completion) {
    if (!rt) return ET_ERR_INVALID_ARGUMENT;
    return guarded(rt->error, [&] {
        if (!prompt || !completion) fail(ET_ERR_INVALID_ARGUMENT, "et_runtime_add_prompt: NULL prompt or completion");
        et::rt::Example e;
        if (!rt->encoder().prompt(prompt, completion, "et_runtime_add_prompt", e))
            fail(ET_ERR_DATA, "et_runtime_add_prompt: the completion lies entirely beyond max_length " +
                                  std::to_string(rt->bundle.max_length) + "; nothing of it to train on");
        rt->add(split, std::move(e), "et_runtime_add_prompt");
        return ET_OK;
    });
}

et_status et_runtime_add_example(et_runtime *rt, et_split split, const int64_t *ids, size_t n, int64_t label) {
    return et_runtime_add_labelled(rt, split, ids, nullptr, n, label);
}

et_status et_runtime_add_labelled(et_runtime *rt, et_split split, const int64_t *ids, const int64_t *token_labels,
                                  size_t n, int64_t label) {
    if (!rt) return ET_ERR_INVALID_ARGUMENT;
    return guarded(rt->error, [&] {
        if (!ids || !n) fail(ET_ERR_DATA, "et_runtime_add_example: no token ids");
        if (token_labels && rt->bundle.task != "lm") fail(ET_ERR_DATA, "et_runtime_add_labelled: token labels are for an lm bundle");
        et::rt::Example e;
        e.ids.assign(ids, ids + n);
        if (token_labels) e.token_labels.assign(token_labels, token_labels + n);
        e.label = label;
        rt->add(split, std::move(e), "et_runtime_add_example");
        return ET_OK;
    });
}

et_status et_runtime_load_jsonl(et_runtime *rt, et_split split, const char *path) {
    if (!rt) return ET_ERR_INVALID_ARGUMENT;
    return guarded(rt->error, [&] {
        if (!valid_split(split) || !path) fail(ET_ERR_INVALID_ARGUMENT, "et_runtime_load_jsonl: bad split or NULL path");
        if (split == ET_SPLIT_TRAIN && rt->trainer->done() > 0)
            fail(ET_ERR_STATE, "et_runtime_load_jsonl: the run has taken steps on the training examples; they cannot change now");
        std::vector<std::string> skipped;
        et::rt::load_jsonl(path, rt->bundle, rt->encoder(), rt->sets[split], skipped);
        if (!skipped.empty()) {  // left out as tune leaves them out; the warning is tune's, in last_error
            std::string shown;
            for (size_t i = 0; i < std::min<size_t>(3, skipped.size()); ++i) shown += (i ? ", " : "") + skipped[i];
            if (skipped.size() > 3) shown += " and " + std::to_string(skipped.size() - 3) + " more";
            rt->error = "warning: " + shown + ": completion entirely beyond max_length " +
                        std::to_string(rt->bundle.max_length) + "; " + std::to_string(skipped.size()) + " example(s) skipped";
        }
        return ET_OK;
    });
}

et_status et_runtime_example(const et_runtime *rt, et_split split, uint64_t i, const int64_t **ids,
                             const int64_t **token_labels, size_t *n, int64_t *label) {
    if (!rt || !valid_split(split) || !ids || !token_labels || !n || !label || i >= rt->sets[split].rows.size())
        return ET_ERR_INVALID_ARGUMENT;
    const et::rt::Example &e = rt->sets[split].rows[i];
    *ids = e.ids.data();
    *token_labels = e.token_labels.empty() ? nullptr : e.token_labels.data();
    *n = e.ids.size();
    *label = e.label;
    return ET_OK;
}

et_status et_runtime_num_examples(const et_runtime *rt, et_split split, uint64_t *n) {
    if (!rt || !n || !valid_split(split)) return ET_ERR_INVALID_ARGUMENT;
    *n = rt->sets[split].rows.size();
    return ET_OK;
}

et_status et_runtime_clear(et_runtime *rt, et_split split) {
    if (!rt || !valid_split(split)) return ET_ERR_INVALID_ARGUMENT;
    return guarded(rt->error, [&] {
        if (split == ET_SPLIT_TRAIN && rt->trainer->done() > 0)
            fail(ET_ERR_STATE, "et_runtime_clear: the run has taken steps on the training examples; they cannot change now");
        rt->sets[split] = et::rt::Examples();
        return ET_OK;
    });
}

void et_runtime_default_train_params(const et_runtime *rt, et_train_params *p) {
    if (!p) return;
    std::memset(p, 0, sizeof *p);
    p->struct_size = sizeof(et_train_params);
    et::rt::Defaults d;
    if (rt) d = rt->bundle.defaults;
    p->steps = d.steps;
    p->seed = d.seed;
    p->batch_size = rt && rt->bundle.static_batch ? (uint32_t)rt->bundle.static_batch : d.batch_size;
    p->queries = d.queries;
    p->lr = d.lr_auto ? 0.0 : d.lr;
    p->eps = d.eps_auto ? 0.0 : d.eps;
    p->lr_auto = d.lr_auto;
    p->eps_auto = d.eps_auto;
    p->guard = 1;
    p->note = nullptr;
    p->note_user = nullptr;
    p->weight_decay = 0.0;
    p->schedule = ET_SCHEDULE_CONSTANT;
    p->warmup = 0;
    p->noise = rt ? noise_of(rt->bundle) : ET_NOISE_RADEMACHER;
}

et_status et_runtime_set_train_params(et_runtime *rt, const et_train_params *p) {
    if (!rt) return ET_ERR_INVALID_ARGUMENT;
    return guarded(rt->error, [&] {
        rt->trainer->configure(full_params(p, "et_runtime_set_train_params"));
        start(rt);
        return ET_OK;
    });
}

et_status et_runtime_step(et_runtime *rt, et_step_record *out) {
    if (!rt) return ET_ERR_INVALID_ARGUMENT;
    return guarded(rt->error, [&] {
        et_step_record r;
        if (!rt->trainer->step(r)) {
            finish(rt);  // keep-best, once, when the run has all its steps
            return ET_DONE;
        }
        if (out) *out = r;
        return ET_OK;
    });
}

et_status et_runtime_train(et_runtime *rt, const et_train_params *p, et_train_result *result) {
    if (!rt) return ET_ERR_INVALID_ARGUMENT;
    et_train_result res{};
    res.struct_size = sizeof(et_train_result);
    res.last_loss = NAN;
    et_status s = guarded(rt->error, [&] {
        rt->trainer->configure(full_params(p, "et_runtime_train"));
        start(rt);
        et_step_record r;
        while (true) {
            if (p->cancel && *p->cancel) {
                res.cancelled = 1;
                return ET_CANCELLED;
            }
            if (!rt->trainer->step(r)) {
                finish(rt);  // a run that ended worse than it began keeps its best state, says so
                return ET_OK;
            }
            res.last_loss = r.loss;
            if (p->progress && p->progress(&r, p->user) != 0) {
                res.cancelled = 1;
                return ET_CANCELLED;
            }
        }
    });
    res.steps_done = rt->trainer->done();
    res.forwards = rt->trainer->forwards();
    if (result) *result = res;
    return s;
}

et_status et_runtime_steps_done(const et_runtime *rt, uint64_t *steps) {
    if (!rt || !steps) return ET_ERR_INVALID_ARGUMENT;
    *steps = rt->trainer->done();
    return ET_OK;
}

et_status et_runtime_summary(const et_runtime *rt, et_run_summary *s) {
    if (!rt || !s || s->struct_size != sizeof(et_run_summary)) return ET_ERR_INVALID_ARGUMENT;
    rt->trainer->summary(*s);
    return ET_OK;
}

const char *et_runtime_head(const et_runtime *rt) {
    if (!rt) return nullptr;
    return rt->bundle.exact_head ? "exact" : "zo";
}

const char *et_runtime_notes(const et_runtime *rt) {
    if (!rt) return "";
    std::string &text = const_cast<et_runtime *>(rt)->notes_text;
    text.clear();
    for (const std::string &line : rt->trainer->notes()) text += (text.empty() ? "" : "\n") + line;
    return text.c_str();
}

et_status et_runtime_evaluate(et_runtime *rt, et_split split, et_metrics *metrics) {
    if (!rt) return ET_ERR_INVALID_ARGUMENT;
    return guarded(rt->error, [&] {
        if (!valid_split(split) || !metrics) fail(ET_ERR_INVALID_ARGUMENT, "et_runtime_evaluate: bad split or NULL metrics");
        evaluate(rt, split, metrics);
        return ET_OK;
    });
}

et_status et_runtime_weights(const et_runtime *rt, const float **data, size_t *n) {
    if (!rt || !data || !n) return ET_ERR_INVALID_ARGUMENT;
    *data = rt->arena.get();
    *n = rt->bundle.arena_count;
    return ET_OK;
}

et_status et_runtime_checkpoint(et_runtime *rt, const char *path) {
    if (!rt) return ET_ERR_INVALID_ARGUMENT;
    return guarded(rt->error, [&] {
        if (!path) fail(ET_ERR_INVALID_ARGUMENT, "et_runtime_checkpoint: NULL path");
        if (!rt->trainer->configured()) fail(ET_ERR_STATE, "et_runtime_checkpoint: no run to checkpoint (set train params first)");
        json state = rt->trainer->state();
        state["runtime"] = {{"bundle", rt->bundle.manifest_sha256},
                                   {"data", digest_hex(rt->sets[ET_SPLIT_TRAIN].digest())},
                            {"params", params_json(rt->trainer->params())}};
        et::rt::write_checkpoint_file(path, rt->bundle, rt->arena.get(), state.dump());
        return ET_OK;
    });
}

et_status et_runtime_resume(et_runtime *rt, const char *path) {
    if (!rt) return ET_ERR_INVALID_ARGUMENT;
    return guarded(rt->error, [&] {
        if (!path) fail(ET_ERR_INVALID_ARGUMENT, "et_runtime_resume: NULL path");
        const std::string where = path;
        // read into a scratch arena first: a refused checkpoint leaves the weights as they were
        size_t bytes = 0;
        ArenaPtr scratch = new_arena(rt->bundle.arena_count, bytes);
        std::memcpy(scratch.get(), rt->arena.get(), bytes);
        json state = json::parse(et::rt::read_checkpoint_file(where, rt->bundle, scratch.get()), nullptr, false);
        if (state.is_discarded() || !state.contains("runtime") || !state["runtime"].is_object())
            fail(ET_ERR_STATE, where + ": not a checkpoint of the C runtime (no 'runtime' state)");
        const json &r = state["runtime"];
        if (r.value("bundle", "") != rt->bundle.manifest_sha256)
            fail(ET_ERR_STATE, where + ": was taken on another bundle (its manifest.json differs)");
        if (r.value("data", "") != digest_hex(rt->sets[ET_SPLIT_TRAIN].digest()))
            fail(ET_ERR_STATE, where + ": was taken on other training examples than the ones added now");
        et_train_params p;
        et_runtime_default_train_params(rt, &p);
        try {
            const json &pj = r.at("params");
            p.steps = pj.at("steps"); p.seed = pj.at("seed"); p.batch_size = pj.at("batch_size");
            p.queries = pj.at("queries"); p.lr = pj.at("lr"); p.eps = pj.at("eps");
            p.weight_decay = pj.at("weight_decay"); p.schedule = pj.at("schedule"); p.warmup = pj.at("warmup");
            p.noise = pj.at("noise");
            // checkpoints from before the guard: neither lr auto nor the guard ran
            p.lr_auto = pj.value("lr_auto", 0); p.eps_auto = pj.value("eps_auto", 0); p.guard = pj.value("guard", 0);
        } catch (const json::exception &) {
            fail(ET_ERR_DATA, where + ": the checkpoint's run state is not readable");
        }
        // a fresh trainer at the checkpoint's step: validated before anything of the runtime changes
        std::unique_ptr<et::rt::Trainer> trainer(new et::rt::Trainer(
            *rt->engine, rt->bundle, rt->arena.get(), rt->bundle.arena_count, rt->sets[ET_SPLIT_TRAIN]));
        trainer->configure(p);
        try {
            trainer->load_state(state);
        } catch (const json::exception &) {
            fail(ET_ERR_DATA, where + ": the checkpoint's run state is not readable");
        }
        rt->trainer = std::move(trainer);
        std::memcpy(rt->arena.get(), scratch.get(), bytes);
        return ET_OK;
    });
}

et_status et_runtime_save(et_runtime *rt, const char *out_dir) {
    if (!rt) return ET_ERR_INVALID_ARGUMENT;
    return guarded(rt->error, [&] {
        if (!out_dir) fail(ET_ERR_INVALID_ARGUMENT, "et_runtime_save: NULL out_dir");
        const std::string dir = out_dir;
        const float *w = rt->arena.get();
        for (const auto &t : rt->bundle.tensors)
            for (uint64_t i = 0; i < t.numel; ++i)
                if (!std::isfinite(w[t.offset + i]))
                    fail(ET_ERR_NONFINITE_LOSS, "the tuned tensor '" + t.name + "' holds non-finite values; nothing written");
        make_dir(dir);
        using et::rt::join_path;
        if (join_path(dir, "model.onnx") == rt->bundle.model)
            fail(ET_ERR_INVALID_ARGUMENT, dir + ": is the bundle's folder; save into another one");
        json state = {{"step", -1}, {"summary", json::object()}, {"trainable", rt->bundle.trainable},
                      {"metadata", json::object()}};
        et::rt::write_checkpoint_file(join_path(dir, "trainable.safetensors"), rt->bundle, w, state.dump());
        et::rt::write_tuned_model(rt->bundle.model, join_path(dir, "model.onnx"), rt->bundle, w);
        for (const std::string &f : rt->bundle.files)
            if (f == "tokenizer.json" || f == "tokenizer_config.json" || f == "special_tokens_map.json")
                et::rt::copy_file(join_path(rt->bundle.dir, f), join_path(dir, f));
        return ET_OK;
    });
}

}  // extern "C"
