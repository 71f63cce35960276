"""Native-vs-Python benchmark: pyecho's two engines against the servers a
user would pick instead, driven by the C load generator.

    python benchmarks/native_vs_python.py [--runs 5] [--duration 3] [--out DIR]
    python -m pyecho.bench ...            (the same; also ``pyecho bench``)

TCP and UDP: over UDP a *round trip* is one datagram echoed and verified, and
CPU per round trip is CPU per datagram.

Every server runs in its own process (so the OS can say what CPU time and
memory it used) and is started afresh for each measurement. A *run* measures
every scenario on every server back to back; figures are medians over runs,
and every comparison is a ratio taken inside one run, then the median of
those ratios, because the machines this runs on are shared and noisy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import math
import os
import platform
import shlex
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

from .. import __version__, _native
from .loadgen import LoadGen, LoadGenError
from .loadgen import load as load_loadgen
from .report import plot, render_markdown, render_table
from .serve import UDP_RATE, raise_nofile_limit
from .servers import (
    CLK_TCK,
    DESCRIPTIONS,
    SERVER_MODES,
    SERVERS,
    STEADY_MALLOC_ENV,
    TRANSPORTS,
    VARIANT_PREFIX,
    ServerProcess,
    ServerUnavailable,
    base_server,
    core_with_poller,
    show_host,
    unavailable_reason,
    wait_settled,
)

MiB = 1 << 20
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    connections: int
    msg_size: int
    depth: int = 1
    mode: str = "raw"
    idle: bool = False
    transport: str = "tcp"  # udp: connections are sockets, messages datagrams


SCENARIOS = (
    Scenario("c1-64B", "1 conn x 64 B", 1, 64),
    Scenario("c50-64B", "50 conns x 64 B", 50, 64),
    Scenario("c50-1KiB", "50 conns x 1 KiB", 50, 1024),
    Scenario("c50-64B-p16", "50 conns x 64 B, 16 deep", 50, 64, depth=16),
    Scenario("c10-64KiB", "10 conns x 64 KiB", 10, 64 * 1024),
    Scenario("c50-64B-seed", "50 conns x 64 B, seed mode", 50, 64, mode="seed"),
    Scenario("c50-64B-line", "50 conns x 64 B, line mode", 50, 64, mode="line"),
    Scenario("c50-64B-line-p16", "50 conns x 64 B lines, 16 deep", 50, 64, depth=16, mode="line"),
    Scenario("idle", "idle connections held", 10_000, 64, idle=True),
    Scenario("u50-64B", "UDP 50 sockets x 64 B", 50, 64, transport="udp"),
    # 4 x 32 = 128 datagrams in flight: 8 x 32 overflows the servers' default
    # 208 KiB receive buffer (each 64 B datagram costs about 1 KiB of it).
    Scenario("u4-64B-w32", "UDP 4 sockets x 64 B, 32 in flight", 4, 64, depth=32, transport="udp"),
)
SCENARIO_NAMES = tuple(s.name for s in SCENARIOS)
IDLE_TARGET_CONNECTIONS = 10_000
UDP_SCENARIOS = tuple(s.name for s in SCENARIOS if s.transport == "udp")
UDP_LABELS = {s.name: s.label.removeprefix("UDP ") for s in SCENARIOS if s.transport == "udp"}


@dataclass(frozen=True)
class Target:
    """A ratio (or, without ``den``, a value) and the bound it must meet."""

    name: str
    num: tuple[str, str, str]  # (server, scenario, metric)
    den: tuple[str, str, str] | None
    op: str  # "<=", "<" or ">="
    bound: float

    def met(self, value: float) -> bool:
        if self.op == "<=":
            return value <= self.bound
        if self.op == "<":
            return value < self.bound
        return value >= self.bound


# The TCP scenarios the floor server runs (raw mode, not idle).
FLOOR_TCP_SCENARIOS = tuple(
    s for s in SCENARIOS if s.transport == "tcp" and s.mode == "raw" and not s.idle
)

TARGETS = (
    # Issue 16, item 7: the native engine costs the floor's CPU per round trip,
    # within 5 %, in every TCP scenario.
    *(
        Target(
            f"native CPU per round trip / floor's, {sc.label}",
            ("native", sc.name, "cpu_us_per_rt"),
            ("floor", sc.name, "cpu_us_per_rt"),
            "<=",
            1.05,
        )
        for sc in FLOOR_TCP_SCENARIOS
    ),
    Target(
        "native CPU per round trip / uvloop's, 50 x 64 B",
        ("native", "c50-64B", "cpu_us_per_rt"),
        ("uvloop", "c50-64B", "cpu_us_per_rt"),
        "<",
        1.0,
    ),
    Target(
        "native round trips/s / uvloop's, 50 x 64 B",
        ("native", "c50-64B", "rt_per_s"),
        ("uvloop", "c50-64B", "rt_per_s"),
        ">=",
        1.0,
    ),
    Target(
        "native round trips/s / uvloop's, 50 x 1 KiB",
        ("native", "c50-1KiB", "rt_per_s"),
        ("uvloop", "c50-1KiB", "rt_per_s"),
        ">=",
        1.0,
    ),
    Target(
        "native MiB/s / floor's, 10 x 64 KiB",
        ("native", "c10-64KiB", "mib_per_s"),
        ("floor", "c10-64KiB", "mib_per_s"),
        ">=",
        0.95,
    ),
    Target(
        "native server memory per idle connection (bytes), 10,000 held",
        ("native", "idle", "rss_per_conn_bytes"),
        None,
        "<=",
        2048,
    ),
    Target(
        "python CPU per round trip / asyncio's, 50 x 64 B",
        ("python", "c50-64B", "cpu_us_per_rt"),
        ("asyncio", "c50-64B", "cpu_us_per_rt"),
        "<=",
        1.2,
    ),
    Target(
        "python CPU per line / asyncio line server's, 50 x 64 B lines, 16 deep",
        ("python", "c50-64B-line-p16", "cpu_us_per_rt"),
        ("asyncio", "c50-64B-line-p16", "cpu_us_per_rt"),
        "<=",
        1.5,
    ),
    # UDP (issue 10; issue 16, item 7 for the floor): datagrams/s against the
    # recvmmsg floor and uvloop, in both scenarios.
    *(
        Target(
            f"UDP native datagrams/s / {other}'s, {UDP_LABELS[sc]}",
            ("native", sc, "rt_per_s"),
            (other, sc, "rt_per_s"),
            ">=",
            bound,
        )
        for sc in UDP_SCENARIOS
        for other, bound in (("floor", 0.95), ("uvloop", 2.0))
    ),
    *(
        Target(
            f"UDP python datagrams/s / asyncio's, {UDP_LABELS[sc]}",
            ("python", sc, "rt_per_s"),
            ("asyncio", sc, "rt_per_s"),
            ">=",
            1.0,
        )
        for sc in UDP_SCENARIOS
    ),
)

# Informative ratios, same run: what the engines cost over the floor, and what
# line and seed framing cost over raw.
INFO_RATIOS = (
    tuple(
        (
            f"{eng} CPU per round trip / floor's, {sc}",
            (eng, sc, "cpu_us_per_rt"),
            ("floor", sc, "cpu_us_per_rt"),
        )
        for sc in ("c1-64B", "c50-64B", "c50-1KiB", "c50-64B-p16", "c10-64KiB")
        for eng in ("native", "python")
    )
    + tuple(
        (
            f"{eng} CPU per round trip, {mode} mode / raw mode, 50 x 64 B",
            (eng, f"c50-64B-{mode}", "cpu_us_per_rt"),
            (eng, "c50-64B", "cpu_us_per_rt"),
        )
        for eng in ("native", "python")
        for mode in ("seed", "line")
    )
    + tuple(
        (
            f"UDP {srv} CPU per datagram / {other}'s, {UDP_LABELS[sc]}",
            (srv, sc, "cpu_us_per_rt"),
            (other, sc, "cpu_us_per_rt"),
        )
        for sc in UDP_SCENARIOS
        for srv, other in (("native", "floor"), ("native", "uvloop"), ("python", "asyncio"))
    )
    # The most any server could reach against uvloop on this machine: the
    # kernel's own cost per datagram bounds the 2x target.
    + tuple(
        (
            f"UDP floor datagrams/s / uvloop's, {UDP_LABELS[sc]}",
            ("floor", sc, "rt_per_s"),
            ("uvloop", sc, "rt_per_s"),
        )
        for sc in UDP_SCENARIOS
    )
)

THROUGHPUT_METRICS = (
    "rt_per_s",
    "mib_per_s",
    "lat_p50_us",
    "lat_p99_us",
    "lat_p999_us",
    "cpu_us_per_rt",
    "peak_rss_bytes",
    "server_cpu_cores",
    "loadgen_cpu_cores",
    "other_cpu_cores",
)
# UDP: datagrams/s per socket (each socket is one source to the server's
# per-source rate limit), and datagrams lost (summed over runs, not a median:
# one loss anywhere must show).
UDP_METRICS = (*THROUGHPUT_METRICS, "per_source_per_s")
SUMMED_METRICS = ("lost", "late")
IDLE_METRICS = ("rss_per_conn_bytes", "peak_rss_bytes")


# ---- one measurement ---------------------------------------------------------


def _busy_cpu_seconds() -> float | None:
    """CPU time every CPU of the machine spent busy so far, from /proc/stat;
    None without it (the *other load* column then says "-")."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    guest = sum(fields[8:10])  # already counted in user and nice
    return (sum(fields) - idle - guest) / CLK_TCK


