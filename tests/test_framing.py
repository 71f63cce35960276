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

from pyecho._config import make_config

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


# The Python line framing takes whole buffers at once (a search for quit
# lines, then one rfind per max_line window); these drive it where that
# could differ from the C framing's line-by-line walk.
_words = st.one_of(
    st.none(),
    st.sampled_from([b"exit", b"\r", b"e", b"a\r", b"\n", b"x\ny", b"ee", b"exit\r", b"\r\n"]),
    st.binary(min_size=1, max_size=4),
)
_line_stream = st.lists(
    st.sampled_from([b"e", b"ee", b"a\r", b"exit", b"\r", b"\n", b"\r\n", b"x", b"y", b"\x00"]),
    max_size=60,
).map(b"".join)


@pytest.mark.slow
@settings(max_examples=max(500, EXAMPLES // 3), deadline=None)
@given(word=_words, max_line=st.integers(1, 12), cont=st.booleans(), stream=_line_stream)
def test_line_framing_with_any_quit_word(
    word: bytes | None, max_line: int, cont: bool, stream: bytes
) -> None:
    cfg = make_config(mode="line", quit_word=word, max_line=max_line)
    harness._both(harness._CScan(cfg), cfg, cont, stream)


@pytest.mark.slow
@settings(max_examples=max(200, EXAMPLES // 10), deadline=None)
@given(
    max_line=st.sampled_from([1, 2, 7, 64, 1000, 65536]),
    lengths=st.lists(st.integers(0, 3000), max_size=40),
    quit_after=st.one_of(st.none(), st.integers(0, 40)),
    tail=st.integers(0, 70000),
    cont=st.booleans(),
)
def test_line_framing_of_large_buffers(
    max_line: int, lengths: list[int], quit_after: int | None, tail: int, cont: bool
) -> None:
    """Buffers of many lines, long and short, around max_line windows, with
    the quit word (as "exit\\r\\n") somewhere or nowhere."""
    lines = [b"x" * n + b"\n" for n in lengths]
    if quit_after is not None:
        lines.insert(min(quit_after, len(lines)), b"exit\r\n")
    buf = b"".join(lines) + b"y" * tail
    cfg = make_config(mode="line", quit_word=b"exit", max_line=max_line)
    harness._both(harness._CScan(cfg), cfg, cont, buf)


@pytest.mark.parametrize(
    ("word", "max_line", "cont", "buf", "expected"),
    [
        (b"exit", 64, False, b"a\nexit\nb\n", (2, False, True)),
        (b"exit", 64, True, b"exit\nexit\n", (5, False, True)),  # a tail, then a quit
        (b"exit", 5, False, b"exit\r\n", (6, False, False)),  # longer than max_line
        (b"exit", 5, False, b"exit\n", (0, False, True)),  # exactly max_line
        (b"a\r", 64, False, b"a\r\n", (3, False, False)),  # "\r\n" is the terminator
        (b"a\r", 64, False, b"a\r\r\n", (0, False, True)),
        (b"x\ny", 64, False, b"x\ny\n", (4, False, False)),  # a line never holds "\n"
        (b"exit", 64, False, b"noexit\nexit\r\n", (7, False, True)),
        (b"exit", 4, False, b"abcdexit\n", (9, False, False)),  # pieces, then a tail
    ],
)
def test_line_framing_cases(
    word: bytes, max_line: int, cont: bool, buf: bytes, expected: tuple
) -> None:
    cfg = make_config(mode="line", quit_word=word, max_line=max_line)
    assert harness._both(harness._CScan(cfg), cfg, cont, buf) == expected
