#!/usr/bin/env bash
# Build the C core with AddressSanitizer + UndefinedBehaviorSanitizer and run
#   1. the C tests (tests/c/, ctest) with LeakSanitizer on: the unit tests and
#      test_server, which drives the whole server and client in one C process;
#   2. every pytest test that runs the native engine (-m native) against that
#      build (PYECHO_LIBRARY), the ASan runtime preloaded into Python and into
#      the server processes the tests start.
# Fails on any sanitizer report. Extra arguments go to pytest.
#
# Leaks inside Python are not checked (detect_leaks=0 there): CPython keeps
# objects in mmap'd arenas LeakSanitizer does not scan and deliberately leaks
# at exit, so reports would be noise, and suppressing the interpreter's frames
# would also hide leaks in our C code called through cffi. Step 1 checks the
# C code's leaks exactly instead.
#
# Needs gcc with libasan/libubsan, cmake, and a Python environment with pyecho
# installed (pip install ".[test]"), its pytest first on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

build="${PYECHO_SANITIZE_BUILD:-build-sanitize}"
CC="${CC:-gcc}" cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DPYECHO_SANITIZE=ON -DPYECHO_BUILD_TESTS=ON -DPYECHO_WERROR=ON >/dev/null
cmake --build "$build" -j"$(nproc)"

echo "== C tests under ASan+UBSan+LSan"
(cd "$build" && ctest --output-on-failure --timeout 300)

lib="$(realpath "$build/libpyecho_core.so")"
asan="$(ldd "$lib" | awk '/libasan/ {print $3}')"
if [ -z "$asan" ]; then
    echo "sanitize.sh: $lib does not link libasan (build it with gcc)" >&2
    exit 1
fi
logs="$(mktemp -d)"
export PYECHO_LIBRARY="$lib"
# The benchmark's load generator (tests/test_loadgen.py), the same build.
export PYECHO_LOADGEN_LIBRARY="$(realpath "$build/libpyecho_loadgen.so")"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1:log_path=$logs/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$logs/ubsan"
# The tests run at their full default scale here too (about a minute); under
# ASan they check everything but resident-memory figures, which its shadow
# memory and quarantine make meaningless (tests/conftest.py: SANITIZED).

echo "== native-engine tests with $lib, $asan preloaded"
status=0
LD_PRELOAD="$asan" pytest -m native -p no:cacheprovider "$@" || status=$?

if compgen -G "$logs/*" >/dev/null; then
    echo "sanitize.sh: sanitizer reports:" >&2
    cat "$logs"/* >&2
    exit 1
fi
if [ "$status" -ne 0 ]; then
    echo "sanitize.sh: pytest failed ($status)" >&2
    exit "$status"
fi
echo "sanitize.sh: no sanitizer reports"
