// BertNormalizer, BertPreTokenizer and ByteLevel, as Hugging Face tokenizers 0.22 runs them.
#include <array>

#include "internal.h"
#include "unicode.h"

namespace et::tok {

using uni::Flag;

void BertNormalizer::apply(std::u32string &text, std::vector<uint32_t> *align) const {
    std::u32string out;
    std::vector<uint32_t> at;  // align's entries for out
    out.reserve(text.size());
    for (size_t i = 0; i < text.size(); ++i) {
        char32_t cp = text[i];
        const uint16_t f = uni::flags(cp);
        if (clean_text && (f & Flag::CLEAN_REMOVE)) continue;  // removal is tested before the whitespace map
        if (clean_text && (f & Flag::CLEAN_SPACE)) cp = U' ';
        if (handle_chinese_chars && (f & Flag::CHINESE)) {
            out.push_back(U' ');
            out.push_back(cp);
            out.push_back(U' ');
        } else {
            out.push_back(cp);
        }
        if (align) at.resize(out.size(), (*align)[i]);
    }
    if (strip_accents) {
        // NFD of the whole text (marks reorder across characters), then every Mn dropped
        std::u32string decomposed;
        uni::nfd(out, decomposed);
        std::vector<uint32_t> decomposed_at;
        if (align) {  // each character's decomposition takes its position (reordering moves marks only)
            std::u32string one;
            for (size_t i = 0; i < out.size(); ++i) {
                one.clear();
                uni::nfd(std::u32string_view(&out[i], 1), one);
                decomposed_at.insert(decomposed_at.end(), one.size(), at[i]);
            }
        }
        out.clear();
        at.clear();
        for (size_t i = 0; i < decomposed.size(); ++i) {
            if (uni::has(decomposed[i], Flag::MARK_NONSPACING)) continue;
            out.push_back(decomposed[i]);
            if (align) at.push_back(decomposed_at[i]);
        }
    }
    if (lowercase) {
        // per character (Rust's char::to_lowercase): no final-sigma rule, unlike str::to_lowercase
        text.clear();
        std::vector<uint32_t> lowered_at;
        for (size_t i = 0; i < out.size(); ++i) {
            uni::lowercase(out[i], text);
            if (align) lowered_at.resize(text.size(), at[i]);
        }
        at.swap(lowered_at);
    } else {
        text.swap(out);
    }
    if (align) align->swap(at);
}

void bert_pre_tokenize(std::u32string_view text, std::vector<std::u32string> &words, std::vector<size_t> *starts) {
    std::u32string word;
    size_t start = 0;
    auto flush = [&] {
        if (!word.empty()) {
            words.push_back(std::move(word));
            if (starts) starts->push_back(start);
        }
        word.clear();
    };
    for (size_t i = 0; i < text.size(); ++i) {
        const char32_t cp = text[i];
        const uint16_t f = uni::flags(cp);
        if (f & Flag::WHITESPACE) {
            flush();
        } else if (f & Flag::BERT_PUNCT) {
            flush();
            words.emplace_back(1, cp);
            if (starts) starts->push_back(i);
        } else {
            if (word.empty()) start = i;
            word.push_back(cp);
        }
    }
    flush();
}

namespace {

// GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 onwards.
const std::array<std::string, 256> &byte_chars() {
    static const std::array<std::string, 256> table = [] {
        std::array<std::string, 256> t;
        char32_t next = 256;
        for (int b = 0; b < 256; ++b) {
            const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
            uni::append_utf8(printable ? char32_t(b) : next++, t[b]);
        }
        return t;
    }();
    return table;
}

enum class Class { Space, Letter, Number, Other };

Class class_of(char32_t cp) {
    const uint16_t f = uni::flags(cp);
    if (f & Flag::REGEX_SPACE) return Class::Space;
    if (f & Flag::LETTER) return Class::Letter;
    if (f & Flag::NUMBER) return Class::Number;
    return Class::Other;
}

size_t run_end(std::u32string_view s, size_t i, Class c) {
    while (i < s.size() && class_of(s[i]) == c) ++i;
    return i;
}

// End of the match of 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ at i,
// alternatives tried in order as Oniguruma does. Every character is in one class, so matches tile the text.
size_t match_at(std::u32string_view s, size_t i) {
    const size_t n = s.size();
    if (s[i] == U'\'' && i + 1 < n) {
        const char32_t a = s[i + 1];
        if (a == U's' || a == U't' || a == U'm' || a == U'd') return i + 2;
        if (i + 2 < n) {
            const char32_t b = s[i + 2];
            if ((a == U'r' && b == U'e') || (a == U'v' && b == U'e') || (a == U'l' && b == U'l')) return i + 3;
        }
    }
    if (s[i] == U' ' && i + 1 < n) {  // " ?X+": the space joins a following letter/number/other run
        const Class next = class_of(s[i + 1]);
        if (next != Class::Space) return run_end(s, i + 1, next);
    }
    const Class c = class_of(s[i]);
    if (c != Class::Space) return run_end(s, i, c);
    const size_t j = run_end(s, i, Class::Space);
    if (j == n) return j;          // \s+(?!\S) at the end of the text
    if (j - 1 > i) return j - 1;   // \s+(?!\S): leave the last space to the word that follows
    return j;                      // \s+
}

}  // namespace

void ByteLevel::pre_tokenize(std::u32string_view text, std::vector<std::string> &words,
                             std::vector<WordBytes> *bytes) const {
    std::u32string prefixed;
    const bool prefix = add_prefix_space && (text.empty() || text[0] != U' ');
    if (prefix) {
        prefixed.reserve(text.size() + 1);
        prefixed.push_back(U' ');
        prefixed.append(text);
        text = prefixed;
    }
    const auto &chars = byte_chars();
    std::string utf8;
    auto emit = [&](size_t from, size_t to) {
        utf8.clear();
        WordBytes wb;
        for (size_t k = from; k < to; ++k) {
            uni::append_utf8(text[k], utf8);
            if (bytes) {  // positions in the caller's text: the prefix space takes its first character's
                wb.at.resize(utf8.size(), uint32_t(prefix ? (k > 0 ? k - 1 : 0) : k));
                wb.space.resize(utf8.size(), text[k] == U' ');
            }
        }
        std::string word;
        for (unsigned char b : utf8) word += chars[b];
        words.push_back(std::move(word));
        if (bytes) bytes->push_back(std::move(wb));
    };
    if (!use_regex) {
        if (!text.empty()) emit(0, text.size());
        return;
    }
    for (size_t i = 0; i < text.size();) {
        const size_t j = match_at(text, i);
        emit(i, j);
        i = j;
    }
}

}  // namespace et::tok
