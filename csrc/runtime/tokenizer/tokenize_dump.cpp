// tokenize_dump — the parity tests' driver: the ids of many texts, in several modes, in one process run.
//
//   tokenize_dump TOKENIZER_JSON [--mode MODE]... [--repeat K] < texts.jsonl > ids.txt
//
// Input: one JSON string per line. MODE: special (encode(text), the default), plain (no special tokens),
// max:N (encode(text, true, N)), record:N (encode_record(text, N): what edgetune trains on), ends (the end
// offset of each id of encode(text), in code points, as Hugging Face's Encoding.offsets[i][1]).
// Output: for each mode in order, per text one line of space-separated ids, or "error: MESSAGE".
// --repeat K encodes the texts K more times in the first mode and prints "texts_per_second=X" (CPU time)
// on stderr. A tokenizer that cannot be loaded: "tokenize_dump: error: MESSAGE" on stderr, exit 2.
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tokenizer.h"

namespace {

struct Mode {
    enum { Special, Plain, Max, Record, Ends } what;
    size_t n;
};

Mode parse_mode(const std::string &m) {
    const size_t colon = m.find(':');
    const std::string name = m.substr(0, colon);
    const size_t n = colon == std::string::npos ? 0 : std::strtoul(m.c_str() + colon + 1, nullptr, 10);
    if (name == "special") return {Mode::Special, 0};
    if (name == "plain") return {Mode::Plain, 0};
    if (name == "ends") return {Mode::Ends, 0};
    if (name == "max" && colon != std::string::npos) return {Mode::Max, n};
    if (name == "record" && colon != std::string::npos) return {Mode::Record, n};
    throw std::invalid_argument("unknown mode '" + m + "' (special, plain, max:N, record:N, ends)");
}

std::vector<int64_t> encode(const et::tok::Tokenizer &tok, const Mode &m, const std::string &text) {
    switch (m.what) {
        case Mode::Plain: return tok.encode(text, false);
        case Mode::Max: return tok.encode(text, true, m.n);
        case Mode::Record: return tok.encode_record(text, m.n);
        case Mode::Ends: {
            std::vector<size_t> ends;
            tok.encode(text, true, std::nullopt, ends);
            return std::vector<int64_t>(ends.begin(), ends.end());
        }
        default: return tok.encode(text, true);
    }
}

}  // namespace

int main(int argc, char **argv) {
    try {
        if (argc < 2) throw std::invalid_argument("usage: tokenize_dump TOKENIZER_JSON [--mode MODE]... [--repeat K]");
        std::vector<Mode> modes;
        long repeat = 0;
        for (int i = 2; i < argc; ++i) {
            const std::string a = argv[i];
            if (i + 1 >= argc) throw std::invalid_argument("argument " + a + " needs a value");
            if (a == "--mode") modes.push_back(parse_mode(argv[++i]));
            else if (a == "--repeat") repeat = std::strtol(argv[++i], nullptr, 10);
            else throw std::invalid_argument("unknown argument " + a);
        }
        if (modes.empty()) modes.push_back({Mode::Special, 0});
        const et::tok::Tokenizer tok = et::tok::Tokenizer::load(argv[1]);
        std::vector<std::string> texts;
        for (std::string line; std::getline(std::cin, line);)
            texts.push_back(nlohmann::json::parse(line).get<std::string>());
        std::string out;
        for (const Mode &m : modes) {
            for (const std::string &t : texts) {
                try {
                    const std::vector<int64_t> ids = encode(tok, m, t);
                    for (size_t k = 0; k < ids.size(); ++k) (out += k ? " " : "") += std::to_string(ids[k]);
                } catch (const et::tok::Error &e) {
                    out += std::string("error: ") + e.what();
                }
                out += '\n';
            }
        }
        std::fwrite(out.data(), 1, out.size(), stdout);
        if (repeat > 0) {
            const std::clock_t start = std::clock();
            size_t tokens = 0;
            for (long r = 0; r < repeat; ++r)
                for (const std::string &t : texts) tokens += encode(tok, modes[0], t).size();
            const double seconds = double(std::clock() - start) / CLOCKS_PER_SEC;
            std::fprintf(stderr, "texts_per_second=%.1f tokens=%zu\n", double(texts.size()) * repeat / seconds, tokens);
        }
    } catch (const std::exception &e) {
        std::fprintf(stderr, "tokenize_dump: error: %s\n", e.what());
        return 2;
    }
    return 0;
}
