#include "data.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core.h"
#include "error.h"
#include "tokenizer.h"

namespace et::rt {

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
        for (int64_t l : e.token_labels) mix((uint64_t)l);  // none for classify and {"text"} rows: digests as before
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
    // a causal LM's token labels (the graph shifts them): the example's, or every real token; padding ignored
    out.labels.assign(rows * length, IGNORE_INDEX);
    for (size_t r = 0; r < rows; ++r) {
        const Example &e = set.rows[indices[r]];
        const auto &labels = e.token_labels.empty() ? e.ids : e.token_labels;
        std::copy(labels.begin(), labels.end(), out.labels.begin() + r * length);
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

namespace {

size_t char_count(const std::string &s) {
    size_t n = 0;
    for (unsigned char c : s) n += (c & 0xC0) != 0x80;
    return n;
}

// s cut to its first (from_end: last) n code points, as Python's s[:n] (s[-n:])
std::string cut_chars(const std::string &s, size_t n, bool from_end) {
    const size_t total = char_count(s);
    if (total <= n) return s;
    size_t skip = from_end ? total - n : n, at = 0;
    for (; at < s.size(); ++at)
        if ((static_cast<unsigned char>(s[at]) & 0xC0) != 0x80 && skip-- == 0) break;
    return from_end ? s.substr(at) : s.substr(0, at);
}

// encode.py's char_budget: characters of a record that can hold its first max_length tokens
size_t char_budget(int64_t max_length) { return (size_t)std::max<int64_t>(1, max_length) * et::tok::CHARS_PER_TOKEN; }

std::string replace_all(std::string s, const std::string &from, const std::string &to) {
    for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) s.replace(at, from.size(), to);
    return s;
}

}  // namespace

void TextEncoder::text(const std::string &text, int64_t label, const std::string &where, Example &out) const {
    if (!b_.verbalizer_words.empty()) return verbalized(text, label, where, out);
    try {
        out.ids = tokenizer_().encode_record(text, (size_t)b_.max_length);
    } catch (const et::tok::Error &e) {
        fail(ET_ERR_DATA, where + ": " + e.what());
    }
    out.label = b_.task == "classify" ? label : 0;
    out.token_labels.clear();  // a {"text"} record trains on every token
}

void TextEncoder::verbalized(const std::string &text, int64_t label, const std::string &where, Example &out) const {
    // encode.py encode_verbalized: the prompt keeps its end (the template's cue), then " word"; the word is the target
    if (b_.max_length < 2)
        fail(ET_ERR_DATA, "max_length must be at least 2 with a verbaliser (a prompt token and the word)");
    const size_t budget = char_budget(b_.max_length);
    const std::string prompt = cut_chars(replace_all(b_.verbalizer_template, "{text}", cut_chars(text, budget, true)),
                                         budget, true);
    const std::string &word = b_.verbalizer_words[(size_t)label];
    const int64_t word_id = b_.verbalizer_ids[(size_t)label];
    std::vector<size_t> ends;
    std::vector<int64_t> ids;
    try {
        ids = tokenizer_().encode(prompt + " " + word, true, std::nullopt, ends);
    } catch (const et::tok::Error &e) {
        fail(ET_ERR_DATA, where + ": " + e.what());
    }
    const size_t prompt_chars = char_count(prompt);
    size_t at = 0;
    while (at < ends.size() && ends[at] <= prompt_chars) ++at;
    if (at == ends.size() || ids[at] != word_id || at == 0)
        fail(ET_ERR_DATA, where + ": \" " + word + "\" is not one token after this prompt; end the template without a "
                                  "trailing space");
    // tokens after the word cannot change the logits before it (causal attention): cut, and keep max_length
    const size_t start = at + 1 > (size_t)b_.max_length ? at + 1 - (size_t)b_.max_length : 0;
    out.ids.assign(ids.begin() + (long)start, ids.begin() + (long)at + 1);
    out.token_labels.assign(out.ids.size(), IGNORE_INDEX);
    out.token_labels.back() = word_id;
    out.label = label;
}

bool TextEncoder::prompt(const std::string &prompt, const std::string &completion, const std::string &where,
                         Example &out) const {
    if (b_.task != "lm" || !b_.verbalizer_words.empty())
        fail(ET_ERR_DATA, where + ": prompt/completion records are language-model data; this bundle classifies");
    // encode.py encode_lm: the completion ends with the eos token (as TRL), the whole cut to the char budget and
    // encoded with the special tokens; every token from the first that ends inside the completion is a target
    const bool add_eos = !b_.eos_token.empty() && (completion.size() < b_.eos_token.size() ||
                         completion.compare(completion.size() - b_.eos_token.size(), std::string::npos, b_.eos_token) != 0);
    const std::string text = cut_chars(prompt + completion + (add_eos ? b_.eos_token : ""), char_budget(b_.max_length), false);
    std::vector<size_t> ends;
    try {
        out.ids = tokenizer_().encode(text, true, (size_t)b_.max_length, ends);
    } catch (const et::tok::Error &e) {
        fail(ET_ERR_DATA, where + ": " + e.what());
    }
    const size_t prompt_chars = char_count(prompt);
    size_t first = 0;
    while (first < ends.size() && ends[first] <= prompt_chars) ++first;
    if (first == ends.size()) return false;
    out.token_labels.assign(out.ids.size(), IGNORE_INDEX);
    std::copy(out.ids.begin() + (long)first, out.ids.end(), out.token_labels.begin() + (long)first);
    out.label = 0;
    return true;
}

void check_example(const Bundle &b, Example &e, const std::string &where) {
    if (e.ids.empty()) fail(ET_ERR_DATA, where + ": no tokens");
    for (int64_t id : e.ids)
        if (id < 0) fail(ET_ERR_DATA, where + ": negative token id");
    if (!e.token_labels.empty() && e.token_labels.size() != e.ids.size())
        fail(ET_ERR_DATA, where + ": " + std::to_string(e.token_labels.size()) + " token labels for " +
                              std::to_string(e.ids.size()) + " token ids");
    for (int64_t l : e.token_labels)
        if (l < 0 && l != IGNORE_INDEX) fail(ET_ERR_DATA, where + ": a token label is neither a token id nor -100");
    if (!b.labels.empty() && (e.label < 0 || (size_t)e.label >= b.labels.size()))
        fail(ET_ERR_DATA, where + ": label " + std::to_string(e.label) + " is not below the " +
                              std::to_string(b.labels.size()) + " classes");
    const size_t max = (size_t)b.max_length;
    if (!b.verbalizer_words.empty()) {
        // a verbaliser example ends with its class's word, the one target; the prompt keeps its end
        const int64_t word = b.verbalizer_ids[(size_t)e.label];
        if (e.ids.size() < 2 || e.ids.back() != word)
            fail(ET_ERR_DATA, where + ": a verbaliser example's ids end with its class's word (token " +
                                  std::to_string(word) + " for '" + b.labels[(size_t)e.label] + "'), after a prompt");
        if (e.ids.size() > max) e.ids.erase(e.ids.begin(), e.ids.end() - (long)max);
        e.token_labels.assign(e.ids.size(), IGNORE_INDEX);
        e.token_labels.back() = word;
        return;
    }
    if (e.ids.size() > max) e.ids.resize(max);
    if (e.token_labels.size() > max) e.token_labels.resize(max);
    if (b.task != "lm") e.token_labels.clear();
}

namespace {

// "label": a class name or index, for a bundle with classes
int64_t class_of(const nlohmann::json &j, const std::vector<std::string> &labels, const std::string &where) {
    if (!j.contains("label")) fail(ET_ERR_DATA, where + ": no 'label'");
    const auto &l = j["label"];
    if (l.is_string()) {
        auto it = std::find(labels.begin(), labels.end(), l.get<std::string>());
        if (it == labels.end()) fail(ET_ERR_DATA, where + ": label '" + l.get<std::string>() + "' is not one of the bundle's classes");
        return it - labels.begin();
    }
    if (l.is_number_integer() && l.get<int64_t>() >= 0 && l.get<int64_t>() < (int64_t)labels.size()) return l.get<int64_t>();
    fail(ET_ERR_DATA, where + ": 'label' is not a class name or an index below " + std::to_string(labels.size()));
}

std::string text_field(const nlohmann::json &j, const char *key, const std::string &where) {
    const auto &v = j[key];
    if (!v.is_string()) fail(ET_ERR_DATA, where + ": '" + key + "' is not a string");
    const std::string s = v.get<std::string>();
    if (s.find_first_not_of(" \t\r\n\f\v") == std::string::npos) fail(ET_ERR_DATA, where + ": '" + key + "' is empty");
    return s;
}

std::vector<int64_t> int_list(const nlohmann::json &j, const char *key, const std::string &where, bool labels) {
    if (!j[key].is_array() || j[key].empty()) fail(ET_ERR_DATA, where + ": '" + key + "' is not a non-empty list");
    std::vector<int64_t> out;
    for (const auto &v : j[key]) {
        if (!v.is_number_integer() || (v.get<int64_t>() < 0 && !(labels && v.get<int64_t>() == IGNORE_INDEX)))
            fail(ET_ERR_DATA, where + ": '" + key + "' holds a value that is not a token id" + (labels ? " or -100" : ""));
        out.push_back(v.get<int64_t>());
    }
    return out;
}

}  // namespace

void load_jsonl(const std::string &path, const Bundle &b, const TextEncoder &encode, Examples &set,
                std::vector<std::string> &skipped) {
    std::ifstream in(path);
    if (!in) fail(ET_ERR_IO, path + ": cannot be read");
    std::string line, first_format;
    size_t number = 0, added = 0;
    while (std::getline(in, line)) {
        ++number;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        const std::string where = path + ":" + std::to_string(number);
        nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
        if (j.is_discarded() || !j.is_object()) fail(ET_ERR_DATA, where + ": not a JSON object");
        if (j.contains("messages"))
            fail(ET_ERR_DATA, where + ": {\"messages\"} records are rendered by the model's Jinja chat template, which "
                                      "only edgetune in Python runs; give {\"ids\", \"labels\"} as it encodes them");
        const std::string format = j.contains("ids") ? "ids" : j.contains("prompt") || j.contains("completion")
                                   ? "prompt/completion" : j.contains("text") ? "text" : "";
        if (format.empty()) fail(ET_ERR_DATA, where + ": no 'ids', 'text' or 'prompt'/'completion'");
        if (first_format.empty()) first_format = format;
        if (format != first_format && format != "ids" && first_format != "ids")
            fail(ET_ERR_DATA, where + ": record uses " + format + " but the file began with " + first_format +
                                  "; a file must use one format");
        Example e;
        e.label = b.labels.empty() ? 0 : class_of(j, b.labels, where);
        if (format == "ids") {
            e.ids = int_list(j, "ids", where, false);
            if (j.contains("labels")) {
                if (b.task != "lm") fail(ET_ERR_DATA, where + ": token 'labels' are for an lm bundle");
                e.token_labels = int_list(j, "labels", where, true);
            }
        } else if (format == "text") {
            encode.text(text_field(j, "text", where), e.label, where, e);
        } else if (!encode.prompt(text_field(j, "prompt", where), text_field(j, "completion", where), where, e)) {
            skipped.push_back(where);
            continue;
        }
        check_example(b, e, where);
        set.rows.push_back(std::move(e));
        set.where.push_back(where);
        ++added;
    }
    if (in.bad()) fail(ET_ERR_IO, path + ": read error");
    if (!added && !skipped.empty())
        fail(ET_ERR_DATA, skipped.front() + ": completion entirely beyond max_length " + std::to_string(b.max_length) +
                              ", as in every example; nothing to train on");
    if (!added) fail(ET_ERR_DATA, path + ": no examples");
}

}  // namespace et::rt
