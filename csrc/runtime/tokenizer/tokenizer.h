/* tokenizer.h — Hugging Face tokenizer.json in C++17: the ids `tokenizers` gives, for the two families
 * edgetune ships.
 *
 *   wordpiece      BERT / all-MiniLM-L6-v2: BertNormalizer, BertPreTokenizer, WordPiece
 *   bpe-bytelevel  GPT-2 / SmolLM2 / Llama-3 style: ByteLevel pre-tokenizer (GPT-2 regex), BPE by merge rank
 *
 * Added tokens (the special ones included) are split out of the text first, as Hugging Face does;
 * the post-processor (TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel, a Sequence of them)
 * adds the special tokens. A tokenizer.json with any other model, normalizer, pre-tokenizer or
 * post-processor, or an option this code does not implement, is refused at load with an Error that names
 * the file and the component: never guessed.
 *
 * The file's own "truncation" and "padding" are ignored, as edgetune's Python side ignores them
 * (`load_tokenizer` switches both off): the caller pads per batch and passes max_length.
 *
 * Thread safety: a loaded Tokenizer is immutable; encode may run on several threads at once.
 * Errors: Error (a std::runtime_error) with a one-line message; invalid UTF-8 text is an Error too. */
#ifndef EDGETUNE_TOKENIZER_H
#define EDGETUNE_TOKENIZER_H
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace et::tok {

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

enum class Kind { WordPiece, ByteLevelBpe };

// What edgetune keeps of a record before tokenising: max(1, max_length) * CHARS_PER_TOKEN code points
// (edgetune/data/encode.py, char_budget), so memory stays bounded whatever a record holds.
constexpr size_t CHARS_PER_TOKEN = 64;

class Tokenizer {
public:
    // Read and check `path` (a tokenizer.json). Throws Error("PATH: ...").
    static Tokenizer load(const std::string &path);
    // The same from the JSON text; `origin` names it in errors.
    static Tokenizer from_json(std::string_view json, const std::string &origin);

    Tokenizer(Tokenizer &&) noexcept;
    Tokenizer &operator=(Tokenizer &&) noexcept;
    ~Tokenizer();

    // Hugging Face's `encode(text, add_special_tokens=add_special).ids`.
    std::vector<int64_t> encode(std::string_view utf8, bool add_special = true) const;
    // The same with `enable_truncation(max_length)`: the tokens of the text are cut at the end so that,
    // with the special tokens, at most max_length remain (Hugging Face's arithmetic, quirks included).
    std::vector<int64_t> encode(std::string_view utf8, bool add_special, size_t max_length) const;
    // encode(utf8, add_special[, max_length]) and, per id, where the text it covers ends: Hugging Face's
    // Encoding.offsets[i][1] in code points of utf8 (0 for the post-processor's special tokens; a ByteLevel
    // post-processor's trim_offsets applied). edgetune decides which tokens a prompt's completion or a
    // verbaliser's word holds by these ends (edgetune/data/encode.py).
    std::vector<int64_t> encode(std::string_view utf8, bool add_special, std::optional<size_t> max_length,
                                std::vector<size_t> &ends) const;
    // What edgetune feeds the model for a classification or {"text"} record: the text cut to
    // max(1, max_length) * CHARS_PER_TOKEN code points, then encode(text, true, max_length).
    std::vector<int64_t> encode_record(std::string_view utf8, size_t max_length) const;

    Kind kind() const;
    const char *kind_name() const;  // "wordpiece" | "bpe-bytelevel", as a bundle manifest's tokenizer.kind
    std::optional<int64_t> token_to_id(std::string_view token) const;
    size_t id_limit() const;  // one past the largest id encode can return (for a check against the embedding)

private:
    struct Impl;
    explicit Tokenizer(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace et::tok
#endif
