package ai.edgetune.demo;

import android.app.Application;
import android.content.res.AssetManager;

import androidx.annotation.NonNull;
import androidx.lifecycle.AndroidViewModel;
import androidx.lifecycle.LiveData;
import androidx.lifecycle.MutableLiveData;

import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

import ai.edgetune.EdgeTune;

/**
 * Owns the tuning run. A ViewModel outlives the Activity across rotation, so a run started before a
 * rotation keeps going and the new Activity observes the same {@link #state()}. The run happens on one
 * background thread (never the UI thread); the UI thread only posts {@link #cancel()}.
 */
public final class TuneViewModel extends AndroidViewModel {
    /** What the screen shows; immutable, posted from the worker thread. */
    public static final class State {
        public final boolean running;
        public final String message;
        public final long step;
        public final long steps;
        public final float loss;
        public final double accuracyBefore;  // NaN until measured
        public final double accuracyAfter;

        State(boolean running, String message, long step, long steps, float loss, double before, double after) {
            this.running = running;
            this.message = message;
            this.step = step;
            this.steps = steps;
            this.loss = loss;
            this.accuracyBefore = before;
            this.accuracyAfter = after;
        }

        State with(boolean running, String message) {
            return new State(running, message, step, steps, loss, accuracyBefore, accuracyAfter);
        }
    }

    private static final int PROGRESS_EVERY = 5;  // steps between UI updates: LiveData coalesces anyway

    private final MutableLiveData<State> state =
            new MutableLiveData<>(new State(false, "ready", 0, 0, Float.NaN, Double.NaN, Double.NaN));
    private final ExecutorService worker = Executors.newSingleThreadExecutor();
    private volatile EdgeTune current;  // the open runtime while a run is on: what cancel() stops

    public TuneViewModel(@NonNull Application app) {
        super(app);
    }

    public LiveData<State> state() {
        return state;
    }

    /** Starts a run unless one is on: on the user's "label: text" lines, or on the bundled sample when blank. */
    public void tune(String userText) {
        State s = state.getValue();
        if (s != null && s.running) return;
        state.setValue(s.with(true, "preparing"));
        worker.execute(() -> run(userText));
    }

    public void cancel() {
        EdgeTune et = current;
        if (et != null) et.cancel();
    }

    @Override
    protected void onCleared() {  // the Activity is gone for good (not a rotation): stop and free
        cancel();
        worker.shutdown();
    }

    private void run(String userText) {
        File files = getApplication().getFilesDir();
        try {
            File bundle = AssetCopy.directory(getApplication().getAssets(), "bundle", new File(files, "bundle"));
            File sample = AssetCopy.directory(getApplication().getAssets(), "sample", new File(files, "sample"));
            EdgeTune.Options options = new EdgeTune.Options();
            options.threads = Math.max(1, Math.min(4, Runtime.getRuntime().availableProcessors() / 2));
            try (EdgeTune et = EdgeTune.open(bundle.getPath(), options)) {
                current = et;
                et.loadJsonl(EdgeTune.Split.EVAL, new File(sample, "dev.jsonl").getPath());
                if (userText.trim().isEmpty()) {
                    et.loadJsonl(EdgeTune.Split.TRAIN, new File(sample, "train.jsonl").getPath());
                } else {
                    addUserExamples(et, userText);
                }
                double before = et.evaluate(EdgeTune.Split.EVAL).accuracy;
                EdgeTune.TrainParams p = et.defaultTrainParams();
                post(new State(true, "tuning", 0, p.steps, Float.NaN, before, Double.NaN));
                EdgeTune.TrainResult r = et.train(p, rec -> {
                    if (rec.step % PROGRESS_EVERY == 0 || rec.step + 1 == p.steps) {
                        post(new State(true, "tuning", rec.step + 1, p.steps, rec.loss, before, Double.NaN));
                    }
                    return true;
                });
                double after = et.evaluate(EdgeTune.Split.EVAL).accuracy;
                File tuned = new File(files, "tuned");
                et.save(tuned.getPath());
                // the bundle's defaults tune with lr auto and the guard: a run that ended worse than it began
                // kept its best state, which the user should hear about
                String how = r.cancelled ? "cancelled after " + r.stepsDone + " steps"
                        : r.keptBest ? "done; it ended worse than it began, so the weights before step " + r.bestStep
                        + " were kept" : "done";
                post(new State(false, how + "; tuned model in " + tuned, r.stepsDone, p.steps, r.lastLoss, before, after));
            } finally {
                current = null;
            }
        } catch (RuntimeException | IOException e) {
            // EdgeTuneException carries the runtime's one line; any other failure must still end the run
            post(state.getValue().with(false, "error: " + e.getMessage()));
        }
    }

    /** One example per non-blank line, "label: text", the label a class name of the bundle. */
    private static void addUserExamples(EdgeTune et, String text) {
        List<String> labels = Arrays.asList(et.labels());
        String[] lines = text.split("\n");
        for (int i = 0; i < lines.length; i++) {
            String line = lines[i].trim();
            if (line.isEmpty()) continue;
            int colon = line.indexOf(':');
            int label = colon < 0 ? -1 : labels.indexOf(line.substring(0, colon).trim());
            if (label < 0) {
                throw new IllegalArgumentException("line " + (i + 1) + ": expected 'label: text' with a label of "
                        + labels);
            }
            et.addText(EdgeTune.Split.TRAIN, line.substring(colon + 1).trim(), label);
        }
    }

    private void post(State s) {
        state.postValue(s);
    }

    /** Copies an asset folder to app storage once (again when its manifest changes with an app update). */
    static final class AssetCopy {
        static File directory(AssetManager assets, String name, File dest) throws IOException {
            if (dest.isDirectory() && sameFile(assets, name + "/" + firstFile(assets, name), dest)) return dest;
            File tmp = new File(dest.getPath() + ".part");
            deleteTree(tmp);
            if (!tmp.mkdirs()) throw new IOException("cannot create " + tmp);
            for (String f : assets.list(name)) {
                try (InputStream in = assets.open(name + "/" + f);
                     OutputStream out = new FileOutputStream(new File(tmp, f))) {
                    copy(in, out);
                }
            }
            deleteTree(dest);
            if (!tmp.renameTo(dest)) throw new IOException("cannot rename " + tmp + " to " + dest);
            return dest;
        }

        // manifest.json decides for a bundle (it names every file's sha256); otherwise the first file
        private static String firstFile(AssetManager assets, String name) throws IOException {
            String[] list = assets.list(name);
            if (list == null || list.length == 0) throw new IOException("no assets in " + name + "/");
            return Arrays.asList(list).contains("manifest.json") ? "manifest.json" : list[0];
        }

        private static boolean sameFile(AssetManager assets, String asset, File dir) throws IOException {
            File f = new File(dir, asset.substring(asset.indexOf('/') + 1));
            if (!f.isFile()) return false;
            try (InputStream a = assets.open(asset); InputStream b = new FileInputStream(f)) {
                return Arrays.equals(readAll(a), readAll(b));  // small files: a manifest, a sample
            }
        }

        private static byte[] readAll(InputStream in) throws IOException {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            copy(in, out);
            return out.toByteArray();
        }

        private static void copy(InputStream in, OutputStream out) throws IOException {
            byte[] buf = new byte[1 << 16];
            for (int n; (n = in.read(buf)) > 0; ) out.write(buf, 0, n);
        }

        private static void deleteTree(File f) {
            File[] children = f.listFiles();
            if (children != null) for (File c : children) deleteTree(c);
            f.delete();
        }
    }
}
