#!/usr/bin/env bash
# Run an aarch64 program under qemu-user with an ARM /proc/cpuinfo.
#
# Why: ONNX Runtime's CPU detection (pytorch/cpuinfo) parses /proc/cpuinfo, and Bookworm's qemu-user 7.2
# passes the host's x86 file through (qemu emulates it for aarch64 only from 8.x on); libonnxruntime.so
# then crashes with SIGSEGV while it initialises, before main. So the program runs in a private mount
# namespace where a Neoverse-N1-like cpuinfo is bind-mounted over /proc/cpuinfo; nothing outside that
# namespace sees it. As root `unshare -m` is enough; otherwise an unprivileged user namespace (`-r`) gives
# the mount capability (CI runs .ci/run as root or through sudo for apt only: both work).
#
# Usage: scripts/qemu_aarch64.sh PROGRAM [ARGS...]   (QEMU_LD_PREFIX defaults to Debian's cross sysroot)
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 PROGRAM [ARGS...]" >&2; exit 2; }
command -v qemu-aarch64-static >/dev/null || { echo "qemu_aarch64: error: qemu-aarch64-static not found (apt-get install qemu-user-static)" >&2; exit 2; }

cpuinfo=$(mktemp "${TMPDIR:-/tmp}/edgetune-cpuinfo.XXXXXX")
trap 'rm -f "$cpuinfo"' EXIT
# The features qemu's default "max" aarch64 CPU implements; the part is a Neoverse-N1 (0xd0c).
for i in 0 1; do
  printf '%s\n' "processor	: $i" "BogoMIPS	: 50.00" \
    "Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" \
    "CPU implementer	: 0x41" "CPU architecture: 8" "CPU variant	: 0x3" "CPU part	: 0xd0c" "CPU revision	: 1" ""
done >"$cpuinfo"

ns=(-m)
[ "$(id -u)" -eq 0 ] || ns=(-r -m)
export QEMU_LD_PREFIX=${QEMU_LD_PREFIX:-/usr/aarch64-linux-gnu}
# The inner shell receives the file and the command as arguments: nothing is re-parsed.
unshare "${ns[@]}" sh -c 'mount --bind "$1" /proc/cpuinfo && shift && exec qemu-aarch64-static "$@"' \
  sh "$cpuinfo" "$@"
