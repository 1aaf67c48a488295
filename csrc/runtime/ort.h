/* ort.h — ONNX Runtime through its C API, loaded at run time (dlopen + OrtGetApiBase).
 *
 * Why dlopen rather than linking: libedgetune then needs no ORT at link time, so the Python wheel can
 * ship the runtime next to the core, and an app picks the ORT build it carries (the onnxruntime wheel's
 * libonnxruntime.so.1.32.0, an Android AAR's, a vendor's). The vendored header (third_party/onnxruntime,
 * ORT_API_VERSION 29) is older than 1.32's: ORT's C API only grows, so GetApi(29) of 1.32 serves it. */
#ifndef EDGETUNE_RUNTIME_ORT_H
#define EDGETUNE_RUNTIME_ORT_H
#include <string>

#include "onnxruntime_c_api.h"

namespace et::rt {

struct Ort {
    const OrtApi *api = nullptr;
    OrtEnv *env = nullptr;
    OrtMemoryInfo *cpu = nullptr;        // CPU tensors the runtime owns (arena, batch)
    OrtAllocator *allocator = nullptr;   // ORT's default CPU allocator (borrowed from ORT, never released)
    std::string library;                 // the path it was loaded from

    // Throws Error(ET_ERR_ENGINE) with `what` and ORT's message when s is an error (releases s).
    void check(OrtStatus *s, const std::string &what) const;
};

// The process's ORT, loaded once (first call wins; a later different path is refused in one line).
// path: NULL or "" = $EDGETUNE_ORT_LIBRARY, else libonnxruntime.so, then libonnxruntime.so.1.
const Ort &load_ort(const char *path);

}  // namespace et::rt
#endif
