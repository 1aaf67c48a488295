#include "bundle.h"

#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "error.h"
#include "sha256.h"

namespace et::rt {

using json = nlohmann::json;

std::string join_path(const std::string &dir, const std::string &name) {
    if (dir.empty() || dir.back() == '/') return dir + name;
    return dir + "/" + name;
}

namespace {

// Key lookups with one clear message naming manifest.json and the key, never nlohmann's.
class Manifest {
public:
    Manifest(const json &j, std::string path) : j_(j), path_(std::move(path)) {}

    const json &at(const json &obj, const std::string &key, const char *what) const {
        if (!obj.is_object() || !obj.contains(key)) bad(key, std::string("missing (expected ") + what + ")");
        return obj.at(key);
    }
    std::string str(const json &obj, const std::string &key) const {
        const json &v = at(obj, key, "a string");
        if (!v.is_string()) bad(key, "not a string");
        return v.get<std::string>();
    }
    std::string str_or_empty(const json &obj, const std::string &key) const {
        if (!obj.is_object() || !obj.contains(key) || obj.at(key).is_null()) return "";
        return str(obj, key);
    }
    int64_t integer(const json &obj, const std::string &key) const {
        const json &v = at(obj, key, "an integer");
        if (!v.is_number_integer()) bad(key, "not an integer");
        return v.get<int64_t>();
    }
    uint64_t count(const json &obj, const std::string &key) const {
        int64_t v = integer(obj, key);
        if (v < 0) bad(key, "negative");
        return (uint64_t)v;
    }
    double number(const json &obj, const std::string &key) const {
        const json &v = at(obj, key, "a number");
        if (!v.is_number()) bad(key, "not a number");
        return v.get<double>();
    }
    [[noreturn]] void bad(const std::string &key, const std::string &why) const {
        fail(ET_ERR_BUNDLE, path_ + ": key '" + key + "' " + why);
    }
    const json &root() const { return j_; }
    const std::string &path() const { return path_; }

private:
    const json &j_;
    std::string path_;
};

bool file_size(const std::string &path, uint64_t *size) {
    struct stat st;
    if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
    *size = (uint64_t)st.st_size;
    return true;
}

InputSpec input_spec(const Manifest &m, const json &entry) {
    InputSpec in;
    in.name = m.str(entry, "name");
    std::string dtype = m.str(entry, "dtype");
    if (dtype != "int64" && dtype != "int32") m.bad("dtype", "'" + dtype + "' of input '" + in.name + "' is not int64 or int32");
    in.int32 = dtype == "int32";
    return in;
}

void read_arena_layout(const Manifest &m, const json &arena, Bundle &b) {
    b.arena_file = m.str(arena, "file");
    if (m.str(arena, "dtype") != "float32") m.bad("arena.dtype", "is not float32");
    b.arena_count = m.count(arena, "count");
    const json &tensors = m.at(arena, "tensors", "a list");
    if (!tensors.is_array() || tensors.empty()) m.bad("arena.tensors", "is not a non-empty list");
    for (const json &t : tensors) {
        TensorSpec spec;
        spec.name = m.str(t, "name");
        spec.offset = m.count(t, "offset");
        const json &shape = m.at(t, "shape", "a list of dimensions");
        if (!shape.is_array()) m.bad("shape", "of tensor '" + spec.name + "' is not a list");
        for (const json &d : shape) {
            if (!d.is_number_integer() || d.get<int64_t>() < 0) m.bad("shape", "of tensor '" + spec.name + "' has a bad dimension");
            spec.shape.push_back(d.get<int64_t>());
            spec.numel *= (uint64_t)d.get<int64_t>();
        }
        if (spec.offset % 16 != 0 || spec.offset + spec.numel > b.arena_count)
            m.bad("arena.tensors", "tensor '" + spec.name + "' at offset " + std::to_string(spec.offset) +
                                       " does not fit the arena of " + std::to_string(b.arena_count) + " floats");
        b.tensors.push_back(std::move(spec));
    }
}

// What text needs beyond the tokenizer: the verbaliser (its words by class name), the eos token, a chat template.
void read_text_keys(const Manifest &m, const json &j, Bundle &b) {
    b.eos_token = m.str_or_empty(j, "eos_token");
    b.chat_template = !m.str_or_empty(j, "chat_template").empty();
    if (!j.contains("verbalizer") || j["verbalizer"].is_null()) return;
    const json &v = j["verbalizer"];
    const json &words = m.at(v, "words", "an object of class name -> word");
    const json &ids = m.at(v, "token_ids", "a list of token ids");
    b.verbalizer_template = m.str(v, "template");
    if (!words.is_object() || !ids.is_array() || ids.size() != b.labels.size() || b.labels.empty())
        m.bad("verbalizer", "does not give a word and a token id for each of the bundle's labels");
    for (size_t c = 0; c < b.labels.size(); ++c) {
        if (!words.contains(b.labels[c]) || !words[b.labels[c]].is_string() || !ids[c].is_number_integer())
            m.bad("verbalizer", "has no word or token id for label '" + b.labels[c] + "'");
        b.verbalizer_words.push_back(words[b.labels[c]].get<std::string>());
        b.verbalizer_ids.push_back(ids[c].get<int64_t>());
    }
}

void read_defaults(const Manifest &m, const json &d, Bundle &b) {
    // "auto": measured before step 0 (lr auto); a number in bundles written before the runtime had it
    auto auto_or_number = [&](const std::string &key, double &value, bool &is_auto) {
        const json &v = m.at(d, key, "a number or \"auto\"");
        is_auto = v.is_string() && v.get<std::string>() == "auto";
        if (!is_auto) value = m.number(d, key);
    };
    auto_or_number("lr", b.defaults.lr, b.defaults.lr_auto);
    auto_or_number("eps", b.defaults.eps, b.defaults.eps_auto);
    b.defaults.queries = (uint32_t)m.count(d, "queries");
    b.defaults.batch_size = (uint32_t)m.count(d, "batch_size");
    b.defaults.seed = m.count(d, "seed");
    b.defaults.steps = m.count(d, "steps");
}

// "head" and "head_tensors" (absent before the exact head: the head is tuned by ZO)
void read_head(const Manifest &m, const json &j, Bundle &b) {
    const std::string head = j.contains("head") ? m.str(j, "head") : "zo";
    if (head != "zo" && head != "exact") m.bad("head", "'" + head + "' is not zo or exact");
    b.exact_head = head == "exact";
    if (!b.exact_head) return;
    if (b.task != "classify") m.bad("head", "is exact for a " + b.task + " bundle (the exact head is a classifier's)");
    const json &names = m.at(j, "head_tensors", "an object");
    auto index = [&](const std::string &key, bool optional) {
        const std::string name = m.str_or_empty(names, key);
        if (name.empty() && !optional) m.bad("head_tensors." + key, "missing (expected a tensor name)");
        if (name.empty()) return -1;
        for (size_t i = 0; i < b.tensors.size(); ++i)
            if (b.tensors[i].name == name) return (int)i;
        m.bad("head_tensors." + key, "names '" + name + "', which is not a tensor of the arena");
    };
    b.head_weight = index("weight", false);
    b.head_bias = index("bias", true);
}

void verify_files(const Manifest &m, Bundle &b, bool verify) {
    const json &files = m.at(m.root(), "files", "an object of {bytes, sha256} per file");
    if (!files.is_object()) m.bad("files", "is not an object");
    for (auto it = files.begin(); it != files.end(); ++it) {
        const std::string &name = it.key();
        if (name.find('/') != std::string::npos || name == ".." || name == "manifest.json")
            m.bad("files", "lists '" + name + "', which is not a file of the bundle's folder");
        std::string path = join_path(b.dir, name);
        uint64_t size = 0;
        if (!file_size(path, &size)) fail(ET_ERR_BUNDLE, path + ": missing (manifest.json lists it)");
        uint64_t expected = m.count(it.value(), "bytes");
        if (size != expected)
            fail(ET_ERR_BUNDLE, path + ": " + std::to_string(size) + " bytes, manifest.json says " +
                                    std::to_string(expected) + " (damaged or incomplete bundle)");
        std::string sha = m.str(it.value(), "sha256");
        if (verify && sha256_file(path) != sha)
            fail(ET_ERR_BUNDLE, path + ": sha256 differs from manifest.json's (damaged or edited bundle)");
        b.files.push_back(name);
    }
    // every file the runtime opens must be one the manifest vouches for
    auto listed = [&](const std::string &path) {
        for (const std::string &f : b.files)
            if (join_path(b.dir, f) == path) return true;
        return false;
    };
    for (const std::string *p : {&b.prefix, &b.suffix, &b.model, &b.tokenizer_file})
        if (!p->empty() && !listed(*p)) fail(ET_ERR_BUNDLE, m.path() + ": " + *p + " is not listed under 'files'");
    if (!listed(join_path(b.dir, b.arena_file)))
        fail(ET_ERR_BUNDLE, m.path() + ": " + b.arena_file + " is not listed under 'files'");
}

}  // namespace

Bundle read_bundle(const std::string &dir, bool verify) {
    Bundle b;
    b.dir = dir;
    const std::string path = join_path(dir, "manifest.json");
    uint64_t size = 0;
    if (!file_size(path, &size)) fail(ET_ERR_BUNDLE, dir + ": not a bundle (no manifest.json)");
    std::ifstream in(path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    if (!in && !in.eof()) fail(ET_ERR_IO, path + ": cannot be read");
    json j = json::parse(text.str(), nullptr, false);
    if (j.is_discarded() || !j.is_object()) fail(ET_ERR_BUNDLE, path + ": not valid JSON");
    {
        Sha256 h;
        const std::string s = text.str();
        h.update(s.data(), s.size());
        b.manifest_sha256 = h.hex();
    }
    Manifest m(j, path);
    if (m.str(j, "format") != "edgetune-bundle") m.bad("format", "is not 'edgetune-bundle'");
    int64_t version = m.integer(j, "format_version");
    if (version != BUNDLE_FORMAT_VERSION)
        fail(ET_ERR_BUNDLE, path + ": format_version " + std::to_string(version) + " is not supported (this runtime reads " +
                                std::to_string(BUNDLE_FORMAT_VERSION) + ")");
    b.task = m.str(j, "task");
    if (b.task != "classify" && b.task != "lm") m.bad("task", "'" + b.task + "' is not classify or lm");
    if (j.contains("labels") && !j["labels"].is_null()) {
        if (!j["labels"].is_array()) m.bad("labels", "is not a list of class names");
        for (const json &l : j["labels"]) {
            if (!l.is_string()) m.bad("labels", "holds a name that is not a string");
            b.labels.push_back(l.get<std::string>());
        }
    }
    read_text_keys(m, j, b);
    b.trainable = m.str_or_empty(j, "trainable");
    const json &graphs = m.at(j, "graphs", "an object");
    std::string prefix = m.str_or_empty(graphs, "prefix");
    b.prefix = prefix.empty() ? "" : join_path(dir, prefix);
    b.suffix = join_path(dir, m.str(graphs, "suffix"));
    b.model = join_path(dir, m.str(graphs, "model"));
    const json &inputs = m.at(j, "inputs", "a list");
    if (!inputs.is_array() || inputs.empty()) m.bad("inputs", "is not a non-empty list");
    for (const json &in_spec : inputs) b.inputs.push_back(input_spec(m, in_spec));
    const json &labels_input = m.at(j, "labels_input", "an object");
    b.labels_input = input_spec(m, labels_input);
    b.labels_per_token = labels_input.value("per_token", false);
    const json &boundary = m.at(j, "boundary", "a list");
    if (!boundary.is_array()) m.bad("boundary", "is not a list");
    for (const json &name : boundary) {
        if (!name.is_string()) m.bad("boundary", "holds a name that is not a string");
        b.boundary.push_back(name.get<std::string>());
    }
    const json &outputs = m.at(j, "outputs", "an object");
    b.loss_output = m.str(outputs, "loss");
    b.logits_output = m.str_or_empty(outputs, "logits");
    read_arena_layout(m, m.at(j, "arena", "an object"), b);
    if (j.contains("tokenizer") && !j["tokenizer"].is_null()) {
        const json &tok = j["tokenizer"];
        std::string file = m.str_or_empty(tok, "file");
        b.tokenizer_file = file.empty() ? "" : join_path(dir, file);
        b.max_length = m.integer(tok, "max_length");
        b.pad_id = m.integer(tok, "pad_id");
        if (b.max_length <= 0) m.bad("tokenizer.max_length", "is not positive");
    }
    if (j.contains("static_shapes") && !j["static_shapes"].is_null()) {
        b.static_batch = m.integer(j["static_shapes"], "batch_size");
        b.static_length = m.integer(j["static_shapes"], "max_length");
        if (b.static_batch <= 0 || b.static_length <= 0) m.bad("static_shapes", "has a non-positive size");
        b.max_length = std::min(b.max_length, b.static_length);
    }
    if (j.contains("noise")) b.noise = m.str(j, "noise");
    if (b.noise != "rademacher" && b.noise != "gaussian") m.bad("noise", "'" + b.noise + "' is not rademacher or gaussian");
    read_defaults(m, m.at(j, "defaults", "an object"), b);
    read_head(m, j, b);
    if (b.task == "classify" && b.labels.empty()) m.bad("labels", "is empty for a classify bundle");
    verify_files(m, b, verify);
    return b;
}

void read_arena(const Bundle &b, float *out) {
    const std::string path = join_path(b.dir, b.arena_file);
    std::unique_ptr<FILE, int (*)(FILE *)> f(std::fopen(path.c_str(), "rb"), std::fclose);
    if (!f) fail(ET_ERR_IO, path + ": cannot be read");
    size_t got = std::fread(out, sizeof(float), b.arena_count, f.get());
    if (got != b.arena_count || std::fgetc(f.get()) != EOF)
        fail(ET_ERR_BUNDLE, path + ": not " + std::to_string(b.arena_count) + " float32 values as manifest.json says");
}

}  // namespace et::rt
