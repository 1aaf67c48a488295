import ai.edgetune.EdgeTune;
import ai.edgetune.EdgeTuneException;

import java.io.DataOutputStream;
import java.io.FileOutputStream;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;

/**
 * The desktop-JVM end-to-end run of tests/test_runtime_ports.py: a real tune through ai.edgetune.EdgeTune.
 * The run is cut three times (cancel() from this thread while train() runs on another, the listener
 * returning false, the listener throwing) and continued to the end, so that pytest can check that the
 * saved slice still equals the C example's uninterrupted run. Prints "key value..." lines that pytest parses.
 *
 * args: BUNDLE TRAIN.jsonl EVAL.tsv ("label TAB text TAB id id ..." lines) OUT_DIR LIBONNXRUNTIME STEPS LR EPS SEED
 *       CANCEL_AT STOP_AT THROW_AT SCHEDULE (constant, linear or spall)
 */
public final class TuneEndToEnd {
    public static void main(String[] a) throws Exception {
        String bundle = a[0], train = a[1], eval = a[2], out = a[3], ort = a[4];
        long steps = Long.parseLong(a[5]);
        boolean lrAuto = a[6].equals("auto");  // measured before step 0, as the C example's --lr auto
        double lr = lrAuto ? 0 : Double.parseDouble(a[6]), eps = Double.parseDouble(a[7]);  // as its strtod
        long seed = Long.parseLong(a[8]), cancelAt = Long.parseLong(a[9]), stopAt = Long.parseLong(a[10]);
        long throwAt = Long.parseLong(a[11]);
        EdgeTune.Schedule schedule = EdgeTune.Schedule.valueOf(a[12].toUpperCase(Locale.ROOT));

        System.out.println("version " + EdgeTune.version());
        System.out.println("simd " + EdgeTune.simdLevel());
        EdgeTune.Options options = new EdgeTune.Options();
        options.threads = 1;
        options.ortLibrary = ort;
        reportError("open", () -> EdgeTune.open(bundle + "/no-such-bundle", options));
        // a path outside the BMP goes to C as UTF-8 and comes back in the message as the same Java string
        String clapper = "no-such-\uD83C\uDFAC-bundle";
        try {
            EdgeTune.open(bundle + "/" + clapper, options).close();
        } catch (EdgeTuneException e) {
            System.out.println("utf8 " + e.getMessage().contains(clapper));
        }

        try (EdgeTune et = EdgeTune.open(bundle, options)) {
            System.out.println("task " + et.task());
            System.out.println("labels " + String.join(",", et.labels()));
            et.loadJsonl(EdgeTune.Split.TRAIN, train);
            // the eval split line by line: as text (tokenised on the device) and as ids, in turn
            List<String> lines = Files.readAllLines(Paths.get(eval), StandardCharsets.UTF_8);
            for (int i = 0; i < lines.size(); i++) {
                String[] f = lines.get(i).split("\t");  // label, text, ids
                long label = Long.parseLong(f[0]);
                if (i % 2 == 0) {
                    et.addText(EdgeTune.Split.EVAL, f[1], label);
                } else {
                    long[] ids = Arrays.stream(f[2].split(" ")).mapToLong(Long::parseLong).toArray();
                    et.addExample(EdgeTune.Split.EVAL, ids, label);
                }
            }
            System.out.println("examples " + et.numExamples(EdgeTune.Split.TRAIN) + " "
                    + et.numExamples(EdgeTune.Split.EVAL));
            reportError("label", () -> { et.addExample(EdgeTune.Split.EVAL, new long[] {2, 5, 3}, 7); return null; });
            reportError("empty", () -> { et.addExample(EdgeTune.Split.EVAL, new long[0], 0); return null; });
            reportError("textlabel", () -> { et.addText(EdgeTune.Split.EVAL, "a fine film", -1); return null; });

            EdgeTune.Metrics before = et.evaluate(EdgeTune.Split.EVAL);
            System.out.println("before " + before.loss + " " + before.accuracy + " " + before.examples);

            EdgeTune.TrainParams p = et.defaultTrainParams();
            p.steps = steps;
            System.out.println("defaults lrAuto " + p.lrAuto + " guard " + p.guard);  // the bundle's "auto"
            p.lrAuto = lrAuto;
            p.lr = lr;
            p.eps = eps;
            p.seed = seed;
            p.batchSize = 16;
            p.schedule = schedule;

            // 1. cancel() from this thread while train() runs on another: the listener holds step CANCEL_AT
            //    open until the cancel has been posted, so the stop lands at a known step.
            CountDownLatch atStep = new CountDownLatch(1), cancelled = new CountDownLatch(1);
            ExecutorService worker = Executors.newSingleThreadExecutor();
            Future<EdgeTune.TrainResult> run = worker.submit(() -> et.train(p, rec -> {
                printStep(rec);
                if (rec.step + 1 == cancelAt) {
                    atStep.countDown();
                    await(cancelled);
                }
                return true;
            }));
            atStep.await();
            et.cancel();
            cancelled.countDown();
            EdgeTune.TrainResult r1 = run.get();
            worker.shutdown();
            System.out.println("cancelled " + r1.cancelled + " " + r1.stepsDone);

            // 2. the listener stops the run; 3. the listener throws (out of train() as it is); 4. to the end
            EdgeTune.TrainResult r2 = et.train(p, rec -> { printStep(rec); return rec.step + 1 < stopAt; });
            System.out.println("stopped " + r2.cancelled + " " + r2.stepsDone);
            reportError("listener", () -> et.train(p, rec -> {
                printStep(rec);
                if (rec.step + 1 == throwAt) throw new IllegalStateException("from the listener");
                return true;
            }));
            System.out.println("thrown " + et.stepsDone());
            EdgeTune.TrainResult r3 = et.train(p, rec -> { printStep(rec); return true; });
            System.out.println("finished " + r3.cancelled + " " + r3.stepsDone + " " + r3.forwards);
            // what the run measured and did (et_run_summary): its base lr (the calibrated one under lr auto)
            System.out.println("summary " + r3.lr + " " + r3.rollbacks + " " + r3.keptBest + " " + r3.notes.length);
            System.out.println("next " + (et.step() == null ? "none" : "step"));

            // the trajectory is latched: another run length is refused in one message
            reportError("relatch", () -> {
                EdgeTune.TrainParams more = et.defaultTrainParams();
                more.steps = steps + 1;
                return et.train(more, null);
            });

            EdgeTune.Metrics after = et.evaluate(EdgeTune.Split.EVAL);
            System.out.println("after " + after.loss + " " + after.accuracy + " " + after.examples);
            et.save(out);
            writeFloats(et.weights(), out + "/weights.f32");
        }
        System.out.println("closed");

        // lr auto from the bundle's defaults: a short run; its calibrated lr and the note that says it
        try (EdgeTune et = EdgeTune.open(bundle, options)) {
            et.loadJsonl(EdgeTune.Split.TRAIN, train);
            EdgeTune.TrainParams p = et.defaultTrainParams();
            p.steps = 5;
            p.seed = seed;
            p.batchSize = 16;
            List<String> heard = new ArrayList<>();
            EdgeTune.TrainResult r = et.train(p, new EdgeTune.ProgressListener() {
                @Override
                public boolean onStep(EdgeTune.StepRecord rec) {
                    return true;
                }

                @Override
                public void onNote(String line) {
                    heard.add(line);
                }
            });
            System.out.println("auto " + r.lr + " " + r.stepsDone + " " + heard.equals(Arrays.asList(r.notes)));
            System.out.println("autonote " + String.join(" | ", r.notes));
        }
    }

