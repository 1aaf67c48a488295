/* tune_bundle.c — tune a model from an edgetune bundle and a JSONL file, with no Python in the process.
 *
 *   tune_bundle BUNDLE TRAIN.jsonl [--eval EVAL.jsonl] [--out DIR] [--steps N] [--lr X|auto] [--eps X|auto]
 *               [--guard on|off] [--seed N] [--batch-size N] [--queries N] [--schedule constant|linear|spall]
 *               [--warmup N] [--weight-decay X] [--threads N]
 *               [--ort LIBONNXRUNTIME] [--resume FILE] [--checkpoint FILE] [--stop-after N]
 *
 * JSONL lines: {"text": "...", "label": "name" | 0} (tokenised from the bundle's tokenizer.json; a causal-LM
 * bundle also takes {"text"} and {"prompt", "completion"}, docs/runtime.md) or {"ids": [101, ...], "label": ...}. --lr, --eps default to the bundle's (edgetune bundle writes lr "auto":
 * measured before step 0), --guard to on, as `edgetune tune`. Prints one "step T loss L" line per step (the
 * curve), the run's notes as `edgetune tune` prints them (the calibrated lr, the guard's rollbacks, the best
 * state kept), the evaluation before and after, and saves DIR/model.onnx + DIR/trainable.safetensors.
 * Exit status: 0 done, 1 an error (one "tune_bundle: error: ..." line on stderr), 2 bad arguments. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "edgetune_runtime.h"
#include "peak_rss.h"

typedef struct {
    uint64_t stop_after;  /* 0: never */
    uint64_t timed;       /* steps after the first one, and their wall / CPU seconds */
    double wall, cpu, wall0, cpu0;
} progress_ctx;

