"""The native engine refuses a library built from another pyecho.h
(PYECHO_LIBRARY pointing at a stale or foreign build) with a clear error,
instead of misreading its structs."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pyecho

pytestmark = pytest.mark.native  # needs the C core

CC = shutil.which("cc") or shutil.which("gcc")
ROOT = Path(__file__).resolve().parents[1]

LOAD = (
    "import pyecho\n"
    "try:\n"
    "    pyecho.EchoServer(('127.0.0.1', 0), engine='native')\n"
    "except pyecho.NativeUnavailableError as e:\n"
    "    print('ERR', e)\n"
)


def _fake_library(tmp_path: Path, source: str) -> Path:
    if CC is None:
        pytest.skip("no C compiler to build a fake library")
    c = tmp_path / "fake.c"
    c.write_text("#include <stddef.h>\n" + source)
    lib = tmp_path / "libfake.so"
    subprocess.run([CC, "-shared", "-fPIC", "-o", str(lib), str(c)], check=True, timeout=60)
    return lib


def _load_with(library: Path, cwd: Path) -> str:
    env = {**os.environ, "PYECHO_LIBRARY": str(library)}
    out = subprocess.run(
        [sys.executable, "-c", LOAD], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_installed_library_matches_its_header() -> None:
    ffi, lib = pyecho._native.load()
    assert lib.echo_abi_version() == lib.ECHO_ABI_VERSION
    for name in pyecho._native.ABI_STRUCTS:
        assert lib.echo_abi_sizeof(name.encode()) == ffi.sizeof(name)
    assert lib.echo_abi_sizeof(b"no_such_struct") == 0


@pytest.mark.skipif(
    shutil.which("llvm-nm") is None and shutil.which("nm") is None, reason="no nm to read symbols"
)
def test_the_library_exports_the_api_and_nothing_else() -> None:
    """Hidden visibility: the functions pyecho.h declares leave the library,
    none of its internals (poller_*, compat_*, net_*...) do."""
    library = os.environ.get("PYECHO_LIBRARY") or pyecho._native._installed(
        pyecho._native.LIBRARY_NAME
    )
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "exports.py"), str(library)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "API functions and nothing else" in out.stdout


def test_the_library_file_is_named_for_the_platform() -> None:
    name = pyecho._native.library_name
    assert name("linux") == "libpyecho_core.so"
    assert name("freebsd14") == "libpyecho_core.so"
    assert name("darwin") == "libpyecho_core.dylib"
    assert pyecho._native.LIBRARY_NAME == name(sys.platform)


def test_a_library_of_another_abi_version_is_refused(tmp_path: Path) -> None:
    lib = _fake_library(tmp_path, "int echo_abi_version(void) { return 999; }\n")
    out = _load_with(lib, tmp_path)
    assert f"ERR {lib} was built for ABI version 999" in out
    assert "rebuild it" in out


def test_a_library_whose_structs_differ_is_refused(tmp_path: Path) -> None:
    version = pyecho._native.load()[1].ECHO_ABI_VERSION
    lib = _fake_library(
        tmp_path,
        f"int echo_abi_version(void) {{ return {version}; }}\n"
        "size_t echo_abi_sizeof(const char *name) { (void)name; return 1; }\n",
    )
    out = _load_with(lib, tmp_path)
    assert f"ERR {lib} disagrees with its header on echo_config (1 bytes" in out


def test_a_library_without_the_abi_check_is_refused(tmp_path: Path) -> None:
    lib = _fake_library(tmp_path, "int unrelated(void) { return 0; }\n")
    out = _load_with(lib, tmp_path)
    assert f"ERR {lib} is not a pyecho core library of this version" in out


# ---- the product library holds the echo API only (issue 16, item 5) ----------


def _core_library() -> Path:
    return Path(
        os.environ.get("PYECHO_LIBRARY") or pyecho._native._installed(pyecho._native.LIBRARY_NAME)
    )


def _loadgen_functions() -> list[str]:
    """Every function pyecho_loadgen.h declares (the load generator's API)."""
    from pyecho.bench import loadgen

    header = loadgen._installed(loadgen.HEADER_NAME).read_text()
    return sorted(set(re.findall(r"\b(echo_loadgen_\w+)\s*\(", header)))


def test_the_product_library_exports_no_load_generator_function() -> None:
    from pyecho.bench import loadgen

    names = _loadgen_functions()
    assert "echo_loadgen_new" in names and "echo_loadgen_run" in names
    core = ctypes.CDLL(str(_core_library()))
    assert [n for n in names if hasattr(core, n)] == []
    # They are all in the benchmark's own library instead.
    _, lg = loadgen.load()
    assert [n for n in names if not hasattr(lg, n)] == []


def _defined_symbols(library: Path) -> list[str]:
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("no nm to list a library's symbols (binutils)")
    out = subprocess.run(
        [nm, "-D", "--defined-only", str(library)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return [ln.split()[-1] for ln in out.stdout.splitlines() if ln.split()[1:2] in (["T"], ["D"])]


def test_the_product_library_exports_the_echo_api_only() -> None:
    symbols = _defined_symbols(_core_library())
    assert "echo_server_new" in symbols
    assert [s for s in symbols if "loadgen" in s or s.startswith(("lg_", "lgu_"))] == []
    assert [s for s in symbols if not s.startswith("echo_")] == []


def test_the_load_generator_library_exports_its_api_only() -> None:
    from pyecho.bench import loadgen

    library = Path(os.environ.get(loadgen.LIBRARY_ENV) or loadgen._installed(loadgen.LIBRARY_NAME))
    symbols = _defined_symbols(library)
    # Its copies of net.c and the poller stay inside it.
    assert sorted(symbols) == _loadgen_functions()
