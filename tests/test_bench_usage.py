"""`pyecho bench` refuses bad usage in one line, exit status 2, before
anything starts: no server, no load, no output folder. Nothing here sends
traffic: a --host that is not loopback is refused by parsing it alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pyecho import cli
from pyecho.bench import runner


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the benchmark gets as far as a server or the load."""

    def started(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the benchmark started although its usage was bad")

    monkeypatch.setattr(runner, "unavailable_reason", started)
    monkeypatch.setattr(runner, "ServerProcess", started)
    monkeypatch.setattr(runner, "LoadGen", started)


def bench(argv: list[str]) -> int:
    """`pyecho bench argv`'s exit status (argparse's errors exit)."""
    try:
        return cli.main(["bench", *argv])
    except SystemExit as e:
        return int(e.code or 0)


NOT_LOOPBACK = [
    ("192.0.2.1", "is not a loopback address"),  # TEST-NET-1: never routed
    ("2001:db8::1", "is not a loopback address"),  # the documentation prefix
    ("0.0.0.0", "is not a loopback address"),
    ("::", "is not a loopback address"),
    ("fe80::1%lo", "is not a loopback address"),
    ("::ffff:127.0.0.1", "is an IPv4-mapped address: give it as IPv4 (127.0.0.1)"),
    ("localhost", "must be a numeric loopback address (127.0.0.1, ::1), not 'localhost'"),
    ("", "must be a numeric loopback address (127.0.0.1, ::1), not ''"),
    ("x" * 100, "must be a numeric loopback address (127.0.0.1, ::1), not 'xxxxx"),
]


@pytest.mark.parametrize("host, message", NOT_LOOPBACK, ids=[h[:20] for h, _ in NOT_LOOPBACK])
def test_host_must_be_loopback(
    host: str,
    message: str,
    tmp_path: Path,
    nothing_starts: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "results"
    assert bench(["--quick", "--host", host, "--out", str(out)]) == 2
    stdout, stderr = capsys.readouterr()
    assert stdout == ""
    assert stderr.startswith("pyecho bench: error: --host ")
    assert message in stderr and stderr.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1"])
def test_loopback_hosts_are_taken(host: str) -> None:
    assert runner.loopback_problem(host) is None


@pytest.mark.parametrize(
    "argv, message",
    [
        # Past the checks that the C core and the load generator are built.
        pytest.param(
            ["--out", "/proc/nope"],
            "cannot create the output folder /proc/nope: ",
            marks=pytest.mark.native,
        ),
        pytest.param(
            ["--out", "/dev/null"],
            "cannot create the output folder /dev/null: File exists",
            marks=pytest.mark.native,
        ),
        (["--duration", "nan"], "--runs, --duration and --idle-connections must be positive"),
        (["--warmup", "inf"], "--runs, --duration and --idle-connections must be positive"),
        (["--runs", "0"], "--runs, --duration and --idle-connections must be positive"),
        (["--runs", "x"], "argument --runs: invalid int value: 'x'"),
        (["--servers", "nginx"], "argument --servers: unknown nginx; choose from"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)
def test_bad_usage_is_one_line(
    argv: list[str], message: str, nothing_starts: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench(["--scenarios", "c1-64B", *argv]) == 2
    stdout, stderr = capsys.readouterr()
    assert stdout == ""
    assert stderr.startswith("pyecho bench: error: ") and stderr.count("\n") == 1
    assert message in stderr
