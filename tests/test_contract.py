"""One contract: every setting is defined once (pyecho/_config.py's Config)
and everything else agrees with it: the C core's defaults and bounds, the
API's keywords, the command line's options, and the engines' interface."""

from __future__ import annotations

import errno
import inspect
import socket
from pathlib import Path
from typing import Any

import pytest

import pyecho
from pyecho import _engine, _native, _tlscli, cli
from pyecho._config import (
    DEFAULTS,
    RESOLUTION,
    SETTING,
    SETTINGS,
    TIMEOUT,
    Config,
    Setting,
    make_config,
    settings_for,
)
from pyecho._faults import FAULTS

NUMERIC = [s for s in SETTINGS if s.kind in ("count", "bytes", "seconds")]


def c_config(**fields: Any) -> tuple[Any, Any]:
    """A C echo_config holding the defaults, then the given C fields."""
    ffi, lib = _native.load()
    c = ffi.new("echo_config *")
    lib.echo_config_default(c)
    for name, value in fields.items():
        setattr(c, name, value)
    return c, lib


def c_accepts(**fields: Any) -> bool:
    """Whether echo_config_check() takes these C fields; a value the C type
    cannot hold counts as refused."""
    try:
        c, lib = c_config(**fields)
    except OverflowError:
        return False
    rc = lib.echo_config_check(c)
    assert rc in (0, -errno.EINVAL)
    return rc == 0


@pytest.mark.native
def test_c_defaults_are_the_tables() -> None:
    c, _ = c_config()
    assert _native.config_from_c(c) == Config() == make_config()


def test_every_setting_reaches_the_c_core() -> None:
    """A setting missing from _native.C_FIELDS would never reach the C engine."""
    assert set(_native.C_FIELDS) | {"quit_word"} == {s.name for s in SETTINGS}


@pytest.mark.native
def test_every_c_field_is_a_setting() -> None:
    """A field added to echo_config is noticed here, unpinned no more."""
    ffi, _ = _native.load()
    c_fields = {name for name, _ in ffi.typeof("echo_config").fields}
    mapped = {cf.name for cf in _native.C_FIELDS.values()} | {"quit_word", "quit_len"}
    assert mapped == c_fields


def where_it_applies(s: Setting) -> dict[str, str]:
    """The transport to give with a setting so that it applies."""
    return {} if "tcp" in s.transports else {"transport": s.transports[0]}


@pytest.mark.native
def test_a_non_default_config_reaches_the_c_core_whole() -> None:
    cfg = make_config(
        mode="line",
        quit_word=b"bye",
        bufsize=7,
        max_line=100,
        max_pending=1000,
        max_clients=3,
        idle_timeout=1.5,
        backlog=5,
    )
    assert _native.config_from_c(_native._CConfig(cfg).struct) == cfg


def bound_cases() -> list[Any]:
    return [
        pytest.param(s, where, id=f"{s.name}-{where}")
        for s in NUMERIC
        for where in ("lower", "upper", "below", "above")
    ]


@pytest.mark.native
@pytest.mark.parametrize("setting, where", bound_cases())
def test_c_bounds_are_the_tables(setting: Setting, where: str) -> None:
    """echo_config_check() takes each bound and refuses one past it, in the
    C field's own unit (milliseconds for seconds), as make_config() does."""
    cf = _native.C_FIELDS[setting.name]
    step = 1 if where == "above" else -1 if where == "below" else 0
    bound = setting.upper if where in ("upper", "above") else setting.lower
    value = cf.to_c(bound) + step
    ok = where in ("lower", "upper")
    assert c_accepts(**{cf.name: value}) is ok
    python_value = cf.from_c(value)
    given = {setting.name: python_value, **where_it_applies(setting)}
    if ok:
        assert make_config(**given) is not None
    else:
        with pytest.raises(ValueError, match=setting.name):
            make_config(**given)


@pytest.mark.native
@pytest.mark.parametrize("name", ["transport", "mode"])
def test_c_choice_bounds_are_the_tables(name: str) -> None:
    choices = SETTING[name].choices
    assert [c_accepts(**{name: i}) for i in range(-1, len(choices) + 1)] == [
        False,
        *[True] * len(choices),
        False,
    ]


