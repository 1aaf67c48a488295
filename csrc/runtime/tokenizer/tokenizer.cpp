// Loading tokenizer.json and running the pipeline: added tokens, normaliser, pre-tokenizer, model,
// truncation, post-processor, in Hugging Face tokenizers' order (TokenizerImpl::encode_single_sequence).
#include "tokenizer.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "internal.h"
#include "unicode.h"

namespace et::tok {

using json = nlohmann::json;

namespace {

struct AddedToken {
    std::u32string content;  // matched as written (normalized: false) or as normalised (normalized: true)
    int64_t id;
    bool lstrip, rstrip;
};

// Leftmost-longest matching of the added tokens (Hugging Face builds an Aho-Corasick automaton with
// MatchKind::LeftmostLongest; a trie walked from each position gives the same matches).
class Matcher {
public:
    void add(const std::u32string &s, size_t token) {
        size_t node = 0;
        for (char32_t c : s) {
            const uint64_t key = (uint64_t(node) << 21) | c;
            auto it = edges_.find(key);
            if (it == edges_.end()) {
                it = edges_.emplace(key, terminal_.size()).first;
                terminal_.push_back(-1);
            }
            node = it->second;
        }
        if (terminal_[node] < 0) terminal_[node] = long(token);  // the first of equal contents wins
    }
    bool empty() const { return terminal_.size() == 1; }
    // Longest token starting at text[i]: (length, token) or length 0.
    std::pair<size_t, long> longest_at(std::u32string_view text, size_t i) const {
        std::pair<size_t, long> best{0, -1};
        size_t node = 0;
        for (size_t j = i; j < text.size(); ++j) {
            auto it = edges_.find((uint64_t(node) << 21) | text[j]);
            if (it == edges_.end()) break;
            node = it->second;
            if (terminal_[node] >= 0) best = {j + 1 - i, terminal_[node]};
        }
        return best;
    }

private:
    std::unordered_map<uint64_t, size_t> edges_;  // (node, code point) -> node
    std::vector<long> terminal_{-1};             // node -> token index, -1: none
};

struct Piece {
    std::u32string text;
    int64_t id;                // an added token's id, or -1: text still to tokenise
    std::vector<uint32_t> at;  // offsets only: the input position of each character of text
    uint32_t end = 0;          // offsets only: where an added token's match ends in the input
};

// Offsets being tracked: the input position of each character of a text, and the ends found so far.
struct Offsets {
    std::vector<size_t> ends;  // per id: Hugging Face's Encoding.offsets[i][1], in code points of the input
};

// One template of a post-processor for a single sequence: ids before and after it.
struct Template {
    std::vector<int64_t> before, after;
};

[[noreturn]] void refuse(const std::string &origin, const std::string &what) {
    throw Error(origin + ": " + what);
}

std::u32string decode(std::string_view utf8, const char *what) {
    std::u32string out;
    if (!uni::decode_utf8(utf8, out)) throw Error(std::string(what) + " is not valid UTF-8");
    return out;
}

}  // namespace

struct Tokenizer::Impl {
    std::string origin;
    Kind kind = Kind::WordPiece;
    std::optional<BertNormalizer> normalizer;  // none: identity
    enum class Pre { None, Bert, ByteLevel } pre = Pre::None;
    ByteLevel byte_level;
    std::optional<WordPiece> wordpiece;
    std::optional<Bpe> bpe;
    std::vector<AddedToken> added;
    Matcher raw_matcher, normalized_matcher;
    Vocab added_vocab;
    std::vector<Template> post;
    size_t n_special = 0;  // ids the post-processor adds to one sequence
    // a ByteLevel post-processor's trim_offsets (and its add_prefix_space): offsets only, ids never change
    bool trim_offsets = false, trim_keeps_prefix_space = false;

    // --- loading ---
    const json &field(const json &obj, const char *key, const std::string &where) const;
    void load_model(const json &model);
    void load_normalizer(const json &n);
    void load_pre_tokenizer(const json &p);
    void load_post_processor(const json &p);
    void load_added_tokens(const json &tokens);

