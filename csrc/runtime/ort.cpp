#include "ort.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <vector>

#include "error.h"

namespace et::rt {

void Ort::check(OrtStatus *s, const std::string &what) const {
    if (!s) return;
    std::string message = api->GetErrorMessage(s);
    api->ReleaseStatus(s);
    // ORT's messages can span lines; the runtime's messages are one line
    for (char &c : message)
        if (c == '\n' || c == '\r') c = ' ';
    fail(ET_ERR_ENGINE, what + ": " + message);
}

namespace {

std::mutex ort_mutex;
Ort *loaded = nullptr;

std::vector<std::string> candidates(const char *path) {
    if (path && *path) return {path};
    const char *env = std::getenv("EDGETUNE_ORT_LIBRARY");
    if (env && *env) return {env};
    return {"libonnxruntime.so", "libonnxruntime.so.1"};
}

Ort *open_ort(const char *path) {
    std::string tried;
    for (const std::string &name : candidates(path)) {
        void *lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!lib) {
            tried += (tried.empty() ? "" : "; ") + std::string(dlerror());
            continue;
        }
        using GetApiBase = const OrtApiBase *(*)();
        auto get_base = reinterpret_cast<GetApiBase>(dlsym(lib, "OrtGetApiBase"));
        if (!get_base) fail(ET_ERR_ENGINE, name + ": not an ONNX Runtime library (no OrtGetApiBase)");
        const OrtApiBase *base = get_base();
        const OrtApi *api = base->GetApi(ORT_API_VERSION);
        if (!api)
            fail(ET_ERR_ENGINE, name + ": ONNX Runtime " + base->GetVersionString() + " is older than the C API " +
                                    std::to_string(ORT_API_VERSION) + " this runtime needs (1.29 or newer)");
        auto *ort = new Ort();
        ort->api = api;
        ort->library = name;
        ort->check(api->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "edgetune", &ort->env), "creating the ONNX Runtime env");
        ort->check(api->CreateCpuMemoryInfo(OrtDeviceAllocator, OrtMemTypeDefault, &ort->cpu), "CPU memory info");
        ort->check(api->GetAllocatorWithDefaultOptions(&ort->allocator), "ORT's CPU allocator");
        // One CPU arena registered with the env, shared by the prefix and suffix sessions, as
        // edgetune/engine/session.py does: one high-water mark of activation memory, not one per session.
        OrtMemoryInfo *arena_info = nullptr;
        ort->check(api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &arena_info), "arena memory info");
        OrtStatus *s = api->CreateAndRegisterAllocator(ort->env, arena_info, nullptr);
        api->ReleaseMemoryInfo(arena_info);
        if (s) api->ReleaseStatus(s);  // the embedding app registered one already: share that one
        return ort;  // never unloaded: sessions of any runtime may still use it at exit
    }
    fail(ET_ERR_ENGINE, "cannot load ONNX Runtime (" + tried +
                            "); set et_runtime_options.ort_library or EDGETUNE_ORT_LIBRARY to libonnxruntime.so's path");
}

}  // namespace

const Ort &load_ort(const char *path) {
    std::lock_guard<std::mutex> lock(ort_mutex);
    if (!loaded) {
        loaded = open_ort(path);
    } else if (path && *path && loaded->library != path) {
        fail(ET_ERR_ENGINE, std::string("ONNX Runtime is already loaded from ") + loaded->library +
                                " in this process; cannot load " + path + " as well");
    }
    return *loaded;
}

}  // namespace et::rt
