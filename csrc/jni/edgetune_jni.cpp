// JNI face of the tuning runtime (edgetune_runtime.h) for bindings/java/ai/edgetune/EdgeTune.java.
//
// Each Java instance holds one Handle: the et_runtime and the cancel flag its runs read, so that
// EdgeTune.cancel() can stop a train() running on another thread (the one write the C API allows
// concurrently). Java serialises every other call (synchronized), so the runtime is never used by two
// threads at once. Errors become ai.edgetune.EdgeTuneException(status, the runtime's message); no C++
// exception crosses into the JVM (bad_alloc becomes OutOfMemoryError).
//
// Strings cross as real UTF-8 <-> UTF-16 (not JNI's "modified UTF-8", which encodes characters outside
// the BMP, such as emoji in a label or a path, differently from the UTF-8 the runtime reads and writes).
#include <jni.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include "edgetune_runtime.h"

static_assert(sizeof(jlong) == sizeof(int64_t), "jlong must be 64-bit (token ids are int64)");

namespace {

struct Handle {
    et_runtime *rt = nullptr;
    volatile int32_t cancel = 0;  // et_train_params.cancel points here
};

// Classes and member ids, resolved once in JNI_OnLoad (FindClass there sees the app's class loader).
struct Ids {
    jclass exception, step_record, train_result, metrics, train_params, string;
    jmethodID exception_ctor, step_record_ctor, train_result_ctor, metrics_ctor, train_params_ctor;
    jmethodID on_step, on_note, ordinal;
    jfieldID p_steps, p_seed, p_batch, p_queries, p_lr, p_eps, p_wd, p_schedule, p_warmup, p_noise;
    jfieldID p_lr_auto, p_eps_auto, p_guard;
} ids;

Handle *handle_of(jlong h) { return reinterpret_cast<Handle *>(static_cast<intptr_t>(h)); }

// ---- strings ------------------------------------------------------------------------------

// Java (UTF-16) -> UTF-8. false with a pending exception on an embedded NUL (C paths end there).
bool to_utf8(JNIEnv *env, jstring s, std::string &out) {
    const jsize n = env->GetStringLength(s);
    std::vector<jchar> u(static_cast<size_t>(n));
    env->GetStringRegion(s, 0, n, u.data());
    out.clear();
    out.reserve(u.size());
    for (size_t i = 0; i < u.size(); ++i) {
        uint32_t c = u[i];
        if (c == 0) {
            env->ThrowNew(env->FindClass("java/lang/IllegalArgumentException"), "string contains a NUL character");
            return false;
        }
        if (c >= 0xD800 && c < 0xDC00 && i + 1 < u.size() && u[i + 1] >= 0xDC00 && u[i + 1] < 0xE000) {
            c = 0x10000 + ((c - 0xD800) << 10) + (u[++i] - 0xDC00);
        } else if (c >= 0xD800 && c < 0xE000) {
            c = 0xFFFD;  // a lone surrogate has no UTF-8 form
        }
        if (c < 0x80) {
            out += static_cast<char>(c);
        } else if (c < 0x800) {
            out += static_cast<char>(0xC0 | (c >> 6));
            out += static_cast<char>(0x80 | (c & 0x3F));
        } else if (c < 0x10000) {
            out += static_cast<char>(0xE0 | (c >> 12));
            out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (c & 0x3F));
        } else {
            out += static_cast<char>(0xF0 | (c >> 18));
            out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
            out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (c & 0x3F));
        }
    }
    return true;
}

// UTF-8 -> Java; an invalid sequence becomes U+FFFD rather than an abort under CheckJNI.
jstring from_utf8(JNIEnv *env, const char *s) {
    std::vector<jchar> u;
    const auto *p = reinterpret_cast<const unsigned char *>(s ? s : "");
    while (*p) {
        uint32_t c = *p++;
        int more = c >= 0xF0 && c < 0xF8 ? 3 : c >= 0xE0 ? 2 : c >= 0xC0 ? 1 : c >= 0x80 ? -1 : 0;
        if (more < 0) {
            u.push_back(0xFFFD);
            continue;
        }
        c &= more == 3 ? 0x07 : more == 2 ? 0x0F : more == 1 ? 0x1F : 0x7F;
        bool bad = false;
        for (int k = 0; k < more; ++k) {
            if ((*p & 0xC0) != 0x80) {
                bad = true;
                break;
            }
            c = (c << 6) | (*p++ & 0x3F);
        }
        if (bad || c > 0x10FFFF) c = 0xFFFD;
        if (c >= 0x10000) {
            c -= 0x10000;
            u.push_back(static_cast<jchar>(0xD800 + (c >> 10)));
            u.push_back(static_cast<jchar>(0xDC00 + (c & 0x3FF)));
        } else {
            u.push_back(static_cast<jchar>(c));
        }
    }
    return env->NewString(u.data(), static_cast<jsize>(u.size()));
}