static double seconds(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int32_t on_step(const et_step_record *r, void *user) {
    progress_ctx *ctx = (progress_ctx *)user;
    const double wall = seconds(CLOCK_MONOTONIC), cpu = seconds(CLOCK_PROCESS_CPUTIME_ID);
    if (ctx->wall0 > 0) {  /* step time from the end of one step to the next's, printing included */
        ctx->wall += wall - ctx->wall0;
        ctx->cpu += cpu - ctx->cpu0;
        ++ctx->timed;
    }
    /* a step of the exact head alone (queries 0) has no projected gradient: g nan */
    printf("step %llu loss %.9g lr %.9g g %.9g\n", (unsigned long long)r->step, (double)r->loss, (double)r->lr,
           r->queries ? (double)r->grads[0] : NAN);
    fflush(stdout);
    ctx->wall0 = seconds(CLOCK_MONOTONIC);
    ctx->cpu0 = seconds(CLOCK_PROCESS_CPUTIME_ID);
    return ctx->stop_after && r->step + 1 >= ctx->stop_after;  /* non-zero: stop (the step is complete) */
}

static void on_note(const char *line, void *user) {
    (void)user;
    printf("%s\n", line);
    fflush(stdout);
}

static int fail(et_runtime *rt, const char *what) {
    fprintf(stderr, "tune_bundle: error: %s: %s\n", what, et_runtime_last_error(rt));
    et_runtime_free(rt);
    return 1;
}

static int evaluate(et_runtime *rt, const char *when) {
    et_metrics m;
    if (et_runtime_evaluate(rt, ET_SPLIT_EVAL, &m) != ET_OK) return -1;
    printf("eval %s loss %.9g accuracy %.6f examples %llu\n", when, m.loss, m.accuracy, (unsigned long long)m.examples);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s BUNDLE TRAIN.jsonl [--eval F] [--out DIR] [--steps N] [--lr X|auto] [--eps X|auto] [--guard on|off] [--seed N] "
                        "[--batch-size N] [--queries N] [--schedule S] [--warmup N] [--weight-decay X] [--threads N] [--ort LIB] "
                        "[--resume F] "
                        "[--checkpoint F] [--stop-after N]\n", argv[0]);
        return 2;
    }
    const char *eval = NULL, *out = NULL, *resume = NULL, *checkpoint = NULL;
    et_runtime_options o;
    et_runtime_default_options(&o);
    progress_ctx ctx = {0, 0, 0, 0, 0, 0};
    for (int i = 3; i + 1 < argc; i += 2) {  /* the ORT options first: open needs them */
        if (!strcmp(argv[i], "--threads")) o.threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--ort")) o.ort_library = argv[i + 1];
    }
    et_runtime *rt = NULL;
    if (et_runtime_open(argv[1], &o, &rt) != ET_OK) {
        fprintf(stderr, "tune_bundle: error: %s\n", et_runtime_last_error(NULL));
        return 1;
    }
    et_train_params p;
    et_runtime_default_train_params(rt, &p);
    for (int i = 3; i < argc; i += 2) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) { fprintf(stderr, "tune_bundle: error: %s needs a value\n", k); et_runtime_free(rt); return 2; }
        if (!strcmp(k, "--eval")) eval = v;
        else if (!strcmp(k, "--out")) out = v;
        else if (!strcmp(k, "--resume")) resume = v;
        else if (!strcmp(k, "--checkpoint")) checkpoint = v;
        else if (!strcmp(k, "--stop-after")) ctx.stop_after = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--steps")) p.steps = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--seed")) p.seed = strtoull(v, NULL, 10);
        else if (!strcmp(k, "--lr")) { p.lr_auto = !strcmp(v, "auto"); p.lr = p.lr_auto ? 0 : strtod(v, NULL); }
        else if (!strcmp(k, "--eps")) { p.eps_auto = !strcmp(v, "auto"); p.eps = p.eps_auto ? 0 : strtod(v, NULL); }
        else if (!strcmp(k, "--guard")) p.guard = strcmp(v, "off") != 0;
        else if (!strcmp(k, "--batch-size")) p.batch_size = (uint32_t)atoi(v);
        else if (!strcmp(k, "--queries")) p.queries = (uint32_t)atoi(v);
        else if (!strcmp(k, "--warmup")) p.warmup = (uint32_t)atoi(v);
        else if (!strcmp(k, "--weight-decay")) p.weight_decay = strtod(v, NULL);
        else if (!strcmp(k, "--schedule"))
            p.schedule = !strcmp(v, "linear") ? ET_SCHEDULE_LINEAR : !strcmp(v, "spall") ? ET_SCHEDULE_SPALL : ET_SCHEDULE_CONSTANT;
        else if (strcmp(k, "--threads") && strcmp(k, "--ort")) {
            fprintf(stderr, "tune_bundle: error: unknown option %s\n", k);
            et_runtime_free(rt);
            return 2;
        }
    }
    if (et_runtime_load_jsonl(rt, ET_SPLIT_TRAIN, argv[2]) != ET_OK) return fail(rt, "training data");
    if (*et_runtime_last_error(rt)) fprintf(stderr, "tune_bundle: %s\n", et_runtime_last_error(rt));  /* lines left out */
    if (eval && et_runtime_load_jsonl(rt, ET_SPLIT_EVAL, eval) != ET_OK) return fail(rt, "evaluation data");
    if (resume && et_runtime_resume(rt, resume) != ET_OK) return fail(rt, "resume");
    if (eval && evaluate(rt, "before") != 0) return fail(rt, "evaluation");
    p.progress = on_step;
    p.user = &ctx;
    p.note = on_note;
    et_train_result r;
    et_status s = et_runtime_train(rt, &p, &r);
    if (s != ET_OK && s != ET_CANCELLED) return fail(rt, "training");
    printf("trained %llu steps, %llu forwards%s\n", (unsigned long long)r.steps_done, (unsigned long long)r.forwards,
           r.cancelled ? " (stopped)" : "");
    et_run_summary sum;
    sum.struct_size = sizeof sum;
    if (et_runtime_summary(rt, &sum) == ET_OK)
        printf("summary lr %.17g eps %.17g calibrated %d probe forwards %llu rollbacks %u head %s kept %s\n", sum.lr,
               sum.eps, sum.calibrated, (unsigned long long)sum.calibration_forwards, sum.rollbacks,
               et_runtime_head(rt), sum.kept_best ? "best" : "final");
    if (ctx.timed)
        printf("step time %.6f s wall %.6f s cpu (mean of %llu steps after the first)\n", ctx.wall / ctx.timed,
               ctx.cpu / ctx.timed, (unsigned long long)ctx.timed);
    if (checkpoint && et_runtime_checkpoint(rt, checkpoint) != ET_OK) return fail(rt, "checkpoint");
    if (eval && evaluate(rt, "after") != 0) return fail(rt, "evaluation");
    if (out && et_runtime_save(rt, out) != ET_OK) return fail(rt, "save");
    et_runtime_free(rt);
    printf("peak RSS %.1f MB\n", peak_rss_mb());
    return 0;
}