def _self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def measure(
    server: str,
    sc: Scenario,
    duration: float,
    warmup: float,
    idle_connections: int,
    steady_malloc: bool = True,
    host: str = HOST,
    library: Path | None = None,
) -> dict[str, Any]:
    """Start ``server`` afresh, drive ``sc`` against it, return its figures.
    ``library``: the C core of a native variant."""
    with ServerProcess(
        server,
        sc.mode,
        transport=sc.transport,
        host=host,
        steady_malloc=steady_malloc,
        library=library,
    ) as srv:
        wait_settled(srv)
        rss_before = srv.rss()
        connections = idle_connections if sc.idle else sc.connections
        with LoadGen(connections, sc.msg_size, sc.depth, sc.mode, transport=sc.transport) as lg:
            lg.connect(host, srv.port)
            rec: dict[str, Any] = {
                "connections": connections,
                "msg_size": sc.msg_size,
                "depth": sc.depth,
                "mode": sc.mode,
                "transport": sc.transport,
            }
            if sc.idle:
                wait_settled(srv, 0.2)
                rss = srv.rss()
                rec.update(
                    rss_before_bytes=rss_before,
                    rss_held_bytes=rss,
                    rss_per_conn_bytes=(rss - rss_before) / connections,
                    peak_rss_bytes=srv.peak_rss(),
                )
                return rec
            warmup_lost = lg.run(warmup).lost if warmup > 0 else 0
            srv.check_alive()
            busy0, self0 = _busy_cpu_seconds(), _self_cpu_seconds()
            user0, sys0 = srv.cpu_times()
            res = lg.run(duration)
            user1, sys1 = srv.cpu_times()
            busy1, self1 = _busy_cpu_seconds(), _self_cpu_seconds()
            srv.check_alive()
            if res.round_trips == 0:
                raise RuntimeError(
                    f"no echo came back in {duration:g} s ({res.lost:,} datagrams lost)"
                )
            cpu = (user1 - user0) + (sys1 - sys0)
            loadgen_cpu = self1 - self0
            rec.update(
                round_trips=res.round_trips,
                bytes=res.bytes,
                seconds=res.seconds,
                rt_per_s=res.round_trips / res.seconds,
                mib_per_s=res.bytes / res.seconds / MiB,
                lat_p50_us=res.lat_p50_ns / 1e3,
                lat_p99_us=res.lat_p99_ns / 1e3,
                lat_p999_us=res.lat_p999_ns / 1e3,
                lat_mean_us=res.lat_mean_ns / 1e3,
                lat_max_us=res.lat_max_ns / 1e3,
                cpu_user_s=user1 - user0,
                cpu_sys_s=sys1 - sys0,
                cpu_us_per_rt=cpu / res.round_trips * 1e6 if res.round_trips else 0.0,
                server_cpu_cores=cpu / res.seconds,
                loadgen_cpu_cores=loadgen_cpu / res.seconds,
                # Anything else running on the machine meanwhile (noise).
                other_cpu_cores=None
                if busy0 is None or busy1 is None
                else max(0.0, (busy1 - busy0) - cpu - loadgen_cpu) / res.seconds,
                peak_rss_bytes=srv.peak_rss(),
            )
            if sc.transport == "udp":
                rec.update(
                    lost=res.lost,
                    late=res.late,
                    warmup_lost=warmup_lost,
                    per_source_per_s=res.round_trips / res.seconds / connections,
                )
            return rec


