/*
 * edgetune_runtime.h — C API of the edgetune tuning runtime: tunes a model on the device, with no
 * Python, from a bundle that `edgetune bundle` wrote on a workstation (docs/bundle.md). It runs the
 * bundle's graphs through ONNX Runtime's C API (the library is loaded at run time, see
 * et_runtime_options.ort_library), draws batches, takes ZO-SGD steps with the core's kernels
 * (edgetune.h), evaluates, checkpoints and saves a plain model.onnx. Same bundle, data, seed and
 * flags as `edgetune tune --bundle` give the same per-step losses and a bit-identical tuned slice.
 * A bundle prepared for the exact head (manifest "head": "exact") tunes the classifier's last linear layer
 * first-order from the gradient its graph outputs, the rest of the slice by ZO (et_runtime_head).
 *
 * Usage:
 *
 *   et_runtime_options o;
 *   et_runtime_default_options(&o);             // always start from the defaults
 *   o.threads = 2;
 *   et_runtime *rt = NULL;
 *   if (et_runtime_open("bundle", &o, &rt) != ET_OK) {
 *       fprintf(stderr, "%s\n", et_runtime_last_error(NULL));   // open failed: no handle
 *       return 1;
 *   }
 *   int64_t ids[] = {101, 2023, 3185, 2001, 2307, 102};
 *   et_runtime_add_example(rt, ET_SPLIT_TRAIN, ids, 6, 1);       // or et_runtime_load_jsonl
 *   et_train_params p;
 *   et_runtime_default_train_params(rt, &p);    // the bundle's defaults (lr, eps, steps ...)
 *   p.steps = 200; p.progress = on_step; p.user = ctx; p.cancel = &cancel_flag;
 *   et_train_result r;
 *   if (et_runtime_train(rt, &p, &r) != ET_OK) fprintf(stderr, "%s\n", et_runtime_last_error(rt));
 *   et_metrics m;
 *   et_runtime_evaluate(rt, ET_SPLIT_EVAL, &m);  // m.loss, m.accuracy
 *   et_runtime_save(rt, "tuned");                // tuned/model.onnx + tuned/trainable.safetensors
 *   et_runtime_free(rt);
 *
 * Conventions (as edgetune.h)
 *   - Every fallible call returns et_status; on an error status the runtime keeps one message
 *     (et_runtime_last_error) naming the file, line, tensor or parameter, and output pointers
 *     are left untouched unless stated. No C++ exception crosses this boundary.
 *   - Ownership: pointers passed IN are borrowed for the duration of the call only (the runtime
 *     copies token ids, paths and strings it keeps). Pointers handed OUT are borrowed from the
 *     runtime, "valid until" as stated; the caller frees only what et_runtime_open returns.
 *   - Structs passed by pointer start with `struct_size` (set by the *_default_* functions).
 *
 * Thread safety
 *   - An et_runtime is NOT internally locked: use each runtime from one thread at a time (a
 *     background tuning thread is fine; the UI thread then only touches the cancel flag).
 *   - The cancel flag (et_train_params.cancel) is the one thing another thread may write while
 *     et_runtime_train runs: any non-zero value stops the run before its next step (a step is never
 *     cut in half: the weights stay clean). The progress callback runs on the training thread.
 *   - Several runtimes may tune concurrently; they share ONNX Runtime's env and the core's kernel
 *     thread pool (process-global, see et_set_num_threads), which serialises kernel calls.
 *
 * Arithmetic (what makes the two runtimes agree; see edgetune.h for the ZO-SGD step)
 *   - Step t's batch: rows of et_epoch_permutation(seed, epoch, n) consecutive across epochs, padded
 *     as edgetune/data/batching.py pads them; the prefix graph runs once per step, the suffix 2q times.
 *   - A batch's loss: double acc = 0; for each row acc += (double)loss[row]; (float)(acc / n).
 *   - Schedules: constant, linear (to 0 at `steps`, after `warmup`), spall (Spall's gains), exactly as
 *     edgetune/zo/schedules.py evaluates them, in double, cast to float once per step.
 *   - A non-finite loss with the guard off stops the run with ET_ERR_NONFINITE_LOSS (as the Python tuner
 *     with --guard off): the weights are restored to the clean ones of that step, the message names the
 *     step and the examples of its batch, and the run may go on (et_runtime_step retries that step).
 *
 * lr auto (et_train_params.lr_auto, edgetune/zo/calibrate.py)
 *   - Before step 0: curvature probes zᵀHz = (L(θ+hz) + L(θ−hz) − 2L(θ))/h² on 4 batches of a stream of
 *     their own (seeds from the run's seed), in rounds of 8 while the mean is uncertain (at most 32);
 *     lr = 0.05 / (mean + 2 standard errors), clamped, with the same fallbacks as Python. eps_auto picks
 *     eps from the same probes. θ is restored bit for bit. The probes' forwards count in the run's.
 *
 * The guard (et_train_params.guard, edgetune/zo/guard.py and loop.py)
 *   - An EMA of the step losses against its best; a rise past a noise-based threshold for 10 steps (2 when
 *     far above) rolls θ back to the best state by undo passes (the negated coefficients of each step since,
 *     no weight copy; each undo takes a step index, so steps_done may grow past the steps reported) and
 *     halves lr (under lr auto, no larger than the curvature measured again there). A non-finite loss is
 *     answered the same way; once the 8 rollbacks are spent, ET_ERR_NONFINITE_LOSS as above. Weight decay
 *     has no undo: lr halves only.
 *   - Keep-best: a run that took all its steps and ended worse than it began goes back to its best state
 *     (loop._end): with evaluation examples (ET_SPLIT_EVAL, evaluated before step 0 and at the end) by their
 *     loss, 0.5 % tolerance; without, by the smoothed training loss against the first. The status stays
 *     ET_OK; the note "kept best: ..." and et_run_summary.kept_best say so.
 *   - Every such line ("lr auto: ...", "guard: ...", "kept best: ...", the Python tuner's words) goes to
 *     et_train_params.note and et_runtime_notes.
 */
