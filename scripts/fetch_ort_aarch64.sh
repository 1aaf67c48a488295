#!/usr/bin/env bash
# Fetch the aarch64 ONNX Runtime shared library for cross builds of the C runtime and the JNI library.
#
# The `onnxruntime` manylinux_2_28 aarch64 wheel carries the same libonnxruntime.so that the x86-64 wheel
# installed here does (the runtime links exactly that library), so it is downloaded with pip rather than
# built. The wheel's version is the installed onnxruntime's (the C runtime and the Python package must
# agree on one ORT), and its sha256 must equal the one pinned below for that version: a different file is
# refused, not used.
#
# Usage: scripts/fetch_ort_aarch64.sh [CACHE_DIR]
#   CACHE_DIR defaults to $EDGETUNE_ORT_CACHE, else ~/.cache/edgetune/ort-aarch64. A second call finds
#   the wheel there and downloads nothing. The last line of stdout is the extracted library's path.
set -euo pipefail

# sha256 of onnxruntime-<version>-cp311-cp311-manylinux_2_28_aarch64.whl as PyPI serves it
declare -A WHEEL_SHA256=(
  [1.32.0]=2303372a85299b6757b0e11e1cbf13e410ddf7e10c37f4b37e99d1c90e7daf7c
)

die() { printf 'fetch_ort_aarch64: error: %s\n' "$*" >&2; exit 2; }

version=${ORT_VERSION:-$(python3 -c 'import onnxruntime; print(onnxruntime.__version__)')} \
  || die "no onnxruntime in $(command -v python3): install it or set ORT_VERSION"
expected=${WHEEL_SHA256[$version]:-}
[ -n "$expected" ] || die "no pinned sha256 for onnxruntime $version: add it to WHEEL_SHA256 in $0"

cache=${1:-${EDGETUNE_ORT_CACHE:-$HOME/.cache/edgetune/ort-aarch64}}
wheel_dir="$cache/wheel-$version"
lib_dir="$cache/onnxruntime-$version/lib"
lib="$lib_dir/libonnxruntime.so.$version"
mkdir -p "$wheel_dir" "$lib_dir"

wheel=$(find "$wheel_dir" -maxdepth 1 -name "onnxruntime-$version-*manylinux_2_28_aarch64.whl" | head -1)
if [ -z "$wheel" ]; then
  pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
    --python-version 3.11 --dest "$wheel_dir" "onnxruntime==$version" \
    || die "pip download of the onnxruntime $version aarch64 wheel failed"
  wheel=$(find "$wheel_dir" -maxdepth 1 -name "onnxruntime-$version-*manylinux_2_28_aarch64.whl" | head -1)
  [ -n "$wheel" ] || die "pip download left no manylinux_2_28_aarch64 wheel in $wheel_dir"
fi

actual=$(sha256sum "$wheel" | cut -d' ' -f1)
echo "sha256 $actual  $(basename "$wheel")"
if [ "$actual" != "$expected" ]; then
  rm -f "$wheel"  # a bad download must not be found again by the next call
  die "$(basename "$wheel"): sha256 $actual, expected $expected"
fi

# Extract through a temporary name so that an interrupted run leaves no half-written library behind.
if [ ! -s "$lib" ]; then
  python3 - "$wheel" "onnxruntime/capi/libonnxruntime.so.$version" "$lib" <<'EOF'
import os, shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
tmp = dest + ".part"
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(tmp, "wb") as out:
    shutil.copyfileobj(src, out)
os.replace(tmp, dest)
EOF
fi
# The SONAME is libonnxruntime.so.1; the unversioned name is what the linker's -lonnxruntime looks for.
ln -sf "libonnxruntime.so.$version" "$lib_dir/libonnxruntime.so.1"
ln -sf "libonnxruntime.so.$version" "$lib_dir/libonnxruntime.so"
echo "$lib"
