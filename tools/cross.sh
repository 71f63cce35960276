#!/usr/bin/env bash
# Cross-build the C core for macOS and FreeBSD with Zig's C compiler (which
# ships those systems' libc headers), warnings as errors, and check each
# library's exports (tools/exports.py) and which poller went in (it must
# import kevent). This compiles and links; it cannot run the code: the POSIX
# paths these systems take run on Linux through tools/portable.sh. TLS is
# left out (-DPYECHO_TLS=OFF): there are no macOS or FreeBSD OpenSSL headers
# to build against here, and CMake would find the host's.
#
#   tools/cross.sh [TARGET...]    (default: aarch64-macos x86_64-macos x86_64-freebsd)
#
# Needs cmake, llvm-nm (or NM=...) and Zig: `pip install ziglang` into the
# Python first on PATH (or PYTHON=...).
set -euo pipefail
cd "$(dirname "$0")/.."

py="${PYTHON:-python}"
nm="${NM:-$(command -v llvm-nm || true)}"
if ! "$py" -m ziglang version >/dev/null 2>&1; then
    echo "cross.sh: needs Zig: $py -m pip install ziglang" >&2
    exit 1
fi
if [ -z "$nm" ]; then
    echo "cross.sh: needs llvm-nm (or NM=...) to read Mach-O and ELF symbols" >&2
    exit 1
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(aarch64-macos x86_64-macos x86_64-freebsd)

for target in "${targets[@]}"; do
    case "$target" in
        *-macos*) system=Darwin ext=dylib ;;
        *-freebsd*) system=FreeBSD ext=so ;;
        *-netbsd*) system=NetBSD ext=so ;;
        *) echo "cross.sh: unknown target $target" >&2; exit 1 ;;
    esac
    build="${PYECHO_CROSS_BUILD:-build-cross}/$target"
    mkdir -p "$build"
    # CMake wants one compiler path: a wrapper that names the target.
    cc="$(realpath "$build")/zig-cc"
    printf '#!/bin/sh\nexec %q -m ziglang cc -target %q "$@"\n' "$(command -v "$py")" "$target" >"$cc"
    chmod +x "$cc"
    echo "== $target ($system)"
    cmake -S . -B "$build" -DCMAKE_SYSTEM_NAME="$system" -DCMAKE_C_COMPILER="$cc" \
        -DCMAKE_BUILD_TYPE=Release -DPYECHO_WERROR=ON -DPYECHO_TLS=OFF >"$build/configure.log" 2>&1 ||
        { cat "$build/configure.log" >&2; exit 1; }
    grep 'pyecho: poller' "$build/configure.log"
    cmake --build "$build" --target pyecho_core pyecho_loadgen -j"$(nproc)"
    "$py" tools/exports.py "$build/libpyecho_core.$ext" --nm "$nm" --expect-import kevent
    # The benchmark's load generator, on the same poller: its own API only.
    "$py" tools/exports.py "$build/libpyecho_loadgen.$ext" --nm "$nm" --expect-import kevent \
        --header csrc/pyecho_loadgen.h
done
