#include "artifacts.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>

#include "error.h"

namespace et::rt {

using json = nlohmann::json;

namespace {

constexpr const char *CHECKPOINT_FORMAT = "edgetune.artifacts.checkpoint";
constexpr size_t CHUNK = 1 << 20;

using File = std::unique_ptr<FILE, int (*)(FILE *)>;

File open_file(const std::string &path, const char *mode) {
    File f(std::fopen(path.c_str(), mode), std::fclose);
    if (!f) fail(ET_ERR_IO, path + ": cannot be " + (mode[0] == 'r' ? "read" : "written") + " (" + std::strerror(errno) + ")");
    return f;
}

// A file written at `<path>.tmp-<pid>`, fsynced and renamed over path by commit(); removed otherwise.
class AtomicFile {
public:
    explicit AtomicFile(std::string path)
        : path_(std::move(path)), tmp_(path_ + ".tmp-" + std::to_string(getpid())), f_(open_file(tmp_, "wb")) {}
    ~AtomicFile() {
        if (!committed_) {
            f_.reset();
            std::remove(tmp_.c_str());
        }
    }
    void write(const void *data, size_t n) {
        if (n && std::fwrite(data, 1, n, f_.get()) != n) fail(ET_ERR_IO, path_ + ": write failed (" + std::strerror(errno) + ")");
    }
    void commit() {
        if (std::fflush(f_.get()) != 0 || fsync(fileno(f_.get())) != 0)
            fail(ET_ERR_IO, path_ + ": write failed (" + std::strerror(errno) + ")");
        f_.reset();
        if (std::rename(tmp_.c_str(), path_.c_str()) != 0) fail(ET_ERR_IO, path_ + ": cannot be replaced (" + std::strerror(errno) + ")");
        committed_ = true;
    }

private:
    std::string path_, tmp_;
    File f_;
    bool committed_ = false;
};

void read_exact(FILE *f, void *out, size_t n, const std::string &path) {
    if (n && std::fread(out, 1, n, f) != n) fail(ET_ERR_DATA, path + ": truncated");
}

}  // namespace

void copy_file(const std::string &from, const std::string &to) {
    File in = open_file(from, "rb");
    AtomicFile out(to);
    std::unique_ptr<char[]> chunk(new char[CHUNK]);
    size_t n;
    while ((n = std::fread(chunk.get(), 1, CHUNK, in.get())) > 0) out.write(chunk.get(), n);
    if (std::ferror(in.get())) fail(ET_ERR_IO, from + ": read error");
    out.commit();
}

void write_checkpoint_file(const std::string &path, const Bundle &b, const float *arena, const std::string &state_json) {
    // the safetensors layout as checkpoint.write_safetensors writes it: u64 header size, JSON header padded
    // with spaces to 8 bytes, the tensors' bytes back to back
    json header = json::object();
    uint64_t offset = 0;
    for (const TensorSpec &t : b.tensors) {
        header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.numel * 4}}};
        offset += t.numel * 4;
    }
    header["__metadata__"] = {{"format", CHECKPOINT_FORMAT}, {"version", "1"}, {"state", state_json}};
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    AtomicFile out(path);
    uint8_t size[8];
    for (int i = 0; i < 8; ++i) size[i] = (uint8_t)((uint64_t)text.size() >> (8 * i));
    out.write(size, 8);
    out.write(text.data(), text.size());
    // safetensors orders the data by the header's offsets; nlohmann sorts the keys, so write in offset order
    for (const TensorSpec &t : b.tensors) out.write(arena + t.offset, t.numel * 4);
    out.commit();
}

