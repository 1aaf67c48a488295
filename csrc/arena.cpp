#include "arena.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

namespace et {

Arena::~Arena() { std::free(data_); }

size_t Arena::add(const std::string &name, const std::vector<int64_t> &shape, int group) {
    if (finalized()) throw std::invalid_argument("Arena.add after finalize: " + name);
    if (index_.count(name)) throw std::invalid_argument("Arena.add: duplicate name " + name);
    size_t numel = 1;
    for (int64_t d : shape) {
        if (d < 0) throw std::invalid_argument("Arena.add: negative dimension in " + name);
        numel *= (size_t)d;
    }
    size_t off = (size_ + 15) & ~(size_t)15;
    views_.push_back(View{name, shape, group, off, numel});
    index_[name] = views_.size() - 1;
    size_ = off + numel;
    return off;
}

void Arena::finalize() {
    if (finalized()) throw std::invalid_argument("Arena.finalize called twice");
    size_ = (size_ + 15) & ~(size_t)15;
    size_t bytes = std::max<size_t>(size_, 16) * sizeof(float);  // 64-byte multiple, never 0
    void *p = std::aligned_alloc(64, bytes);
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, bytes);
    data_ = static_cast<float *>(p);
}

const Arena::View &Arena::view(const std::string &name) const {
    auto it = index_.find(name);
    if (it == index_.end()) throw std::out_of_range("Arena: no view named " + name);
    return views_[it->second];
}

std::pair<size_t, size_t> Arena::group_range(int group) const {
    size_t first = views_.size(), last = 0;
    for (size_t i = 0; i < views_.size(); ++i)
        if (views_[i].group == group) {
            if (first == views_.size()) first = i;
            last = i;
        }
    if (first == views_.size()) throw std::out_of_range("Arena: no views in group " + std::to_string(group));
    for (size_t i = first; i <= last; ++i)
        if (views_[i].group != group)
            throw std::invalid_argument("Arena: views of group " + std::to_string(group) +
                                        " are not contiguous (interleaved with group " +
                                        std::to_string(views_[i].group) + ")");
    return {views_[first].offset, views_[last].offset + views_[last].numel};
}

}  // namespace et
