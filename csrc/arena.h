/* arena.h — one contiguous, 64-byte aligned fp32 block holding all trainable tensors.
 * Why one block: a single pointer + length lets every ZO pass stream over all parameters
 * once, and each named view can be bound zero-copy as an engine input. Views start on
 * 16-float (64-byte) boundaries so engines and SIMD loads see aligned tensors. */
#ifndef EDGETUNE_ARENA_H
#define EDGETUNE_ARENA_H
#include <cstddef>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace et {

class Arena {
public:
    struct View {
        std::string name;
        std::vector<int64_t> shape;
        int group;
        size_t offset;  // elements
        size_t numel;
    };
    Arena() = default;
    ~Arena();
    Arena(const Arena &) = delete;
    Arena &operator=(const Arena &) = delete;

    /* Returns the element offset. Throws std::invalid_argument on duplicate name, negative
     * dimension, or after finalize(). */
    size_t add(const std::string &name, const std::vector<int64_t> &shape, int group = 0);
    void finalize();  // allocate, zero-filled; throws std::bad_alloc
    bool finalized() const { return data_ != nullptr; }
    size_t size() const { return size_; }  // floats including padding
    float *data() { return data_; }
    const std::vector<View> &views() const { return views_; }
    const View &view(const std::string &name) const;  // throws std::out_of_range
    /* [begin, end) covering all views of `group`; throws if the group is empty or its views
     * are interleaved with another group's. */
    std::pair<size_t, size_t> group_range(int group) const;

private:
    std::vector<View> views_;
    std::map<std::string, size_t> index_;
    size_t size_ = 0;
    float *data_ = nullptr;
};

}  // namespace et
#endif