std::string read_checkpoint_file(const std::string &path, const Bundle &b, float *arena) {
    File f = open_file(path, "rb");
    uint8_t size_bytes[8];
    read_exact(f.get(), size_bytes, 8, path);
    uint64_t size = 0;
    for (int i = 0; i < 8; ++i) size |= (uint64_t)size_bytes[i] << (8 * i);
    if (size > (64u << 20)) fail(ET_ERR_DATA, path + ": not an edgetune checkpoint (header of " + std::to_string(size) + " bytes)");
    std::string text(size, '\0');
    read_exact(f.get(), &text[0], size, path);
    json header = json::parse(text, nullptr, false);
    if (header.is_discarded() || !header.is_object() || !header.contains("__metadata__") ||
        header["__metadata__"].value("format", "") != CHECKPOINT_FORMAT)
        fail(ET_ERR_DATA, path + ": not an edgetune checkpoint");
    if (header["__metadata__"].value("version", "") != "1")
        fail(ET_ERR_DATA, path + ": checkpoint version " + header["__metadata__"].value("version", "?") + " is not supported (expected 1)");
    const long data_start = (long)(8 + size);
    for (const TensorSpec &t : b.tensors) {
        if (!header.contains(t.name)) fail(ET_ERR_STATE, path + ": holds no tensor '" + t.name + "' of this bundle's slice");
        const json &e = header[t.name];
        if (e.value("dtype", "") != "F32" || e.value("shape", std::vector<int64_t>{}) != t.shape)
            fail(ET_ERR_STATE, path + ": tensor '" + t.name + "' does not have the bundle's shape and dtype");
        const uint64_t start = e["data_offsets"][0].get<uint64_t>();
        if (std::fseek(f.get(), data_start + (long)start, SEEK_SET) != 0) fail(ET_ERR_DATA, path + ": truncated");
        read_exact(f.get(), arena + t.offset, t.numel * 4, path);
    }
    return header["__metadata__"].value("state", "{}");
}

// ---- model.onnx, patched while copied ----------------------------------------------------------------
//
// Protobuf fields walked (onnx.proto): ModelProto.graph = 7; GraphProto.initializer = 5; TensorProto:
// dims 1, data_type 2, float_data 4 (packed), name 8, raw_data 9, external_data 13 (key 1, value 2),
// data_location 14. The tuned tensor's bytes have the size of the original's, so no length prefix changes:
// the copy is the original with those byte ranges overwritten.

namespace {

struct Reader {
    FILE *f;
    std::string path;
    uint64_t pos = 0;
    int byte() {
        int c = std::fgetc(f);
        if (c == EOF) fail(ET_ERR_BUNDLE, path + ": truncated protobuf");
        ++pos;
        return c;
    }
    uint64_t varint() {
        uint64_t v = 0;
        for (int shift = 0; shift < 64; shift += 7) {
            int c = byte();
            v |= (uint64_t)(c & 0x7f) << shift;
            if (!(c & 0x80)) return v;
        }
        fail(ET_ERR_BUNDLE, path + ": bad varint");
    }
    void seek(uint64_t to) {
        if (std::fseek(f, (long)to, SEEK_SET) != 0) fail(ET_ERR_BUNDLE, path + ": truncated protobuf");
        pos = to;
    }
    std::string bytes(uint64_t n) {
        std::string s(n, '\0');
        if (n && std::fread(&s[0], 1, n, f) != n) fail(ET_ERR_BUNDLE, path + ": truncated protobuf");
        pos += n;
        return s;
    }
    void skip(int wire) {
        if (wire == 0) varint();
        else if (wire == 1) seek(pos + 8);
        else if (wire == 5) seek(pos + 4);
        else if (wire == 2) {
            const uint64_t len = varint();
            seek(pos + len);
        }
        else fail(ET_ERR_BUNDLE, path + ": unsupported protobuf wire type " + std::to_string(wire));
    }
};

struct Initializer {
    std::string name, location;
    int64_t data_type = 0;
    uint64_t data_offset = 0, data_length = 0;  // in model.onnx (inline) or in `location` (external)
    bool has_data = false, external = false;
    uint64_t ext_offset = 0, ext_length = 0;
};

Initializer read_initializer(Reader &r, uint64_t end) {
    Initializer init;
    while (r.pos < end) {
        uint64_t key = r.varint();
        int field = (int)(key >> 3), wire = (int)(key & 7);
        if (field == 8 && wire == 2) init.name = r.bytes(r.varint());
        else if (field == 2 && wire == 0) init.data_type = (int64_t)r.varint();
        else if ((field == 9 || field == 4) && wire == 2) {
            init.data_length = r.varint();
            init.data_offset = r.pos;
            init.has_data = true;
            r.seek(r.pos + init.data_length);
        } else if (field == 14 && wire == 0) init.external = r.varint() == 1;
        else if (field == 13 && wire == 2) {
            const uint64_t entry_len = r.varint();  // read before r.pos: the sum's order is unspecified
            const uint64_t entry_end = r.pos + entry_len;
            std::string k, v;
            while (r.pos < entry_end) {
                uint64_t kk = r.varint();
                if ((kk >> 3) == 1 && (kk & 7) == 2) k = r.bytes(r.varint());
                else if ((kk >> 3) == 2 && (kk & 7) == 2) v = r.bytes(r.varint());
                else r.skip((int)(kk & 7));
            }
            if (k == "location") init.location = v;
            else if (k == "offset") init.ext_offset = std::stoull(v);
            else if (k == "length") init.ext_length = std::stoull(v);
        } else r.skip(wire);
    }
    return init;
}

std::vector<Initializer> read_initializers(const std::string &path) {
    File f = open_file(path, "rb");
    Reader r{f.get(), path};
    std::fseek(f.get(), 0, SEEK_END);
    const uint64_t size = (uint64_t)std::ftell(f.get());
    r.seek(0);
    std::vector<Initializer> out;
    while (r.pos < size) {
        uint64_t key = r.varint();
        if ((key >> 3) != 7 || (key & 7) != 2) {
            r.skip((int)(key & 7));
            continue;
        }
        const uint64_t graph_len = r.varint();
        const uint64_t graph_end = r.pos + graph_len;
        while (r.pos < graph_end) {
            uint64_t gkey = r.varint();
            if ((gkey >> 3) == 5 && (gkey & 7) == 2) {
                const uint64_t len = r.varint();
                const uint64_t end = r.pos + len;
                out.push_back(read_initializer(r, end));
                r.seek(end);
            } else {
                r.skip((int)(gkey & 7));
            }
        }
    }
    return out;
}

struct Patch {
    uint64_t offset;
    const float *data;
    uint64_t bytes;
};

void copy_patched(const std::string &from, const std::string &to, std::vector<Patch> patches) {
    std::sort(patches.begin(), patches.end(), [](const Patch &a, const Patch &b) { return a.offset < b.offset; });
    File in = open_file(from, "rb");
    AtomicFile out(to);
    std::unique_ptr<char[]> chunk(new char[CHUNK]);
    uint64_t pos = 0;
    size_t n;
    while ((n = std::fread(chunk.get(), 1, CHUNK, in.get())) > 0) {
        for (const Patch &p : patches) {  // the overlap of each patch with this chunk
            const uint64_t b = std::max(p.offset, pos), e = std::min(p.offset + p.bytes, pos + n);
            if (b < e) std::memcpy(chunk.get() + (b - pos), (const char *)p.data + (b - p.offset), e - b);
        }
        out.write(chunk.get(), n);
        pos += n;
    }
    if (std::ferror(in.get())) fail(ET_ERR_IO, from + ": read error");
    out.commit();
}

std::string dir_of(const std::string &path) {
    size_t slash = path.rfind('/');
    return slash == std::string::npos ? "." : path.substr(0, slash);
}

}  // namespace

