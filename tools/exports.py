"""Check what a built C core exports: exactly the functions csrc/pyecho.h
declares, nothing else (the library is built with hidden visibility).

    python tools/exports.py LIBRARY [--nm NM] [--expect-import NAME ...]
                                    [--optional PREFIX ...]

Reads the symbol table with llvm-nm (or NM), which understands ELF and
Mach-O alike, so it checks cross-built libraries too (tools/cross.sh).
--expect-import names calls the library must import (kevent for a kqueue
build, say): proof of which code paths went in. --optional lets API
functions of that prefix be missing (echo_loadgen_: builds without the load
generator, which is Linux-only until it leaves the library). Exits 1 with
the differences.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

HEADER = Path(__file__).resolve().parents[1] / "csrc" / "pyecho.h"


def declared(header: Path = HEADER) -> set[str]:
    """The functions the header declares: `type name(` at a line's start."""
    text = re.sub(r"/\*.*?\*/", "", header.read_text(), flags=re.S)
    return set(re.findall(r"^[A-Za-z_][\w \t\*]*?\b(echo_\w+)\s*\(", text, flags=re.M))


def symbols(library: Path, nm: str, *flags: str) -> set[str]:
    out = subprocess.run(
        [nm, *flags, str(library)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    names = set()
    for line in out.splitlines():
        name = line.split()[-1] if line.split() else ""
        name = name.split("@")[0]  # ELF symbol versions: send@GLIBC_2.2.5
        names.add(name)
    names.discard("")
    return names


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("library", type=Path)
    ap.add_argument("--header", type=Path, default=HEADER)
    ap.add_argument("--nm", default=shutil.which("llvm-nm") or "nm")
    ap.add_argument("--expect-import", action="append", default=[])
    ap.add_argument("--optional", action="append", default=[])
    args = ap.parse_args()
    mach_o = args.library.read_bytes()[:4] in (b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe")

    def c_names(names: set[str]) -> set[str]:
        # Mach-O prefixes every C symbol with an underscore.
        return {n[1:] for n in names if n.startswith("_")} if mach_o else names

    # ELF: the dynamic symbol table, what the loader sees (a release build
    # may have no other). Mach-O: its one table.
    table = () if mach_o else ("-D",)
    exported = c_names(symbols(args.library, args.nm, *table, "-g", "--defined-only"))
    exported = {n for n in exported if not n.startswith("_") and n not in ("_init", "_fini")}
    imported = c_names(symbols(args.library, args.nm, *table, "-u"))
    want = declared(args.header)
    want -= {n for n in want - exported if n.startswith(tuple(args.optional))}
    ok = True
    if exported != want:
        ok = False
        extra, missing = sorted(exported - want), sorted(want - exported)
        print(f"{args.library}: exports differ from {args.header.name}", file=sys.stderr)
        if extra:
            print(f"  exported, not in the API: {' '.join(extra)}", file=sys.stderr)
        if missing:
            print(f"  in the API, not exported: {' '.join(missing)}", file=sys.stderr)
    for name in args.expect_import:
        if name not in imported:
            ok = False
            print(f"{args.library}: does not import {name}", file=sys.stderr)
    if ok:
        print(f"{args.library}: exports the {len(want)} API functions and nothing else")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