#ifndef EDGETUNE_RUNTIME_H
#define EDGETUNE_RUNTIME_H

#include "edgetune.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct et_runtime et_runtime;  /* opaque */

/* The runtime's own statuses extend et_status (same integer type, distinct values). */
#define ET_ERR_BUNDLE ((et_status)-20)   /* bundle missing, incomplete, bad sha256, unknown format_version */
#define ET_ERR_ENGINE ((et_status)-21)   /* ONNX Runtime failed: library not loadable, graph or run error */
#define ET_ERR_DATA ((et_status)-22)     /* a bad example / JSONL line / label / split without examples */
#define ET_ERR_IO ((et_status)-23)       /* a file could not be read or written */
#define ET_CANCELLED ((et_status)2)      /* et_runtime_train: stopped by the cancel flag or the callback */

/* The most SPSA queries a step may take (the size of et_step_record.grads). */
#define ET_RUNTIME_MAX_QUERIES 16

typedef enum et_split {
    ET_SPLIT_TRAIN = 0,
    ET_SPLIT_EVAL = 1
} et_split;

typedef enum et_schedule {
    ET_SCHEDULE_CONSTANT = 0,
    ET_SCHEDULE_LINEAR = 1,      /* lr to 0 at `steps` after `warmup` */
    ET_SCHEDULE_SPALL = 2        /* lr a/(k+1+A)^0.602, eps c/(k+1)^0.101 (schedules.py) */
} et_schedule;

typedef struct et_runtime_options {
    uint32_t struct_size;        /* = sizeof(et_runtime_options); set by et_runtime_default_options */
    int32_t threads;             /* ORT intra-op threads and the kernel pool; 0 = ORT's default (default 0) */
    const char *ort_library;     /* path of libonnxruntime.so (the onnxruntime wheel's libonnxruntime.so.1.32.0
                                    works); NULL: $EDGETUNE_ORT_LIBRARY, else "libonnxruntime.so" then
                                    "libonnxruntime.so.1" on the loader path (default NULL). Borrowed. */
    int32_t verify_sha256;       /* 1: check every file's sha256 against the manifest at open (default 1) */
} et_runtime_options;

typedef struct et_step_record {
    uint32_t struct_size;        /* = sizeof(et_step_record); the runtime sets it */
    uint64_t step;               /* 0-based */
    float loss;                  /* mean of the step's 2q batch losses (L+ and L- of each query); a step of the
                                    exact head alone: the loss of its one forward at θ */
    float lr;                    /* the lr and eps the step used (after the schedule); a step of the exact head
                                    alone: the head's lr, eps 0 */
    float eps;
    uint32_t queries;            /* q: grads[0..q-1] are the projected gradients (0: the exact head alone) */
    float grads[ET_RUNTIME_MAX_QUERIES];
    uint64_t seeds[ET_RUNTIME_MAX_QUERIES];  /* et_derive_seed(seed, step, i): replay needs these */
    uint64_t forwards;           /* suffix forwards so far in the run (2q per step) */
} et_step_record;

