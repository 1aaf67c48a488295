package ai.edgetune;

import java.util.Objects;

/**
 * Tunes a model on the device from a bundle that {@code edgetune bundle} wrote: a thin Java face of the C
 * runtime (edgetune_runtime.h) over JNI. Same bundle, data, seed and parameters give the same tuned weights
 * as the C example and {@code edgetune tune --bundle}.
 *
 * <pre>{@code
 * try (EdgeTune et = EdgeTune.open(bundleDir, new EdgeTune.Options())) {
 *     et.addText(EdgeTune.Split.TRAIN, "a joy to watch", 1);      // or addExample(split, ids, label)
 *     EdgeTune.TrainParams p = et.defaultTrainParams();              // the bundle's defaults
 *     p.steps = 200;
 *     p.lr = 1e-2;                                                   // lr, eps, weightDecay: doubles
 *     p.schedule = EdgeTune.Schedule.LINEAR;                         // to 0 at p.steps
 *     et.train(p, rec -> { publish(rec.step, rec.loss); return true; });   // false stops the run
 *     double acc = et.evaluate(EdgeTune.Split.EVAL).accuracy;
 *     et.save(outDir);                                               // model.onnx + trainable.safetensors
 * }
 * }</pre>
 *
 * Threading: one thread at a time uses an instance (every method but {@link #cancel()} is synchronized, so a
 * second thread waits rather than corrupting a run). {@link #cancel()} may be called from any thread (the UI
 * thread) while {@link #train} runs on a background one: the run stops before its next step, never inside
 * one. The progress listener runs on the training thread. {@link #close()} cancels a running train first,
 * then waits for it and frees the native runtime. Errors are {@link EdgeTuneException}s carrying the
 * runtime's one-line message and status.
 */
public final class EdgeTune implements AutoCloseable {
    /** The system property naming the JNI library's path; unset: System.loadLibrary("edgetune_jni"). */
    public static final String LIBRARY_PROPERTY = "edgetune.jni.library";

    static {
        String path = System.getProperty(LIBRARY_PROPERTY);
        if (path != null && !path.isEmpty()) {
            System.load(path);
        } else {
            System.loadLibrary("edgetune_jni"); // Android: lib/<abi>/libedgetune_jni.so of the APK
        }
    }

    /** Which examples a call is about (et_split). */
    public enum Split { TRAIN, EVAL }

    /** Learning-rate schedules (et_schedule); the ordinal is the C value. */
    public enum Schedule { CONSTANT, LINEAR, SPALL }

    /** Perturbation distributions (et_noise); the ordinal is the C value. */
    public enum Noise { GAUSSIAN, RADEMACHER }

    /** How to open a bundle (et_runtime_options). */
    public static final class Options {
        /** ORT intra-op threads and the kernel pool; 0 = ONNX Runtime's default. */
        public int threads = 0;
        /** Path of libonnxruntime.so; null: $EDGETUNE_ORT_LIBRARY, else libonnxruntime.so on the loader path. */
        public String ortLibrary = null;
        /** Check every bundle file's sha256 against manifest.json at open. */
        public boolean verifySha256 = true;
    }

    /** A run's parameters (et_train_params); start from {@link #defaultTrainParams()}. */
    public static final class TrainParams {
        public long steps;
        /** The noise and batch-order seed, as an unsigned 64-bit value. */
        public long seed;
        public int batchSize;
        public int queries;
        /**
         * The base learning rate, perturbation scale and decoupled weight decay: doubles, as the C struct and
         * Python hold them. A schedule computes each step's lr and eps from these in double and rounds to float
         * once, so {@code p.lr = 1e-2} here tunes exactly as {@code --lr 1e-2} in Python and the C example
         * (a float 1e-2f would be a different base, and a linear or spall schedule would drift from theirs).
         */
        public double lr;
        public double eps;
        public double weightDecay;
        public Schedule schedule;
        public int warmup;
        public Noise noise;
        /**
         * lr measured before step 0 by curvature probes, as {@code --lr auto} (then {@link #lr} is ignored); the
         * bundle's default ({@code edgetune bundle} writes "auto"). The chosen lr is {@link TrainResult#lr}.
         */
        public boolean lrAuto;
        /** eps measured by the same probes ({@code --eps auto}); the bundle's default. */
        public boolean epsAuto;
        /**
         * The guard ({@code --guard on}, the default): a rising loss is rolled back and lr halved, a non-finite
         * loss too, and a run that ends worse than it began returns to its best state (see {@link TrainResult}).
         */
        public boolean guard;

        TrainParams(long steps, long seed, int batchSize, int queries, double lr, double eps, double weightDecay,
                    int schedule, int warmup, int noise, boolean lrAuto, boolean epsAuto, boolean guard) {
            this.steps = steps;
            this.seed = seed;
            this.batchSize = batchSize;
            this.queries = queries;
            this.lr = lr;
            this.eps = eps;
            this.weightDecay = weightDecay;
            this.schedule = Schedule.values()[schedule];
            this.warmup = warmup;
            this.noise = Noise.values()[noise];
            this.lrAuto = lrAuto;
            this.epsAuto = epsAuto;
            this.guard = guard;
        }

