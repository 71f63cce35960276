"""What the server echoes for the bytes it received: the executable spec.

The twin of ``csrc/framing.c`` (``echo_scan``); docs/PROTOCOL.md says the
same in prose, and tests/test_framing.py fuzzes the two against each other.
"""

from __future__ import annotations

from collections.abc import Callable

from ._config import Config


def _is_quit(cfg: Config, msg: bytes) -> bool:
    return cfg.quit_word is not None and msg == cfg.quit_word


def _is_quit_line(cfg: Config, line: bytes) -> bool:
    body = line[:-1]  # the "\n"
    if body.endswith(b"\r"):
        body = body[:-1]
    return _is_quit(cfg, body)


def _scan_seed(cfg: Config, buf: bytes) -> tuple[int, bool]:
    """Seed mode: the whole read is one message, minus one trailing newline."""
    msg = len(buf) - 1 if buf.endswith(b"\n") else len(buf)
    if _is_quit(cfg, buf[:msg]):
        return 0, True
    return msg, False


def _quit_needles(cfg: Config) -> tuple[bytes, ...]:
    """The bytes a quit line can be: the quit word then "\n" or "\r\n",
    if that fits in max_line (a longer line goes out in pieces, never a
    quit) and the word has no "\n" (a line's content has none)."""
    word = cfg.quit_word
    if word is None or b"\n" in word:
        return ()
    return tuple(n for n in (word + b"\n", word + b"\r\n") if len(n) <= cfg.max_line)


Scanner = Callable[[bool, bytes], tuple[int, bool, bool]]


def _line_scanner(cfg: Config) -> Scanner:
    """Line mode: whole lines of at most max_line bytes (terminator included)
    are echoed as they complete; a longer line goes out in max_line pieces,
    and its tail is never taken for the quit word.

    It takes whole buffers at once, not a loop per line, and computes exactly
    what csrc/framing.c computes line by line (the two are fuzzed against each
    other): every newline ends a line (a long line's pieces end where no
    newline is), so a quit line can only start right after a newline, and
    from a line's start every line within max_line bytes is short, so the
    last newline in that window ends the lines echoed so far.
    """
    max_line = cfg.max_line
    needles = _quit_needles(cfg)
    word = cfg.quit_word if needles else None  # the one search in the common case

    def quit_at(cont: bool, buf: bytes) -> int:
        """Where the first quit line starts, or -1: a search per candidate
        (each ends at a newline), never a step per byte."""
        first = -1
        for needle in needles:
            pos = buf.find(needle)
            while pos >= 0 and (first < 0 or pos < first):
                starts_line = buf[pos - 1] == 10 if pos else not cont
                if starts_line and _is_quit_line(cfg, buf[pos : pos + len(needle)]):
                    first = pos
                    break
                pos = buf.find(needle, pos + 1)
        return first

    def scan_lines(cont: bool, buf: bytes) -> tuple[int, bool, bool]:
        if word is not None and word in buf:
            stop = quit_at(cont, buf)
            if stop >= 0:  # everything before the quit line is echoed
                return stop, False, True
        size = len(buf)
        pos = 0
        while True:
            end = pos + max_line
            if end >= size:  # the rest fits in one window
                nl = buf.rfind(b"\n", pos)
                if nl >= 0:
                    return nl + 1, False, False
                if size - pos == max_line:
                    return size, True, False  # a full piece of a long line
                return pos, cont, False  # a partial line: wait for more
            nl = buf.rfind(b"\n", pos, end)
            if nl >= 0:
                pos, cont = nl + 1, False
            else:
                pos, cont = end, True  # a full piece of a long line

    return scan_lines


def _scan_raw(cont: bool, buf: bytes) -> tuple[int, bool, bool]:
    return len(buf), cont, False


def scanner(cfg: Config) -> Scanner:
    """``scan`` for one configuration, set up once (what a server calls per read)."""
    if cfg.mode == "line":
        return _line_scanner(cfg)
    if cfg.mode == "seed":

        def scan_seed(cont: bool, buf: bytes) -> tuple[int, bool, bool]:
            emit, quit_ = _scan_seed(cfg, buf)
            return emit, cont, quit_

        return scan_seed
    return _scan_raw


def scan(cfg: Config, cont: bool, buf: bytes) -> tuple[int, bool, bool]:
    """Return (emit, cont, quit) for the bytes ``buf`` not yet echoed.

    ``emit`` leading bytes are echoed now; in line mode the rest stay pending
    (always fewer than max_line). ``cont`` is True while inside a line longer
    than max_line. ``quit``: the quit word ends the connection after the
    emitted prefix; everything after it is dropped.
    """
    return scanner(cfg)(cont, buf)


def is_quit_message(cfg: Config, message: bytes) -> bool:
    """Would the server take this whole message (line mode: one line with its
    terminator; seed mode: one read) for the quit word?"""
    if cfg.mode == "line":
        return (
            message.endswith(b"\n") and len(message) <= cfg.max_line and _is_quit_line(cfg, message)
        )
    if cfg.mode == "seed":
        return len(message) <= cfg.bufsize and _scan_seed(cfg, message)[1]
    return False
