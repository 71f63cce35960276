"""pyecho: a TCP echo server and client with a C engine and a pure-Python one.

>>> import pyecho
>>> with pyecho.EchoServer(("127.0.0.1", 0)).start() as server:
...     with pyecho.EchoClient(server.server_address) as client:
...         client.echo(b"hello")
b'hello'
"""

from ._config import (
    CLOSE_REASONS,
    DEFAULT_HOST,
    DEFAULT_PORT,
    ENGINES,
    MODES,
    ConnectionClosedError,
    Event,
    Stats,
)
from ._native import NativeUnavailableError
from ._native import available as native_available
from .api import EchoClient, EchoServer

__version__ = "0.1.0"

__all__ = [
    "CLOSE_REASONS",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ENGINES",
    "MODES",
    "ConnectionClosedError",
    "EchoClient",
    "EchoServer",
    "Event",
    "NativeUnavailableError",
    "Stats",
    "native_available",
    "__version__",
]
