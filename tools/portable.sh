#!/usr/bin/env bash
# Build the C core the way macOS and the other POSIX systems build it, on
# Linux (-DPYECHO_PORTABLE=ON: the poll backend, a self-pipe wake-up, accept
# + fcntl, recvmsg/sendmsg loops, no socket-type flags), then
#   1. check that it imports none of Linux's own calls (nm -D);
#   2. run the C tests (ctest: the loop's tests on every backend this host
#      builds, the server end to end);
#   3. run every pytest test of the native engine (-m native) against it
#      through PYECHO_LIBRARY, as tools/sanitize.sh does.
# Extra arguments go to pytest. Needs cmake, a C compiler, nm, and a Python
# environment with pyecho installed (pip install ".[test]"), its pytest first
# on PATH. PYECHO_POLLER=epoll (say) tests another backend the same way.
set -euo pipefail
cd "$(dirname "$0")/.."

build="${PYECHO_PORTABLE_BUILD:-build-portable}"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DPYECHO_PORTABLE=ON \
    -DPYECHO_POLLER="${PYECHO_POLLER:-auto}" -DPYECHO_BUILD_TESTS=ON -DPYECHO_WERROR=ON >/dev/null
cmake --build "$build" -j"$(nproc)"

lib="$(realpath "$build/libpyecho_core.so")"
echo "== $lib imports none of Linux's own calls"
linux_only="$(nm -D --undefined-only "$lib" | awk '{print $NF}' |
    grep -E '^(accept4|eventfd|pipe2|recvmmsg|sendmmsg|epoll_[a-z_0-9]+)(@|$)' || true)"
if [ "${PYECHO_POLLER:-auto}" = epoll ]; then
    linux_only="$(grep -v '^epoll_' <<<"$linux_only" || true)"
fi
if [ -n "$linux_only" ]; then
    echo "portable.sh: $lib imports Linux-only calls:" $linux_only >&2
    exit 1
fi
python tools/exports.py "$lib"
lglib="$(realpath "$build/libpyecho_loadgen.so")"
python tools/exports.py "$lglib" --header csrc/pyecho_loadgen.h

echo "== C tests"
(cd "$build" && ctest --output-on-failure --timeout 300)

echo "== native-engine tests with $lib"
# The benchmark's load generator from the same build (poll backend, no mmsg).
PYECHO_LIBRARY="$lib" PYECHO_LOADGEN_LIBRARY="$lglib" pytest -m native -p no:cacheprovider "$@"
