"""The native engine refuses a library built from another pyecho.h
(PYECHO_LIBRARY pointing at a stale or foreign build) with a clear error,
instead of misreading its structs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pyecho

pytestmark = pytest.mark.native  # needs the C core

CC = shutil.which("cc") or shutil.which("gcc")

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
