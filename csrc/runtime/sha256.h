/* sha256.h — SHA-256 of a file, streamed (FIPS 180-4), for the bundle's per-file check. */
#ifndef EDGETUNE_RUNTIME_SHA256_H
#define EDGETUNE_RUNTIME_SHA256_H
#include <cstdint>
#include <string>

namespace et::rt {

class Sha256 {
public:
    Sha256();
    void update(const void *data, size_t n);
    std::string hex();  // finishes the digest; call once

private:
    void block(const uint8_t *p);
    uint32_t h_[8];
    uint8_t buf_[64];
    uint64_t bytes_ = 0;
    size_t used_ = 0;
};

// lowercase hex digest of the file's bytes; throws Error(ET_ERR_IO) when it cannot be read
std::string sha256_file(const std::string &path);

}  // namespace et::rt
#endif