/* Called after every step on the training thread; return non-zero to stop the run (ET_CANCELLED). */
typedef int32_t (*et_progress_fn)(const et_step_record *record, void *user);
/* Called on the training thread with each line the run has to say, as `edgetune tune` prints them: the
 * calibrated lr ("lr auto: ..."), a guard's rollback ("guard: ..."), the best state kept ("kept best: ...").
 * line: valid during the call only. */
typedef void (*et_note_fn)(const char *line, void *user);

typedef struct et_train_params {
    uint32_t struct_size;        /* = sizeof(et_train_params); set by et_runtime_default_train_params */
    uint64_t steps;              /* the run's total steps (schedules end there); manifest default */
    uint64_t seed;               /* noise and batch order; manifest default */
    uint32_t batch_size;         /* rows per step (capped to the training examples); manifest default */
    uint32_t queries;            /* q, 1..ET_RUNTIME_MAX_QUERIES; manifest default */
    double lr;                   /* base learning rate (ignored under lr_auto); manifest default. double, as
                                    Python's: a schedule computes in double and rounds to float once per step */
    double eps;                  /* perturbation scale, > 0 (ignored under eps_auto); manifest default */
    double weight_decay;         /* decoupled, once per step (default 0) */
    int32_t schedule;            /* et_schedule (default ET_SCHEDULE_CONSTANT) */
    uint32_t warmup;             /* linear warm-up steps of the lr (default 0) */
    int32_t noise;               /* et_noise; default from the manifest (rademacher) */
    et_progress_fn progress;     /* may be NULL */
    void *user;                  /* handed to progress as is */
    const volatile int32_t *cancel;  /* may be NULL; read before each step (any thread may set it) */
    /* Since the guard (struct_size = sizeof(et_train_params)). A caller built against the older struct passes
     * struct_size = ET_TRAIN_PARAMS_V1_SIZE and gets lr_auto = eps_auto = guard = 0, note = NULL: its run is
     * the one it had. */
    int32_t lr_auto;             /* 1: lr measured before step 0 by curvature probes (`--lr auto`, see "lr auto"
                                    above); `lr` is then ignored. Default: the manifest's ("auto" -> 1) */
    int32_t eps_auto;            /* 1: eps measured by the same probes (`--eps auto`); default: the manifest's */
    int32_t guard;               /* 1: the guard and keep-best (`--guard on`, see "The guard" above); default 1 */
    et_note_fn note;             /* may be NULL */
    void *note_user;             /* handed to note as is */
} et_train_params;

/* struct_size of et_train_params before lr_auto/eps_auto/guard/note (still accepted, see above) */
#define ET_TRAIN_PARAMS_V1_SIZE offsetof(et_train_params, lr_auto)

typedef struct et_train_result {
    uint32_t struct_size;        /* = sizeof(et_train_result); the runtime sets it */
    uint64_t steps_done;         /* completed steps of the run (resumed ones included) */
    uint64_t forwards;           /* suffix forwards of the run (lr auto's probes included) */
    float last_loss;             /* the last step's record.loss (NaN before any step) */
    int32_t cancelled;           /* 1 when the cancel flag or the callback stopped it */
} et_train_result;

typedef struct et_metrics {
    uint32_t struct_size;        /* = sizeof(et_metrics); the runtime sets it */
    uint64_t examples;           /* rows evaluated */
    double loss;                 /* mean per-example loss */
    double accuracy;             /* classify: argmax(logits) == label; a verbaliser (lm) bundle: argmax over its
                                    words' tokens before the word == label; other lm: NaN */
} et_metrics;

/* What the run measured and did (summary.json's calibration / guard / kept of `edgetune tune`). */
typedef struct et_run_summary {
    uint32_t struct_size;        /* the CALLER sets it: = sizeof(et_run_summary) */
    double lr;                   /* the run's base lr and eps: the calibrated ones under lr/eps auto */
    double eps;
    int32_t calibrated;          /* 1: lr/eps auto measured them; the calibration fields are set */
    int32_t fallback;            /* 1: zᵀHz was not usable: lr from the gradient scale (calibrate.py) */
    double curvature;            /* median zᵀHz over the probes */
    double calibration_loss;     /* mean loss and its spread across the calibration batches */
    double loss_noise;
    double grad_rms;             /* RMS of the probes' projected gradients */
    uint32_t probes;
    uint64_t calibration_forwards;  /* the probes' suffix forwards (in et_train_result.forwards too), the
                                       re-measures after rollbacks under lr auto included */
    uint32_t rollbacks;          /* the guard's actions (rollbacks, lr halvings, non-finite recoveries) */
    double lr_scale;             /* the guard's factor on lr now (1, 0.5, ...) */
    int32_t kept_best;           /* 1: the run ended worse than it began; θ went back to before best_step */
    uint64_t best_step;
    uint32_t notes;              /* lines in et_runtime_notes */
} et_run_summary;

