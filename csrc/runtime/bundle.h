/* bundle.h — a bundle directory (docs/bundle.md): manifest.json read and checked, files verified. */
#ifndef EDGETUNE_RUNTIME_BUNDLE_H
#define EDGETUNE_RUNTIME_BUNDLE_H
#include <cstdint>
#include <string>
#include <vector>

namespace et::rt {

constexpr int BUNDLE_FORMAT_VERSION = 1;

struct TensorSpec {
    std::string name;
    uint64_t offset = 0;  // elements from the arena's start (the core's Arena alignment)
    std::vector<int64_t> shape;
    uint64_t numel = 1;
};

struct InputSpec {
    std::string name;
    bool int32 = false;  // else int64
};

struct Defaults {
    double lr = 1e-3, eps = 1e-3;
    bool lr_auto = false, eps_auto = false;  // the manifest says "auto" (older bundles: a number)
    uint32_t queries = 1, batch_size = 8;
    uint64_t seed = 0, steps = 200;
};

struct Bundle {
    std::string dir;
    std::string task;                 // "classify" | "lm"
    std::vector<std::string> labels;  // class names (empty for an lm bundle without a verbaliser)
    // classification through a causal LM (manifest "verbalizer"): per class (labels' order) its word and the
    // word's token id (with a leading space), and the prompt template with {text}; empty words: none
    std::vector<std::string> verbalizer_words;
    std::vector<int64_t> verbalizer_ids;
    std::string verbalizer_template;
    std::string eos_token;       // appended to a completion that does not end with it ("" : none)
    bool chat_template = false;  // the tokenizer has one: {"messages"} records need it (Python only)
    std::string trainable;
    std::string prefix, suffix, model;  // absolute paths; prefix "" when nothing is frozen before the slice
    std::vector<InputSpec> inputs;      // data inputs in the Python batcher's order
    InputSpec labels_input;
    bool labels_per_token = false;
    std::vector<std::string> boundary;
    std::string loss_output, logits_output;
    std::string arena_file;
    uint64_t arena_count = 0;
    std::vector<TensorSpec> tensors;
    std::string tokenizer_file;  // absolute; "" when the bundle has none
    int64_t max_length = 128, pad_id = 0;
    int64_t static_batch = 0, static_length = 0;  // 0: dynamic shapes
    std::string noise = "rademacher";
    // manifest "head": "exact": the suffix also outputs the head's exact gradient (head_grad_W, head_grad_b in
    // the weight's and the bias's layout) and the head is tuned first-order; absent (older bundles) or "zo": ZO
    bool exact_head = false;
    int head_weight = -1, head_bias = -1;  // exact: indices into tensors (head_bias -1: the head has no bias)
    Defaults defaults;
    std::string manifest_sha256;      // identifies the bundle in checkpoints
    std::vector<std::string> files;   // every file the manifest lists (relative), manifest excluded
};

// Reads dir/manifest.json; checks format, version, keys, the arena layout and (verify) each listed file's
// size and sha256. Throws Error(ET_ERR_BUNDLE) naming the file and key, Error(ET_ERR_IO) on read errors.
Bundle read_bundle(const std::string &dir, bool verify);

// arena.bin into out (b.arena_count floats), checking its size.
void read_arena(const Bundle &b, float *out);

std::string join_path(const std::string &dir, const std::string &name);

}  // namespace et::rt
#endif