        /** Java-side checks the C unsigned fields cannot make (a negative int would wrap to a huge count). */
        void check() {
            if (steps < 0) throw new IllegalArgumentException("steps must be >= 0, got " + steps);
            if (batchSize < 1) throw new IllegalArgumentException("batchSize must be >= 1, got " + batchSize);
            if (queries < 1) throw new IllegalArgumentException("queries must be >= 1, got " + queries);
            if (warmup < 0) throw new IllegalArgumentException("warmup must be >= 0, got " + warmup);
            Objects.requireNonNull(schedule, "schedule");
            Objects.requireNonNull(noise, "noise");
        }
    }

    /** One finished step (et_step_record). */
    public static final class StepRecord {
        public final long step;
        public final float loss;
        /** The lr and eps this step used: the schedule's double value rounded to float, as the step applied it. */
        public final float lr;
        public final float eps;
        /** The projected gradient of each query. */
        public final float[] grads;
        /** The noise seed of each query (what a replay needs). */
        public final long[] seeds;
        public final long forwards;

        StepRecord(long step, float loss, float lr, float eps, float[] grads, long[] seeds, long forwards) {
            this.step = step;
            this.loss = loss;
            this.lr = lr;
            this.eps = eps;
            this.grads = grads;
            this.seeds = seeds;
            this.forwards = forwards;
        }
    }

    /** How a {@link #train} call ended (et_train_result). */
    public static final class TrainResult {
        public final long stepsDone;
        public final long forwards;
        public final float lastLoss;
        public final boolean cancelled;
        /** The run's base lr and eps: the measured ones under lrAuto / epsAuto (et_run_summary). */
        public final double lr;
        public final double eps;
        /** The guard's rollbacks (each halved lr) so far. */
        public final int rollbacks;
        /** The run ended worse than it began: the weights went back to those before step {@link #bestStep}. */
        public final boolean keptBest;
        public final long bestStep;
        /** Every line the run said so far ("lr auto: ...", "guard: ...", "kept best: ..."), as the Python CLI. */
        public final String[] notes;
        /** How the classifier's head was tuned: "exact" (first-order from its in-graph gradient, the bundle's
         *  manifest says so) or "zo" (et_runtime_head). */
        public final String head;

        TrainResult(long stepsDone, long forwards, float lastLoss, boolean cancelled, double lr, double eps,
                    int rollbacks, boolean keptBest, long bestStep, String notes, String head) {
            this.stepsDone = stepsDone;
            this.forwards = forwards;
            this.lastLoss = lastLoss;
            this.cancelled = cancelled;
            this.lr = lr;
            this.eps = eps;
            this.rollbacks = rollbacks;
            this.keptBest = keptBest;
            this.bestStep = bestStep;
            this.notes = notes.isEmpty() ? new String[0] : notes.split("\n");
            this.head = head;
        }
    }

    /** A split's mean loss and accuracy (NaN for a language model) at the current weights. */
    public static final class Metrics {
        public final long examples;
        public final double loss;
        public final double accuracy;

        Metrics(long examples, double loss, double accuracy) {
            this.examples = examples;
            this.loss = loss;
            this.accuracy = accuracy;
        }
    }

    /** Called after every step on the training thread; return false to stop the run (cancelled). */
    @FunctionalInterface
    public interface ProgressListener {
        boolean onStep(StepRecord record);

        /** A line the run has to say (the calibrated lr, a rollback, the best state kept), on the training thread. */
        default void onNote(String line) {}
    }

    // The native handle (an et_runtime plus its cancel flag); 0 once closed. Guarded by cancelLock for
    // its reads in cancel() and its clearing in close(), so cancel() never touches a freed flag.
    private long handle;
    private final Object cancelLock = new Object();

    private EdgeTune(long handle) {
        this.handle = handle;
    }

    /** Opens a bundle directory: checks its manifest and files, loads ONNX Runtime, creates the sessions. */
    public static EdgeTune open(String bundleDir, Options options) {
        Objects.requireNonNull(bundleDir, "bundleDir");
        Options o = options != null ? options : new Options();
        if (o.threads < 0) throw new IllegalArgumentException("threads must be >= 0, got " + o.threads);
        return new EdgeTune(nativeOpen(bundleDir, o.threads, o.ortLibrary, o.verifySha256));
    }

    /** The edgetune version the native library was built from. */
    public static String version() {
        return nativeVersion();
    }

    /** The kernels in use: "scalar", "avx2", "avx512" or "neon". */
    public static String simdLevel() {
        return nativeSimdLevel();
    }

    /** "classify" or "lm". */
    public synchronized String task() {
        return nativeTask(live());
    }

    /** The class names, index = class id (empty for a language model). */
    public synchronized String[] labels() {
        return nativeLabels(live());
    }

    /** Adds one example: token ids as the bundle's tokenizer makes them (special tokens included). */
    public synchronized void addExample(Split split, long[] ids, long label) {
        Objects.requireNonNull(split, "split");
        Objects.requireNonNull(ids, "ids");
        nativeAddExample(live(), split.ordinal(), ids, label);
    }

