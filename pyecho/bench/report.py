"""The benchmark's outputs: a console table, a markdown report and a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .servers import SERVERS

MiB = 1 << 20
COLORS = {
    "floor": "#7f7f7f",
    "native": "#1f77b4",
    "python": "#ff7f0e",
    "asyncio": "#2ca02c",
    "uvloop": "#9467bd",
}


def _labels(result: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["label"] for s in result["scenarios"]}


def _throughput_rows(result: dict[str, Any]) -> list[list[str]]:
    rows = []
    labels = _labels(result)
    for scenario, by_server in result["summary"].items():
        if scenario == "idle":
            continue
        for server in SERVERS:
            m = by_server.get(server)
            if m is None:
                continue
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
                    f"{m['peak_rss_bytes'] / MiB:,.1f}",
                    f"{m['other_cpu_cores']:.2f}",
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
TARGET_HEAD = ["target", "bound", "measured (median)", "per run", "status"]


def _idle_rows(result: dict[str, Any]) -> list[list[str]]:
    by_server = result["summary"].get("idle", {})
    return [
        [
            server,
            f"{m['connections']:,}",
            f"{m['rss_per_conn_bytes']:,.0f}",
            f"{m['peak_rss_bytes'] / MiB:,.1f}",
        ]
        for server in SERVERS
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
        _text_table(THROUGHPUT_HEAD, _throughput_rows(result)),
    ]
    if _idle_rows(result):
        parts += ["", _text_table(IDLE_HEAD, _idle_rows(result))]
    parts += [
        "",
        "Targets (ratios taken inside each run, then the median):",
        _text_table(TARGET_HEAD, _target_rows(result)),
    ]
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
        _md_table(THROUGHPUT_HEAD, _throughput_rows(result)),
    ]
    if _idle_rows(result):
        out += ["", "## Idle connections held", "", _md_table(IDLE_HEAD, _idle_rows(result), 1)]
    out += ["", "## Targets", "", _md_table(TARGET_HEAD, _target_rows(result), 1)]
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


def plot(result: dict[str, Any], path: Path) -> str | None:
    """Write the PNG; returns why not (matplotlib missing) or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'pyecho[bench]')"
    summary = result["summary"]
    labels = _labels(result)
    scenarios = [s for s in summary if s != "idle"]
    panels = [
        ("rt_per_s", "round trips / s (higher is better)", 1.0),
        ("cpu_us_per_rt", "server CPU us per round trip (lower is better)", 1.0),
        ("lat_p99_us", "p99 latency, us (lower is better)", 1.0),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    flat = list(axes.flat)
    for ax, (metric, title, scale) in zip(flat[:3], panels, strict=True):
        servers = [s for s in SERVERS if any(s in summary[sc] for sc in scenarios)]
        width = 0.8 / max(1, len(servers))
        for i, server in enumerate(servers):
            xs, ys = [], []
            for j, sc in enumerate(scenarios):
                m = summary[sc].get(server)
                if m is not None and m.get(metric):
                    xs.append(j + (i - (len(servers) - 1) / 2) * width)
                    ys.append(m[metric] * scale)
            ax.bar(xs, ys, width, label=server, color=COLORS.get(server))
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xticks(range(len(scenarios)))
        ax.set_xticklabels(
            [labels.get(s, s) for s in scenarios], rotation=25, ha="right", fontsize=8
        )
        ax.grid(axis="y", alpha=0.3)
    if scenarios:
        flat[0].legend(fontsize=8)
    else:
        for ax in flat[:3]:
            ax.set_visible(False)
    ax = flat[3]
    idle = summary.get("idle", {})
    servers = [s for s in SERVERS if s in idle]
    if servers:
        ys = [idle[s]["rss_per_conn_bytes"] for s in servers]
        ax.bar(servers, ys, color=[COLORS.get(s) for s in servers])
        n = idle[servers[0]]["connections"]
        ax.set_title(f"server RSS per idle connection, bytes ({n:,} held)")
        ax.axhline(2048, color="red", linestyle="--", linewidth=1, label="target: 2 KiB")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    else:
        ax.set_visible(False)
    m = result["machine"]
    fig.suptitle(
        f"pyecho echo servers, medians of {result['options']['runs']} run(s) - "
        f"{m['cpu']}, {m['cpus']} CPUs, {m['kernel']}, {m['python']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