// ---- errors -------------------------------------------------------------------------------

void throw_status(JNIEnv *env, et_status s, const char *message) {
    if (env->ExceptionCheck()) return;  // the first exception (e.g. from the listener) wins
    const char *text = message && *message ? message : et_status_string(s);
    jstring msg = from_utf8(env, text);
    if (!msg) return;  // OutOfMemoryError pending
    auto ex = static_cast<jthrowable>(env->NewObject(ids.exception, ids.exception_ctor, static_cast<jint>(s), msg));
    if (ex) env->Throw(ex);
}

// true when s is not an error; otherwise throws with rt's message (the open failure's when rt is null).
bool ok(JNIEnv *env, const et_runtime *rt, et_status s) {
    if (s >= 0) return true;
    throw_status(env, s, et_runtime_last_error(rt));
    return false;
}

// Runs body, turning a C++ allocation failure into OutOfMemoryError (nothing may unwind into the JVM).
template <class R, class F>
R guarded(JNIEnv *env, R fail, F body) {
    try {
        return body();
    } catch (const std::bad_alloc &) {
        env->ThrowNew(env->FindClass("java/lang/OutOfMemoryError"), "edgetune: out of native memory");
    } catch (...) {
        throw_status(env, ET_ERR_INTERNAL, "edgetune: unexpected native exception");
    }
    return fail;
}

et_runtime *rt_of(jlong h) { return handle_of(h)->rt; }
et_split split_of(jint s) { return s == 1 ? ET_SPLIT_EVAL : ET_SPLIT_TRAIN; }

// ---- records ------------------------------------------------------------------------------

jobject make_record(JNIEnv *env, const et_step_record &r) {
    const jsize q = static_cast<jsize>(r.queries <= ET_RUNTIME_MAX_QUERIES ? r.queries : ET_RUNTIME_MAX_QUERIES);
    jfloatArray grads = env->NewFloatArray(q);
    jlongArray seeds = grads ? env->NewLongArray(q) : nullptr;
    if (!seeds) return nullptr;
    env->SetFloatArrayRegion(grads, 0, q, r.grads);
    static_assert(sizeof(uint64_t) == sizeof(jlong), "seed width");
    env->SetLongArrayRegion(seeds, 0, q, reinterpret_cast<const jlong *>(r.seeds));
    jobject rec = env->NewObject(ids.step_record, ids.step_record_ctor, static_cast<jlong>(r.step), r.loss, r.lr,
                                 r.eps, grads, seeds, static_cast<jlong>(r.forwards));
    env->DeleteLocalRef(grads);  // a long run makes one record per step: keep the local frame small
    env->DeleteLocalRef(seeds);
    return rec;
}

// The C value of an enum field (Java checks that it is not null).
int32_t ordinal(JNIEnv *env, jobject obj, jfieldID field) {
    jobject value = env->GetObjectField(obj, field);
    const jint v = env->CallIntMethod(value, ids.ordinal);
    env->DeleteLocalRef(value);
    return v;
}