@pytest.mark.native
def test_c_flag_bounds_are_the_tables() -> None:
    assert [c_accepts(udp_guard=i) for i in (-1, 0, 1, 2)] == [False, True, True, False]


@pytest.mark.native
def test_c_quit_word_bounds_are_the_tables() -> None:
    ffi, _ = _native.load()
    word = ffi.new("uint8_t[]", 256)
    upper = int(pyecho._config.SETTING["quit_word"].upper)
    assert c_accepts(quit_word=ffi.NULL, quit_len=0)  # None: no quit word
    assert not c_accepts(quit_word=ffi.NULL, quit_len=1)
    assert not c_accepts(quit_word=word, quit_len=0)
    assert c_accepts(quit_word=word, quit_len=1)
    assert c_accepts(quit_word=word, quit_len=upper)
    assert not c_accepts(quit_word=word, quit_len=upper + 1)
    make_config(quit_word=b"x" * upper)
    with pytest.raises(ValueError, match="quit_word"):
        make_config(quit_word=b"x" * (upper + 1))


def test_make_config_is_keyword_only_and_names_what_is_wrong() -> None:
    with pytest.raises(TypeError):
        make_config("line")  # type: ignore[misc]
    with pytest.raises(TypeError, match="unknown setting 'bufsiz'"):
        make_config(bufsiz=10)
    for s in NUMERIC:
        with pytest.raises(ValueError, match=f"^{s.name} must be"):
            make_config(**{s.name: -1})


@pytest.mark.parametrize(
    "cls, side", [(pyecho.EchoServer, "server"), (pyecho.EchoClient, "client")]
)
def test_the_api_takes_the_tables_settings_with_its_defaults(cls: type, side: str) -> None:
    params = inspect.signature(cls).parameters
    wanted = [*settings_for(side), *([TIMEOUT] if side == "client" else [])]  # type: ignore[arg-type]
    taken = {name: p.default for name, p in params.items() if p.kind is p.KEYWORD_ONLY}
    taken.pop("engine")
    taken.pop("on_event", None)
    taken.pop("faults", None)
    # TLS has its own settings object (pyecho.TLS; a client's ssl.SSLContext).
    taken.pop("tls")
    taken.pop("server_hostname", None)
    assert taken == {s.name: s.default for s in wanted}


# A value other than the default for every setting, by transport.
NON_DEFAULT = {
    "tcp": {
        "mode": "raw",
        "quit_word": None,
        "bufsize": 5,
        "max_line": 50,
        "max_pending": 500,
        "max_clients": 4,
        "idle_timeout": 2.5,
        "backlog": 6,
    },
    "udp": {
        "max_pending": 500,
        "udp_guard": False,
        "udp_rate": 7,
        "udp_rate_per_source": 3,
        "udp_loop_limit": 9,
    },
}


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_the_api_passes_every_setting_on(engine: str, transport: str) -> None:
    """Each server setting given to EchoServer ends up in its Config; one
    that does not apply to the transport is refused."""
    settings = {"transport": transport, **NON_DEFAULT[transport]}
    assert set(settings) == {s.name for s in SETTINGS if transport in s.transports}
    assert all(getattr(DEFAULTS, k) != v for k, v in NON_DEFAULT[transport].items())
    with pyecho.EchoServer(("127.0.0.1", 0), engine=engine, **settings) as server:
        assert server.config == Config(**settings)
        client_settings = {
            s.name: settings[s.name] for s in settings_for("client") if s.name in settings
        }
        with pyecho.EchoClient(server.server_address, engine=engine, **client_settings) as c:
            assert c.config == Config(**client_settings)
    other = "udp" if transport == "tcp" else "tcp"
    for name, value in NON_DEFAULT[other].items():
        if transport not in SETTING[name].transports:
            with pytest.raises(ValueError, match=f"^{name} does not apply to {transport.upper()}"):
                pyecho.EchoServer(
                    ("127.0.0.1", 0), engine=engine, transport=transport, **{name: value}
                )


