package ai.edgetune;

/**
 * A call into the runtime failed. The message is the runtime's own one line (it names the file, line,
 * tensor or parameter); {@link #status()} is the C {@code et_status} value (see edgetune_runtime.h), so an
 * app can tell a bad bundle ({@link #BUNDLE}) from bad data ({@link #DATA}) without parsing the text.
 */
public class EdgeTuneException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public static final int INVALID_ARGUMENT = -1;
    public static final int OUT_OF_MEMORY = -2;
    public static final int STATE = -4;
    public static final int NONFINITE_LOSS = -5;
    public static final int UNSUPPORTED = -6;
    public static final int INTERNAL = -7;
    public static final int BUNDLE = -20;
    public static final int ENGINE = -21;
    public static final int DATA = -22;
    public static final int IO = -23;

    private final int status;

    public EdgeTuneException(int status, String message) {
        super(message);
        this.status = status;
    }

    /** The et_status of the failed call (a negative value). */
    public int status() {
        return status;
    }
}