    interface Call {
        Object run() throws Exception;
    }

    /** "error WHAT STATUS CLASS MESSAGE" for the exception the call throws (or "error WHAT none"). */
    private static void reportError(String what, Call call) {
        try {
            call.run();
            System.out.println("error " + what + " none");
        } catch (EdgeTuneException e) {
            System.out.println("error " + what + " " + e.status() + " EdgeTuneException " + e.getMessage());
        } catch (Exception e) {
            System.out.println("error " + what + " 0 " + e.getClass().getSimpleName() + " " + e.getMessage());
        }
    }

    private static void printStep(EdgeTune.StepRecord r) {
        // the loss, lr and eps as their exact float bits: pytest compares them with the C example's and Python's
        System.out.println("step " + r.step + " " + bits(r.loss) + " " + bits(r.lr) + " " + bits(r.eps) + " "
                + r.seeds.length + " " + r.grads.length);
    }

    private static String bits(float f) {
        return Integer.toHexString(Float.floatToRawIntBits(f));
    }

    private static void await(CountDownLatch latch) {
        try {
            latch.await();
        } catch (InterruptedException e) {
            throw new IllegalStateException(e);
        }
    }

    private static void writeFloats(float[] w, String path) throws IOException {
        ByteBuffer b = ByteBuffer.allocate(4 * w.length).order(ByteOrder.LITTLE_ENDIAN);
        b.asFloatBuffer().put(w);
        try (DataOutputStream o = new DataOutputStream(new FileOutputStream(path))) {
            o.write(b.array());
        }
    }
}
