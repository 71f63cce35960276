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
import json
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
from typing import Any

from .. import __version__, _native
from .loadgen import LoadGen, LoadGenError
from .report import plot, render_markdown, render_table
from .serve import UDP_RATE, raise_nofile_limit
from .servers import (
    CLK_TCK,
    DESCRIPTIONS,
    SERVER_MODES,
    SERVERS,
    STEADY_MALLOC_ENV,
    TRANSPORTS,
    ServerProcess,
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


TARGETS = (
    Target(
        "native CPU per round trip / floor's, 50 x 64 B",
        ("native", "c50-64B", "cpu_us_per_rt"),
        ("floor", "c50-64B", "cpu_us_per_rt"),
        "<=",
        1.10,
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
    # UDP (issue 10): datagrams/s against the floor and uvloop, in both scenarios.
    *(
        Target(
            f"UDP native datagrams/s / {other}'s, {UDP_LABELS[sc]}",
            ("native", sc, "rt_per_s"),
            (other, sc, "rt_per_s"),
            ">=",
            bound,
        )
        for sc in UDP_SCENARIOS
        for other, bound in (("floor", 0.85), ("uvloop", 2.0))
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


def _busy_cpu_seconds() -> float:
    """CPU time every CPU of the machine spent busy so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
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
) -> dict[str, Any]:
    """Start ``server`` afresh, drive ``sc`` against it, return its figures."""
    with ServerProcess(
        server, sc.mode, transport=sc.transport, host=host, steady_malloc=steady_malloc
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
                other_cpu_cores=max(0.0, (busy1 - busy0) - cpu - loadgen_cpu) / res.seconds,
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


def summarize(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """{scenario: {server: {metric: median over runs}}}."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for sc in SCENARIOS:
        for server in SERVERS:
            rows = [r for r in records if r["scenario"] == sc.name and r["server"] == server]
            if not rows:
                continue
            metrics: tuple[str, ...] = IDLE_METRICS if sc.idle else THROUGHPUT_METRICS
            summed: tuple[str, ...] = ()
            if sc.transport == "udp":
                metrics, summed = UDP_METRICS, SUMMED_METRICS
            out.setdefault(sc.name, {})[server] = (
                {m: statistics.median(r[m] for r in rows) for m in metrics}
                | {m: sum(r[m] for r in rows) for m in summed}
                | {"runs": len(rows), "connections": rows[0]["connections"]}
            )
    return out


def evaluate(
    records: list[dict[str, Any]], runs: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
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
            entry["status"] = "met" if t.met(value) else "missed"
        targets.append(entry)
    info = []
    for name, num, den in INFO_RATIOS:
        value, per_run = _median_ratio(records, runs, num, den)
        if value is not None:
            info.append({"name": name, "value": value, "per_run": per_run})
    return targets, info


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


def build_parser(prog: str = "native_vs_python.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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
        help="smoke mode: 1 run, 0.5 s per measurement, 1000 idle connections",
    )
    p.add_argument(
        "--host",
        default=HOST,
        help="numeric loopback address the servers listen on, IPv4 or IPv6 "
        "(default 127.0.0.1; ::1 measures IPv6)",
    )
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot")
    p.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's malloc thresholds alone in the Python servers "
        "(asyncio then runs in a slow mode at random; see docs/BENCHMARKS.md)",
    )
    return p


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _describe(rec: dict[str, Any]) -> str:
    if "rss_per_conn_bytes" in rec and "rt_per_s" not in rec:
        return (
            f"{rec['connections']:,} idle: {rec['rss_per_conn_bytes']:,.0f} B/conn, "
            f"peak RSS {rec['peak_rss_bytes'] / MiB:.1f} MiB"
        )
    text = (
        f"{rec['rt_per_s']:>12,.0f} rt/s {rec['mib_per_s']:>9,.1f} MiB/s  "
        f"CPU {rec['cpu_us_per_rt']:6.2f} us/rt  p99 {rec['lat_p99_us']:8.1f} us  "
        f"other load {rec['other_cpu_cores']:.2f} cores"
    )
    if rec.get("transport") == "udp":
        text += f"  {rec['per_source_per_s']:,.0f}/s per socket"
        if rec["lost"]:
            text += f"  LOST {rec['lost']:,} datagrams ({rec['late']:,} came back late)"
        if rec["warmup_lost"]:
            text += f"  ({rec['warmup_lost']:,} lost in the warm-up)"
    return text


def _valid_host(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host.split("%", 1)[0])
            return True
        except OSError:
            pass
    return False


def main(argv: list[str] | None = None, prog: str = "native_vs_python.py") -> int:
    """Run the benchmark; returns the exit status (0: every measurement ran)."""
    args = build_parser(prog).parse_args(argv)
    if args.quick:
        args.runs, args.duration, args.warmup = 1, 0.5, 0.1
        if args.idle_connections == IDLE_TARGET_CONNECTIONS:
            args.idle_connections = 1000
    if args.runs < 1 or args.duration <= 0 or args.warmup < 0 or args.idle_connections < 1:
        print("error: --runs, --duration and --idle-connections must be positive", file=sys.stderr)
        return 2
    if not _valid_host(args.host):
        print(f"error: --host must be a numeric IP address, not {args.host!r}", file=sys.stderr)
        return 2
    scenarios = [s for s in SCENARIOS if s.name in args.scenarios]
    try:
        _native.load()  # the load generator is in the C core
    except _native.NativeUnavailableError as e:  # says what to do, from a checkout too
        print(f"error: {e}", file=sys.stderr)
        return 2

    limit = raise_nofile_limit()
    if "idle" in args.scenarios and limit < args.idle_connections + 256:
        print(
            f"error: holding {args.idle_connections:,} idle connections needs about "
            f"{args.idle_connections + 256:,} open files here and as many in the server, "
            f"but the limit is {limit:,} (ulimit -Hn). Raise it, or pass a smaller "
            "--idle-connections.",
            file=sys.stderr,
        )
        return 2

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
    for key, reason in skipped.items():
        _progress(f"skipping {key}: {reason}")
    servers = [s for s in args.servers if any((s, t) in serves for t in transports)]
    if not servers:
        print("error: no server can run here", file=sys.stderr)
        return 2

    def runs_here(server: str, sc: Scenario) -> bool:
        return (server, sc.transport) in serves and (
            sc.transport == "udp" or sc.mode in SERVER_MODES[server]
        )

    out_dir: Path = args.out or Path("bench-results") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
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
                    )
                except (LoadGenError, RuntimeError, OSError) as e:
                    errors.append(
                        {"run": run, "scenario": sc.name, "server": server, "error": str(e)}
                    )
                    _progress(f"{head} ERROR: {e}")
                    continue
                rec.update(run=run, scenario=sc.name, server=server)
                records.append(rec)
                _progress(f"{head} {_describe(rec)}")

    summary = summarize(records)
    targets, info = evaluate(records, args.runs)
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
        },
        "servers": {s: DESCRIPTIONS[s] for s in servers},
        "skipped": skipped,
        "scenarios": [asdict(s) for s in scenarios],
        "summary": summary,
        "targets": targets,
        "ratios": info,
        "records": records,
        "errors": errors,
    }
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path = out_dir / "results.md"
    png_path = out_dir / "native_vs_python.png"
    png_note = None
    if not args.no_plot:
        png_note = plot(result, png_path)
        if png_note:
            _progress(f"no plot: {png_note}")
    md_path.write_text(
        render_markdown(result, png_path.name if png_note is None and not args.no_plot else None)
    )
    print(render_table(result))
    print(
        f"\nwrote {json_path}, {md_path}"
        + (f", {png_path}" if png_note is None and not args.no_plot else "")
    )
    if errors:
        print(f"{len(errors)} measurement(s) failed: see 'errors' in {json_path}", file=sys.stderr)
        return 1
    return 0
