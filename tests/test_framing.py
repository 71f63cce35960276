"""The C framing (echo_scan) against the Python twin (pyecho._framing.scan).

The comparison is fuzz/fuzz_framing.py's check_one(): here it runs over the
seed corpus in fuzz/corpus/ and over hypothesis-generated inputs, so the
default test run covers it without atheris; CI also runs the real fuzzers
(tools/fuzz.sh) for a bounded time.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.native  # echo_scan of the C core

ROOT = Path(__file__).resolve().parents[1]
CORPUS = sorted((ROOT / "fuzz" / "corpus").iterdir())


def _harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_framing", ROOT / "fuzz" / "fuzz_framing.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = _harness()
# tools/fuzz.sh raises this when atheris cannot be installed.
EXAMPLES = int(os.environ.get("PYECHO_FRAMING_EXAMPLES", 3000))


def test_corpus_is_there() -> None:
    assert len(CORPUS) >= 10


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_corpus(path: Path) -> None:
    harness.check_one(path.read_bytes())


# Streams built from the bytes that matter to the framing.
_stream = st.lists(
    st.sampled_from([b"exit", b"e", b"\n", b"\r", b"\r\n", b"a", b"\x00", b"exit\n"]),
    max_size=80,
).map(b"".join)


@pytest.mark.slow
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mode=st.integers(0, 2),
    max_line=st.integers(0, 255),
    quit_=st.integers(0, 3),
    seed=st.integers(0, 255),
    stream=_stream,
)
def test_engines_frame_alike(
    mode: int, max_line: int, quit_: int, seed: int, stream: bytes
) -> None:
    harness.check_one(bytes([mode, max_line, quit_, seed]) + stream)


@settings(max_examples=max(500, EXAMPLES // 6), deadline=None)
@given(st.binary(max_size=600))
def test_engines_frame_alike_on_any_bytes(data: bytes) -> None:
    harness.check_one(data)


def test_the_comparison_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """A framing bug in one engine is caught (here: the Python twin loses the
    quit word's CRLF form)."""
    original = harness.scan

    def broken(cfg, cont, buf):  # type: ignore[no-untyped-def]
        return original(cfg, cont, buf.replace(b"\r\n", b"\n!"))

    monkeypatch.setattr(harness, "scan", broken)
    with pytest.raises(AssertionError, match="differ"):
        harness.check_one((ROOT / "fuzz" / "corpus" / "line-quit-crlf").read_bytes())
