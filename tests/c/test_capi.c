/* test_capi.c — C API tests, run by ctest on every platform (x86-64 natively, AArch64 under qemu).
 *   test_capi <golden-file>            run all checks, including noise vs. the committed golden file
 *   test_capi <golden-file> --write    regenerate the golden file from the scalar kernels
 * The golden file is produced by the x86-64 scalar build; matching it on AArch64/NEON proves the
 * noise is bit-identical across builds. It is not its own authority: tests/test_core.py reproduces
 * every case from tests/reference_noise.py, an independent numpy reading of csrc/noise.h's spec. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgetune.h"

static int failures = 0;
#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);           \
            fprintf(stderr, __VA_ARGS__);                                  \
            fprintf(stderr, "\n");                                         \
            ++failures;                                                    \
        }                                                                  \
    } while (0)

static uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static uint64_t fnv1a(const float *v, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; ++i) {
        uint32_t u = bits_of(v[i]);
        for (int b = 0; b < 4; ++b) { h ^= (u >> (8 * b)) & 0xFF; h *= 0x100000001b3ULL; }
    }
    return h;
}

typedef struct { int dist; uint64_t seed, offset; size_t count; } gcase;
static const gcase golden_cases[] = {
    {0, 0, 0, 64}, {0, 0xDEADBEEFCAFEF00DULL, 12345, 67}, {0, 42, (1ULL << 33) - 37, 80},
    {1, 0, 0, 64}, {1, 0xDEADBEEFCAFEF00DULL, 12345, 67}, {1, 42, (1ULL << 37) - 45, 100},
    {0, 7, 3, 1000000}, {1, 7, 3, 1000000},
};
#define N_GOLDEN (sizeof(golden_cases) / sizeof(golden_cases[0]))

static int write_golden(const char *path) {
    if (et_set_isa("scalar") != ET_OK) return 1;
    FILE *f = fopen(path, "w");
    if (!f) { perror(path); return 1; }
    fprintf(f, "# edgetune noise golden v1 (x86-64 scalar build). Per case: dist seed offset count fnv1a64,\n"
               "# then (count <= 128) the float32 bit patterns in hex. Regenerate: test_capi <file> --write\n"
               "# fnv1a64: FNV-1a 64 of the float32 bit patterns' bytes, least significant first. tests/test_core.py\n"
               "# checks every case against tests/reference_noise.py, written from the spec in csrc/noise.h.\n");
    for (size_t c = 0; c < N_GOLDEN; ++c) {
        const gcase *g = &golden_cases[c];
        float *v = malloc(g->count * sizeof(float));
        et_noise_fill(g->seed, g->offset, g->count, (et_noise)g->dist, v);
        fprintf(f, "%d %llu %llu %zu %016llx\n", g->dist, (unsigned long long)g->seed, (unsigned long long)g->offset,
                g->count, (unsigned long long)fnv1a(v, g->count));
        if (g->count <= 128) {
            for (size_t i = 0; i < g->count; ++i) fprintf(f, "%08x%c", bits_of(v[i]), (i % 8 == 7 || i + 1 == g->count) ? '\n' : ' ');
        }
        free(v);
    }
    fclose(f);
    et_set_isa("auto");
    printf("wrote %s\n", path);
    return 0;
}

static void check_golden(const char *path) {
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "cannot open golden file %s", path);
    if (!f) return;
    char line[4096];
    int dist; unsigned long long seed, offset, hash; size_t count;
    const char *isas[8];
    uint32_t n_isa = et_available_isas(isas, 8);
    int cases = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n') continue;
        if (sscanf(line, "%d %llu %llu %zu %llx", &dist, &seed, &offset, &count, &hash) != 5) continue;
        uint32_t *want = NULL;
        if (count <= 128) {
            want = malloc(count * sizeof(uint32_t));
            for (size_t i = 0; i < count; ++i) { unsigned x; if (fscanf(f, "%x", &x) != 1) x = 0; want[i] = x; }
        }
        float *v = malloc(count * sizeof(float));
        for (uint32_t k = 0; k < n_isa; ++k) {
            et_set_isa(isas[k]);
            for (int threads = 1; threads <= 2; ++threads) {
                et_set_num_threads(threads);
                memset(v, 0, count * sizeof(float));
                CHECK(et_noise_fill(seed, offset, count, (et_noise)dist, v) == ET_OK, "noise_fill");
                CHECK(fnv1a(v, count) == hash, "golden hash mismatch: isa %s threads %d dist %d seed %llu offset %llu",
                      isas[k], threads, dist, seed, offset);
                if (want)
                    for (size_t i = 0; i < count; ++i)
                        if (bits_of(v[i]) != want[i]) {
                            CHECK(0, "golden value mismatch: isa %s dist %d case seed %llu index %zu: %08x != %08x",
                                  isas[k], dist, seed, i, bits_of(v[i]), want[i]);
                            break;
                        }
            }
        }
        et_set_num_threads(1);
        et_set_isa("auto");
        free(v); free(want);
        ++cases;
    }
    fclose(f);
    CHECK(cases == (int)N_GOLDEN, "golden file has %d cases, expected %d", cases, (int)N_GOLDEN);
    printf("golden: %d cases x %u ISAs ok\n", cases, n_isa);
}

/* every ISA gives the scalar bits for fill, perturb and combine, at odd offsets and lengths */
static void check_isa_identity(void) {
    const char *isas[8];
    uint32_t n_isa = et_available_isas(isas, 8);
    const size_t n = 100003;
    float *ref = malloc(n * 4), *v = malloc(n * 4), *b0 = malloc(n * 4), *b1 = malloc(n * 4);
    const uint64_t seeds[3] = {1, 2, 0xFFFFFFFFFFFFFFFFULL};
    const float coefs[3] = {0.25f, -1e-3f, 3.0f};
    for (int dist = 0; dist < 2; ++dist)
        for (uint64_t off = 0; off < 3; ++off) {
            et_set_isa("scalar");
            et_noise_fill(99, off * 1000003, n, (et_noise)dist, ref);
            for (size_t i = 0; i < n; ++i) b0[i] = (float)(i % 17) * 0.1f - 0.5f;
            et_perturb(b0, n, 5, 1e-3f, (et_noise)dist, off);
            et_combine(b0, n, 0.999f, seeds, coefs, 3, (et_noise)dist, off);
            for (uint32_t k = 1; k < n_isa; ++k) {
                et_set_isa(isas[k]);
                et_noise_fill(99, off * 1000003, n, (et_noise)dist, v);
                CHECK(memcmp(v, ref, n * 4) == 0, "noise %s != scalar (dist %d)", isas[k], dist);
                for (size_t i = 0; i < n; ++i) b1[i] = (float)(i % 17) * 0.1f - 0.5f;
                et_perturb(b1, n, 5, 1e-3f, (et_noise)dist, off);
                et_combine(b1, n, 0.999f, seeds, coefs, 3, (et_noise)dist, off);
                CHECK(memcmp(b0, b1, n * 4) == 0, "perturb/combine %s != scalar (dist %d)", isas[k], dist);
            }
        }
    et_set_isa("auto");
    printf("isa identity: %u ISAs (active %s)\n", n_isa, et_simd_level());
    free(ref); free(v); free(b0); free(b1);
}

