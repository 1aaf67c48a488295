// WordPiece and BPE on one pre-tokenized word, as Hugging Face tokenizers 0.22 runs them.
#include <cstdio>
#include <queue>

#include "internal.h"
#include "tokenizer.h"

namespace et::tok {
namespace {

size_t utf8_length(unsigned char lead) { return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4; }

size_t count_chars(std::string_view s) {
    size_t n = 0;
    for (unsigned char c : s) n += (c & 0xC0) != 0x80;
    return n;
}

// Start of the last UTF-8 character of s (non-empty).
size_t last_char_start(std::string_view s) {
    size_t i = s.size() - 1;
    while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
    return i;
}

}  // namespace

void WordPiece::tokenize(std::string_view word, std::vector<int64_t> &ids, std::vector<size_t> *chars) const {
    const size_t first = ids.size(), first_chars = chars ? chars->size() : 0;
    auto unk = [&] {
        if (unk_id < 0) throw Error("WordPiece: unk_token '" + unk_token + "' is not in the vocabulary");
        ids.push_back(unk_id);
        if (chars) chars->resize(first_chars), chars->push_back(count_chars(word));
    };
    if (count_chars(word) > max_input_chars_per_word) return unk();
    std::string candidate;
    for (size_t start = 0; start < word.size();) {
        // greedy longest match, shortened one character at a time from the end
        size_t end = word.size();
        std::optional<int64_t> found;
        while (start < end) {
            std::string_view piece = word.substr(start, end - start);
            if (start > 0) {
                candidate.assign(prefix).append(piece);
                piece = candidate;
            }
            if ((found = vocab.find(piece))) break;
            end = start + last_char_start(word.substr(start, end - start));
        }
        if (!found) {  // one unknown piece makes the whole word one [UNK]
            ids.resize(first);
            return unk();
        }
        ids.push_back(*found);
        if (chars) chars->push_back(count_chars(word.substr(start, end - start)));
        start = end;
    }
}

namespace {

struct Symbol {
    int64_t id;
    long prev, next;
    size_t len;  // bytes of the word it covers; 0 marks a symbol merged into its left neighbour
    size_t chars;  // characters of the word it covers (offsets)
};

struct Merge {
    size_t pos;
    uint32_t rank;
    int64_t new_id;
    // std::priority_queue pops the largest: invert so that the lowest rank, then the leftmost, comes first
    bool operator<(const Merge &o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

}  // namespace

void Bpe::tokenize(std::string_view word, std::vector<int64_t> &ids, std::vector<size_t> *chars) const {
    if (word.empty()) return;
    if (ignore_merges) {
        if (auto id = vocab.find(word)) {
            if (chars) chars->push_back(count_chars(word));
            return ids.push_back(*id);
        }
    }

    // Characters to ids (BPE::merge_word): unknown characters become byte tokens or a (fused) unk.
    std::vector<Symbol> symbols;
    symbols.reserve(word.size());
    auto add = [&](int64_t id, size_t len, size_t n_chars) {
        const long at = long(symbols.size());
        if (at > 0) symbols.back().next = at;
        symbols.push_back({id, at - 1, -1, len, n_chars});
    };
    // the pending unk: bytes and characters it covers (0: none); flushed when a known character follows
    size_t unk_len = 0, unk_chars = 0;
    auto flush_unk = [&] {
        if (unk_len) add(*unk_id, unk_len, unk_chars), unk_len = 0, unk_chars = 0;
    };
    std::string piece;
    for (size_t i = 0; i < word.size();) {
        const size_t len = utf8_length(static_cast<unsigned char>(word[i]));
        const bool is_first = i == 0, is_last = i + len >= word.size();
        piece.assign(word.substr(i, len));
        if (!is_first && prefix) piece.insert(0, *prefix);
        if (is_last && suffix) piece += *suffix;
        i += len;
        if (auto id = vocab.find(piece)) {
            flush_unk();
            add(*id, len, 1);
            continue;
        }
        if (byte_fallback) {
            std::vector<int64_t> bytes;
            for (unsigned char b : piece) {
                char code[8];
                std::snprintf(code, sizeof code, "<0x%02X>", b);
                auto id = vocab.find(code);
                if (!id) break;
                bytes.push_back(*id);
            }
            if (bytes.size() == piece.size()) {  // Hugging Face leaves a pending unk pending here
                for (size_t k = 0; k < bytes.size(); ++k) add(bytes[k], 1, k == 0);
                continue;
            }
        }
        if (unk_token) {
            if (!unk_id) throw Error("BPE: unk_token '" + *unk_token + "' is not in the vocabulary");
            if (!fuse_unk) flush_unk();
            unk_len += len;
            ++unk_chars;
        }  // no unk_token: the character is dropped
    }
    flush_unk();

    // Word::merge_all: a heap of candidate merges, lowest rank first, stale entries skipped.
    std::priority_queue<Merge> queue;
    auto candidate = [&](size_t pos, int64_t left, int64_t right) {
        auto it = merges.find(pair_key(left, right));
        if (it != merges.end()) queue.push({pos, it->second.first, it->second.second});
    };
    for (size_t k = 0; k + 1 < symbols.size(); ++k) candidate(k, symbols[k].id, symbols[k + 1].id);
    while (!queue.empty()) {
        const Merge top = queue.top();
        queue.pop();
        Symbol &cur = symbols[top.pos];
        if (cur.len == 0 || cur.next == -1) continue;
        const Symbol right = symbols[size_t(cur.next)];
        auto it = merges.find(pair_key(cur.id, right.id));
        if (it == merges.end() || it->second.second != top.new_id) continue;  // expired entry
        cur.id = top.new_id;
        cur.len += right.len;
        cur.chars += right.chars;
        symbols[size_t(cur.next)].len = 0;
        cur.next = right.next;
        if (right.next >= 0) symbols[size_t(right.next)].prev = long(top.pos);
        if (cur.prev >= 0) candidate(size_t(cur.prev), symbols[size_t(cur.prev)].id, cur.id);
        if (cur.next >= 0) candidate(top.pos, cur.id, symbols[size_t(cur.next)].id);
    }
    for (const Symbol &s : symbols) {
        if (s.len == 0) continue;
        ids.push_back(s.id);
        if (chars) chars->push_back(s.chars);
    }
}

}  // namespace et::tok
