/* data.h — examples as token ids + labels, and the batches a step draws: the same rows, padding and
 * derived inputs as edgetune/data/batching.py (TokenizedSet.batch, BatchStream). */
#ifndef EDGETUNE_RUNTIME_DATA_H
#define EDGETUNE_RUNTIME_DATA_H
#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "bundle.h"

namespace et::tok {
class Tokenizer;
}

namespace et::rt {

constexpr int64_t IGNORE_INDEX = -100;  // edgetune/data/encode.py: a token label the loss skips

struct Example {
    std::vector<int64_t> ids;
    int64_t label = 0;                  // the class (classify, verbaliser)
    std::vector<int64_t> token_labels;  // lm: per token, IGNORE_INDEX where no loss; empty: the ids themselves
};

struct Examples {
    std::vector<Example> rows;
    std::vector<std::string> where;  // "file:line" or "example N", for messages
    uint64_t digest() const;         // of ids and labels: a checkpoint names the data it was taken on
};

// One batch, padded, in the bundle's input order; arrays are row-major [rows, length].
struct Batch {
    size_t rows = 0, length = 0;
    std::vector<std::vector<int64_t>> inputs;  // per Bundle::inputs (int32 inputs are narrowed at binding)
    std::vector<int64_t> labels;               // [rows] (classify) or [rows, length] (per token)
    std::vector<uint64_t> indices;             // the examples, for messages
};

class BatchBuilder {
public:
    explicit BatchBuilder(const Bundle &b) : b_(b) {}
    // rows `indices` of `set`, padded to the longest (or the bundle's static length)
    void build(const Examples &set, const std::vector<uint64_t> &indices, Batch &out) const;

private:
    const Bundle &b_;
};

// Step t's rows: consecutive positions of an endless run of epochs, each et_epoch_permutation(seed, e, n).
class BatchStream {
public:
    BatchStream(uint64_t n, uint64_t batch_size, uint64_t seed) : n_(n), batch_(batch_size), seed_(seed) {}
    std::vector<uint64_t> indices(uint64_t step);
    uint64_t batch_size() const { return batch_; }

private:
    const std::vector<uint64_t> &epoch(uint64_t e);
    uint64_t n_, batch_, seed_;
    std::unordered_map<uint64_t, std::vector<uint64_t>> epochs_;
};

// Text records -> examples exactly as `edgetune tune` encodes them for the bundle (edgetune/data/encode.py):
// classification text; a causal LM's {"text"} (every token a target), {"prompt", "completion"} (the completion's
// tokens, decided by the tokenizer's offsets) and verbaliser text (template, then the class's word, the one
// target). Errors name `where`. The tokenizer is loaded at the first text (an ids-only app never reads it).
class TextEncoder {
public:
    using Load = std::function<const et::tok::Tokenizer &()>;
    TextEncoder(const Bundle &b, Load tokenizer) : b_(b), tokenizer_(std::move(tokenizer)) {}
    // {"text"[, "label"]}: label is the class (classify, verbaliser), ignored by a plain lm bundle
    void text(const std::string &text, int64_t label, const std::string &where, Example &out) const;
    // {"prompt", "completion"} (lm bundles): false when the completion lies wholly beyond max_length, so the
    // example is left out, as tune leaves it out (with a warning)
    bool prompt(const std::string &prompt, const std::string &completion, const std::string &where, Example &out) const;

private:
    void verbalized(const std::string &text, int64_t label, const std::string &where, Example &out) const;
    const Bundle &b_;
    Load tokenizer_;
};

// ids given by the app: checked against the bundle (ids >= 0; token labels one per id; a verbaliser example's last
// id is its class's word) and cut to max_length as tune cuts its own (a verbaliser prompt keeps its end).
void check_example(const Bundle &b, Example &e, const std::string &where);

// A JSONL file into set; lines are {"ids": [...][, "labels": [...]]} (token ids, token labels for an lm bundle),
// {"text": "..."}, {"prompt": "...", "completion": "..."}, each with "label": index | "class name" where the bundle
// has classes. A {"messages"} line is refused (the chat template is Jinja, which only Python renders). Rows of
// earlier lines stay on an error, which names the file and line. skipped: the lines left out (completions beyond
// max_length), as "file:line".
void load_jsonl(const std::string &path, const Bundle &b, const TextEncoder &encode, Examples &set,
                std::vector<std::string> &skipped);

}  // namespace et::rt
#endif
