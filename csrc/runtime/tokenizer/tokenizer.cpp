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
    int64_t id;  // an added token's id, or -1: text still to tokenise
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

    // --- loading ---
    const json &field(const json &obj, const char *key, const std::string &where) const;
    void load_model(const json &model);
    void load_normalizer(const json &n);
    void load_pre_tokenizer(const json &p);
    void load_post_processor(const json &p);
    void load_added_tokens(const json &tokens);

    // --- encoding ---
    void normalize(std::u32string &text) const {
        if (normalizer) normalizer->apply(text);
    }
    void split_added(std::u32string_view text, const Matcher &m, std::vector<Piece> &out) const;
    void tokenize_piece(std::u32string_view text, std::vector<int64_t> &ids) const;
    std::vector<int64_t> tokens(std::string_view utf8) const;
    std::vector<int64_t> finish(std::vector<int64_t> ids, bool add_special, std::optional<size_t> max_length) const;
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
    if (type == "ByteLevel") return;  // it trims offsets only: the ids stay as they are
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
void Tokenizer::Impl::split_added(std::u32string_view text, const Matcher &m, std::vector<Piece> &out) const {
    if (m.empty()) {
        if (!text.empty()) out.push_back({std::u32string(text), -1});
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
        if (done < start) out.push_back({std::u32string(text.substr(done, start - done)), -1});
        out.push_back({std::u32string(), a.id});
        done = stop;
        i += len;  // the automaton resumes after the match itself, not after the stripped spaces
    }
    if (done < text.size()) out.push_back({std::u32string(text.substr(done)), -1});
}

void Tokenizer::Impl::tokenize_piece(std::u32string_view text, std::vector<int64_t> &ids) const {
    if (pre == Pre::ByteLevel) {
        std::vector<std::string> words;
        byte_level.pre_tokenize(text, words);
        for (const std::string &w : words) wordpiece ? wordpiece->tokenize(w, ids) : bpe->tokenize(w, ids);
        return;
    }
    std::vector<std::u32string> words;
    if (pre == Pre::Bert) {
        bert_pre_tokenize(text, words);
    } else {
        words.emplace_back(text);
    }
    for (const std::u32string &w : words) {
        const std::string utf8 = uni::to_utf8(w);
        wordpiece ? wordpiece->tokenize(utf8, ids) : bpe->tokenize(utf8, ids);
    }
}

std::vector<int64_t> Tokenizer::Impl::tokens(std::string_view utf8) const {
    const std::u32string text = decode(utf8, "text");
    std::vector<Piece> raw, pieces;
    split_added(text, raw_matcher, raw);
    for (Piece &p : raw) {
        if (p.id >= 0) {
            pieces.push_back(std::move(p));
            continue;
        }
        normalize(p.text);
        split_added(p.text, normalized_matcher, pieces);
    }
    std::vector<int64_t> ids;
    for (const Piece &p : pieces) {
        if (p.id >= 0) {
            ids.push_back(p.id);
        } else {
            tokenize_piece(p.text, ids);
        }
    }
    return ids;
}

std::vector<int64_t> Tokenizer::Impl::finish(std::vector<int64_t> ids, bool add_special,
                                             std::optional<size_t> max_length) const {
    if (max_length) {
        size_t limit = *max_length;
        if (add_special && n_special > 0) {
            // Hugging Face computes max_length - n_special in usize: below n_special it wraps around and
            // nothing is cut (tokenizers 0.22: max_length 1 with [CLS] ... [SEP] keeps every token).
            limit = *max_length < n_special ? ids.size() : *max_length - n_special;
        }
        if (ids.size() > limit) ids.resize(limit);
    }
    if (!add_special) return ids;
    for (const Template &t : post) {
        std::vector<int64_t> out;
        out.reserve(t.before.size() + ids.size() + t.after.size());
        out.insert(out.end(), t.before.begin(), t.before.end());
        out.insert(out.end(), ids.begin(), ids.end());
        out.insert(out.end(), t.after.begin(), t.after.end());
        ids.swap(out);
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
