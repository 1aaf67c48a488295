"""The CLI pins glibc's mmap threshold, so a large block freed early cannot leave later ones resident."""

import subprocess
import sys

import pytest

# A fresh Python frees an 8 MiB block (served by mmap), then allocates and frees a 4 MiB one. With glibc's
# dynamic threshold the first free raises the threshold to 8 MiB: the 4 MiB block comes from the heap and
# stays resident after its free. Pinned, it is mmapped and returned. Prints the RSS the 4 MiB block left.
PROBE = """
import sys
from edgetune.process.malloc import pin_mmap_threshold
def rss_kb():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1])
if sys.argv[1] == 'pin':
    assert pin_mmap_threshold()
first = bytearray(8 << 20)
del first
before = rss_kb()
second = bytearray(4 << 20)
del second
print(rss_kb() - before)
"""


def left_resident_kb(mode: str) -> int:
    proc = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_pinned_threshold_returns_freed_blocks():
    assert left_resident_kb("dynamic") >= 3 << 10, "the probe no longer shows glibc's dynamic threshold"
    assert left_resident_kb("pin") < 1 << 10
