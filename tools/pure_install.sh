#!/usr/bin/env bash
# The pure-Python install paths of issue 17, for real, in throwaway venvs:
#
#   tools/pure_install.sh [--tests]
#
#   1. no C compiler (PATH without one, CC=/nonexistent/cc): `pip install .`
#      succeeds through the fallback, with its warning (pip shows a build's
#      output with -v only), a py3-none-any wheel, and a pyecho that runs the
#      Python engine: --version, serve + client, engine="auto" and
#      engine="native" (NativeUnavailableError with the reason);
#   2. PYECHO_REQUIRE_NATIVE=1 with no compiler: the install fails, saying why;
#   3. PYECHO_PUREPYTHON=1 pip wheel .: pyecho-<v>-py3-none-any.whl;
#   4. with --tests: the test suite's quick tier on that pure install (the
#      native tests skip, in one line).
# Needs network access to the package index (build isolation fetches
# scikit-build-core, cmake and ninja).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
run_tests=0
[ "${1:-}" = "--tests" ] && run_tests=1

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python="$(python3 -c 'import sys; print(sys.executable)')"

# A PATH with no compiler: a venv's bin, and links to the few tools pip and
# the build backend call.
mkdir -p "$work/bin"
for tool in sh bash env uname git cat ls mkdir rm cp mv sed grep tar gzip; do
    if p="$(command -v "$tool")"; then ln -s "$p" "$work/bin/$tool"; fi
done
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
nocc=(env PATH="$work/venv/bin:$work/bin" CC=/nonexistent/cc CXX=/nonexistent/c++)
for cc in gcc cc clang; do
    if "${nocc[@]}" sh -c "command -v $cc" >/dev/null; then
        echo "pure_install.sh: $cc is still on the PATH" >&2
        exit 1
    fi
done

echo "== 1. pip install . with no C compiler: the pure-Python fallback"
"${nocc[@]}" PYECHO_REQUIRE_NATIVE= "$work/venv/bin/pip" install -v --no-cache-dir "$root" \
    >"$work/install.log" 2>&1 || { cat "$work/install.log" >&2; exit 1; }
grep -q "retrying due to override" "$work/install.log"
grep -A8 "WARNING: pyecho: building the C core" "$work/install.log" | sed 's/^ *//'
grep -Eq "Created wheel for pyecho: filename=pyecho-[^ ]+-py3-none-any\.whl" "$work/install.log"
(cd "$work" && "${nocc[@]}" "$work/venv/bin/pyecho" --version | tee "$work/version.txt")
grep -q "^engine: python (the pure-Python engine, because this pyecho is a pure-Python install" \
    "$work/version.txt"
(cd "$work" && "${nocc[@]}" "$work/venv/bin/python" - <<'EOF'
import subprocess, sys, time

import pyecho

# serve says which engine runs and why; a client echoes through it.
server = subprocess.Popen(
    [sys.executable, "-m", "pyecho", "serve", "--port", "0", "--mode", "raw"],
    stdout=subprocess.PIPE, text=True,
)
try:
    banner = server.stdout.readline().strip()
    why = server.stdout.readline().strip()
    print(banner, why, sep="\n")
    assert "(raw mode, python engine)" in banner, banner
    assert why.startswith("pyecho: the Python engine runs because this pyecho is a pure-Python install"), why
    port = banner.split(" (")[0].rsplit(":", 1)[1]
    out = subprocess.run(
        [sys.executable, "-m", "pyecho", "client", "--port", port, "--mode", "raw"],
        input=b"hello\n", capture_output=True, timeout=30,
    )
    assert (out.returncode, out.stdout) == (0, b"hello\n"), out
finally:
    server.terminate()
    server.wait(10)

with pyecho.EchoServer(("127.0.0.1", 0)).start() as s:
    with pyecho.EchoClient(s.server_address, timeout=10) as c:
        assert (s.engine, c.engine, c.echo(b"hi")) == ("python", "python", b"hi")
try:
    pyecho.EchoServer(("127.0.0.1", 0), engine="native")
except pyecho.NativeUnavailableError as e:
    print(f"engine='native': NativeUnavailableError: {e}")
else:
    sys.exit("engine='native' did not raise NativeUnavailableError")
print("pure install: ok")
EOF
)

echo "== 2. PYECHO_REQUIRE_NATIVE=1 with no C compiler: the install fails"
if "${nocc[@]}" PYECHO_REQUIRE_NATIVE=1 "$work/venv/bin/pip" install --no-cache-dir \
    --force-reinstall --no-deps "$root" >"$work/require.log" 2>&1; then
    cat "$work/require.log" >&2
    echo "pure_install.sh: PYECHO_REQUIRE_NATIVE=1 did not fail the install" >&2
    exit 1
fi
grep -q "no pure-Python" "$work/require.log"
echo "failed, as it must: $(grep -m1 "Could not find the compiler" "$work/require.log" | sed 's/^ *//')"

echo "== 3. PYECHO_PUREPYTHON=1 pip wheel ."
"${nocc[@]}" PYECHO_PUREPYTHON=1 "$work/venv/bin/pip" wheel -q --no-deps --no-cache-dir \
    -w "$work/wheels" "$root" >"$work/wheel.log" 2>&1 || { cat "$work/wheel.log" >&2; exit 1; }
ls "$work/wheels"
ls "$work"/wheels/pyecho-*-py3-none-any.whl >/dev/null

if [ "$run_tests" = 1 ]; then
    echo "== 4. the quick test tier on the pure install"
    "$work/venv/bin/pip" install -q "pytest>=7" "hypothesis>=6" "pytest-timeout>=2"
    # From outside the checkout: the installed pyecho, not the sources. The
    # usual PATH (the tests' own tools: unshare, setpriv, a compiler for the
    # original C programs); the install is pure whatever is on it now.
    # PYECHO_REQUIRE_NATIVE (CI's) unset: the native tests skip here.
    (cd "$work" && PYECHO_REQUIRE_NATIVE='' "$work/venv/bin/python" -m pytest -c "$root/pyproject.toml" \
        --rootdir "$root" -p no:cacheprovider -q -m "not slow" "$root/tests")
fi
echo "pure_install.sh: ok"