/* Defaults; o/p: caller-owned, fully overwritten. */
ET_API void et_runtime_default_options(et_runtime_options *o);

/* Open a bundle directory: reads and checks manifest.json (format, version, every file's size and
 * sha256), loads ONNX Runtime, creates the sessions and the arena (arena.bin). options: borrowed (NULL:
 * defaults). *out: new runtime, caller frees with et_runtime_free; untouched on error, when
 * et_runtime_last_error(NULL) says why (ET_ERR_BUNDLE, ET_ERR_ENGINE, ET_ERR_IO ...). */
ET_API et_status et_runtime_open(const char *bundle_dir, const et_runtime_options *options, et_runtime **out);
ET_API void et_runtime_free(et_runtime *rt);          /* NULL is a no-op */

/* The last error message of rt (valid until the next call on rt), or with rt NULL the calling thread's
 * last failed et_runtime_open; "" when none. Never NULL, never free. */
ET_API const char *et_runtime_last_error(const et_runtime *rt);

/* The bundle: task ("classify" | "lm"), class count (0 for lm) and class name i (NULL out of range).
 * Strings are valid until et_runtime_free. */
ET_API const char *et_runtime_task(const et_runtime *rt);
ET_API uint32_t et_runtime_num_labels(const et_runtime *rt);
ET_API const char *et_runtime_label_name(const et_runtime *rt, uint32_t i);

/* Data. ids: borrowed, n token ids as the bundle's tokenizer makes them (special tokens included; cut to
 * the bundle's max_length); label: class index (classify; a verbaliser bundle: the ids end with the class's
 * word token, the one target, and keep their end). An lm bundle trains on every token. The runtime copies them. */
ET_API et_status et_runtime_add_example(et_runtime *rt, et_split split, const int64_t *ids, size_t n, int64_t label);
/* Text through the bundle's tokenizer.json (the C++ tokenizer: WordPiece or byte-level BPE, the ids Hugging
 * Face tokenizers gives), encoded as `edgetune tune` encodes the record (edgetune/data/encode.py):
 *   classify            {"text", "label"}: special tokens added, cut to max_length;
 *   lm with verbaliser  {"text", "label"}: the template around the text, then the class's word, the one target
 *                       (the prompt keeps its end within max_length);
 *   lm                  {"text"}: every token a target (label ignored).
 * text: borrowed, NUL-terminated UTF-8. */
ET_API et_status et_runtime_add_text(et_runtime *rt, et_split split, const char *text, int64_t label);
/* A {"prompt", "completion"} record (lm bundles without a verbaliser): the completion, ended with the bundle's
 * eos_token, is the target; the tokens that hold any of its characters (by the tokenizer's offsets) and all after
 * them. ET_ERR_DATA when the completion lies wholly beyond max_length (tune leaves such an example out). */
ET_API et_status et_runtime_add_prompt(et_runtime *rt, et_split split, const char *prompt, const char *completion);
/* Token ids with per-token labels (lm bundles; token_labels[i] is ids[i] where the loss counts it, -100 where not),
 * e.g. a chat conversation as edgetune in Python encodes it (the runtime does not render Jinja chat templates).
 * token_labels NULL: et_runtime_add_example. Both borrowed, n values each. */
ET_API et_status et_runtime_add_labelled(et_runtime *rt, et_split split, const int64_t *ids,
                                         const int64_t *token_labels, size_t n, int64_t label);
/* A JSONL file, one record a line, of one shape: {"ids": [...]} (with "labels": [...] token labels for an lm
 * bundle), {"text": "..."} or {"prompt": "...", "completion": "..."}, each with "label": index | "class name" where
 * the bundle has classes; encoded as above. {"messages"} lines are refused (chat templates are Jinja: give ids and
 * labels). An error names the file and line; examples of lines before it stay added. On ET_OK,
 * et_runtime_last_error(rt) is "" or tune's warning naming the prompt/completion lines left out. */
