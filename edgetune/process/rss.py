"""The process's peak memory, as every result and summary reports it."""

from __future__ import annotations

import resource


def peak_rss_mb() -> float:
    """The process's high-water resident set so far (VmHWM), in MiB.

    ru_maxrss only where there is no /proc: Linux carries it over exec, so a tune started from a
    large process (a notebook, a benchmark) would report its parent's peak."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