static void check_moments(void) {
    const size_t n = 1000000;
    float *a = malloc(n * 4), *b = malloc(n * 4);
    for (int dist = 0; dist < 2; ++dist) {
        et_noise_fill(1234, 0, n, (et_noise)dist, a);
        et_noise_fill(1235, 0, n, (et_noise)dist, b);
        double s = 0, s2 = 0, s4 = 0, cab = 0, clag = 0;
        for (size_t i = 0; i < n; ++i) {
            double x = a[i];
            s += x; s2 += x * x; s4 += x * x * x * x; cab += x * b[i];
            if (i + 1 < n) clag += x * a[i + 1];
        }
        double mean = s / n, var = s2 / n - mean * mean, kurt = s4 / n;
        double tol = 5.0 / sqrt((double)n);  /* 5 sigma */
        CHECK(fabs(mean) < tol, "dist %d mean %g", dist, mean);
        CHECK(fabs(var - 1.0) < 5.0 * sqrt(2.0 / n) + 1e-3 * dist, "dist %d var %g", dist, var);
        CHECK(fabs(cab / n) < tol, "dist %d corr between seeds %g", dist, cab / n);
        CHECK(fabs(clag / n) < tol, "dist %d lag-1 corr %g", dist, clag / n);
        if (dist == 0) CHECK(fabs(kurt - 3.0) < 0.05, "gaussian 4th moment %g", kurt);
        printf("moments dist %d: mean %.2e var %.5f E[x^4] %.4f corr(seed) %.1e corr(lag1) %.1e\n", dist, mean, var,
               kurt, cab / n, clag / n);
    }
    free(a); free(b);
}

