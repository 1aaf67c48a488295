#include "data.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core.h"
#include "error.h"

namespace et::rt {

namespace {
constexpr int64_t IGNORE_INDEX = -100;  // edgetune/data/encode.py: labels the loss skips
}

uint64_t Examples::digest() const {
    // FNV-1a over (length, ids, label) per row: cheap, and enough to tell data sets apart
    uint64_t h = 0xcbf29ce484222325ULL;
    auto mix = [&h](uint64_t v) {
        for (int i = 0; i < 8; ++i) {
            h ^= (v >> (8 * i)) & 0xff;
            h *= 0x100000001b3ULL;
        }
    };
    for (const Example &e : rows) {
        mix(e.ids.size());
        for (int64_t id : e.ids) mix((uint64_t)id);
        mix((uint64_t)e.label);
    }
    return h;
}

void BatchBuilder::build(const Examples &set, const std::vector<uint64_t> &indices, Batch &out) const {
    size_t length = 0;
    for (uint64_t i : indices) length = std::max(length, set.rows[i].ids.size());
    if (b_.static_length) length = (size_t)b_.static_length;
    const size_t rows = indices.size();
    out.rows = rows;
    out.length = length;
    out.indices = indices;
    out.inputs.resize(b_.inputs.size());
    std::vector<int64_t> mask(rows * length, 0);
    for (size_t r = 0; r < rows; ++r)
        std::fill(mask.begin() + r * length, mask.begin() + r * length + set.rows[indices[r]].ids.size(), 1);
    for (size_t k = 0; k < b_.inputs.size(); ++k) {
        const std::string &name = b_.inputs[k].name;
        std::vector<int64_t> &a = out.inputs[k];
        a.assign(rows * length, 0);
        if (name == "input_ids") {
            std::fill(a.begin(), a.end(), b_.pad_id);
            for (size_t r = 0; r < rows; ++r) {
                const auto &ids = set.rows[indices[r]].ids;
                std::copy(ids.begin(), ids.end(), a.begin() + r * length);
            }
        } else if (name == "attention_mask") {
            a = mask;
        } else if (name == "position_ids") {
            // max(cumsum(mask) - 1, 0), as batching.py
            for (size_t r = 0; r < rows; ++r) {
                int64_t sum = 0;
                for (size_t c = 0; c < length; ++c) {
                    sum += mask[r * length + c];
                    a[r * length + c] = std::max<int64_t>(sum - 1, 0);
                }
            }
        } else if (name != "token_type_ids") {
            fail(ET_ERR_BUNDLE, "manifest.json: data input '" + name + "' is not one the batcher builds "
                                "(input_ids, attention_mask, token_type_ids, position_ids)");
        }  // token_type_ids: zeros (single-text examples)
    }
    if (!b_.labels_per_token) {
        out.labels.resize(rows);
        for (size_t r = 0; r < rows; ++r) out.labels[r] = set.rows[indices[r]].label;
        return;
    }
    // a causal LM's token labels: every real token (the graph shifts them), padding ignored
    out.labels.assign(rows * length, IGNORE_INDEX);
    for (size_t r = 0; r < rows; ++r) {
        const auto &ids = set.rows[indices[r]].ids;
        std::copy(ids.begin(), ids.end(), out.labels.begin() + r * length);
    }
}

const std::vector<uint64_t> &BatchStream::epoch(uint64_t e) {
    auto it = epochs_.find(e);
    if (it != epochs_.end()) return it->second;
    if (epochs_.size() > 4) epochs_.clear();
    std::vector<uint64_t> order(n_);
    et::epoch_permutation(seed_, e, n_, order.data());
    return epochs_.emplace(e, std::move(order)).first->second;
}

std::vector<uint64_t> BatchStream::indices(uint64_t step) {
    std::vector<uint64_t> out(batch_);
    const uint64_t start = step * batch_;
    for (uint64_t k = 0; k < batch_; ++k) out[k] = epoch((start + k) / n_)[(start + k) % n_];
    return out;
}

void load_jsonl(const std::string &path, const std::vector<std::string> &labels, int64_t max_length,
                const TextEncoder &encode, Examples &set) {
    std::ifstream in(path);
    if (!in) fail(ET_ERR_IO, path + ": cannot be read");
    std::string line;
    size_t number = 0, added = 0;
    while (std::getline(in, line)) {
        ++number;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        const std::string where = path + ":" + std::to_string(number);
        nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
        if (j.is_discarded() || !j.is_object()) fail(ET_ERR_DATA, where + ": not a JSON object");
        Example e;
        if (j.contains("text") && !j.contains("ids")) {
            if (!j["text"].is_string()) fail(ET_ERR_DATA, where + ": 'text' is not a string");
            e.ids = encode(j["text"].get<std::string>(), where);
        } else {
            if (!j.contains("ids") || !j["ids"].is_array() || j["ids"].empty())
                fail(ET_ERR_DATA, where + ": no 'ids' list of token ids (or 'text')");
            for (const auto &id : j["ids"]) {
                if (!id.is_number_integer() || id.get<int64_t>() < 0)
                    fail(ET_ERR_DATA, where + ": 'ids' holds a value that is not a token id");
                e.ids.push_back(id.get<int64_t>());
            }
        }
        if (e.ids.empty()) fail(ET_ERR_DATA, where + ": no tokens");
        if ((int64_t)e.ids.size() > max_length) e.ids.resize((size_t)max_length);
        if (!labels.empty()) {
            if (!j.contains("label")) fail(ET_ERR_DATA, where + ": no 'label'");
            const auto &l = j["label"];
            if (l.is_string()) {
                auto it = std::find(labels.begin(), labels.end(), l.get<std::string>());
                if (it == labels.end()) fail(ET_ERR_DATA, where + ": label '" + l.get<std::string>() + "' is not one of the bundle's classes");
                e.label = it - labels.begin();
            } else if (l.is_number_integer() && l.get<int64_t>() >= 0 && l.get<int64_t>() < (int64_t)labels.size()) {
                e.label = l.get<int64_t>();
            } else {
                fail(ET_ERR_DATA, where + ": 'label' is not a class name or an index below " + std::to_string(labels.size()));
            }
        }
        set.rows.push_back(std::move(e));
        set.where.push_back(where);
        ++added;
    }
    if (in.bad()) fail(ET_ERR_IO, path + ": read error");
    if (!added) fail(ET_ERR_DATA, path + ": no examples");
}

}  // namespace et::rt
