#!/usr/bin/env python3
"""Native-vs-Python benchmark of pyecho: see docs/BENCHMARKS.md.

    pip install ".[bench]"
    python benchmarks/native_vs_python.py --help

A thin wrapper: the benchmark lives in the installed package (pyecho.bench),
so ``pyecho bench`` runs the same thing.
"""

import sys

try:
    from pyecho.bench import main
except ImportError as e:  # pragma: no cover - depends on the install
    sys.exit(f'pyecho is not installed ({e}): run `pip install ".[bench]"` first')

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