ET_API et_status et_runtime_load_jsonl(et_runtime *rt, et_split split, const char *path);
/* Example i of a split as the runtime holds it, encoded and cut: *ids and *token_labels (NULL where the loss takes
 * every token, or the bundle classifies) borrowed, *n values each, valid until the split changes; *label its class
 * (0 for a plain lm bundle). ET_ERR_INVALID_ARGUMENT past the end. */
ET_API et_status et_runtime_example(const et_runtime *rt, et_split split, uint64_t i, const int64_t **ids,
                                    const int64_t **token_labels, size_t *n, int64_t *label);
ET_API et_status et_runtime_num_examples(const et_runtime *rt, et_split split, uint64_t *n);
ET_API et_status et_runtime_clear(et_runtime *rt, et_split split);

/* Training. set_train_params validates and latches p (borrowed) for the run; changing a trajectory-
 * defining field after a step (seed, batch size, queries, noise, lr/eps/schedule) is ET_ERR_STATE.
 * et_runtime_step runs the next step (ET_DONE after p.steps) and fills *record (may be NULL).
 * et_runtime_train = set_train_params + steps until p.steps, the cancel flag or the callback stops it
 * (ET_CANCELLED); *result may be NULL. */
ET_API void et_runtime_default_train_params(const et_runtime *rt, et_train_params *p);
ET_API et_status et_runtime_set_train_params(et_runtime *rt, const et_train_params *p);
ET_API et_status et_runtime_step(et_runtime *rt, et_step_record *record);
ET_API et_status et_runtime_train(et_runtime *rt, const et_train_params *p, et_train_result *result);
ET_API et_status et_runtime_steps_done(const et_runtime *rt, uint64_t *steps);
/* The run's summary (s->struct_size set by the caller; ET_ERR_INVALID_ARGUMENT when it is not
 * sizeof(et_run_summary)), and its note lines so far, '\n'-separated ("" when none; valid until the next
 * call on rt, never free). */
ET_API et_status et_runtime_summary(const et_runtime *rt, et_run_summary *s);
ET_API const char *et_runtime_notes(const et_runtime *rt);
/* How the run tunes the classifier's head: "exact" (the bundle's manifest says "head": "exact": every forward
 * also outputs the head's gradient; the head takes an Adam step (lr 3e-3) from the mean of a step's gradients
 * while ZO tunes the rest of the slice, as `edgetune tune --head exact`; under lr auto the head learns alone
 * for 50 steps, one forward each, before the layers below are calibrated; a step of the head alone has
 * queries 0 and eps 0), or "zo" (the whole slice by ZO; bundles written before the exact head). Borrowed
 * from rt; NULL for a NULL rt. */
ET_API const char *et_runtime_head(const et_runtime *rt);

/* Mean per-example loss (and accuracy) of a split at the current weights, in example order, in batches of 64
 * rows as Tuner.evaluate (a static-shape bundle: its batch, the last one filled and the filler not counted).
 * Does not change the weights or the run. */
ET_API et_status et_runtime_evaluate(et_runtime *rt, et_split split, et_metrics *metrics);

/* The trainable slice: *data borrowed (n floats, arena order as manifest.json lists it), valid until
 * et_runtime_free; read only between calls (never during et_runtime_train on another thread). */
ET_API et_status et_runtime_weights(const et_runtime *rt, const float **data, size_t *n);

/* Checkpoint: one file (atomic: written aside and renamed) holding the weights, the step, the train
 * params and a digest of the bundle and the training examples. resume restores all of it; the run then
 * continues bit-identically. A checkpoint of another bundle or other training data is refused
 * (ET_ERR_STATE, one message naming what differs). */
ET_API et_status et_runtime_checkpoint(et_runtime *rt, const char *path);
ET_API et_status et_runtime_resume(et_runtime *rt, const char *path);

/* Save into out_dir (created if missing): model.onnx, the bundle's plain graph with the tuned weights
 * (streamed: the graph is copied in chunks, the tuned tensors patched in place, never held whole), plus
 * trainable.safetensors (the tuned slice, as `edgetune tune` writes it) and the bundle's tokenizer files.
 * Files are written aside and renamed; nothing else in out_dir is touched. */
ET_API et_status et_runtime_save(et_runtime *rt, const char *out_dir);

#ifdef __cplusplus
}
#endif
#endif /* EDGETUNE_RUNTIME_H */