# ---- aggregation -----------------------------------------------------------------


def _lookup(records: list[dict[str, Any]], run: int, key: tuple[str, str, str]) -> float | None:
    server, scenario, metric = key
    for r in records:
        if r["run"] == run and r["server"] == server and r["scenario"] == scenario:
            value = r.get(metric)
            return float(value) if value is not None else None
    return None


def _median_ratio(
    records: list[dict[str, Any]],
    runs: int,
    num: tuple[str, str, str],
    den: tuple[str, str, str] | None,
) -> tuple[float | None, list[float]]:
    per_run = []
    for run in range(runs):
        a = _lookup(records, run, num)
        if a is None:
            continue
        if den is None:
            per_run.append(a)
            continue
        b = _lookup(records, run, den)
        if b:
            per_run.append(a / b)
    return (statistics.median(per_run) if per_run else None), per_run


def _servers_of(records: list[dict[str, Any]]) -> list[str]:
    """The servers measured, in SERVERS order, each native variant after native."""
    seen = {r["server"] for r in records}
    variants = sorted(s for s in seen if s.startswith(VARIANT_PREFIX))
    order = [s for name in SERVERS for s in ([name, *variants] if name == "native" else [name])]
    return [s for s in order if s in seen]


def _median_or_none(values: list[Any]) -> Any:
    """The median, or None when a value was not measurable here."""
    return None if any(v is None for v in values) else statistics.median(values)


