"""Which engine runs: ``engine="auto"`` (the default everywhere) is the
native engine where its library loads, else the Python engine.

The environment variable PYECHO_ENGINE decides what "auto" means:
``python`` forces the Python engine (as msgpack's MSGPACK_PUREPYTHON does),
``native`` requires the native engine (NativeUnavailableError if it cannot
load), ``auto`` or unset picks. An explicit ``engine="native"`` or
``engine="python"`` argument always wins over it.
"""

from __future__ import annotations

import os

from . import _native
from ._config import ENGINES

ENV = "PYECHO_ENGINE"
AUTO = "auto"


def _from_env() -> str:
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("", AUTO):
        return AUTO
    if value not in ENGINES:
        raise ValueError(
            f"the environment variable {ENV} must be one of {AUTO}, {', '.join(ENGINES)}; "
            f"got {os.environ[ENV]!r}"
        )
    return value


def choose(engine: str) -> tuple[str, str]:
    """(the engine that runs for ``engine``, why it is the Python engine when
    "auto" fell back to it, else ""). engine="native" (or PYECHO_ENGINE=native
    under "auto") raises NativeUnavailableError, with the reason and the fix,
    if the library cannot load."""
    if engine == AUTO:
        engine = _from_env()
        if engine == "python":
            return "python", f"{ENV}=python"
    if engine == "native":
        _native.load()
        return "native", ""
    if engine == "python":
        return "python", ""
    try:
        _native.load()
    except _native.NativeUnavailableError as e:
        return "python", str(e)
    return "native", ""


def describe(engine: str = AUTO) -> str:
    """One line: which engine ``engine`` runs and, for the Python engine by
    fallback, why (``pyecho --version``, the serve banner)."""
    try:
        running, why = choose(engine)
    except _native.NativeUnavailableError as e:
        return f"engine: native unavailable ({e})"
    if running == "native":
        return "engine: native (the C core)"
    if why:
        return f"engine: python (the pure-Python engine, because {why})"
    return "engine: python (the pure-Python engine)"
