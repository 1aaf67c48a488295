"""What setting up the default run costs before any tuning: exporting all-MiniLM-L6-v2 as a classifier
(fresh, then a hit of the export's cache) and writing Rotten Tomatoes splits (fresh, then a hit).

These were wall-clock assertions in tests/test_export.py and tests/test_datasets.py; on a loaded machine a
time is a figure to report, not a pass/fail. Each figure is the median of ``--repeats`` runs.

    python benchmarks/bench_setup.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, median_time, write_results  # noqa: E402

from edgetune.data.datasets import write_rotten_tomatoes_splits  # noqa: E402
from edgetune.export import export_classifier  # noqa: E402
from edgetune.data.resources import minilm_dir  # noqa: E402

LABELS = ["negative", "positive"]


def fresh_then_hit(make, out: Path, repeats: int) -> tuple[float, float]:
    """Median seconds of ``make(out)`` into an emptied folder, and of ``make(out)`` again (its cache hit)."""
    fresh = []
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        make(out)
        fresh.append(time.perf_counter() - start)
    return sorted(fresh)[len(fresh) // 2], median_time(lambda: make(out), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        export = fresh_then_hit(lambda out: export_classifier(minilm_dir(), out, labels=LABELS, seed=0),
                                work / "minilm", args.repeats)
        splits = fresh_then_hit(lambda out: write_rotten_tomatoes_splits(out, n_train=400, n_dev=101, seed=3),
                                work / "rt", args.repeats)
    rows = [["export all-MiniLM-L6-v2 classifier", f"{export[0]:.2f}", f"{export[1]:.4f}"],
            ["Rotten Tomatoes splits, 400 train + 101 dev", f"{splits[0]:.2f}", f"{splits[1]:.4f}"]]
    payload = {"machine": machine(), "repeats": args.repeats,
               "export_s": {"fresh": export[0], "cache_hit": export[1]},
               "splits_s": {"fresh": splits[0], "cache_hit": splits[1]}}
    write_results("setup", payload, ["step", "fresh (s)", "cache hit (s)"], rows)


if __name__ == "__main__":
    main()