// Java TrainParams -> et_train_params (struct_size and the fields Java does not carry from the defaults).
bool read_params(JNIEnv *env, jlong h, jobject jp, et_train_params &p) {
    et_runtime_default_train_params(rt_of(h), &p);
    p.steps = static_cast<uint64_t>(env->GetLongField(jp, ids.p_steps));
    p.seed = static_cast<uint64_t>(env->GetLongField(jp, ids.p_seed));
    p.batch_size = static_cast<uint32_t>(env->GetIntField(jp, ids.p_batch));
    p.queries = static_cast<uint32_t>(env->GetIntField(jp, ids.p_queries));
    p.lr = env->GetDoubleField(jp, ids.p_lr);  // doubles end to end: a schedule rounds to float per step
    p.eps = env->GetDoubleField(jp, ids.p_eps);
    p.weight_decay = env->GetDoubleField(jp, ids.p_wd);
    p.warmup = static_cast<uint32_t>(env->GetIntField(jp, ids.p_warmup));
    p.lr_auto = env->GetBooleanField(jp, ids.p_lr_auto) ? 1 : 0;
    p.eps_auto = env->GetBooleanField(jp, ids.p_eps_auto) ? 1 : 0;
    p.guard = env->GetBooleanField(jp, ids.p_guard) ? 1 : 0;
    p.schedule = ordinal(env, jp, ids.p_schedule);
    if (env->ExceptionCheck()) return false;
    p.noise = ordinal(env, jp, ids.p_noise);
    return !env->ExceptionCheck();
}

struct Progress {
    JNIEnv *env;
    jobject listener;
};

// The C progress callback: runs on the training thread, which is the Java thread inside nativeTrain.
int32_t on_step(const et_step_record *r, void *user) {
    auto *p = static_cast<Progress *>(user);
    JNIEnv *env = p->env;
    if (env->ExceptionCheck()) return 1;  // onNote threw: stop, the exception comes out of train()
    jobject rec = make_record(env, *r);
    if (!rec) return 1;  // OutOfMemoryError pending: stop
    const jboolean go = env->CallBooleanMethod(p->listener, ids.on_step, rec);
    env->DeleteLocalRef(rec);
    if (env->ExceptionCheck()) return 1;  // the listener threw: stop; nativeTrain lets it propagate
    return go ? 0 : 1;
}

// The C note callback: the listener's onNote on the training thread (an exception in it stays pending and
// stops the run at the next step's progress call).
void on_note(const char *line, void *user) {
    auto *p = static_cast<Progress *>(user);
    JNIEnv *env = p->env;
    if (env->ExceptionCheck()) return;
    jstring s = env->NewStringUTF(line);
    if (!s) return;
    env->CallVoidMethod(p->listener, ids.on_note, s);
    env->DeleteLocalRef(s);
}

// checkpoint, resume and save: one path argument each.
void with_path(JNIEnv *env, jlong h, jstring jpath, et_status (*fn)(et_runtime *, const char *)) {
    guarded<int>(env, 0, [&] {
        std::string path;
        if (to_utf8(env, jpath, path)) ok(env, rt_of(h), fn(rt_of(h), path.c_str()));
        return 0;
    });
}

jclass global_class(JNIEnv *env, const char *name) {
    jclass local = env->FindClass(name);
    if (!local) return nullptr;
    auto g = static_cast<jclass>(env->NewGlobalRef(local));
    env->DeleteLocalRef(local);
    return g;
}

}  // namespace

// ---- entry points -------------------------------------------------------------------------

