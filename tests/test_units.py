"""Human units (pyecho/_units.py): what a user types for sizes, rates, times
and chances, and how the banner shows them back."""

from __future__ import annotations

import pytest

from pyecho import _units

PARSED = [
    ("bytes", "1000", 1000),
    ("bytes", "0", 0),
    ("bytes", "-1", -1),  # bounds are the setting's to check, with its message
    ("bytes", "64KiB", 65536),
    ("bytes", "64 KiB", 65536),
    ("bytes", "1MiB", 1 << 20),
    ("bytes", "1.5MiB", 3 << 19),
    ("bytes", "2GiB", 2 << 30),
    ("bytes", "1TiB", 1 << 40),
    ("bytes", "64kB", 64000),
    ("bytes", "1.5kB", 1500),
    ("bytes", "3MB", 3_000_000),
    ("bytes", "1GB", 10**9),
    ("bytes", "2TB", 2 * 10**12),
    ("bytes", "7B", 7),
    ("rate", "65536", 65536),
    ("rate", "64KiB", 65536),
    ("rate", "64KiB/s", 65536),
    ("rate", "1MB/s", 10**6),
    ("rate", "100/s", 100),
    ("rate", "10B/s", 10),
    ("seconds", "30", 30.0),
    ("seconds", "0.5", 0.5),
    ("seconds", ".25", 0.25),
    ("seconds", "1.5s", 1.5),
    ("seconds", "50ms", 0.05),
    ("seconds", "70ms", 0.07),
    ("seconds", "2m", 120.0),
    ("seconds", "1h", 3600.0),
    ("seconds", "0", 0.0),
    ("probability", "0.1", 0.1),
    ("probability", "1", 1.0),
    ("probability", "10%", 0.1),
    ("probability", "0.5%", 0.005),
    ("count", "7", 7),
    ("count", "-3", -3),
]


@pytest.mark.parametrize("kind, text, value", PARSED)
def test_parse(kind: str, text: str, value: float) -> None:
    got = _units.parse(kind, text)
    assert got == value
    assert type(got) is (float if kind in ("seconds", "probability") else int)


REFUSED = [
    ("bytes", "", _units.FORMS["bytes"]),
    ("bytes", "abc", _units.FORMS["bytes"]),
    ("bytes", "1e3", _units.FORMS["bytes"]),
    ("bytes", "64Kb", _units.FORMS["bytes"]),  # bits are not bytes
    ("bytes", "64kib", _units.FORMS["bytes"]),
    ("bytes", "64KB", _units.FORMS["bytes"]),  # 1000 or 1024? kB or KiB says
    ("bytes", "64KiB/s", _units.FORMS["bytes"]),  # a size is not a rate
    ("bytes", "1.5", "a whole number of bytes"),
    ("bytes", "1.0001kB", "a whole number of bytes"),
    ("rate", "1.5/s", "a whole number of bytes/s"),
    ("rate", "64KiB/m", _units.FORMS["rate"]),
    ("seconds", "soon", _units.FORMS["seconds"]),
    ("seconds", "5 min", _units.FORMS["seconds"]),
    ("seconds", "inf", _units.FORMS["seconds"]),
    ("seconds", "50MS", _units.FORMS["seconds"]),
    ("seconds", "1s5", _units.FORMS["seconds"]),
    ("probability", "1/2", _units.FORMS["probability"]),
    ("probability", "10 pct", _units.FORMS["probability"]),
    ("count", "1e3", _units.FORMS["count"]),
    ("count", "7k", _units.FORMS["count"]),
]


@pytest.mark.parametrize("kind, text, reason", REFUSED)
def test_parse_refuses_saying_what_it_expected(kind: str, text: str, reason: str) -> None:
    with pytest.raises(ValueError) as e:
        _units.parse(kind, text)
    assert str(e.value) == reason


@pytest.mark.parametrize(
    "n, shown",
    [
        (0, "0 bytes"),
        (1, "1 byte"),
        (1000, "1000 bytes"),  # small decimal numbers stay as typed
        (1500, "1500 bytes"),
        (1024, "1 KiB"),
        (65536, "64 KiB"),
        (64000, "64 kB"),
        (10**6, "1 MB"),
        (1 << 20, "1 MiB"),
        (3 << 19, "1536 KiB"),
        (65537, "65537 bytes"),
    ],
)
def test_format_size(n: int, shown: str) -> None:
    assert _units.format_size(n) == shown
    number, unit = shown.split()
    assert _units.parse("bytes", number + unit.replace("bytes", "").replace("byte", "")) == n


@pytest.mark.parametrize(
    "seconds, shown", [(0.0, "0ms"), (0.001, "1ms"), (0.05, "50ms"), (1.0, "1s"), (1.5, "1.5s")]
)
def test_format_time(seconds: float, shown: str) -> None:
    assert _units.format_time(seconds) == shown
    assert _units.parse("seconds", shown) == seconds


def test_format_chance() -> None:
    assert _units.format_chance(0.1) == "10%"
    assert _units.parse("probability", "10%") == 0.1


@pytest.mark.parametrize(
    "kind, text, value",
    [
        ("seconds", "1" + "0" * 309, 10**309),  # past the largest float: exact, an int
        ("seconds", "-1" + "0" * 309 + "s", -(10**309)),
        ("probability", "1" + "0" * 312 + "%", 10**310),
        ("seconds", "0" * 5000 + "1.5" + "0" * 5000, 1.5),  # zeros that say nothing
        ("seconds", "2" + "0" * 400 + "h", 2 * 10**400 * 3600),
        # more digits than Python reads into an int: a power of ten as long
        ("count", "9" * 5000, 10**4999),
        ("count", "-" + "9" * 5000, -(10**4999)),
        ("bytes", "9" * 5000 + "KiB", 10**4999 * 1024),
        ("seconds", "9" * 5000 + ".5ms", 10**4996),
    ],
    ids=lambda v: str(v)[:12] if isinstance(v, str) else "",
)
def test_parse_huge_numbers_for_the_bounds_check(kind: str, text: str, value: float) -> None:
    """Numbers no float holds come back as ints (the setting's check then
    says they are out of its range), never an OverflowError."""
    assert _units.parse(kind, text) == value


def test_parse_refuses_endless_decimals() -> None:
    with pytest.raises(ValueError) as e:
        _units.parse("seconds", "1." + "3" * 1001)
    assert str(e.value) == _units.FORMS["seconds"] + ", with at most 1000 digits after the point"
    assert _units.parse("seconds", "1.5" + "0" * 5000) == 1.5  # trailing zeros say nothing