def summarize(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{scenario: {server: {metric: median over runs}}}."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for sc in SCENARIOS:
        for server in _servers_of(records):
            rows = [r for r in records if r["scenario"] == sc.name and r["server"] == server]
            if not rows:
                continue
            metrics: tuple[str, ...] = IDLE_METRICS if sc.idle else THROUGHPUT_METRICS
            summed: tuple[str, ...] = ()
            if sc.transport == "udp":
                metrics, summed = UDP_METRICS, SUMMED_METRICS
            out.setdefault(sc.name, {})[server] = (
                {m: _median_or_none([r[m] for r in rows]) for m in metrics}
                | {m: sum(r[m] for r in rows) for m in summed}
                | {"runs": len(rows), "connections": rows[0]["connections"]}
            )
    return out


# What a --quick run says of every target it measured: one run of half a
# second is a smoke test, too short and too noisy to meet or miss anything.
QUICK_STATUS = "not judged (--quick)"


def evaluate(
    records: list[dict[str, Any]], runs: int, judged: bool = True
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The targets and the informative ratios. A target measured has
    ``met`` (whether the median meets its bound) and a ``status``: "met" or
    "missed" when ``judged``, QUICK_STATUS otherwise."""
    targets = []
    for t in TARGETS:
        value, per_run = _median_ratio(records, runs, t.num, t.den)
        entry: dict[str, Any] = {
            "name": t.name,
            "op": t.op,
            "bound": t.bound,
            "value": value,
            "per_run": per_run,
            "ratio": t.den is not None,
        }
        if value is None:
            entry["status"] = "not measured"
        elif t.num[1] == "idle" and any(
            r["connections"] < IDLE_TARGET_CONNECTIONS
            for r in records
            if r["scenario"] == "idle" and r["server"] == t.num[0]
        ):
            entry["status"] = f"not evaluated (fewer than {IDLE_TARGET_CONNECTIONS:,} held)"
        else:
            entry["met"] = t.met(value)
            entry["status"] = ("met" if entry["met"] else "missed") if judged else QUICK_STATUS
        targets.append(entry)
    info = []
    for name, num, den in (*INFO_RATIOS, *_variant_ratios(records)):
        value, per_run = _median_ratio(records, runs, num, den)
        if value is not None:
            info.append({"name": name, "value": value, "per_run": per_run})
    return targets, info


def _variant_ratios(
    records: list[dict[str, Any]],
) -> list[tuple[str, tuple[str, str, str], tuple[str, str, str]]]:
    """What each native variant (another poller backend, say) costs against
    the default build and the floor, same run, in every scenario it ran."""
    out = []
    for variant in (s for s in _servers_of(records) if s.startswith(VARIANT_PREFIX)):
        for sc in SCENARIOS:
            if sc.idle or not any(
                r["server"] == variant and r["scenario"] == sc.name for r in records
            ):
                continue
            for metric, what in (
                ("cpu_us_per_rt", "CPU per round trip"),
                ("rt_per_s", "round trips/s"),
            ):
                for other in ("native", "floor"):
                    out.append(
                        (
                            f"{variant} {what} / {other}'s, {sc.name}",
                            (variant, sc.name, metric),
                            (other, sc.name, metric),
                        )
                    )
    return out


# ---- the machine -------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "pyecho": __version__,
    }
    try:
        import uvloop

        info["uvloop"] = str(getattr(uvloop, "__version__", "?"))
    except ImportError:
        info["uvloop"] = None
    try:
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / (1 << 20), 1)
    except (OSError, ValueError, IndexError):
        pass
    return info


def _loadavg() -> list[float]:
    try:
        return list(os.getloadavg())
    except OSError:
        return []


# ---- the command -------------------------------------------------------------------


def _csv(choices: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(bad)}; choose from {', '.join(choices)}"
            )
        return items

    return parse


def _names(text: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if not x.isidentifier()]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"not a name: {', '.join(bad) or repr(text)}")
    return items


def _label_path(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label.strip().isidentifier() or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH, got {text!r}")
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"no such library: {path}")
    return label.strip(), Path(path).resolve()


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line and exit status 2; --help shows the rest."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(prog: str = "native_vs_python.py") -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        description="Benchmark pyecho's native and Python engines against a C floor\n"
        "server, asyncio and uvloop, over TCP and UDP, with a C load generator that\n"
        "verifies every byte.",
        epilog="scenarios:\n"
        + "\n".join(f"  {s.name:<18}{s.label}" for s in SCENARIOS)
        + "\n\nOver UDP a round trip is one datagram echoed; docs/BENCHMARKS.md has the rest.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--duration",
        type=float,
        default=3.0,
        help="seconds measured per server and scenario (default 3)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=0.5,
        help="seconds of load before each measurement (default 0.5)",
    )
    p.add_argument(
        "--runs", type=int, default=5, help="runs; figures are medians over them (default 5)"
    )
    p.add_argument(
        "--servers",
        type=_csv(SERVERS),
        default=list(SERVERS),
        help=f"comma-separated subset of {','.join(SERVERS)}",
    )
    p.add_argument(
        "--scenarios",
        type=_csv(SCENARIO_NAMES),
        default=list(SCENARIO_NAMES),
        help="comma-separated subset of the scenarios below (default: all)",
    )
    p.add_argument(
        "--idle-connections",
        type=int,
        default=IDLE_TARGET_CONNECTIONS,
        help="connections held in the idle scenario (default 10000)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default bench-results/<timestamp>)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke mode: 1 run, 0.5 s per measurement, 1000 idle connections; "
        "too short to judge the targets, which it shows as not judged",
    )
    p.add_argument(
        "--host",
        default=HOST,
        help="numeric loopback address the servers listen on, IPv4 or IPv6 "
        "(default 127.0.0.1; ::1 measures IPv6)",
    )
    p.add_argument(
        "--poller",
        type=_names,
        default=[],
        metavar="NAME[,NAME]",
        help="also measure the native server on the C core built with "
        "-DPYECHO_POLLER=NAME (built from this source tree with cmake, cached): "
        "a row native-NAME beside native, e.g. --poller poll",
    )
    p.add_argument(
        "--native-library",
        action="append",
        type=_label_path,
        default=[],
        metavar="LABEL=PATH",
        help="also measure the native server on this build of the C core "
        "(libpyecho_core.so built from the same pyecho.h): a row native-LABEL; "
        "may be repeated",
    )
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    p.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's malloc thresholds alone in the Python servers "
        "(asyncio then runs in a slow mode at random; see docs/BENCHMARKS.md)",
    )
    return p


def _one_line(text: str) -> str:
    """An error for the progress lines: its last line (a server's traceback
    ends with what went wrong)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _describe(rec: dict[str, Any]) -> str:
    if "rss_per_conn_bytes" in rec and "rt_per_s" not in rec:
        return f"{rec['connections']:,} idle: {rec['rss_per_conn_bytes']:,.0f} B/conn, " + (
            "peak RSS n/a"
            if rec["peak_rss_bytes"] is None
            else f"peak RSS {rec['peak_rss_bytes'] / MiB:.1f} MiB"
        )
    text = (
        f"{rec['rt_per_s']:>12,.0f} rt/s {rec['mib_per_s']:>9,.1f} MiB/s  "
        f"CPU {rec['cpu_us_per_rt']:6.2f} us/rt  p99 {rec['lat_p99_us']:8.1f} us  "
        + (
            "other load n/a"
            if rec["other_cpu_cores"] is None
            else f"other load {rec['other_cpu_cores']:.2f} cores"
        )
    )
    if rec.get("transport") == "udp":
        text += f"  {rec['per_source_per_s']:,.0f}/s per socket"
        if rec["lost"]:
            text += f"  LOST {rec['lost']:,} datagrams ({rec['late']:,} came back late)"
        if rec["warmup_lost"]:
            text += f"  ({rec['warmup_lost']:,} lost in the warm-up)"
    return text


def loopback_problem(host: str) -> str | None:
    """Why the servers cannot listen on ``host`` (None: they can): it must be
    a numeric loopback address, so that the load never leaves this machine.
    Only parsed, never resolved nor sent anything."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return f"--host must be a numeric loopback address (127.0.0.1, ::1), not {host[:60]!r}"
    mapped = getattr(addr, "ipv4_mapped", None)
    if mapped is not None:
        return f"--host {host} is an IPv4-mapped address: give it as IPv4 ({mapped})"
    if not addr.is_loopback:
        return (
            f"--host {host} is not a loopback address: the benchmark loads its servers "
            "as hard as it can and must not leave this machine; use 127.0.0.1 (or any "
            "127.x.x.x) or ::1"
        )
    return None


def _listen_problem(host: str) -> str | None:
    """Why nothing can listen on ``host`` here (::1 without IPv6, say), found
    by binding a TCP and a UDP socket to a free port: nothing is sent."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        try:
            with socket.socket(family, kind) as sock:
                sock.bind(socket.getaddrinfo(host, 0, family, kind, 0, socket.AI_NUMERICHOST)[0][4])
        except OSError as e:
            return f"cannot listen on {show_host(host)}: {e.strerror or e}"
    return None


class _Usage(Exception):
    """Bad usage, found before anything started: one line, exit status 2."""


def main(argv: list[str] | None = None, prog: str = "native_vs_python.py") -> int:
    """Run the benchmark; returns the exit status (0: every measurement ran,
    1: some failed, 2: bad usage, nothing run). Errors are one line."""
    try:
        return _main(argv, prog)
    except _Usage as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None, prog: str) -> int:
    args = build_parser(prog).parse_args(argv)
    if args.quick:
        args.runs, args.duration, args.warmup = 1, 0.5, 0.1
        if args.idle_connections == IDLE_TARGET_CONNECTIONS:
            args.idle_connections = 1000
    if (
        args.runs < 1
        or not (math.isfinite(args.duration) and args.duration > 0)
        or not (math.isfinite(args.warmup) and args.warmup >= 0)
        or args.idle_connections < 1
    ):
        raise _Usage("--runs, --duration and --idle-connections must be positive")
    problem = loopback_problem(args.host) or _listen_problem(args.host)
    if problem:
        raise _Usage(problem)
    scenarios = [s for s in SCENARIOS if s.name in args.scenarios]
    try:
        load_loadgen()  # the C load generator, the benchmark's own library
        _native.load()  # the C core: the native rows
    except _native.NativeUnavailableError as e:  # says what to do, from a checkout too
        raise _Usage(str(e)) from None

    limit = raise_nofile_limit()
    if "idle" in args.scenarios and limit < args.idle_connections + 256:
        raise _Usage(
            f"holding {args.idle_connections:,} idle connections needs about "
            f"{args.idle_connections + 256:,} open files here and as many in the server, "
            f"but the limit is {limit:,} (ulimit -Hn). Raise it, or pass a smaller "
            "--idle-connections."
        )
    out_dir: Path = args.out or Path("bench-results") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _Usage(f"cannot create the output folder {out_dir}: {e.strerror or e}") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise _Usage(f"cannot write in the output folder {out_dir}: permission denied")

    transports = [t for t in TRANSPORTS if any(sc.transport == t for sc in scenarios)]
    serves: set[tuple[str, str]] = set()  # (server, transport) that can run here
    skipped: dict[str, str] = {}
    for name in args.servers:
        why = {t: unavailable_reason(name, t) for t in transports}
        serves |= {(name, t) for t in transports if why[t] is None}
        for t in transports:
            if why[t] is not None:
                key = name if all(why.values()) else f"{name} ({t.upper()})"
                skipped[key] = why[t]  # type: ignore[assignment]
    # Native variants: the native server on another build of the core.
    libraries: dict[str, Path] = {}
    descriptions = {s: DESCRIPTIONS[s] for s in SERVERS}
    for label, path in args.native_library:
        libraries[VARIANT_PREFIX + label] = path
        descriptions[VARIANT_PREFIX + label] = f"{DESCRIPTIONS['native']}, on the core {path}"
    for poller in args.poller:
        name = VARIANT_PREFIX + poller
        _progress(f"building the C core with -DPYECHO_POLLER={poller} (cached) ...")
        try:
            libraries[name] = core_with_poller(poller)
        except ServerUnavailable as e:
            skipped[name] = str(e)
            _progress(f"skipping {name}: {e}")
            continue
        descriptions[name] = (
            f"{DESCRIPTIONS['native']}, on the core built with -DPYECHO_POLLER={poller}"
        )
    for name in libraries:
        serves |= {(name, t) for t in transports if unavailable_reason("native", t) is None}
    for key, reason in skipped.items():
        if not key.startswith(VARIANT_PREFIX):
            _progress(f"skipping {key}: {reason}")
    # Each variant beside native (or last, when native itself is not measured).
    order = [
        s for name in args.servers for s in ([name, *libraries] if name == "native" else [name])
    ]
    order += [s for s in libraries if s not in order]
    servers = [s for s in order if any((s, t) in serves for t in transports)]
    if not servers:
        raise _Usage("no server can run here")

    def runs_here(server: str, sc: Scenario) -> bool:
        return (server, sc.transport) in serves and (
            sc.transport == "udp" or sc.mode in SERVER_MODES[base_server(server)]
        )

    given = list(argv if argv is not None else sys.argv[1:])
    launcher = f"python benchmarks/{prog}" if prog.endswith(".py") else prog
    command = " ".join([launcher, *([shlex.join(given)] if given else [])])

    plan = [(sc, s) for sc in scenarios for s in servers if runs_here(s, sc)]
    total = len(plan) * args.runs
    _progress(
        f"pyecho bench: {args.runs} run(s) x {len(plan)} measurements, "
        f"{args.duration:g} s each; servers {', '.join(servers)} on "
        f"{show_host(args.host)}; results in {out_dir}"
    )
    started = time.monotonic()
    load_start = _loadavg()
    records: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    done = 0
    for run in range(args.runs):
        for sc in scenarios:
            # Rotate the order each run so no server always goes first.
            order = [s for s in servers if runs_here(s, sc)]
            if not order:
                continue
            shift = run % len(order)
            for server in order[shift:] + order[:shift]:
                done += 1
                head = f"[{done:>3}/{total}] run {run + 1} {sc.name:<13} {server:<8}"
                try:
                    rec = measure(
                        server,
                        sc,
                        args.duration,
                        args.warmup,
                        args.idle_connections,
                        not args.default_malloc,
                        args.host,
                        libraries.get(server),
                    )
                except (LoadGenError, RuntimeError, OSError) as e:
                    errors.append(
                        {"run": run, "scenario": sc.name, "server": server, "error": str(e)}
                    )
                    _progress(f"{head} ERROR: {_one_line(str(e))}")
                    continue
                rec.update(run=run, scenario=sc.name, server=server)
                records.append(rec)
                _progress(f"{head} {_describe(rec)}")

    summary = summarize(records)
    targets, info = evaluate(records, args.runs, judged=not args.quick)
    result = {
        "command": command,
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "loadavg_start": load_start,
        "loadavg_end": _loadavg(),
        "wall_seconds": round(time.monotonic() - started, 1),
        "options": {
            "runs": args.runs,
            "duration": args.duration,
            "warmup": args.warmup,
            "idle_connections": args.idle_connections,
            "quick": args.quick,
            "host": args.host,
            "server_env": {} if args.default_malloc else STEADY_MALLOC_ENV,
            "udp_rate_limits": UDP_RATE,
            "native_libraries": {name: str(path) for name, path in libraries.items()},
        },
        "servers": {s: descriptions[s] for s in servers},
        "skipped": skipped,
        "scenarios": [asdict(s) for s in scenarios],
        "summary": summary,
        "targets": targets,
        "ratios": info,
        "records": records,
        "errors": errors,
    }
    json_path = out_dir / "results.json"
    md_path = out_dir / "results.md"
    png_path = out_dir / "native_vs_python.png"
    png_note = None
    try:
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        if not args.no_plot:
            png_note = plot(result, png_path)
            if png_note:
                _progress(f"no plot: {png_note}")
        md_path.write_text(
            render_markdown(
                result, png_path.name if png_note is None and not args.no_plot else None
            )
        )
    except OSError as e:  # the disk filled up meanwhile, say
        print(render_table(result))
        print(f"{prog}: error: cannot write the results in {out_dir}: {e}", file=sys.stderr)
        return 1
    print(render_table(result))
    print(
        f"\nwrote {json_path}, {md_path}"
        + (f", {png_path}" if png_note is None and not args.no_plot else "")
    )
    if errors:
        print(f"{len(errors)} measurement(s) failed: see 'errors' in {json_path}", file=sys.stderr)
        return 1
    return 0