    // --- encoding ---
    void normalize(std::u32string &text, std::vector<uint32_t> *align = nullptr) const {
        if (normalizer) normalizer->apply(text, align);
    }
    // at (offsets only): the input position of each character of text, passed on to the pieces
    void split_added(std::u32string_view text, const Matcher &m, std::vector<Piece> &out,
                     const std::vector<uint32_t> *at = nullptr) const;
    void tokenize_piece(const Piece &piece, std::vector<int64_t> &ids, Offsets *offsets) const;
    size_t trimmed_end(const WordBytes &bytes, size_t from, size_t to, bool first) const;
    std::vector<int64_t> tokens(std::string_view utf8, Offsets *offsets = nullptr) const;
    std::vector<int64_t> finish(std::vector<int64_t> ids, bool add_special, std::optional<size_t> max_length,
                                Offsets *offsets = nullptr) const;
};

const json &Tokenizer::Impl::field(const json &obj, const char *key, const std::string &where) const {
    auto it = obj.find(key);
    if (it == obj.end()) refuse(origin, where + " has no \"" + key + "\"");
    return *it;
}

namespace {

std::string type_of(const json &obj) {
    if (!obj.is_object()) return "(not an object)";
    auto it = obj.find("type");
    return it != obj.end() && it->is_string() ? it->get<std::string>() : "(no type)";
}

std::optional<std::string> optional_string(const json &obj, const char *key) {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return std::nullopt;
    return it->get<std::string>();
}

bool flag(const json &obj, const char *key, bool fallback) {
    auto it = obj.find(key);
    return it == obj.end() || it->is_null() ? fallback : it->get<bool>();
}

void read_vocab(const json &vocab, Vocab &out) {
    for (auto it = vocab.begin(); it != vocab.end(); ++it) out.add(it.key(), it.value().get<int64_t>());
}

// A Sequence holding exactly one supported element stands for that element; an empty one for none.
const json *unwrap_sequence(const json &obj, const char *list_key, const std::string &origin, const char *what) {
    if (obj.is_null() || type_of(obj) != "Sequence") return &obj;
    const json &items = obj.at(list_key);
    if (items.empty()) return nullptr;
    if (items.size() > 1)
        refuse(origin, std::string("a Sequence of ") + std::to_string(items.size()) + " " + what +
                           "s is not supported (edgetune's C++ tokenizer reads one)");
    return unwrap_sequence(items[0], list_key, origin, what);
}

}  // namespace

void Tokenizer::Impl::load_model(const json &model) {
    const std::string type = type_of(model);
    if (type == "WordPiece") {
        WordPiece wp;
        read_vocab(field(model, "vocab", "model"), wp.vocab);
        if (auto unk = optional_string(model, "unk_token")) wp.unk_token = *unk;
        if (auto prefix = optional_string(model, "continuing_subword_prefix")) wp.prefix = *prefix;
        if (model.contains("max_input_chars_per_word"))
            wp.max_input_chars_per_word = model["max_input_chars_per_word"].get<size_t>();
        wp.unk_id = wp.vocab.find(wp.unk_token).value_or(-1);
        wordpiece = std::move(wp);
        kind = Kind::WordPiece;
        return;
    }
    if (type != "BPE")
        refuse(origin, "model type '" + type + "' is not supported (edgetune's C++ tokenizer reads WordPiece "
                       "and byte-level BPE)");
    Bpe b;
    auto dropout = model.find("dropout");
    if (dropout != model.end() && !dropout->is_null() && dropout->get<double>() != 0.0)
        refuse(origin, "BPE dropout is random; a tokenizer for tuning needs it off (\"dropout\": null)");
    read_vocab(field(model, "vocab", "model"), b.vocab);
    b.unk_token = optional_string(model, "unk_token");
    b.prefix = optional_string(model, "continuing_subword_prefix");
    b.suffix = optional_string(model, "end_of_word_suffix");
    b.fuse_unk = flag(model, "fuse_unk", false);
    b.byte_fallback = flag(model, "byte_fallback", false);
    b.ignore_merges = flag(model, "ignore_merges", false);
    if (b.unk_token) b.unk_id = b.vocab.find(*b.unk_token);
    const size_t prefix_len = b.prefix ? b.prefix->size() : 0;
    uint32_t rank = 0;
    for (const json &m : field(model, "merges", "model")) {
        std::string left, right;
        if (m.is_string()) {  // the legacy "left right" form
            const std::string s = m.get<std::string>();
            const size_t space = s.find(' ');
            if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
                refuse(origin, "BPE merge '" + s + "' is not two tokens separated by one space");
            left = s.substr(0, space), right = s.substr(space + 1);
        } else {
            left = m.at(0).get<std::string>(), right = m.at(1).get<std::string>();
        }
        const auto a = b.vocab.find(left), c = b.vocab.find(right);
        if (!a || !c) refuse(origin, "BPE merge token '" + (a ? right : left) + "' is not in the vocabulary");
        const std::string merged = left + right.substr(std::min(prefix_len, right.size()));
        const auto id = b.vocab.find(merged);
        if (!id) refuse(origin, "BPE merge result '" + merged + "' is not in the vocabulary");
        b.merges[Bpe::pair_key(*a, *c)] = {rank++, *id};  // a repeated pair keeps its last rank, as in a map
    }
    bpe = std::move(b);
    kind = Kind::ByteLevelBpe;
}

void Tokenizer::Impl::load_normalizer(const json &n) {
    const json *one = unwrap_sequence(n, "normalizers", origin, "normalizer");
    if (!one || one->is_null()) return;
    const std::string type = type_of(*one);
    if (type != "BertNormalizer")
        refuse(origin, "normalizer '" + type + "' is not supported (edgetune's C++ tokenizer reads BertNormalizer "
                       "or none)");
    BertNormalizer b;
    b.clean_text = flag(*one, "clean_text", true);
    b.handle_chinese_chars = flag(*one, "handle_chinese_chars", true);
    b.lowercase = flag(*one, "lowercase", true);
    b.strip_accents = flag(*one, "strip_accents", b.lowercase);  // null: follow lowercase, as Hugging Face does
    normalizer = b;
}

void Tokenizer::Impl::load_pre_tokenizer(const json &p) {
    const json *one = unwrap_sequence(p, "pretokenizers", origin, "pre-tokenizer");
    if (!one || one->is_null()) return;
    const std::string type = type_of(*one);
    if (type == "BertPreTokenizer") {
        pre = Pre::Bert;
    } else if (type == "ByteLevel") {
        pre = Pre::ByteLevel;
        byte_level.add_prefix_space = flag(*one, "add_prefix_space", true);
        byte_level.use_regex = flag(*one, "use_regex", true);
    } else {
        refuse(origin, "pre-tokenizer '" + type + "' is not supported (edgetune's C++ tokenizer reads "
                       "BertPreTokenizer and ByteLevel)");
    }
}

void Tokenizer::Impl::load_post_processor(const json &p) {
    if (p.is_null()) return;
    const std::string type = type_of(p);
    if (type == "Sequence") {
        for (const json &one : field(p, "processors", "post_processor Sequence")) load_post_processor(one);
        return;
    }
    if (type == "ByteLevel") {  // it trims offsets only: the ids stay as they are
        trim_offsets = flag(p, "trim_offsets", true);
        trim_keeps_prefix_space = flag(p, "add_prefix_space", true);
        return;
    }
    Template t;
    if (type == "BertProcessing" || type == "RobertaProcessing") {
        t.before.push_back(field(p, "cls", type).at(1).get<int64_t>());
        t.after.push_back(field(p, "sep", type).at(1).get<int64_t>());
    } else if (type == "TemplateProcessing") {
        const json &specials = field(p, "special_tokens", type);
        int sequences = 0;
        for (const json &piece : field(p, "single", type)) {
            if (piece.contains("Sequence")) {
                if (piece["Sequence"].at("id").get<std::string>() != "A")
                    refuse(origin, "TemplateProcessing: the single template may hold only sequence A");
                ++sequences;
                continue;
            }
            const std::string name = piece.at("SpecialToken").at("id").get<std::string>();
            auto special = specials.find(name);
            if (special == specials.end())
                refuse(origin, "TemplateProcessing: special token '" + name + "' is not in special_tokens");
            auto &side = sequences ? t.after : t.before;
            for (const json &id : special->at("ids")) side.push_back(id.get<int64_t>());
        }
        if (sequences != 1) refuse(origin, "TemplateProcessing: the single template needs sequence A once");
    } else {
        refuse(origin, "post-processor '" + type + "' is not supported (edgetune's C++ tokenizer reads "
                       "TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel)");
    }
    n_special += t.before.size() + t.after.size();
    post.push_back(std::move(t));
}

void Tokenizer::Impl::load_added_tokens(const json &tokens) {
    for (const json &t : tokens) {
        const std::string content = t.at("content").get<std::string>();
        if (content.empty()) continue;  // Hugging Face skips empty added tokens
        if (flag(t, "single_word", false))
            refuse(origin, "added token '" + content + "' has single_word: true, which is not supported");
        AddedToken a{decode(content, ("added token of " + origin).c_str()), t.at("id").get<int64_t>(),
                     flag(t, "lstrip", false), flag(t, "rstrip", false)};
        added_vocab.add(content, a.id);
        // normalized tokens are matched on normalised text, so their pattern is their normalised content
        if (flag(t, "normalized", !flag(t, "special", false))) {
            std::u32string pattern = a.content;
            normalize(pattern);
            normalized_matcher.add(pattern, added.size());
        } else {
            raw_matcher.add(a.content, added.size());
        }
        added.push_back(std::move(a));
    }
}

// AddedVocabulary::find_matches: the text cut into added tokens and the runs between them; empty runs go.
void Tokenizer::Impl::split_added(std::u32string_view text, const Matcher &m, std::vector<Piece> &out,
                                  const std::vector<uint32_t> *at) const {
    auto run = [&](size_t from, size_t to) {
        Piece p{std::u32string(text.substr(from, to - from)), -1, {}, 0};
        if (at) p.at.assign(at->begin() + long(from), at->begin() + long(to));
        out.push_back(std::move(p));
    };
    if (m.empty()) {
        if (!text.empty()) run(0, text.size());
        return;
    }
    size_t done = 0;  // end of the last piece emitted
    for (size_t i = 0; i < text.size();) {
        const auto [len, token] = m.longest_at(text, i);
        if (len == 0) {
            ++i;
            continue;
        }
        const AddedToken &a = added[size_t(token)];
        size_t start = i, stop = i + len;
        if (a.lstrip) {  // swallow the whitespace before it, but not what an earlier match took
            size_t s = start;
            while (s > 0 && uni::has(text[s - 1], uni::Flag::WHITESPACE)) --s;
            start = std::max(s, done);
        }
        if (a.rstrip)
            while (stop < text.size() && uni::has(text[stop], uni::Flag::WHITESPACE)) ++stop;
        if (done < start) run(done, start);
        out.push_back({std::u32string(), a.id, {}, at ? (*at)[stop - 1] + 1 : 0});
        done = stop;
        i += len;  // the automaton resumes after the match itself, not after the stripped spaces
    }
    if (done < text.size()) run(done, text.size());
}

// A byte-level token's end after trim_offsets (ByteLevel's process_offsets, on byte offsets): leading and
// trailing spaces leave its offsets, except a lone leading space the processor's add_prefix_space added.
size_t Tokenizer::Impl::trimmed_end(const WordBytes &bytes, size_t from, size_t to, bool first) const {
    size_t leading = 0, trailing = 0;
    while (from + leading < to && bytes.space[from + leading]) ++leading;
    while (to - trailing > from && bytes.space[to - trailing - 1]) ++trailing;
    if (first && trim_keeps_prefix_space && leading == 1) leading = 0;
    const size_t start = std::min(from + leading, to);
    return trailing ? std::max(to - trailing, start) : to;
}

void Tokenizer::Impl::tokenize_piece(const Piece &piece, std::vector<int64_t> &ids, Offsets *offsets) const {
    const std::u32string_view text = piece.text;
    std::vector<size_t> chars;  // offsets only: characters (byte-level: bytes) of the word per id
    std::vector<size_t> *counts = offsets ? &chars : nullptr;
    auto model = [&](std::string_view word) {
        chars.clear();
        wordpiece ? wordpiece->tokenize(word, ids, counts) : bpe->tokenize(word, ids, counts);
    };
    if (pre == Pre::ByteLevel) {
        std::vector<std::string> words;
        std::vector<WordBytes> bytes;
        byte_level.pre_tokenize(text, words, offsets ? &bytes : nullptr);
        for (size_t w = 0; w < words.size(); ++w) {
            const size_t first_id = ids.size();
            model(words[w]);
            if (!offsets) continue;
            for (size_t k = 0, pos = 0; k < chars.size(); ++k) {
                const size_t from = pos, to = pos += chars[k];
                const bool first = first_id + k == 0 || piece.at[bytes[w].at[from < to ? from : to - 1]] == 0;
                const size_t end = trim_offsets ? trimmed_end(bytes[w], from, to, first) : to;
                // trimmed to nothing at the word's start: the end is where the word starts
                offsets->ends.push_back(end ? piece.at[bytes[w].at[end - 1]] + 1 : piece.at[bytes[w].at[0]]);
            }
        }
        return;
    }
    std::vector<std::u32string> words;
    std::vector<size_t> starts;
    if (pre == Pre::Bert) {
        bert_pre_tokenize(text, words, offsets ? &starts : nullptr);
    } else {
        words.emplace_back(text);
        starts.push_back(0);
    }
    for (size_t w = 0; w < words.size(); ++w) {
        model(uni::to_utf8(words[w]));
        if (!offsets) continue;
        size_t pos = starts[w];
        for (size_t c : chars) offsets->ends.push_back(piece.at[(pos += c) - 1] + 1);
    }
}

std::vector<int64_t> Tokenizer::Impl::tokens(std::string_view utf8, Offsets *offsets) const {
    const std::u32string text = decode(utf8, "text");
    std::vector<uint32_t> identity;
    if (offsets) {
        identity.resize(text.size());
        for (size_t i = 0; i < text.size(); ++i) identity[i] = uint32_t(i);
    }
    std::vector<Piece> raw, pieces;
    split_added(text, raw_matcher, raw, offsets ? &identity : nullptr);
    for (Piece &p : raw) {
        if (p.id >= 0) {
            pieces.push_back(std::move(p));
            continue;
        }
        normalize(p.text, offsets ? &p.at : nullptr);
        split_added(p.text, normalized_matcher, pieces, offsets ? &p.at : nullptr);
    }
    std::vector<int64_t> ids;
    for (const Piece &p : pieces) {
        if (p.id >= 0) {
            ids.push_back(p.id);
            if (offsets) offsets->ends.push_back(p.end);
        } else {
            tokenize_piece(p, ids, offsets);
        }
    }
    return ids;
}

std::vector<int64_t> Tokenizer::Impl::finish(std::vector<int64_t> ids, bool add_special,
                                             std::optional<size_t> max_length, Offsets *offsets) const {
    if (max_length) {
        size_t limit = *max_length;
        if (add_special && n_special > 0) {
            // Hugging Face computes max_length - n_special in usize: below n_special it wraps around and
            // nothing is cut (tokenizers 0.22: max_length 1 with [CLS] ... [SEP] keeps every token).
            limit = *max_length < n_special ? ids.size() : *max_length - n_special;
        }
        if (ids.size() > limit) ids.resize(limit);
        if (offsets && offsets->ends.size() > limit) offsets->ends.resize(limit);
    }
    if (!add_special) return ids;
    for (const Template &t : post) {
        std::vector<int64_t> out;
        out.reserve(t.before.size() + ids.size() + t.after.size());
        out.insert(out.end(), t.before.begin(), t.before.end());
        out.insert(out.end(), ids.begin(), ids.end());
        out.insert(out.end(), t.after.begin(), t.after.end());
        ids.swap(out);
        if (offsets) {  // the special tokens' offsets are (0, 0)
            offsets->ends.insert(offsets->ends.begin(), t.before.size(), 0);
            offsets->ends.insert(offsets->ends.end(), t.after.size(), 0);
        }
    }
    return ids;
}

// ---- public surface ----

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer &&) noexcept = default;
Tokenizer &Tokenizer::operator=(Tokenizer &&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(path + ": cannot open the tokenizer file");
    std::ostringstream text;
    text << in.rdbuf();
    if (!in.good() && !in.eof()) throw Error(path + ": cannot read the tokenizer file");
    return from_json(text.str(), path);
}

