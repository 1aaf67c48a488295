/* infer_bundle.c — plain ONNX Runtime inference of one batch through the C API: the peer whose peak RSS
 * benchmarks/bench_runtime.py compares tune_bundle's with. It loads ORT as the runtime does (dlopen), with
 * the same session options, runs MODEL on the first BATCH examples of a token-ids JSONL file (padded to
 * the longest, attention mask, token type ids 0) RUNS times and prints the logits' first value.
 *
 *   infer_bundle MODEL.onnx TRAIN.jsonl BATCH RUNS [THREADS] [LIBONNXRUNTIME] */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onnxruntime_c_api.h"
#include "peak_rss.h"

static const OrtApi *api;

static void check(OrtStatus *s) {
    if (!s) return;
    fprintf(stderr, "infer_bundle: error: %s\n", api->GetErrorMessage(s));
    exit(1);
}

/* the ids of the line's "ids" list; returns how many (at most cap) */
static size_t parse_ids(const char *line, int64_t *ids, size_t cap) {
    const char *p = strstr(line, "\"ids\"");
    size_t n = 0;
    if (!p || !(p = strchr(p, '['))) return 0;
    for (++p; *p && *p != ']' && n < cap;) {
        char *end;
        long long v = strtoll(p, &end, 10);
        if (end == p) { ++p; continue; }
        ids[n++] = v;
        p = end;
    }
    return n;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s MODEL.onnx TRAIN.jsonl BATCH RUNS [THREADS] [LIBONNXRUNTIME]\n", argv[0]);
        return 2;
    }
    const size_t batch = (size_t)atoi(argv[3]), max_len = 512;
    const int runs = atoi(argv[4]), threads = argc > 5 ? atoi(argv[5]) : 0;
    void *lib = dlopen(argc > 6 ? argv[6] : "libonnxruntime.so", RTLD_NOW | RTLD_LOCAL);
    if (!lib) { fprintf(stderr, "infer_bundle: error: %s\n", dlerror()); return 1; }
    const OrtApiBase *(*get_base)(void) = (const OrtApiBase *(*)(void))dlsym(lib, "OrtGetApiBase");
    api = get_base()->GetApi(ORT_API_VERSION);
    int64_t *ids = calloc(batch * max_len, sizeof(int64_t)), *mask = calloc(batch * max_len, sizeof(int64_t));
    int64_t *types = calloc(batch * max_len, sizeof(int64_t)), *row = malloc(max_len * sizeof(int64_t));
    size_t lens[4096], rows = 0, longest = 1;
    FILE *f = fopen(argv[2], "r");
    static char line[1 << 16];
    while (f && rows < batch && fgets(line, sizeof line, f)) {
        size_t n = parse_ids(line, row, max_len);
        if (!n) continue;
        memcpy(ids + rows * max_len, row, n * sizeof(int64_t));
        lens[rows++] = n;
        if (n > longest) longest = n;
    }
    if (!rows) { fprintf(stderr, "infer_bundle: error: no examples in %s\n", argv[2]); return 1; }
    for (size_t r = 0; r < rows; ++r) {  /* compact to [rows, longest] */
        memmove(ids + r * longest, ids + r * max_len, longest * sizeof(int64_t));
        for (size_t c = 0; c < longest; ++c) mask[r * longest + c] = c < lens[r];
    }
    OrtEnv *env;
    OrtSessionOptions *so;
    OrtSession *session;
    OrtMemoryInfo *cpu, *arena;
    check(api->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "infer", &env));
    check(api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &arena));
    check(api->CreateAndRegisterAllocator(env, arena, NULL));
    check(api->CreateSessionOptions(&so));
    check(api->AddSessionConfigEntry(so, "session.use_env_allocators", "1"));
    if (threads > 0) check(api->SetIntraOpNumThreads(so, threads));
    check(api->SetInterOpNumThreads(so, 1));
    check(api->AddSessionConfigEntry(so, "session.intra_op.allow_spinning", "0"));
    check(api->AddSessionConfigEntry(so, "session.use_device_allocator_for_initializers", "1"));
    check(api->CreateSession(env, argv[1], so, &session));
    check(api->CreateCpuMemoryInfo(OrtDeviceAllocator, OrtMemTypeDefault, &cpu));
    OrtAllocator *alloc;
    check(api->GetAllocatorWithDefaultOptions(&alloc));
    size_t n_in, n_out;
    check(api->SessionGetInputCount(session, &n_in));
    check(api->SessionGetOutputCount(session, &n_out));
    const char *in_names[8], *out_names[1];
    OrtValue *in_values[8];
    const int64_t shape[2] = {(int64_t)rows, (int64_t)longest};
    const size_t bytes = rows * longest * sizeof(int64_t);
    for (size_t i = 0; i < n_in && i < 8; ++i) {
        char *name;
        check(api->SessionGetInputName(session, i, alloc, &name));
        int64_t *data = !strcmp(name, "input_ids") ? ids : !strcmp(name, "attention_mask") ? mask : types;
        in_names[i] = name;
        check(api->CreateTensorWithDataAsOrtValue(cpu, data, bytes, shape, 2, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64,
                                                  &in_values[i]));
    }
    char *out_name;
    check(api->SessionGetOutputName(session, 0, alloc, &out_name));
    out_names[0] = out_name;
    for (int k = 0; k < runs; ++k) {
        OrtValue *out = NULL;
        check(api->Run(session, NULL, in_names, (const OrtValue *const *)in_values, n_in, out_names, 1, &out));
        float *logits;
        check(api->GetTensorMutableData(out, (void **)&logits));
        if (k == runs - 1) printf("%s[0] %.9g (%zu rows x %zu tokens)\n", out_name, (double)logits[0], rows, longest);
        api->ReleaseValue(out);
    }
    printf("peak RSS %.1f MB\n", peak_rss_mb());
    return 0;
}