static double quad_loss(const float *w, const float *target, size_t n) {
    double l = 0;
    for (size_t i = 0; i < n; ++i) { double d = w[i] - target[i]; l += 0.5 * d * d; }
    return l;
}

static void check_tuner(void) {
    const size_t n = 64;
    float target[64];
    for (size_t i = 0; i < n; ++i) target[i] = (float)((int)(i % 7) - 3) * 0.5f;
    et_tuner_params p;
    et_tuner_default_params(&p);
    CHECK(p.struct_size == sizeof(et_tuner_params), "struct_size");
    /* the Python trainer's default too (edgetune/config.py), so both run the same algorithm */
    CHECK(p.noise == ET_NOISE_RADEMACHER, "default noise %d, want ET_NOISE_RADEMACHER", (int)p.noise);
    p.n_params = n; p.lr = 0.02f; p.eps = 1e-2f; p.queries = 2; p.max_steps = 300; p.seed = 17;
    et_tuner *t = NULL;
    CHECK(et_tuner_create(&p, &t) == ET_OK && t, "create");
    float *w; size_t nw;
    CHECK(et_tuner_arena(t, &w, &nw) == ET_OK && nw == n, "arena");
    CHECK(((uintptr_t)w & 63) == 0, "arena not 64-byte aligned");
    const double l0 = quad_loss(w, target, n);
    et_probe pr;
    int evals = 0;
    et_status s;
    while ((s = et_tuner_ask(t, &pr)) == ET_OK) {
        float loss = (float)quad_loss(w, target, n);
        CHECK(et_tuner_tell(t, &pr, loss) == ET_OK, "tell");
        ++evals;
    }
    CHECK(s == ET_DONE, "ask ends with ET_DONE, got %d", s);
    CHECK(evals == 300 * 2 * 2, "evaluations %d", evals);
    const double l1 = quad_loss(w, target, n);
    CHECK(l1 < 0.5 * l0, "quadratic loss did not decrease enough: %g -> %g", l0, l1);
    uint64_t steps; et_tuner_step(t, &steps);
    CHECK(steps == 300, "steps %llu", (unsigned long long)steps);
    float g[4]; uint32_t ng = 0;
    CHECK(et_tuner_last_grads(t, g, 4, &ng) == ET_OK && ng == 2, "last_grads");
    printf("tuner: quadratic loss %.4f -> %.4f in %d evaluations\n", l0, l1, evals);
    et_tuner_free(t);

    /* non-finite loss: arena restored (to float accuracy), same probe re-issued */
    p.max_steps = 0; p.queries = 1;
    CHECK(et_tuner_create(&p, &t) == ET_OK, "create 2");
    et_tuner_arena(t, &w, &nw);
    for (size_t i = 0; i < n; ++i) w[i] = target[i] + 1.0f;
    float before[64];
    memcpy(before, w, sizeof before);
    et_probe p1, p2;
    CHECK(et_tuner_ask(t, &p1) == ET_OK && p1.sign == 1, "ask +");
    CHECK(et_tuner_tell(t, &p1, (float)quad_loss(w, target, n)) == ET_OK, "tell +");
    CHECK(et_tuner_ask(t, &p2) == ET_OK && p2.sign == -1, "ask -");
    CHECK(et_tuner_tell(t, &p1, 1.0f) == ET_ERR_BAD_PROBE, "stale probe must be rejected");
    CHECK(et_tuner_tell(t, &p2, NAN) == ET_ERR_NONFINITE_LOSS, "NaN loss");
    double maxdiff = 0;
    for (size_t i = 0; i < n; ++i) {  /* not fmax(): aarch64 GCC 12.2 ICEs vectorising that reduction */
        double d = fabs((double)w[i] - before[i]);
        if (d > maxdiff) maxdiff = d;
    }
    CHECK(maxdiff < 1e-6, "arena not restored after NaN, max diff %g", maxdiff);
    CHECK(et_tuner_tell(t, &p2, 1.0f) == ET_ERR_STATE, "tell without ask");
    CHECK(et_tuner_ask(t, &p2) == ET_OK && p2.step == 0 && p2.query == 0 && p2.sign == 1, "probe re-issued");
    CHECK(et_tuner_tell(t, &p2, INFINITY) == ET_ERR_NONFINITE_LOSS, "Inf loss");
    et_tuner_free(t);
}