Tokenizer Tokenizer::from_json(std::string_view text, const std::string &origin) {
    json doc;
    try {
        doc = json::parse(text.begin(), text.end());
    } catch (const json::exception &e) {
        throw Error(origin + ": not a valid tokenizer.json (" + e.what() + ")");
    }
    if (!doc.is_object() || !doc.contains("model"))
        throw Error(origin + ": not a valid tokenizer.json (no \"model\")");
    auto impl = std::make_unique<Impl>();
    impl->origin = origin;
    try {
        impl->load_model(doc["model"]);
        impl->load_normalizer(doc.value("normalizer", json()));
        impl->load_pre_tokenizer(doc.value("pre_tokenizer", json()));
        impl->load_post_processor(doc.value("post_processor", json()));
        if (impl->bpe && impl->pre != Impl::Pre::ByteLevel)
            refuse(origin, "BPE without the ByteLevel pre-tokenizer (SentencePiece style) is not supported");
        impl->load_added_tokens(doc.value("added_tokens", json::array()));
    } catch (const json::exception &e) {  // a field of the wrong JSON type
        throw Error(origin + ": malformed tokenizer.json (" + e.what() + ")");
    }
    return Tokenizer(std::move(impl));
}

std::vector<int64_t> Tokenizer::encode(std::string_view utf8, bool add_special) const {
    return impl_->finish(impl_->tokens(utf8), add_special, std::nullopt);
}

