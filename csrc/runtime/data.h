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

namespace et::rt {

struct Example {
    std::vector<int64_t> ids;
    int64_t label = 0;
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

// text -> token ids as `tune` encodes a record; throws Error naming `where`
using TextEncoder = std::function<std::vector<int64_t>(const std::string &text, const std::string &where)>;

// A JSONL file of {"ids": [...] | "text": "...", "label": index | "class name"} lines into set (rows of earlier
// lines stay on an error, which names the file and line). labels: the bundle's class names.
void load_jsonl(const std::string &path, const std::vector<std::string> &labels, int64_t max_length,
                const TextEncoder &encode, Examples &set);

}  // namespace et::rt
#endif