extern "C" {

JNIEXPORT jint JNICALL JNI_OnLoad(JavaVM *vm, void *) {
    JNIEnv *env = nullptr;
    if (vm->GetEnv(reinterpret_cast<void **>(&env), JNI_VERSION_1_6) != JNI_OK) return JNI_ERR;
    ids.exception = global_class(env, "ai/edgetune/EdgeTuneException");
    ids.step_record = global_class(env, "ai/edgetune/EdgeTune$StepRecord");
    ids.train_result = global_class(env, "ai/edgetune/EdgeTune$TrainResult");
    ids.metrics = global_class(env, "ai/edgetune/EdgeTune$Metrics");
    ids.train_params = global_class(env, "ai/edgetune/EdgeTune$TrainParams");
    ids.string = global_class(env, "java/lang/String");
    jclass listener = env->FindClass("ai/edgetune/EdgeTune$ProgressListener");
    jclass enum_class = env->FindClass("java/lang/Enum");
    if (!ids.exception || !ids.step_record || !ids.train_result || !ids.metrics || !ids.train_params ||
        !ids.string || !listener || !enum_class)
        return JNI_ERR;
    ids.exception_ctor = env->GetMethodID(ids.exception, "<init>", "(ILjava/lang/String;)V");
    ids.step_record_ctor = env->GetMethodID(ids.step_record, "<init>", "(JFFF[F[JJ)V");
    ids.train_result_ctor = env->GetMethodID(ids.train_result, "<init>", "(JJFZDDIZJLjava/lang/String;Ljava/lang/String;)V");
    ids.metrics_ctor = env->GetMethodID(ids.metrics, "<init>", "(JDD)V");
    ids.train_params_ctor = env->GetMethodID(ids.train_params, "<init>", "(JJIIDDDIIIZZZ)V");
    ids.on_step = env->GetMethodID(listener, "onStep", "(Lai/edgetune/EdgeTune$StepRecord;)Z");
    ids.on_note = env->GetMethodID(listener, "onNote", "(Ljava/lang/String;)V");
    ids.ordinal = env->GetMethodID(enum_class, "ordinal", "()I");
    jclass tp = ids.train_params;
    ids.p_steps = env->GetFieldID(tp, "steps", "J");
    ids.p_seed = env->GetFieldID(tp, "seed", "J");
    ids.p_batch = env->GetFieldID(tp, "batchSize", "I");
    ids.p_queries = env->GetFieldID(tp, "queries", "I");
    ids.p_lr = env->GetFieldID(tp, "lr", "D");
    ids.p_eps = env->GetFieldID(tp, "eps", "D");
    ids.p_wd = env->GetFieldID(tp, "weightDecay", "D");
    ids.p_warmup = env->GetFieldID(tp, "warmup", "I");
    ids.p_schedule = env->GetFieldID(tp, "schedule", "Lai/edgetune/EdgeTune$Schedule;");
    ids.p_noise = env->GetFieldID(tp, "noise", "Lai/edgetune/EdgeTune$Noise;");
    ids.p_lr_auto = env->GetFieldID(tp, "lrAuto", "Z");
    ids.p_eps_auto = env->GetFieldID(tp, "epsAuto", "Z");
    ids.p_guard = env->GetFieldID(tp, "guard", "Z");
    env->DeleteLocalRef(listener);
    env->DeleteLocalRef(enum_class);
    if (env->ExceptionCheck()) return JNI_ERR;  // a missing member: the Java and native sides disagree
    return JNI_VERSION_1_6;
}

JNIEXPORT jlong JNICALL Java_ai_edgetune_EdgeTune_nativeOpen(JNIEnv *env, jclass, jstring dir, jint threads,
                                                             jstring ort_library, jboolean verify) {
    return guarded<jlong>(env, 0, [&]() -> jlong {
        std::string path, ort;
        if (!to_utf8(env, dir, path)) return 0;
        if (ort_library && !to_utf8(env, ort_library, ort)) return 0;
        et_runtime_options o;
        et_runtime_default_options(&o);
        o.threads = threads;
        o.ort_library = ort_library ? ort.c_str() : nullptr;
        o.verify_sha256 = verify ? 1 : 0;
        auto *h = new Handle();
        if (!ok(env, nullptr, et_runtime_open(path.c_str(), &o, &h->rt))) {
            delete h;
            return 0;
        }
        return static_cast<jlong>(reinterpret_cast<intptr_t>(h));
    });
}

JNIEXPORT void JNICALL Java_ai_edgetune_EdgeTune_nativeFree(JNIEnv *, jclass, jlong h) {
    Handle *p = handle_of(h);
    et_runtime_free(p->rt);
    delete p;
}

JNIEXPORT void JNICALL Java_ai_edgetune_EdgeTune_nativeCancel(JNIEnv *, jclass, jlong h) {
    handle_of(h)->cancel = 1;
}

JNIEXPORT jstring JNICALL Java_ai_edgetune_EdgeTune_nativeVersion(JNIEnv *env, jclass) {
    return from_utf8(env, et_version());
}

JNIEXPORT jstring JNICALL Java_ai_edgetune_EdgeTune_nativeSimdLevel(JNIEnv *env, jclass) {
    return from_utf8(env, et_simd_level());
}

JNIEXPORT jstring JNICALL Java_ai_edgetune_EdgeTune_nativeTask(JNIEnv *env, jclass, jlong h) {
    return from_utf8(env, et_runtime_task(rt_of(h)));
}

JNIEXPORT jobjectArray JNICALL Java_ai_edgetune_EdgeTune_nativeLabels(JNIEnv *env, jclass, jlong h) {
    return guarded<jobjectArray>(env, nullptr, [&]() -> jobjectArray {
        const uint32_t n = et_runtime_num_labels(rt_of(h));
        jobjectArray out = env->NewObjectArray(static_cast<jsize>(n), ids.string, nullptr);
        for (uint32_t i = 0; out && i < n; ++i) {
            jstring s = from_utf8(env, et_runtime_label_name(rt_of(h), i));
            if (!s) return nullptr;
            env->SetObjectArrayElement(out, static_cast<jsize>(i), s);
            env->DeleteLocalRef(s);
        }
        return out;
    });
}

JNIEXPORT void JNICALL Java_ai_edgetune_EdgeTune_nativeAddExample(JNIEnv *env, jclass, jlong h, jint split,
                                                                  jlongArray jids, jlong label) {
    const jsize n = env->GetArrayLength(jids);
    jlong *tokens = env->GetLongArrayElements(jids, nullptr);
    if (!tokens) return;  // OutOfMemoryError pending
    const et_status s = et_runtime_add_example(rt_of(h), split_of(split), reinterpret_cast<const int64_t *>(tokens),
                                               static_cast<size_t>(n), label);
    env->ReleaseLongArrayElements(jids, tokens, JNI_ABORT);  // read only: nothing to copy back
    ok(env, rt_of(h), s);
}

JNIEXPORT void JNICALL Java_ai_edgetune_EdgeTune_nativeAddText(JNIEnv *env, jclass, jlong h, jint split, jstring jtext,
                                                               jlong label) {
    guarded<int>(env, 0, [&] {
        std::string text;
        if (to_utf8(env, jtext, text))
            ok(env, rt_of(h), et_runtime_add_text(rt_of(h), split_of(split), text.c_str(), label));
        return 0;
    });
}

JNIEXPORT void JNICALL Java_ai_edgetune_EdgeTune_nativeLoadJsonl(JNIEnv *env, jclass, jlong h, jint split,
                                                                 jstring jpath) {
    guarded<int>(env, 0, [&] {
        std::string path;
        if (to_utf8(env, jpath, path))
            ok(env, rt_of(h), et_runtime_load_jsonl(rt_of(h), split_of(split), path.c_str()));
        return 0;
    });
}

JNIEXPORT jlong JNICALL Java_ai_edgetune_EdgeTune_nativeNumExamples(JNIEnv *env, jclass, jlong h, jint split) {
    uint64_t n = 0;
    ok(env, rt_of(h), et_runtime_num_examples(rt_of(h), split_of(split), &n));
    return static_cast<jlong>(n);
}

JNIEXPORT void JNICALL Java_ai_edgetune_EdgeTune_nativeClear(JNIEnv *env, jclass, jlong h, jint split) {
    ok(env, rt_of(h), et_runtime_clear(rt_of(h), split_of(split)));
}

JNIEXPORT jobject JNICALL Java_ai_edgetune_EdgeTune_nativeDefaultTrainParams(JNIEnv *env, jclass, jlong h) {
    et_train_params p;
    et_runtime_default_train_params(rt_of(h), &p);
    return env->NewObject(ids.train_params, ids.train_params_ctor, static_cast<jlong>(p.steps),
                          static_cast<jlong>(p.seed), static_cast<jint>(p.batch_size), static_cast<jint>(p.queries),
                          p.lr, p.eps, p.weight_decay, static_cast<jint>(p.schedule), static_cast<jint>(p.warmup),
                          static_cast<jint>(p.noise), static_cast<jboolean>(p.lr_auto != 0),
                          static_cast<jboolean>(p.eps_auto != 0), static_cast<jboolean>(p.guard != 0));
}

JNIEXPORT void JNICALL Java_ai_edgetune_EdgeTune_nativeSetTrainParams(JNIEnv *env, jclass, jlong h, jobject jp) {
    et_train_params p;
    if (read_params(env, h, jp, p)) ok(env, rt_of(h), et_runtime_set_train_params(rt_of(h), &p));
}

JNIEXPORT jobject JNICALL Java_ai_edgetune_EdgeTune_nativeStep(JNIEnv *env, jclass, jlong h) {
    et_step_record r;
    std::memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    const et_status s = et_runtime_step(rt_of(h), &r);
    if (s == ET_DONE || !ok(env, rt_of(h), s)) return nullptr;
    return make_record(env, r);
}

JNIEXPORT jobject JNICALL Java_ai_edgetune_EdgeTune_nativeTrain(JNIEnv *env, jclass, jlong h, jobject jp,
                                                               jobject listener) {
    et_train_params p;
    if (!read_params(env, h, jp, p)) return nullptr;
    Handle *handle = handle_of(h);
    handle->cancel = 0;  // a cancel() aimed at an earlier run must not stop this one
    Progress progress{env, listener};
    p.cancel = &handle->cancel;
    p.progress = listener ? on_step : nullptr;
    p.user = &progress;
    p.note = listener ? on_note : nullptr;
    p.note_user = &progress;
    et_train_result r;
    std::memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    const et_status s = et_runtime_train(handle->rt, &p, &r);
    if (env->ExceptionCheck()) return nullptr;  // the listener's exception comes out of train() unchanged
    if (!ok(env, handle->rt, s)) return nullptr;
    et_run_summary sum;
    std::memset(&sum, 0, sizeof sum);
    sum.struct_size = sizeof sum;
    et_runtime_summary(handle->rt, &sum);
    jstring notes = env->NewStringUTF(et_runtime_notes(handle->rt));
    if (!notes) return nullptr;
    jstring head = env->NewStringUTF(et_runtime_head(handle->rt));
    if (!head) return nullptr;
    return env->NewObject(ids.train_result, ids.train_result_ctor, static_cast<jlong>(r.steps_done),
                          static_cast<jlong>(r.forwards), r.last_loss, static_cast<jboolean>(r.cancelled != 0), sum.lr,
                          sum.eps, static_cast<jint>(sum.rollbacks), static_cast<jboolean>(sum.kept_best != 0),
                          static_cast<jlong>(sum.best_step), notes, head);
}

JNIEXPORT jlong JNICALL Java_ai_edgetune_EdgeTune_nativeStepsDone(JNIEnv *env, jclass, jlong h) {
    uint64_t n = 0;
    ok(env, rt_of(h), et_runtime_steps_done(rt_of(h), &n));
    return static_cast<jlong>(n);
}

JNIEXPORT jobject JNICALL Java_ai_edgetune_EdgeTune_nativeEvaluate(JNIEnv *env, jclass, jlong h, jint split) {
    et_metrics m;
    std::memset(&m, 0, sizeof m);
    m.struct_size = sizeof m;
    if (!ok(env, rt_of(h), et_runtime_evaluate(rt_of(h), split_of(split), &m))) return nullptr;
    return env->NewObject(ids.metrics, ids.metrics_ctor, static_cast<jlong>(m.examples), m.loss, m.accuracy);
}

JNIEXPORT jfloatArray JNICALL Java_ai_edgetune_EdgeTune_nativeWeights(JNIEnv *env, jclass, jlong h) {
    const float *data = nullptr;
    size_t n = 0;
    if (!ok(env, rt_of(h), et_runtime_weights(rt_of(h), &data, &n))) return nullptr;
    if (n > static_cast<size_t>(std::numeric_limits<jsize>::max())) {
        throw_status(env, ET_ERR_UNSUPPORTED, "the trainable slice has more floats than a Java array holds");
        return nullptr;
    }
    jfloatArray out = env->NewFloatArray(static_cast<jsize>(n));
    if (out) env->SetFloatArrayRegion(out, 0, static_cast<jsize>(n), data);
    return out;
}

JNIEXPORT void JNICALL Java_ai_edgetune_EdgeTune_nativeCheckpoint(JNIEnv *env, jclass, jlong h, jstring path) {
    with_path(env, h, path, et_runtime_checkpoint);
}

JNIEXPORT void JNICALL Java_ai_edgetune_EdgeTune_nativeResume(JNIEnv *env, jclass, jlong h, jstring path) {
    with_path(env, h, path, et_runtime_resume);
}

JNIEXPORT void JNICALL Java_ai_edgetune_EdgeTune_nativeSave(JNIEnv *env, jclass, jlong h, jstring path) {
    with_path(env, h, path, et_runtime_save);
}

}  // extern "C"