std::vector<int64_t> Tokenizer::encode(std::string_view utf8, bool add_special, size_t max_length) const {
    return impl_->finish(impl_->tokens(utf8), add_special, max_length);
}

std::vector<int64_t> Tokenizer::encode(std::string_view utf8, bool add_special, std::optional<size_t> max_length,
                                       std::vector<size_t> &ends) const {
    Offsets offsets;
    std::vector<int64_t> ids = impl_->finish(impl_->tokens(utf8, &offsets), add_special, max_length, &offsets);
    ends.swap(offsets.ends);
    return ids;
}

std::vector<int64_t> Tokenizer::encode_record(std::string_view utf8, size_t max_length) const {
    size_t budget = std::max<size_t>(1, max_length) * CHARS_PER_TOKEN, end = 0;
    for (; end < utf8.size(); ++end) {  // cut after `budget` code points (a lead byte starts each)
        if ((static_cast<unsigned char>(utf8[end]) & 0xC0) != 0x80 && budget-- == 0) break;
    }
    return encode(utf8.substr(0, end), true, max_length);
}

Kind Tokenizer::kind() const { return impl_->kind; }

const char *Tokenizer::kind_name() const { return impl_->kind == Kind::WordPiece ? "wordpiece" : "bpe-bytelevel"; }

std::optional<int64_t> Tokenizer::token_to_id(std::string_view token) const {
    if (auto id = impl_->added_vocab.find(token)) return id;
    return impl_->wordpiece ? impl_->wordpiece->vocab.find(token) : impl_->bpe->vocab.find(token);
}

size_t Tokenizer::id_limit() const {
    int64_t m = impl_->wordpiece ? impl_->wordpiece->vocab.max_id() : impl_->bpe->vocab.max_id();
    for (const AddedToken &a : impl_->added) m = std::max(m, a.id);
    for (const Template &t : impl_->post) {
        for (int64_t id : t.before) m = std::max(m, id);
        for (int64_t id : t.after) m = std::max(m, id);
    }
    return size_t(m + 1);
}

}  // namespace et::tok
