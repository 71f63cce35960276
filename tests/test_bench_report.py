"""The benchmark's report, from a made-up result (no measurement runs): every
bar says its value (a 0 B bar draws nothing), every axis says what it
measures, and the one-connection figures carry their explanation."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from pyecho.bench.report import WAKEUP_MARK, WAKEUP_NOTE, render_markdown, render_table
from pyecho.bench.runner import QUICK_STATUS, evaluate

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _scenario(name: str, label: str, connections: int, idle: bool = False) -> dict[str, Any]:
    return {"name": name, "label": label, "connections": connections, "idle": idle}


def _throughput(rt_per_s: float, cpu: float) -> dict[str, float]:
    return {
        "rt_per_s": rt_per_s,
        "mib_per_s": rt_per_s * 64 / (1 << 20),
        "lat_p50_us": 50.0,
        "lat_p99_us": 90.0,
        "lat_p999_us": 120.0,
        "cpu_us_per_rt": cpu,
        "peak_rss_bytes": 24 << 20,
        "other_cpu_cores": 0.0,
        "runs": 1,
        "connections": 1,
    }


def result(one_connection: bool = True) -> dict[str, Any]:
    scenarios = [_scenario("c50-64B", "50 conns x 64 B", 50), _scenario("idle", "idle", 1000, True)]
    summary: dict[str, Any] = {
        "c50-64B": {"floor": _throughput(200_000, 4.4), "uvloop": _throughput(150_000, 5.5)},
        "idle": {
            "floor": {"rss_per_conn_bytes": 4.0, "peak_rss_bytes": 1 << 20, "connections": 1000},
            "native": {"rss_per_conn_bytes": 0.0, "peak_rss_bytes": 24 << 20, "connections": 1000},
        },
    }
    if one_connection:
        scenarios.insert(0, _scenario("c1-64B", "1 conn x 64 B", 1))
        summary = {
            "c1-64B": {"floor": _throughput(17_000, 10.0), "uvloop": _throughput(16_000, 26.0)}
        } | summary
    return {
        "command": "pyecho bench --quick",
        "date": "2026-01-01T00:00:00+00:00",
        "machine": {
            "cpu": "test CPU",
            "cpus": 2,
            "kernel": "Linux",
            "python": "CPython 3",
            "uvloop": "0.21",
        },
        "loadavg_start": [],
        "loadavg_end": [],
        "wall_seconds": 1,
        "options": {"runs": 1, "duration": 0.5, "warmup": 0.1},
        "servers": {"floor": "C epoll", "uvloop": "uvloop"},
        "skipped": {},
        "scenarios": scenarios,
        "summary": summary,
        "targets": [],
        "ratios": [],
        "errors": [],
    }


def test_tables_mark_one_connection_and_explain_it() -> None:
    for text in (render_table(result()), render_markdown(result(), None)):
        assert "1 conn x 64 B" + WAKEUP_MARK in text
        assert "wake-up latency" in text
        assert "50 conns x 64 B" + WAKEUP_MARK not in text
    assert WAKEUP_NOTE in render_markdown(result(), None)


def test_no_footnote_without_a_one_connection_scenario() -> None:
    for text in (render_table(result(False)), render_markdown(result(False), None)):
        assert "wake-up latency" not in text


@pytest.mark.slow
@pytest.mark.skipif(
    not HAVE_MATPLOTLIB, reason="matplotlib is not installed (pip install '.[bench]')"
)
@pytest.mark.parametrize("one_connection", [True, False])
def test_plot_labels_every_bar_and_axis(one_connection: bool) -> None:
    import matplotlib.pyplot as plt

    from pyecho.bench.report import figure

    fig = figure(result(one_connection))
    try:
        rt, cpu, p99, idle = fig.axes
        for ax in (rt, cpu, p99, idle):
            assert ax.get_ylabel(), ax.get_title()
        # One label per bar, with that bar's value.
        rt_labels = ["17k", "16k", "200k", "150k"] if one_connection else ["200k", "150k"]
        cpu_labels = ["10", "26", "4.4", "5.5"] if one_connection else ["4.4", "5.5"]
        assert sorted(t.get_text() for t in rt.texts) == sorted(rt_labels)
        assert sorted(t.get_text() for t in cpu.texts) == sorted(cpu_labels)
        # The native engine's 0 B bar has no height: its label shows it was measured.
        assert [t.get_text() for t in idle.texts] == ["4 B", "0 B"]
        ticks = [t.get_text() for t in rt.get_xticklabels()]
        texts = [t.get_text().replace("\n", " ") for t in fig.texts]  # wrapped on the plot
        footnotes = [t for t in texts if "wake-up latency" in t]
        if one_connection:
            assert ticks[0] == "1 conn x 64 B" + WAKEUP_MARK
            assert footnotes == [WAKEUP_NOTE]
        else:
            assert footnotes == []
    finally:
        plt.close(fig)


def udp_result(lost: int) -> dict[str, Any]:
    """TCP and UDP rows side by side, as a run with both writes them."""
    r = result(False)
    r["scenarios"].append(
        {"name": "u50-64B", "label": "UDP 50 sockets x 64 B", "connections": 50, "idle": False}
        | {"transport": "udp"}
    )
    r["summary"]["u50-64B"] = {
        "floor": _throughput(180_000, 3.6) | {"per_source_per_s": 3_600, "lost": 0, "late": 0},
        "native": _throughput(170_000, 3.7) | {"per_source_per_s": 3_400, "lost": lost, "late": 1},
    }
    r["options"] |= {"host": "::1", "udp_rate_limits": 10**9}
    return r


def test_udp_rows_show_losses_and_per_socket_rates() -> None:
    table = render_table(udp_result(lost=7))
    md = render_markdown(udp_result(lost=7), None)
    for text in (table, md):
        assert "lost (UDP)" in text
        assert "UDP rows: a round trip is one datagram" in text
    # TCP rows cannot lose anything: "-", not a 0 that looks measured.
    rows = [line for line in md.splitlines() if line.count("|") == 12]  # the main table
    (tcp_row,) = [line for line in rows if line.startswith("| 50 conns x 64 B | floor")]
    assert tcp_row.endswith("| - |")
    (udp_row,) = [line for line in rows if line.startswith("| UDP 50 sockets x 64 B | native")]
    assert udp_row.endswith("| 7 |")
    assert "## UDP per socket" in md
    assert "| UDP 50 sockets x 64 B | native | 3,400 | 7 | 1 |" in md
    assert "1,000,000,000 datagrams/s, so no limit was hit" in md
    assert "Servers on [::1] (loopback)." in md  # IPv6 in brackets


def test_no_udp_column_without_udp() -> None:
    for text in (render_table(result()), render_markdown(result(), None)):
        assert "lost (UDP)" not in text and "UDP rows" not in text


def test_a_quick_run_says_its_targets_are_not_judged() -> None:
    quick = result() | {"options": result()["options"] | {"quick": True}}
    for text in (render_table(quick), render_markdown(quick, None)):
        assert "is a smoke test: too short and too noisy to judge the targets" in " ".join(
            text.split()
        )
    for text in (render_table(result()), render_markdown(result(), None)):
        assert "smoke test" not in text


def test_evaluate_judges_only_when_asked() -> None:
    """A quick run keeps what it measured (value, and whether it meets the
    bound) but its status judges nothing."""
    records = [
        {"run": 0, "server": server, "scenario": "c50-64B", "cpu_us_per_rt": cpu}
        for server, cpu in (("native", 5.0), ("floor", 4.0), ("uvloop", 6.0))
    ]
    for judged in (True, False):
        targets, _ = evaluate(records, 1, judged=judged)
        by_name = {t["name"]: t for t in targets}
        floor = by_name["native CPU per round trip / floor's, 50 conns x 64 B"]  # 1.25 > 1.05
        uvloop = by_name["native CPU per round trip / uvloop's, 50 x 64 B"]  # 0.83 < 1
        assert (floor["value"], floor["met"]) == (1.25, False)
        assert uvloop["met"] is True
        if judged:
            assert (floor["status"], uvloop["status"]) == ("missed", "met")
        else:
            assert floor["status"] == uvloop["status"] == QUICK_STATUS
        unmeasured = by_name["native MiB/s / floor's, 10 x 64 KiB"]
        assert unmeasured["status"] == "not measured" and "met" not in unmeasured
