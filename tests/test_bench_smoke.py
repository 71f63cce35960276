"""Smoke test of the benchmark: benchmarks/native_vs_python.py --quick runs
every scenario (TCP and UDP) on every server briefly, as a user would start
it, and its outputs must exist, parse and hold positive figures. uvloop and
matplotlib are optional (the bench extra): their parts skip, with the reason,
when they are not installed."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pyecho.bench.runner import QUICK_STATUS, SCENARIOS, TARGETS
from pyecho.bench.servers import SERVER_MODES

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "native_vs_python.py"
pytestmark = pytest.mark.slow  # every server, every scenario: ~25 s

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
ALWAYS = ("floor", "native", "python", "asyncio")
UDP = tuple(sc for sc in SCENARIOS if sc.transport == "udp")


def expected(sc: Any) -> tuple[str, ...]:
    """The servers that must have measured scenario sc here."""
    if sc.transport == "udp":
        return ALWAYS
    return tuple(s for s in ALWAYS if sc.mode in SERVER_MODES[s])


POSITIVE = (
    "rt_per_s",
    "mib_per_s",
    "lat_p50_us",
    "lat_p99_us",
    "lat_p999_us",
    "cpu_us_per_rt",
    "peak_rss_bytes",
    "round_trips",
    "bytes",
    "seconds",
)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"benchmark failed:\n{proc.stdout}\n{proc.stderr}"
    return {
        "out": out,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "json": json.loads((out / "results.json").read_text()),
    }


def test_every_scenario_on_every_server(bench: dict[str, Any]) -> None:
    summary = bench["json"]["summary"]
    for sc in SCENARIOS:
        for server in expected(sc):
            assert server in summary[sc.name], f"{server} missing from {sc.name}"
    assert bench["json"]["errors"] == []


def test_every_figure_is_a_positive_number(bench: dict[str, Any]) -> None:
    records = bench["json"]["records"]
    assert records
    for rec in records:
        where = f"{rec['server']} {rec['scenario']}"
        if rec["scenario"] == "idle":
            assert rec["connections"] == 1000
            assert rec["peak_rss_bytes"] > 0 and rec["rss_held_bytes"] > 0, where
            assert math.isfinite(rec["rss_per_conn_bytes"]), where
            continue
        for key in POSITIVE:
            value = rec[key]
            assert isinstance(value, (int, float)) and math.isfinite(value), (where, key)
            assert value > 0, (where, key, value)
        assert rec["bytes"] == rec["round_trips"] * rec["msg_size"], where
        assert rec["lat_p50_us"] <= rec["lat_p99_us"] <= rec["lat_p999_us"], where
        if rec["transport"] == "udp":
            assert rec["per_source_per_s"] > 0, where
            assert rec["lost"] >= rec["late"] >= 0, where
        for key in ("server_cpu_cores", "loadgen_cpu_cores", "other_cpu_cores"):
            assert rec[key] >= 0, (where, key)


def test_pipelined_lines_against_an_asyncio_line_server(bench: dict[str, Any]) -> None:
    """The pipelined line scenario: 16 lines in flight per connection, the
    Python engine measured against asyncio echoing whole lines."""
    records = [r for r in bench["json"]["records"] if r["scenario"] == "c50-64B-line-p16"]
    assert {r["server"] for r in records} >= {"native", "python", "asyncio"}
    for r in records:
        assert (r["mode"], r["depth"], r["msg_size"], r["connections"]) == ("line", 16, 64, 50)
    (target,) = [t for t in bench["json"]["targets"] if "per line" in t["name"]]
    assert target["status"] == QUICK_STATUS and target["value"] > 0


def test_udp_scenarios(bench: dict[str, Any]) -> None:
    """UDP: the closed loop and the window, datagrams counted per socket,
    losses reported (none expected on loopback at these loads), the Python
    engine skipped with its reason while it has no UDP."""
    result = bench["json"]
    assert {sc.name for sc in UDP} == {"u50-64B", "u4-64B-w32"}
    for sc in UDP:
        records = [r for r in result["records"] if r["scenario"] == sc.name]
        assert {r["server"] for r in records} >= set(expected(sc))
        for r in records:
            assert (r["transport"], r["depth"], r["msg_size"]) == ("udp", sc.depth, 64)
            assert r["connections"] == sc.connections
            where = f"{r['server']} {sc.name}"
            assert r["per_source_per_s"] == pytest.approx(r["rt_per_s"] / sc.connections), where
        for server, m in result["summary"][sc.name].items():
            assert m["lost"] == sum(r["lost"] for r in records if r["server"] == server)
    assert result["options"]["udp_rate_limits"] >= 10**9
    md = (bench["out"] / "results.md").read_text()
    assert "## UDP per socket" in md and "lost (UDP)" in md
    assert "UDP rows: a round trip is one datagram" in bench["stdout"]


def test_progress_table_and_markdown(bench: dict[str, Any]) -> None:
    assert "[  1/" in bench["stderr"]  # progress while it runs
    assert "round trips/s" in bench["stdout"] and "Targets" in bench["stdout"]
    md = (bench["out"] / "results.md").read_text()
    assert md.startswith("# pyecho benchmark")
    assert "| scenario | server |" in md
    assert "## Targets" in md


def test_targets_are_evaluated(bench: dict[str, Any]) -> None:
    targets = {t["name"]: t for t in bench["json"]["targets"]}
    assert set(targets) == {t.name for t in TARGETS}
    assert sum(name.startswith("UDP ") for name in targets) == 6
    for t in targets.values():
        if "uvloop" in t["name"] and not HAVE_UVLOOP:
            assert t["status"] == "not measured"
        elif "idle" in t["name"]:
            assert t["status"].startswith("not evaluated")  # 1000 < 10,000 held
        else:
            # A quick run measures every target but judges none, and says so.
            assert t["status"] == QUICK_STATUS, t
            assert isinstance(t["met"], bool) and t["value"] > 0
    assert not any(line.endswith(("  met", "  missed")) for line in bench["stdout"].splitlines())
    assert "too short and too noisy to judge the targets" in " ".join(bench["stdout"].split())


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed (pip install '.[bench]')")
def test_uvloop_is_measured(bench: dict[str, Any]) -> None:
    for sc in SCENARIOS:
        if sc.mode in SERVER_MODES["uvloop"]:
            assert "uvloop" in bench["json"]["summary"][sc.name]


@pytest.mark.skipif(
    not HAVE_MATPLOTLIB, reason="matplotlib is not installed (pip install '.[bench]')"
)
def test_plot_is_written(bench: dict[str, Any]) -> None:
    png = bench["out"] / "native_vs_python.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "native_vs_python.png" in (bench["out"] / "results.md").read_text()


@pytest.mark.skipif(HAVE_MATPLOTLIB, reason="matplotlib is installed")
def test_no_plot_without_matplotlib(bench: dict[str, Any]) -> None:
    assert not (bench["out"] / "native_vs_python.png").exists()
    assert "matplotlib is not installed" in bench["stderr"]


def test_bad_option_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--servers", "nginx", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "unknown nginx" in proc.stderr
