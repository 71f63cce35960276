"""Human units for the command line: 50ms, 1.5s, 64KiB, 1MB/s, 10%.

One parser for every size, rate, time and chance a user types, and one
formatter to show them back (the serve banner). The API takes plain numbers
(bytes, bytes per second, seconds, 0 to 1); only text is parsed here.
"""

from __future__ import annotations

import re
from fractions import Fraction

# Decimal (SI) and binary (IEC) multiples of a byte. Case matters: "Mb" would
# be megabits, which nothing here counts in.
SIZE_UNITS = {
    "": 1,
    "B": 1,
    "kB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "TiB": 1 << 40,
}
TIME_UNITS = {
    "": Fraction(1),
    "s": Fraction(1),
    "ms": Fraction(1, 1000),
    "m": Fraction(60),
    "h": Fraction(3600),
}

# What each kind accepts, said once (in --help) and in every error.
FORMS = {
    "bytes": "a size such as 1000, 64KiB, 1MiB or 64kB (a plain number is bytes)",
    "rate": "a rate such as 1000, 64KiB or 1MB/s (bytes per second)",
    "seconds": "a time such as 30, 1.5s, 50ms or 2m (a plain number is seconds)",
    "probability": "a chance such as 0.1 or 10%",
    "count": "a whole number",
}
HELP = (
    "Sizes: 1000 (bytes), 64kB (x1000), 64KiB or 1MiB (x1024). Rates: a size per "
    "second, /s optional (64KiB, 1MB/s). Times: 30 (seconds), 1.5s, 50ms, 2m, 1h. "
    "Chances: 0.1 or 10%."
)

_UNITS: dict[str, dict[str, int] | dict[str, Fraction]] = {
    "bytes": SIZE_UNITS,
    "rate": SIZE_UNITS,
    "seconds": TIME_UNITS,
    "probability": {"": Fraction(1), "%": Fraction(1, 100)},
}
_QUANTITY = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*([A-Za-z%]*)\s*\Z")
_INTEGER = re.compile(r"\s*([+-]?\d+)\s*\Z")

# Numbers with more digits before the point than this are read as 10**(digits-1):
# far out of every setting's bounds either way, and Python refuses to read an
# int of more than 4300 digits (sys.get_int_max_str_digits()).
_MAX_DIGITS = 1000


def _huge(number: str) -> int | None:
    """A number of more than _MAX_DIGITS whole digits as a power of ten of as
    many digits (only its size matters: it is out of bounds); None for any other."""
    whole = number.lstrip("+-").split(".")[0].lstrip("0")
    if len(whole) <= _MAX_DIGITS:
        return None
    power: int = 10 ** (len(whole) - 1)
    return -power if number.startswith("-") else power


def _exact(number: str) -> Fraction:
    """A decimal number exactly, its zeros that say nothing (leading, and
    trailing after the point) left out: Python reads at most 4300 digits."""
    sign = "-" if number.startswith("-") else ""
    whole, _, decimals = number.lstrip("+-").partition(".")
    return Fraction(f"{sign}{whole.lstrip('0') or '0'}.{decimals.rstrip('0') or '0'}")


def parse(kind: str, text: str) -> int | float:
    """The number a user's text means for a setting of this kind (see
    FORMS), or ValueError saying what was expected. Bounds are the
    setting's to check: a time or chance too large for a float comes back as
    an int (exact, or a power of ten for more than _MAX_DIGITS digits), so
    that the check says it is out of bounds."""
    if kind == "count":
        match = _INTEGER.match(text)
        huge = None if match is None else _huge(match.group(1))
        if huge is not None:
            return huge
        try:
            return int(text, 10)
        except ValueError:
            raise ValueError(FORMS[kind]) from None
    body = text[:-2] if kind == "rate" and text.endswith("/s") else text
    match = _QUANTITY.match(body)
    units = _UNITS[kind]
    if match is None or match.group(2) not in units:
        raise ValueError(FORMS[kind])
    if len(match.group(1).partition(".")[2].rstrip("0")) > _MAX_DIGITS:
        raise ValueError(f"{FORMS[kind]}, with at most {_MAX_DIGITS} digits after the point")
    huge = _huge(match.group(1))
    value = (_exact(match.group(1)) if huge is None else Fraction(huge)) * units[match.group(2)]
    if kind in ("bytes", "rate"):
        if value.denominator != 1:
            raise ValueError(f"a whole number of bytes{'/s' * (kind == 'rate')}")
        return int(value)
    try:
        return float(value)
    except OverflowError:  # past 1.8e308: out of bounds, and shown so
        return int(value)


def format_size(n: int) -> str:
    """64 KiB or 1 MiB, 64 kB from 10 kB on, when exact; else bytes."""
    for unit in ("TiB", "GiB", "MiB", "KiB", "TB", "GB", "MB", "kB"):
        size = SIZE_UNITS[unit]
        if n >= (size if "i" in unit else max(size, 10_000)) and n % size == 0:
            return f"{n // SIZE_UNITS[unit]} {unit}"
    return f"{n} byte{'s' * (n != 1)}"


def format_time(seconds: float) -> str:
    """50ms under a second (the engines count whole milliseconds), else 1.5s."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    return f"{seconds:g}s"


def format_chance(p: float) -> str:
    return f"{p * 100:g}%"