static void check_errors(void) {
    et_tuner_params p;
    et_tuner_default_params(&p);
    et_tuner *t = NULL;
    CHECK(et_tuner_create(&p, &t) == ET_ERR_INVALID_ARGUMENT, "n_params = 0");
    p.n_params = 10;
    CHECK(et_tuner_create(NULL, &t) == ET_ERR_INVALID_ARGUMENT, "NULL params");
    CHECK(et_tuner_create(&p, NULL) == ET_ERR_INVALID_ARGUMENT, "NULL out");
    p.struct_size = 4;
    CHECK(et_tuner_create(&p, &t) == ET_ERR_INVALID_ARGUMENT, "bad struct_size");
    et_tuner_default_params(&p);
    p.n_params = 10; p.eps = 0.0f;
    CHECK(et_tuner_create(&p, &t) == ET_ERR_INVALID_ARGUMENT, "eps = 0");
    p.eps = 1e-3f; p.noise = 7;
    CHECK(et_tuner_create(&p, &t) == ET_ERR_INVALID_ARGUMENT, "bad noise");
    CHECK(et_noise_fill(1, 0, 10, ET_NOISE_GAUSSIAN, NULL) == ET_ERR_INVALID_ARGUMENT, "NULL out");
    CHECK(et_perturb(NULL, 10, 1, 1.0f, ET_NOISE_GAUSSIAN, 0) == ET_ERR_INVALID_ARGUMENT, "NULL buf");
    float b[4] = {0};
    CHECK(et_combine(b, 4, 1.0f, NULL, NULL, 2, ET_NOISE_GAUSSIAN, 0) == ET_ERR_INVALID_ARGUMENT, "NULL seeds");
    CHECK(et_combine(b, 4, 1.0f, NULL, NULL, 0, ET_NOISE_GAUSSIAN, 0) == ET_OK, "k = 0");
    CHECK(et_set_isa("bogus") == ET_ERR_UNSUPPORTED, "bogus ISA");
    CHECK(et_set_isa(NULL) == ET_ERR_INVALID_ARGUMENT, "NULL ISA");
    CHECK(et_tuner_ask(NULL, NULL) == ET_ERR_INVALID_ARGUMENT, "NULL tuner");
    /* ET_EXPECTED_VERSION: pyproject.toml's version as tests/c/CMakeLists.txt read it */
    CHECK(strcmp(et_version(), ET_EXPECTED_VERSION) == 0, "version %s, pyproject.toml says %s", et_version(),
          ET_EXPECTED_VERSION);
    CHECK(strcmp(et_status_string(ET_ERR_NONFINITE_LOSS), "non-finite loss (arena restored)") == 0, "status string");
    et_tuner_free(NULL);
    CHECK(et_derive_seed(1, 2, 3) != et_derive_seed(1, 2, 4), "derive_seed");
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: test_capi <golden-file> [--write]\n"); return 2; }
    if (argc > 2 && strcmp(argv[2], "--write") == 0) return write_golden(argv[1]);
    printf("edgetune %s, simd %s\n", et_version(), et_simd_level());
    check_errors();
    check_isa_identity();
    check_golden(argv[1]);
    check_moments();
    check_tuner();
    if (failures) { fprintf(stderr, "%d check(s) failed\n", failures); return 1; }
    printf("all C API checks passed\n");
    return 0;
}
