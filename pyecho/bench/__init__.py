"""pyecho's benchmark: both engines against a C epoll floor, asyncio and
uvloop, driven by the C load generator (csrc/loadgen.c).

``main(argv)`` is the command line (``python benchmarks/native_vs_python.py``,
``python -m pyecho.bench``, ``pyecho bench``); it returns the exit status.
"""

from __future__ import annotations


def main(argv: list[str] | None = None, prog: str = "native_vs_python.py") -> int:
    """Run the benchmark with command-line arguments ``argv``."""
    from .runner import main as run_main

    return run_main(argv, prog)


__all__ = ["main"]
