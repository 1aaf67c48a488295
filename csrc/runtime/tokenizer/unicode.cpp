#include "unicode.h"

#include <algorithm>
#include <iterator>

namespace et::tok::uni {
namespace {

struct FlagRun {
    char32_t first;
    uint16_t value;
};
struct MapEntry {
    char32_t cp;
    uint32_t offset, length;
};

#include "unicode_tables.inc"

// The run holding `cp`: the last run whose first code point is <= cp (the tables start at 0).
template <size_t N>
uint16_t run_value(const FlagRun (&runs)[N], char32_t cp) {
    auto it = std::upper_bound(std::begin(runs), std::end(runs), cp,
                               [](char32_t c, const FlagRun &r) { return c < r.first; });
    return std::prev(it)->value;
}

// ASCII is most of real text: a direct table spares it the binary search.
struct AsciiFlags {
    uint16_t v[128];
    AsciiFlags() {
        for (char32_t c = 0; c < 128; ++c) v[c] = run_value(FLAG_RUNS, c);
    }
};
const AsciiFlags &ascii() {
    static const AsciiFlags table;  // built on first use: no order-of-initialisation question across files
    return table;
}

template <size_t N, size_t P>
bool map_lookup(const MapEntry (&table)[N], const char32_t (&pool)[P], char32_t cp, std::u32string &out) {
    auto it = std::lower_bound(std::begin(table), std::end(table), cp,
                               [](const MapEntry &e, char32_t c) { return e.cp < c; });
    if (it == std::end(table) || it->cp != cp) return false;
    out.append(pool + it->offset, it->length);
    return true;
}

// Hangul syllables decompose arithmetically (Unicode chapter 3.12) instead of by table.
constexpr char32_t S_BASE = 0xAC00, L_BASE = 0x1100, V_BASE = 0x1161, T_BASE = 0x11A7;
constexpr char32_t T_COUNT = 28, N_COUNT = 21 * 28, S_COUNT = 11172;

}  // namespace

uint16_t flags(char32_t cp) { return cp < 128 ? ascii().v[cp] : run_value(FLAG_RUNS, cp); }

uint8_t combining_class(char32_t cp) { return cp < 0x300 ? 0 : static_cast<uint8_t>(run_value(CCC_RUNS, cp)); }

void nfd(std::u32string_view in, std::u32string &out) {
    const size_t start = out.size();
    for (char32_t cp : in) {
        if (cp < 0xC0) {
            out.push_back(cp);
        } else if (cp >= S_BASE && cp < S_BASE + S_COUNT) {
            const char32_t s = cp - S_BASE;
            out.push_back(L_BASE + s / N_COUNT);
            out.push_back(V_BASE + (s % N_COUNT) / T_COUNT);
            if (s % T_COUNT) out.push_back(T_BASE + s % T_COUNT);
        } else if (!map_lookup(NFD, NFD_POOL, cp, out)) {
            out.push_back(cp);
        }
    }
    // Canonical ordering: each run of non-starters sorted stably by combining class.
    for (size_t i = start; i < out.size();) {
        if (combining_class(out[i]) == 0) {
            ++i;
            continue;
        }
        size_t j = i;
        while (j < out.size() && combining_class(out[j]) != 0) ++j;
        std::stable_sort(out.begin() + i, out.begin() + j,
                         [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
        i = j;
    }
}

void lowercase(char32_t cp, std::u32string &out) {
    if (cp < 128) {
        out.push_back(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
    } else if (!map_lookup(LOWER, LOWER_POOL, cp, out)) {
        out.push_back(cp);
    }
}

bool decode_utf8(std::string_view in, std::u32string &out) {
    const auto *p = reinterpret_cast<const unsigned char *>(in.data());
    const auto *end = p + in.size();
    out.reserve(out.size() + in.size());
    while (p < end) {
        const unsigned char b = *p;
        if (b < 0x80) {
            out.push_back(b);
            ++p;
            continue;
        }
        int extra;
        char32_t cp, min;
        if ((b & 0xE0) == 0xC0) {
            extra = 1, cp = b & 0x1F, min = 0x80;
        } else if ((b & 0xF0) == 0xE0) {
            extra = 2, cp = b & 0x0F, min = 0x800;
        } else if ((b & 0xF8) == 0xF0) {
            extra = 3, cp = b & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (end - p <= extra) return false;
        for (int k = 1; k <= extra; ++k) {
            if ((p[k] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (p[k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000)) return false;
        out.push_back(cp);
        p += extra + 1;
    }
    return true;
}

void append_utf8(char32_t cp, std::string &out) {
    if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
}

std::string to_utf8(std::u32string_view in) {
    std::string out;
    out.reserve(in.size());
    for (char32_t cp : in) append_utf8(cp, out);
    return out;
}

}  // namespace et::tok::uni