@pytest.mark.parametrize("command, side", [("serve", "server"), ("client", "client")])
def test_the_command_line_offers_every_setting_with_its_default(command: str, side: str) -> None:
    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    actions = {a.option_strings[0]: a for a in sub._actions if a.option_strings}
    wanted = [*settings_for(side), *([TIMEOUT] if side == "client" else [])]  # type: ignore[arg-type]
    for s in wanted:
        action = actions.pop(s.flag)
        assert action.dest == s.name
        assert action.default == s.default
        shown = ("on" if s.default else "off") if s.kind == "flag" else s.show(s.default)
        assert f"(default: {shown})" in (action.help or "")
        if s.off and s.off_value is None:  # None cannot be typed: a flag for it
            off = actions.pop(f"--no-{s.flag[2:]}")
            assert (off.dest, off.const, off.default) == (s.name, None, s.default)
    udp = actions.pop("--udp")
    assert (udp.dest, udp.const) == ("transport", "udp")
    for s in FAULTS if side == "server" else ():  # off by default: no --no- flags
        action = actions.pop(s.flag)
        assert (action.dest, action.default) == (s.name, s.default)
        shown = ("on" if s.default else "off") if s.kind == "flag" else s.show(s.default)
        assert f"(default: {shown})" in (action.help or "")
    tls = set(_tlscli.SERVE_FLAGS if side == "server" else _tlscli.CLIENT_FLAGS)
    assert set(actions) == {"-h", "--host", "--port", "--engine"} | tls
    args = parser.parse_args([command])
    assert cli._settings(args, side) == {  # type: ignore[arg-type]
        "engine": "auto",
        **{s.name: s.default for s in settings_for(side)},  # type: ignore[arg-type]
    }


def test_both_engines_implement_the_interface(engine: str) -> None:
    running, server_cls, client_cls = pyecho.api._engine_classes(engine)
    assert running == engine
    server = server_cls(DEFAULTS, socket.AF_INET, "127.0.0.1", 0, None)
    try:
        assert isinstance(server, _engine.ServerEngine)
        client = client_cls(DEFAULTS, socket.AF_INET, "127.0.0.1", server.address()[1], 10.0)
        try:
            assert isinstance(client, _engine.ClientEngine)
            assert client.timeout == 10.0
        finally:
            client.close()
    finally:
        server.free()
    # The same method signatures as the interface, parameter for parameter.
    for proto, cls in ((_engine.ServerEngine, server_cls), (_engine.ClientEngine, client_cls)):
        for name, member in vars(proto).items():
            if callable(member) and not name.startswith("_"):
                expected = list(inspect.signature(member).parameters)
                assert list(inspect.signature(getattr(cls, name)).parameters) == expected, name


def doc_row(s: Setting) -> str:
    """The row docs/PROTOCOL.md's settings table must have for a setting."""
    unit = f" {s.unit}" if s.unit else ""
    if s.kind == "choice":
        default, bounds = f"`{s.default}`", ", ".join(f"`{c}`" for c in s.choices)
    elif s.kind == "flag":
        default, bounds = f"`{s.default}`", "`True`, `False`"
    elif s.kind == "word":
        default, bounds = f"`{s.default.decode()}`", f"{s.lower} to {s.upper} bytes"
    else:
        default = "0" if s.default == 0 else f"{s.default:,}{unit}"
        lower = max(s.lower, RESOLUTION) if s.kind == "seconds" else s.lower
        bounds = f"{lower:,} to {s.upper:,}{unit}"
    if s.off:
        bounds += f"; {'0 or ' if s.off_value == 0 else ''}`None`: {s.off}"
    transports = "/".join(t.upper() for t in s.transports)
    return f"| `{s.name}` | {default} | {bounds} | {s.side} | {transports} | {s.help} |"


def test_the_documented_settings_are_the_tables() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "PROTOCOL.md").read_text()
    table = doc.split("## Settings and their bounds")[1].split("\n\n")[2].splitlines()
    assert table[2:] == [doc_row(s) for s in (*SETTINGS, TIMEOUT)]
