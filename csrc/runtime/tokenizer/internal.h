/* internal.h — the stages of the tokenizer (not installed): normaliser, pre-tokenizers, models.
 * Each mirrors one Hugging Face tokenizers component; the comments name where they differ from the
 * obvious reading, because that is where parity of ids is decided. */
#ifndef EDGETUNE_TOKENIZER_INTERNAL_H
#define EDGETUNE_TOKENIZER_INTERNAL_H
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace et::tok {

// token string -> id, looked up by string_view without building a std::string per lookup.
class Vocab {
public:
    void add(std::string token, int64_t id) {
        store_.push_back(std::move(token));
        map_[store_.back()] = id;  // a repeated token keeps its last id, as a JSON object read into a map does
    }
    std::optional<int64_t> find(std::string_view token) const {
        auto it = map_.find(token);
        if (it == map_.end()) return std::nullopt;
        return it->second;
    }
    size_t size() const { return map_.size(); }
    int64_t max_id() const {
        int64_t m = -1;
        for (const auto &kv : map_) m = kv.second > m ? kv.second : m;
        return m;
    }

private:
    std::deque<std::string> store_;  // a deque never moves its elements: the views stay valid
    std::unordered_map<std::string_view, int64_t> map_;
};

// BertNormalizer (the only normaliser edgetune's families use; absent or an empty Sequence is identity).
// align (offsets only): in, the source position of each character of text; out, of each normalised one.
// A character keeps the position of the one it came from (a decomposition, a lower-case expansion and the
// spaces around a CJK character all take their source's), as Hugging Face's alignments do for an end offset.
struct BertNormalizer {
    bool clean_text = true, handle_chinese_chars = true, strip_accents = true, lowercase = true;
    void apply(std::u32string &text, std::vector<uint32_t> *align = nullptr) const;
};

// BertPreTokenizer: split on whitespace (dropped), isolate each punctuation character.
// starts (offsets only): the position in text of each word's first character.
void bert_pre_tokenize(std::u32string_view text, std::vector<std::u32string> &words,
                       std::vector<size_t> *starts = nullptr);

// ByteLevel: the GPT-2 regex split (use_regex), then every UTF-8 byte mapped to its printable character.
// bytes (offsets only): per word, the position in text of the character each of its bytes encodes (the
// prefix space takes the first character's, as Hugging Face aligns it) and whether that byte is a space.
struct WordBytes {
    std::vector<uint32_t> at;
    std::vector<bool> space;
};
struct ByteLevel {
    bool add_prefix_space = false, use_regex = true;
    void pre_tokenize(std::u32string_view text, std::vector<std::string> &words,
                      std::vector<WordBytes> *bytes = nullptr) const;
};

struct WordPiece {
    Vocab vocab;
    std::string unk_token = "[UNK]", prefix = "##";
    size_t max_input_chars_per_word = 100;
    int64_t unk_id = -1;  // resolved at load; -1: the vocabulary lacks it (an error only when needed)
    // chars (offsets only): per id, the characters of word it covers (an [UNK]: the whole word)
    void tokenize(std::string_view word, std::vector<int64_t> &ids, std::vector<size_t> *chars = nullptr) const;
};

struct Bpe {
    Vocab vocab;
    std::unordered_map<uint64_t, std::pair<uint32_t, int64_t>> merges;  // (left, right) -> (rank, merged id)
    std::optional<std::string> unk_token, prefix, suffix;  // continuing_subword_prefix, end_of_word_suffix
    bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
    std::optional<int64_t> unk_id;
    static uint64_t pair_key(int64_t a, int64_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
    // chars (offsets only): per id, the characters of word it covers (byte-fallback ids of one character:
    // the first takes it, the others none, so each ends where the character does, as Hugging Face's do)
    void tokenize(std::string_view word, std::vector<int64_t> &ids, std::vector<size_t> *chars = nullptr) const;
};

}  // namespace et::tok
#endif
