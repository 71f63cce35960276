#!/usr/bin/env bash
# Fuzz the framing for a bounded time and report the executions:
#   1. fuzz/fuzz_framing.py (atheris): the C echo_scan against the Python
#      pyecho._framing.scan, call by call, on the installed pyecho;
#   2. fuzz/fuzz_scan.c (libFuzzer + ASan + UBSan, clang): the C framing's
#      own promises at native speed.
# Both start from fuzz/corpus/ (read only; new inputs go to a temp dir) and
# fail on the first finding, leaving it in the artifacts directory.
# FUZZ_SECONDS (default 60) is the time for each. Needs a Python environment
# with pyecho installed and its python first on PATH; atheris is installed
# if missing, and if it cannot be, the same comparison runs on hypothesis
# inputs instead (tests/test_framing.py, scaled up), saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
work="$(mktemp -d)"
artifacts="${FUZZ_ARTIFACTS:-$work/artifacts}"
mkdir -p "$artifacts" "$work/py-corpus" "$work/c-corpus"

runs() { sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 executions in \2 s/p' "$1" | tail -1; }

echo "== atheris: C echo_scan vs Python scan, ${seconds}s"
if python -c "import atheris" 2>/dev/null || python -m pip install -q atheris; then
    if ! python fuzz/fuzz_framing.py -max_total_time="$seconds" -artifact_prefix="$artifacts/" \
        "$work/py-corpus" fuzz/corpus >"$work/atheris.log" 2>&1; then
        tail -40 "$work/atheris.log" >&2
        echo "fuzz.sh: the atheris fuzzer found a difference; inputs in $artifacts" >&2
        exit 1
    fi
    echo "atheris: $(runs "$work/atheris.log"), corpus $(ls "$work/py-corpus" | wc -l) new inputs"
else
    echo "atheris is not installable here: running the hypothesis differential instead"
    PYECHO_FRAMING_EXAMPLES=$((seconds * 1000)) pytest -q -p no:cacheprovider tests/test_framing.py
fi

echo "== libFuzzer: C framing under ASan+UBSan, ${seconds}s"
if command -v clang >/dev/null; then
    CC=clang cmake -S . -B build-fuzz -DPYECHO_BUILD_FUZZ=ON -DPYECHO_WERROR=ON >/dev/null
    cmake --build build-fuzz --target fuzz_scan -j"$(nproc)" >/dev/null
    if ! build-fuzz/fuzz_scan -max_total_time="$seconds" -artifact_prefix="$artifacts/" \
        "$work/c-corpus" fuzz/corpus >"$work/libfuzzer.log" 2>&1; then
        tail -40 "$work/libfuzzer.log" >&2
        echo "fuzz.sh: libFuzzer found a failure; inputs in $artifacts" >&2
        exit 1
    fi
    echo "libFuzzer: $(runs "$work/libfuzzer.log"), corpus $(ls "$work/c-corpus" | wc -l) new inputs"
else
    echo "clang is not installed: skipping the libFuzzer harness"
fi
