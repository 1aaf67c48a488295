// BertNormalizer, BertPreTokenizer and ByteLevel, as Hugging Face tokenizers 0.22 runs them.
#include <array>

#include "internal.h"
#include "unicode.h"

namespace et::tok {

using uni::Flag;

void BertNormalizer::apply(std::u32string &text) const {
    std::u32string out;
    out.reserve(text.size());
    for (char32_t cp : text) {
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
    }
    if (strip_accents) {
        // NFD of the whole text (marks reorder across characters), then every Mn dropped
        std::u32string decomposed;
        uni::nfd(out, decomposed);
        out.clear();
        for (char32_t cp : decomposed)
            if (!uni::has(cp, Flag::MARK_NONSPACING)) out.push_back(cp);
    }
    if (lowercase) {
        // per character (Rust's char::to_lowercase): no final-sigma rule, unlike str::to_lowercase
        text.clear();
        for (char32_t cp : out) uni::lowercase(cp, text);
    } else {
        text.swap(out);
    }
}

void bert_pre_tokenize(std::u32string_view text, std::vector<std::u32string> &words) {
    std::u32string word;
    auto flush = [&] {
        if (!word.empty()) words.push_back(std::move(word));
        word.clear();
    };
    for (char32_t cp : text) {
        const uint16_t f = uni::flags(cp);
        if (f & Flag::WHITESPACE) {
            flush();
        } else if (f & Flag::BERT_PUNCT) {
            flush();
            words.emplace_back(1, cp);
        } else {
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

void ByteLevel::pre_tokenize(std::u32string_view text, std::vector<std::string> &words) const {
    std::u32string prefixed;
    if (add_prefix_space && (text.empty() || text[0] != U' ')) {
        prefixed.reserve(text.size() + 1);
        prefixed.push_back(U' ');
        prefixed.append(text);
        text = prefixed;
    }
    const auto &chars = byte_chars();
    std::string utf8;
    auto emit = [&](std::u32string_view piece) {
        utf8.clear();
        for (char32_t cp : piece) uni::append_utf8(cp, utf8);
        std::string word;
        for (unsigned char b : utf8) word += chars[b];
        words.push_back(std::move(word));
    };
    if (!use_regex) {
        if (!text.empty()) emit(text);
        return;
    }
    for (size_t i = 0; i < text.size();) {
        const size_t j = match_at(text, i);
        emit(text.substr(i, j - i));
        i = j;
    }
}

}  // namespace et::tok