    /**
     * Adds one example as text, tokenised on the device by the bundle's tokenizer.json exactly as
     * {@code edgetune tune} encodes a {"text", "label"} record (classification bundles).
     */
    public synchronized void addText(Split split, String text, long label) {
        Objects.requireNonNull(split, "split");
        Objects.requireNonNull(text, "text");
        nativeAddText(live(), split.ordinal(), text, label);
    }

    /** Adds the examples of a JSONL file of {"ids": [...], "label": ...} or {"text": "...", "label": ...} lines. */
    public synchronized void loadJsonl(Split split, String path) {
        Objects.requireNonNull(split, "split");
        Objects.requireNonNull(path, "path");
        nativeLoadJsonl(live(), split.ordinal(), path);
    }

    public synchronized long numExamples(Split split) {
        Objects.requireNonNull(split, "split");
        return nativeNumExamples(live(), split.ordinal());
    }

    public synchronized void clear(Split split) {
        Objects.requireNonNull(split, "split");
        nativeClear(live(), split.ordinal());
    }

    /** The bundle's defaults (manifest.json "defaults"), constant schedule, no warm-up, no decay. */
    public synchronized TrainParams defaultTrainParams() {
        return nativeDefaultTrainParams(live());
    }

    /** Latches the parameters of the run that {@link #step()} advances. */
    public synchronized void setTrainParams(TrainParams p) {
        nativeSetTrainParams(live(), checked(p));
    }

    /** Runs the next step of the run; null once the run has taken all its steps. */
    public synchronized StepRecord step() {
        return nativeStep(live());
    }

    /**
     * Runs steps until p.steps, {@link #cancel()} or the listener (may be null) stops it. An exception the
     * listener throws stops the run and comes out of this call unchanged.
     */
    public synchronized TrainResult train(TrainParams p, ProgressListener listener) {
        return nativeTrain(live(), checked(p), listener);
    }

    /**
     * Stops a running {@link #train} before its next step; any thread may call it. A no-op when closed, and
     * forgotten by a train() that starts later (each run starts uncancelled).
     */
    public void cancel() {
        synchronized (cancelLock) {
            if (handle != 0) nativeCancel(handle);
        }
    }

    /** Completed steps of the run (resumed ones included). */
    public synchronized long stepsDone() {
        return nativeStepsDone(live());
    }

    /** Mean per-example loss and accuracy of a split at the current weights; the run is unchanged. */
    public synchronized Metrics evaluate(Split split) {
        Objects.requireNonNull(split, "split");
        return nativeEvaluate(live(), split.ordinal());
    }

    /** A copy of the trainable slice, in the arena order manifest.json lists. */
    public synchronized float[] weights() {
        return nativeWeights(live());
    }

    /** Writes a checkpoint file (atomically) that {@link #resume} continues bit-identically. */
    public synchronized void checkpoint(String path) {
        nativeCheckpoint(live(), Objects.requireNonNull(path, "path"));
    }

    public synchronized void resume(String path) {
        nativeResume(live(), Objects.requireNonNull(path, "path"));
    }

    /** Saves model.onnx (the plain graph with the tuned weights), trainable.safetensors and the tokenizer. */
    public synchronized void save(String outDir) {
        nativeSave(live(), Objects.requireNonNull(outDir, "outDir"));
    }

    /** Cancels a running train, waits for it, frees the native runtime. Idempotent. */
    @Override
    public void close() {
        cancel();
        synchronized (this) {
            long h;
            synchronized (cancelLock) {
                h = handle;
                handle = 0;
            }
            if (h != 0) nativeFree(h);
        }
    }

    private long live() {
        if (handle == 0) throw new IllegalStateException("EdgeTune is closed");
        return handle;
    }

    private static TrainParams checked(TrainParams p) {
        Objects.requireNonNull(p, "params");
        p.check();
        return p;
    }

    private static native long nativeOpen(String bundleDir, int threads, String ortLibrary, boolean verifySha256);
    private static native void nativeFree(long h);
    private static native void nativeCancel(long h);
    private static native String nativeVersion();
    private static native String nativeSimdLevel();
    private static native String nativeTask(long h);
    private static native String[] nativeLabels(long h);
    private static native void nativeAddExample(long h, int split, long[] ids, long label);
    private static native void nativeAddText(long h, int split, String text, long label);
    private static native void nativeLoadJsonl(long h, int split, String path);
    private static native long nativeNumExamples(long h, int split);
    private static native void nativeClear(long h, int split);
    private static native TrainParams nativeDefaultTrainParams(long h);
    private static native void nativeSetTrainParams(long h, TrainParams p);
    private static native StepRecord nativeStep(long h);
    private static native TrainResult nativeTrain(long h, TrainParams p, ProgressListener listener);
    private static native long nativeStepsDone(long h);
    private static native Metrics nativeEvaluate(long h, int split);
    private static native float[] nativeWeights(long h);
    private static native void nativeCheckpoint(long h, String path);
    private static native void nativeResume(long h, String path);
    private static native void nativeSave(long h, String outDir);
}
