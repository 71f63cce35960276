"""Running pyecho's command line (and the original C programs) as real
processes, reading their output with timeouts so nothing hangs."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

PYECHO = [sys.executable, "-m", "pyecho"]


class Proc:
    """A child process whose stdout lines are collected by a thread."""

    def __init__(self, argv: list[str], cwd: Path, **kw: Any) -> None:
        kw.setdefault("stdin", subprocess.DEVNULL)
        self.popen = subprocess.Popen(
            argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.stderr_lines: list[str] = []
        self._readers = [
            threading.Thread(
                target=self._pump, args=(self.popen.stdout, self.lines.put), daemon=True
            ),
            threading.Thread(
                target=self._pump, args=(self.popen.stderr, self.stderr_lines.append), daemon=True
            ),
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _pump(stream: IO[bytes], put: Any) -> None:
        for raw in stream:
            put(raw.decode(errors="replace").rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.popen.pid

    def expect(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """The next stdout line matching pattern (earlier lines are kept in seen)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(0.0, left))
            except queue.Empty:
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout}s; stdout so far: "
                    f"{self.seen}; stderr: {self.stderr_lines}"
                ) from None
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def rest(self, timeout: float = 10.0) -> list[str]:
        """Wait for exit; every stdout line not yet read."""
        self.wait(timeout)
        for t in self._readers:
            t.join(timeout)
        out = []
        while not self.lines.empty():
            out.append(self.lines.get())
        self.seen.extend(out)
        return out

    def signal(self, sig: int = signal.SIGINT) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float = 10.0) -> int:
        return self.popen.wait(timeout)

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)


def serve(cwd: Path, *args: str, port: int = 0, **kw: Any) -> tuple[Proc, int]:
    """`pyecho serve` (TCP or UDP, any host) on a free port (or the one
    given); the process and port."""
    proc = Proc([*PYECHO, "serve", "--port", str(port), *args], cwd, **kw)
    match = proc.expect(r"^pyecho: serving (?:UDP )?on (?:\[[^\]]+\]|[^\s:]+):(\d+) ")
    return proc, int(match.group(1))
