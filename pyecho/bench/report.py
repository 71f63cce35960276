"""The benchmark's outputs: a console table, a markdown report and a plot."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from .servers import SERVERS, VARIANT_PREFIX, show_host

MiB = 1 << 20
COLORS = {
    "floor": "#7f7f7f",
    "native": "#1f77b4",
    "python": "#ff7f0e",
    "asyncio": "#2ca02c",
    "uvloop": "#9467bd",
}
# Native variants (--poller, --native-library: "native-poll"...).
VARIANT_COLOR = "#17becf"


def _color(server: str) -> str:
    return COLORS.get(server) or (VARIANT_COLOR if server.startswith("native-") else "#bcbd22")


# One connection: the figures are the machine's wake-up latency more than the
# server's work, and a server can come out far from the floor by luck alone.
# Every table and the plot mark that scenario and say so next to it.
WAKEUP_MARK = " *"
WAKEUP_NOTE = (
    "* One connection: each round trip puts the server and the load generator to sleep "
    "and wakes them again, often on the other CPU, so these figures measure the "
    "machine's (a VM's) wake-up latency more than the server, and which server wakes "
    "faster varies from run to run (a quick run once showed uvloop at 2.6x the floor). "
    "Compare servers at 50 connections; docs/BENCHMARKS.md explains."
)


UDP_NOTE = (
    "UDP rows: a round trip is one datagram echoed and verified, so round trips/s is "
    "datagrams/s and server CPU us/rt is CPU per datagram; lost counts datagrams not "
    "echoed within the load generator's loss timeout, over all runs (a lost datagram "
    "also idles its place in the window until then)."
)


UDP_PLOT_NOTE = "UDP scenarios: a round trip is one datagram echoed and verified."


def _udp(result: dict[str, Any]) -> bool:
    return any(s.get("transport") == "udp" for s in result["scenarios"])


def _transports(result: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s.get("transport", "tcp") for s in result["scenarios"]}


def _one_connection(result: dict[str, Any]) -> bool:
    return any(s["connections"] == 1 and not s["idle"] for s in result["scenarios"])


def _mib(value: float | None) -> str:
    """Bytes in MiB; "-" where it could not be measured (no /proc)."""
    return "-" if value is None else f"{value / MiB:,.1f}"


def _servers(result: dict[str, Any]) -> list[str]:
    """The servers of a run in SERVERS order, native variants (another build
    of the core, "native-poll") right after native."""
    present = set(result.get("servers") or ()) | {
        s for by_server in result["summary"].values() for s in by_server
    }
    variants = sorted(s for s in present if s.startswith(VARIANT_PREFIX))
    order = [s for name in SERVERS for s in ([name, *variants] if name == "native" else [name])]
    return [s for s in order if s in present]


def _labels(result: dict[str, Any]) -> dict[str, str]:
    return {
        s["name"]: s["label"] + (WAKEUP_MARK if s["connections"] == 1 and not s["idle"] else "")
        for s in result["scenarios"]
    }


def _throughput_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    labels = _labels(result)
    udp = _udp(result)
    transports = _transports(result)
    for scenario, by_server in result["summary"].items():
        if scenario == "idle":
            continue
        for server in _servers(result):
            m = by_server.get(server)
            if m is None:
                continue
            lost = f"{m['lost']:,}" if transports.get(scenario) == "udp" else "-"
            rows.append(
                [
                    labels.get(scenario, scenario),
                    server,
                    f"{m['rt_per_s']:,.0f}",
                    f"{m['mib_per_s']:,.1f}",
                    f"{m['lat_p50_us']:,.1f}",
                    f"{m['lat_p99_us']:,.1f}",
                    f"{m['lat_p999_us']:,.1f}",
                    f"{m['cpu_us_per_rt']:.2f}",
                    _mib(m["peak_rss_bytes"]),
                    "-" if m["other_cpu_cores"] is None else f"{m['other_cpu_cores']:.2f}",
                    *([lost] if udp else []),
                ]
            )
    return rows


THROUGHPUT_HEAD = [
    "scenario",
    "server",
    "round trips/s",
    "MiB/s",
    "p50 us",
    "p99 us",
    "p99.9 us",
    "server CPU us/rt",
    "peak RSS MiB",
    "other load (cores)",
]
IDLE_HEAD = ["server", "idle connections", "RSS per connection (B)", "peak RSS MiB"]
UDP_HEAD = ["UDP scenario", "server", "datagrams/s per socket", "lost (all runs)", "late"]
QUICK_NOTE = (
    "A --quick run (one run, half a second per measurement) is a smoke test: too short "
    "and too noisy to judge the targets, so none is met or missed; run without --quick "
    "to judge them."
)
TARGET_HEAD = ["target", "bound", "measured (median)", "per run", "status"]


def _throughput_head(result: dict[str, Any]) -> list[str]:
    return THROUGHPUT_HEAD + (["lost (UDP)"] if _udp(result) else [])


def _udp_rows(result: dict[str, Any]) -> list[list[str]]:
    """Per source: each socket is one address and port to the server's
    per-source rate limit, so this is what a default limit would see."""
    rows = []
    labels = _labels(result)
    transports = _transports(result)
    for scenario, by_server in result["summary"].items():
        if transports.get(scenario) != "udp":
            continue
        for server in _servers(result):
            if (m := by_server.get(server)) is not None:
                rows.append(
                    [
                        labels.get(scenario, scenario),
                        server,
                        f"{m['per_source_per_s']:,.0f}",
                        f"{m['lost']:,}",
                        f"{m['late']:,}",
                    ]
                )
    return rows


def _idle_rows(result: dict[str, Any]) -> list[list[str]]:
    by_server = result["summary"].get("idle", {})
    return [
        [
            server,
            f"{m['connections']:,}",
            f"{m['rss_per_conn_bytes']:,.0f}",
            _mib(m["peak_rss_bytes"]),
        ]
        for server in _servers(result)
        if (m := by_server.get(server)) is not None
    ]


def _fmt(value: float | None, ratio: bool) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if ratio else f"{value:,.0f}"


def _target_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    for t in result["targets"]:
        per_run = ", ".join(_fmt(v, t["ratio"]) for v in t["per_run"])
        rows.append(
            [
                t["name"],
                f"{t['op']} {_fmt(t['bound'], t['ratio'])}",
                _fmt(t["value"], t["ratio"]),
                per_run or "-",
                t["status"],
            ]
        )
    return rows


def _text_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        cells = zip(r, widths, strict=True)
        lines.append(
            "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(cells))
        )
    return "\n".join(lines)


def _md_table(head: list[str], rows: list[list[str]], left: int = 2) -> str:
    lines = ["| " + " | ".join(head) + " |"]
    lines.append("|" + "|".join("---" if i < left else "---:" for i in range(len(head))) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_table(result: dict[str, Any]) -> str:
    """The console version: medians, idle memory, targets."""
    parts = [
        f"Medians of {result['options']['runs']} run(s), {result['options']['duration']:g} s each",
        _text_table(_throughput_head(result), _throughput_rows(result)),
    ]
    if _one_connection(result):
        parts += [textwrap.fill(WAKEUP_NOTE, 100, break_on_hyphens=False)]
    if _udp(result):
        parts += [textwrap.fill(UDP_NOTE, 100, break_on_hyphens=False)]
    if _idle_rows(result):
        parts += ["", _text_table(IDLE_HEAD, _idle_rows(result))]
    parts += [
        "",
        "Targets (ratios taken inside each run, then the median):",
        _text_table(TARGET_HEAD, _target_rows(result)),
    ]
    if result["options"].get("quick"):
        parts += [textwrap.fill(QUICK_NOTE, 100, break_on_hyphens=False)]
    return "\n".join(parts)


def _loadavg(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values) or "unknown"


def render_markdown(result: dict[str, Any], png_name: str | None) -> str:
    m = result["machine"]
    o = result["options"]
    out = [
        "# pyecho benchmark: native vs Python engine",
        "",
        f"- Command: `{result['command']}`",
        f"- Date: {result['date']}, wall time {result['wall_seconds']:g} s",
        f"- Machine: {m['cpu']}, {m['cpus']} CPUs, {m.get('memory_gib', '?')} GiB, "
        f"{m['kernel']}, {m['python']}, uvloop {m['uvloop'] or 'not installed'}",
        "- Load average (1, 5, 15 min) at start / end: "
        f"{_loadavg(result['loadavg_start'])} / {_loadavg(result['loadavg_end'])}; "
        "the table's *other load* is CPU used by other processes during each measurement.",
        f"- {o['runs']} run(s), {o['duration']:g} s measured per server and scenario after "
        f"{o['warmup']:g} s of warm-up; figures are medians over runs.",
        f"- Servers on {show_host(o.get('host', '127.0.0.1'))} (loopback).",
        "",
        "Servers:",
        "",
    ]
    out += [f"- **{name}**: {desc}" for name, desc in result["servers"].items()]
    out += [f"- **{name}**: skipped, {why}" for name, why in result["skipped"].items()]
    out += [
        "",
        "## Throughput, latency, CPU",
        "",
        _md_table(_throughput_head(result), _throughput_rows(result)),
    ]
    if _one_connection(result):
        out += ["", "\\" + WAKEUP_NOTE]  # escaped: a leading * would make a list item
    if _udp(result):
        out += ["", UDP_NOTE]
        rates = o.get("udp_rate_limits")
        out += [
            "",
            "## UDP per socket",
            "",
            "Each socket is one source (address and port) to a server's per-source rate "
            "limit"
            + (
                f"; pyecho's servers ran with udp_rate and udp_rate_per_source at {rates:,} "
                "datagrams/s, so no limit was hit."
                if rates
                else "."
            ),
            "",
            _md_table(UDP_HEAD, _udp_rows(result)),
        ]
    if _idle_rows(result):
        out += ["", "## Idle connections held", "", _md_table(IDLE_HEAD, _idle_rows(result), 1)]
    out += ["", "## Targets", "", _md_table(TARGET_HEAD, _target_rows(result), 1)]
    if o.get("quick"):
        out += ["", QUICK_NOTE]
    if result["ratios"]:
        out += [
            "",
            "## Other ratios (same run, median)",
            "",
            _md_table(
                ["ratio", "median", "per run"],
                [
                    [r["name"], f"{r['value']:.3f}", ", ".join(f"{v:.3f}" for v in r["per_run"])]
                    for r in result["ratios"]
                ],
                1,
            ),
        ]
    if result["errors"]:
        out += ["", "## Failed measurements", ""]
        out += [
            f"- run {e['run'] + 1}, {e['scenario']}, {e['server']}: {e['error']}"
            for e in result["errors"]
        ]
    if png_name:
        out += ["", f"![benchmark plot]({png_name})"]
    return "\n".join(out) + "\n"


def _short(value: float) -> str:
    """A bar's value in a few characters: 3.4M, 183k, 1.6k, 23.8, 0.29."""
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.3g}"


