"""An EchoServer in a child process, so that its memory and descriptors can
be measured on their own (the test process's clients do not count) and the
Python engine does not share a GIL with the load generator.

The child serves on a background thread and answers one-line JSON commands
on stdin: "stats", "quit". Environment (PYECHO_LIBRARY, LD_PRELOAD for a
sanitizer run) is inherited. A ``faults`` keyword is a dict of pyecho.Faults
fields.
"""

from __future__ import annotations

import json
import os
import resource
import select
import subprocess
import sys
from typing import Any

LOOPBACK = "127.0.0.1"

_CHILD = r"""
import dataclasses, json, sys
import pyecho

args = json.loads(sys.argv[1])
kw = args["kw"]
if "faults" in kw:
    kw["faults"] = pyecho.Faults(**kw["faults"])
server = pyecho.EchoServer((args["host"], 0), engine=args["engine"], **kw)
server.start()
print(json.dumps({"port": server.server_address[1]}), flush=True)
for line in sys.stdin:
    command = line.strip()
    if command == "stats":
        print(json.dumps(dataclasses.asdict(server.stats)), flush=True)
    elif command == "quit":
        server.shutdown()
        stats = dataclasses.asdict(server.stats)
        server.close()
        print(json.dumps(stats), flush=True)
        break
"""


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class ProcServer:
    """A server process; use as a context manager."""

    def __init__(
        self,
        engine: str,
        host: str = LOOPBACK,
        timeout: float = 30,
        fd_limit: int | None = None,
        **kw: Any,
    ) -> None:
        """Start it; fd_limit lowers the child's open-file limit."""
        self.timeout = timeout

        def limit_fds() -> None:
            if fd_limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, json.dumps({"engine": engine, "host": host, "kw": kw})],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd="/",  # import the installed pyecho, never a source tree in the cwd
            preexec_fn=limit_fds if fd_limit is not None else None,
        )
        self.pid = self.proc.pid
        try:
            self.port: int = self._reply()["port"]
        except BaseException:
            self.kill()
            raise
        self.address = (host, self.port)

    def _reply(self) -> dict:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        if not ready:
            raise TimeoutError(f"server process {self.pid} did not answer in {self.timeout}s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server process {self.pid} exited: {self.proc.wait()}")
        return json.loads(line)

    def _command(self, command: str) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def stats(self) -> dict:
        return self._command("stats")

    def quit(self) -> dict:
        """Shut the server down; its final stats. The process then exits."""
        stats = self._command("quit")
        self.proc.wait(self.timeout)
        assert self.proc.returncode == 0, f"server process exited with {self.proc.returncode}"
        return stats

    def rss(self) -> int:
        """Resident memory now, bytes."""
        return _status_kib(self.pid, "VmRSS") * 1024

    def peak_rss(self) -> int:
        """Peak resident memory since start or the last reset_peak(), bytes."""
        return _status_kib(self.pid, "VmHWM") * 1024

    def reset_peak(self) -> None:
        with open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def threads(self) -> int:
        return _status_kib(self.pid, "Threads")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the process has used so far, seconds."""
        with open(f"/proc/{self.pid}/stat") as f:
            # The fields after the command name, which may hold spaces.
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()

    def __enter__(self) -> ProcServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
