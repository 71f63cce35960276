"""Build the C unit tests (tests/c/) with CMake into a temporary directory and
run them with ctest, plain and under ASan+UBSan (leaks included)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    # A sanitizer runtime preloaded for the tests (tools/sanitize.sh) must not
    # leak into cmake or the compiler.
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _sanitizers_link(tmp: Path) -> bool:
    src = tmp / "probe.c"
    src.write_text("int main(void) { return 0; }\n")
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return False
    probe = _run([cc, "-fsanitize=address,undefined", str(src), "-o", str(tmp / "probe")])
    return probe.returncode == 0


@pytest.mark.slow  # builds the C tests (the plain build with -Werror): seconds
@pytest.mark.parametrize("sanitize", ["OFF", "ON"])
def test_c_unit_tests(tmp_path: Path, sanitize: str) -> None:
    if shutil.which("cmake") is None or shutil.which("ctest") is None:
        pytest.skip("cmake/ctest are not installed: the C unit tests need them")
    if sanitize == "ON" and not _sanitizers_link(tmp_path):
        pytest.skip("the C compiler cannot link -fsanitize=address,undefined")
    build = tmp_path / "build"
    configure = _run(
        [
            "cmake",
            "-S",
            str(ROOT),
            "-B",
            str(build),
            "-DCMAKE_BUILD_TYPE=Debug",
            "-DPYECHO_BUILD_TESTS=ON",
            f"-DPYECHO_SANITIZE={sanitize}",
            "-DPYECHO_WERROR=ON",  # the C tests hold the code to no warnings
        ]
    )
    assert configure.returncode == 0, configure.stdout + configure.stderr
    built = _run(["cmake", "--build", str(build), "-j2"])
    assert built.returncode == 0, built.stdout + built.stderr
    ctest = _run(["ctest", "--output-on-failure", "--timeout", "120"], cwd=build)
    assert ctest.returncode == 0, ctest.stdout + ctest.stderr
    assert "100% tests passed" in ctest.stdout
    assert "Sanitizer" not in ctest.stdout + ctest.stderr