def figure(result: dict[str, Any]) -> Any:
    """The plot as a matplotlib Figure (matplotlib must be importable)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    labels = _labels(result)
    scenarios = [s for s in summary if s != "idle"]
    panels = [
        ("rt_per_s", "round trips / s (higher is better)", "round trips per second"),
        (
            "cpu_us_per_rt",
            "server CPU us per round trip (lower is better)",
            "server CPU per round trip (us)",
        ),
        ("lat_p99_us", "p99 latency, us (lower is better)", "99th percentile round trip (us)"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    flat = list(axes.flat)
    for ax, (metric, title, ylabel) in zip(flat[:3], panels, strict=True):
        servers = [s for s in _servers(result) if any(s in summary[sc] for sc in scenarios)]
        width = 0.8 / max(1, len(servers))
        for i, server in enumerate(servers):
            xs, ys = [], []
            for j, sc in enumerate(scenarios):
                m = summary[sc].get(server)
                if m is not None and m.get(metric):
                    xs.append(j + (i - (len(servers) - 1) / 2) * width)
                    ys.append(m[metric])
            bars = ax.bar(xs, ys, width, label=server, color=_color(server))
            ax.bar_label(bars, [_short(y) for y in ys], rotation=90, fontsize=6, padding=2)
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        ax.set_ylim(low, high * 4)  # room for the labels above the bars (log scale)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_xticks(range(len(scenarios)))
        ax.set_xticklabels(
            [labels.get(s, s) for s in scenarios], rotation=25, ha="right", fontsize=8
        )
        ax.grid(axis="y", alpha=0.3)
    if scenarios:
        flat[0].legend(fontsize=8, ncol=len(_servers(result)), loc="upper left")
    else:
        for ax in flat[:3]:
            ax.set_visible(False)
    ax = flat[3]
    idle = summary.get("idle", {})
    servers = [s for s in _servers(result) if s in idle]
    if servers:
        ys = [idle[s]["rss_per_conn_bytes"] for s in servers]
        bars = ax.bar(servers, ys, color=[_color(s) for s in servers])
        # A value of 0 B draws no bar: the label says it was measured.
        ax.bar_label(bars, [f"{y:,.0f} B" for y in ys], fontsize=8, padding=2)
        n = idle[servers[0]]["connections"]
        ax.set_title(f"server RSS per idle connection ({n:,} held)")
        ax.set_ylabel("bytes of RSS per connection")
        ax.axhline(2048, color="red", linestyle="--", linewidth=1, label="target: 2 KiB")
        ax.set_ylim(0, max([*ys, 2048]) * 1.15)
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(axis="y", alpha=0.3)
    else:
        ax.set_visible(False)
    m = result["machine"]
    fig.suptitle(
        f"pyecho echo servers, medians of {result['options']['runs']} run(s) - "
        f"{m['cpu']}, {m['cpus']} CPUs, {m['kernel']}, {m['python']}",
        fontsize=10,
    )
    bottom = 0.0
    notes = [WAKEUP_NOTE] if scenarios and _one_connection(result) else []
    if scenarios and _udp(result):
        notes.append(UDP_PLOT_NOTE)
    for note in reversed(notes):  # bottom up
        text = textwrap.fill(note, 190, break_on_hyphens=False)
        fig.text(0.01, 0.01 + bottom, text, fontsize=8, va="bottom")
        bottom += 0.015 * (text.count("\n") + 1) + 0.005
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return fig


def plot(result: dict[str, Any], path: Path) -> str | None:
    """Write the PNG; returns why not (matplotlib missing) or None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (pip install 'pyecho[bench]')"
    fig = figure(result)
    fig.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return None
