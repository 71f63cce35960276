"""The benchmark's servers beyond Linux's /proc, and its native variants
(issue 16, item 5 and 7): a server reports its own getrusage() when asked,
and ps its resident size, agreeing with /proc where both exist; a server
exits when the benchmark's end of its stdin closes; the floor rows say why
they are missing where they cannot be measured; a native variant runs the
native server on another build of the C core, beside native."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

import pyecho
from conftest import LOOPBACK, wait_for
from pyecho.bench import runner, servers
from pyecho.bench.loadgen import LoadGen

needs_proc = pytest.mark.skipif(not servers.HAVE_PROC, reason="no /proc to compare with")


def _core() -> Path:
    return Path(
        os.environ.get("PYECHO_LIBRARY") or pyecho._native._installed(pyecho._native.LIBRARY_NAME)
    )


def _load(srv: servers.ServerProcess, seconds: float) -> int:
    with LoadGen(4, 64, depth=2) as lg:
        lg.connect(LOOPBACK, srv.port)
        return lg.run(seconds).round_trips


def _proc_figures(pid: int) -> tuple[float, int, int]:
    """CPU seconds, RSS and peak RSS (bytes) of pid, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / servers.CLK_TCK
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value
    return cpu, int(status["VmRSS"].split()[0]) * 1024, int(status["VmHWM"].split()[0]) * 1024


@needs_proc
@pytest.mark.native  # the load generator is built with the C core
def test_a_server_reports_what_proc_says(engine: str) -> None:
    with servers.ServerProcess(engine, use_proc=False) as srv:
        assert _load(srv, 0.3) > 0
        user, system, _ = srv.usage()
        cpu, _, _ = _proc_figures(srv.pid)
        rss = srv.rss()  # ps
        _, proc_rss, _ = _proc_figures(srv.pid)
        # The same process, read two ways a moment apart: CPU to a few
        # clock ticks, memory to a few pages.
        assert user + system > 0
        assert abs((user + system) - cpu) <= 0.05
        assert srv.cpu_times() == pytest.approx((user, system), abs=0.05)
        assert abs(rss - proc_rss) <= 256 * 1024
        # No substitute for VmHWM: ru_maxrss includes the launcher's peak.
        assert srv.peak_rss() is None


def test_a_server_exits_when_its_stdin_closes(engine: str) -> None:
    with servers.ServerProcess(engine) as srv:
        assert srv.alive()
        assert srv.proc.stdin is not None
        srv.proc.stdin.close()  # as when the benchmark is killed
        wait_for(lambda: not srv.alive(), 10.0, "the server to exit")
        assert srv.proc.returncode == 0


def test_the_floor_answers_through_proc_only() -> None:
    with pytest.raises(ValueError, match="through /proc only"):
        servers.ServerProcess("floor", use_proc=False)


def test_the_floor_rows_say_why_they_are_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "FLOOR_PLATFORM", False)
    for transport in servers.TRANSPORTS:
        why = servers.unavailable_reason("floor", transport)
        assert why is not None
        assert f"no floor rows on {sys.platform}" in why
    assert servers.unavailable_reason("native") is None


# ---- native variants ----------------------------------------------------------


@pytest.mark.native
def test_a_native_variant_runs_the_core_it_is_given(engine: str) -> None:
    # engine: the variant beside each engine's server; only native takes a core.
    name = "native-same" if engine == "native" else engine
    library = _core() if engine == "native" else None
    with servers.ServerProcess(name, library=library) as srv:
        assert _load(srv, 0.1) > 0
    with pytest.raises(ValueError, match="native variant"):
        servers.ServerProcess(name, library=None if library else _core())


def test_a_variant_on_a_core_that_is_not_one_fails_to_start(tmp_path: Path) -> None:
    bad = tmp_path / "libpyecho_core.so"
    bad.write_bytes(b"not a library")
    with pytest.raises(RuntimeError, match="did not start"):
        servers.ServerProcess("native-bad", library=bad)


def test_the_poll_row_is_built_or_says_why_not() -> None:
    root = servers.source_tree()
    if root is None:
        with pytest.raises(servers.ServerUnavailable, match="no source tree"):
            servers.core_with_poller("poll")
        return
    if re.search(r"\bPYECHO_POLLER\b", (root / "CMakeLists.txt").read_text()) is None:
        with pytest.raises(servers.ServerUnavailable, match="no PYECHO_POLLER option"):
            servers.core_with_poller("poll")
        return
    if shutil.which("cmake") is None:
        pytest.skip("no cmake to build the core")
    library = servers.core_with_poller("poll")  # about 20 s the first time, then cached
    assert not servers._imports(library, "epoll_wait")
    assert servers._imports(library, "poll")
    assert servers.core_with_poller("poll") == library


def test_a_bad_native_library_option_is_a_usage_error(tmp_path: Path) -> None:
    for bad in ("nolabel", f"bad label={_core()}", f"x={tmp_path / 'missing.so'}"):
        with pytest.raises(SystemExit) as info:
            runner.build_parser().parse_args(["--native-library", bad])
        assert info.value.code == 2


@pytest.mark.native
@pytest.mark.slow  # a benchmark run: two scenarios, each server started and measured
def test_a_variant_is_measured_beside_native(tmp_path: Path) -> None:
    start = time.monotonic()
    status = runner.main(
        [
            "--servers",
            "native",
            "--scenarios",
            "c50-64B,u50-64B",
            "--runs",
            "1",
            # A second: CPU time comes in 10 ms ticks, and a loaded machine
            # gives a server few of them in 0.2 s (none: no ratio at all).
            "--duration",
            "1",
            "--warmup",
            "0",
            "--native-library",
            f"same={_core()}",
            "--no-plot",
            "--out",
            str(tmp_path),
        ]
    )
    assert status == 0
    assert time.monotonic() - start < 120
    result = json.loads((tmp_path / "results.json").read_text())
    assert list(result["servers"]) == ["native", "native-same"]
    assert result["options"]["native_libraries"] == {"native-same": str(_core().resolve())}
    for sc in ("c50-64B", "u50-64B"):
        assert set(result["summary"][sc]) == {"native", "native-same"}
        assert result["summary"][sc]["native-same"]["rt_per_s"] > 0
    ratios = {r["name"]: r["value"] for r in result["ratios"]}
    for sc in ("c50-64B", "u50-64B"):
        # The same core twice: the same figures, give or take a shared machine.
        assert 0.2 < ratios[f"native-same CPU per round trip / native's, {sc}"] < 5
    table = (tmp_path / "results.md").read_text()
    assert "| native-same |" in table
