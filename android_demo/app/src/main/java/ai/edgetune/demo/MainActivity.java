package ai.edgetune.demo;

import android.os.Bundle;
import android.widget.Button;
import android.widget.EditText;
import android.widget.ProgressBar;
import android.widget.TextView;

import androidx.appcompat.app.AppCompatActivity;
import androidx.lifecycle.ViewModelProvider;

import java.util.Locale;

/** Tune on the text the user enters (or the bundled sample), showing progress and accuracy before -> after. */
public final class MainActivity extends AppCompatActivity {
    @Override
    protected void onCreate(Bundle savedInstanceState) {
        super.onCreate(savedInstanceState);
        setContentView(R.layout.activity_main);
        EditText text = findViewById(R.id.examples);
        Button tune = findViewById(R.id.tune);
        Button cancel = findViewById(R.id.cancel);
        ProgressBar progress = findViewById(R.id.progress);
        TextView status = findViewById(R.id.status);
        TextView accuracy = findViewById(R.id.accuracy);

        // The same ViewModel instance before and after a rotation: a running tune keeps going.
        TuneViewModel model = new ViewModelProvider(this).get(TuneViewModel.class);
        tune.setOnClickListener(v -> model.tune(text.getText().toString()));
        cancel.setOnClickListener(v -> model.cancel());
        model.state().observe(this, s -> {
            tune.setEnabled(!s.running);
            cancel.setEnabled(s.running);
            progress.setMax((int) Math.max(1, s.steps));
            progress.setProgress((int) s.step);
            status.setText(Float.isNaN(s.loss) ? s.message
                    : String.format(Locale.ROOT, "%s: step %d/%d, loss %.4f", s.message, s.step, s.steps, s.loss));
            accuracy.setText(String.format(Locale.ROOT, "accuracy %s → %s", pct(s.accuracyBefore), pct(s.accuracyAfter)));
        });
    }

    private static String pct(double a) {
        return Double.isNaN(a) ? "–" : String.format(Locale.ROOT, "%.1f%%", 100 * a);
    }
}