void write_tuned_model(const std::string &model, const std::string &out_path, const Bundle &b, const float *arena) {
    std::vector<Initializer> inits = read_initializers(model);
    std::vector<Patch> inline_patches;
    std::map<std::string, std::vector<Patch>> external;  // location -> patches
    for (const Initializer &i : inits)
        if (i.external && !i.location.empty()) external[i.location];
    for (const TensorSpec &t : b.tensors) {
        auto it = std::find_if(inits.begin(), inits.end(), [&](const Initializer &i) { return i.name == t.name; });
        if (it == inits.end()) fail(ET_ERR_BUNDLE, model + ": has no initializer '" + t.name + "' to write the tuned tensor into");
        if (it->data_type != 1) fail(ET_ERR_BUNDLE, model + ": initializer '" + t.name + "' is not float32");
        const uint64_t bytes = t.numel * 4;
        if (it->external) {
            if (it->ext_length && it->ext_length != bytes) fail(ET_ERR_BUNDLE, model + ": external tensor '" + t.name + "' has another size");
            if (it->location.find('/') != std::string::npos || it->location.find("..") != std::string::npos)
                fail(ET_ERR_BUNDLE, model + ": external data of '" + t.name + "' lies outside the model's folder");
            external[it->location].push_back({it->ext_offset, arena + t.offset, bytes});
        } else {
            if (!it->has_data || it->data_length != bytes)
                fail(ET_ERR_BUNDLE, model + ": initializer '" + t.name + "' does not hold " + std::to_string(t.numel) + " floats inline");
            inline_patches.push_back({it->data_offset, arena + t.offset, bytes});
        }
    }
    const std::string out_dir = dir_of(out_path);
    for (auto &[location, patches] : external)
        copy_patched(join_path(dir_of(model), location), join_path(out_dir, location), patches);
    copy_patched(model, out_path, inline_patches);  // last: the model appears only with its data beside it
}

}  // namespace et::rt
