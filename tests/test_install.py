"""What an install gives a user: one version, the typing marker, and a clear
way out of the first stumble (running from the source checkout).

Building and checking the sdist and the manylinux wheel themselves (twine
check, auditwheel) is tools/wheel.sh, which CI runs."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cffi
import pytest

import pyecho

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(pyecho.__file__).resolve().parent


def test_version_is_the_installed_metadata() -> None:
    assert pyecho.__version__ == importlib.metadata.version("pyecho")


def test_the_package_is_marked_typed() -> None:
    assert (PACKAGE / "py.typed").is_file()


@pytest.mark.slow  # mypy over the whole package: seconds
def test_the_whole_package_is_mypy_strict_clean(tmp_path: Path) -> None:
    """py.typed promises types to every user: `mypy --strict` on the package
    (the one imported, installed or editable) reports nothing."""
    pytest.importorskip("mypy", reason="mypy is not installed (pip install '.[test]')")
    # A copy of its sources: mypy given site-packages/pyecho takes
    # site-packages for a source root, where other modules shadow its own.
    package = _copy_package(tmp_path / "src")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(package),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success: no issues found" in out.stdout


def _try_native_from(cwd: Path) -> subprocess.CompletedProcess:
    """Import pyecho with ``cwd`` first on the path, as `python -m pyecho` from
    a repository root does. -S keeps site-packages' .pth files (an editable
    install's import hook) out; PYTHONPATH still finds cffi."""
    code = (
        "import pyecho\n"
        "print('FROM', pyecho.__file__)\n"
        "try:\n"
        "    pyecho.EchoServer(('127.0.0.1', 0), engine='native')\n"
        "except pyecho.NativeUnavailableError as e:\n"
        "    print('ERR', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYECHO_LIBRARY"}
    env["PYTHONPATH"] = str(Path(cffi.__file__).resolve().parents[1])
    return subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _copy_package(to: Path) -> Path:
    """The package's Python sources, without any built library."""
    shutil.copytree(PACKAGE, to / "pyecho", ignore=shutil.ignore_patterns("*.so", "*.dylib", "*.h"))
    return to / "pyecho"


def test_running_from_the_source_checkout_says_what_is_happening(tmp_path: Path) -> None:
    # A checkout as a clone has it: pyproject.toml and csrc/ beside pyecho/.
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(ROOT / "csrc", tmp_path / "csrc")
    package = _copy_package(tmp_path)
    out = _try_native_from(tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"FROM {package / '__init__.py'}" in out.stdout
    assert (
        f"You are importing the source checkout at {package} (no built library there): "
        "run from another folder, or install it editable with `pip install -e .`, "
        "or use engine='python'." in out.stdout
    )
    assert "pip install .`" not in out.stdout  # the command the user just ran


def test_a_package_without_its_library_is_not_called_a_checkout(tmp_path: Path) -> None:
    # Neither the library nor its header: a pure-Python install (the wheel
    # PYECHO_PUREPYTHON=1 or a failed C build makes), said as such.
    _copy_package(tmp_path)
    out = _try_native_from(tmp_path)
    assert out.returncode == 0, out.stderr
    assert "ERR this pyecho is a pure-Python install, without its native engine" in out.stdout
    assert "`pip install --no-cache-dir --force-reinstall pyecho`" in out.stdout
    assert "source checkout" not in out.stdout


def test_a_package_with_its_header_but_no_library_says_it_is_not_built(tmp_path: Path) -> None:
    package = _copy_package(tmp_path)
    (package / "pyecho.h").write_text("")
    out = _try_native_from(tmp_path)
    assert out.returncode == 0, out.stderr
    library = package / pyecho._native.LIBRARY_NAME
    assert f"ERR pyecho's native engine is not built: {library}" in out.stdout
    assert "Install the package with `pip install .`" in out.stdout
    assert "source checkout" not in out.stdout


def test_the_metadata_says_what_the_package_is() -> None:
    """pyproject's [project]: the index page's one line names both transports
    and the plugin; the extras do not repeat each other."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for word in ("TCP", "UDP", "IPv6", "fault injection", "pytest plugin"):
        assert word in project["description"]
    assert "epoll" not in project["keywords"]  # one of the C core's pollers, not what it is
    assert {"udp", "pytest", "rfc862"} <= set(project["keywords"])
    extras = project["optional-dependencies"]
    assert extras["dev"] == ["pyecho[test]", "ruff"]


def test_the_readme_links_nothing_the_index_page_loses() -> None:
    """The README is the package index's page, where a relative link
    (docs/..., LICENSE) is dead: it names those files instead, and links
    only to its own sections and to absolute URLs."""
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert targets  # its own sections, at least
    relative = [t for t in targets if not t.startswith(("#", "https://", "http://"))]
    assert relative == []
