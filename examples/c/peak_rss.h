/* peak_rss.h — what the examples report last: the process's own peak RSS, for benchmarks/bench_runtime.py. */
#ifndef EDGETUNE_EXAMPLES_PEAK_RSS_H
#define EDGETUNE_EXAMPLES_PEAK_RSS_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* This process's peak RSS in MB (VmHWM; Linux), -1 where unknown. Not getrusage's ru_maxrss: Linux carries
 * that over exec, so a program started from a large process would report its parent's peak. */
static inline double peak_rss_mb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) kb = atof(line + 6);
    if (f) fclose(f);
    return kb < 0 ? -1 : kb / 1024;
}
#endif
