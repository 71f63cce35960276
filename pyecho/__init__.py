"""pyecho: a TCP and UDP echo server and client with a C engine and a
pure-Python one, and faults on demand for testing network clients.

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
    DROP_REASONS,
    ENGINES,
    MODES,
    TRANSPORTS,
    ConnectionClosedError,
    Event,
    Stats,
)
from ._faults import Faults
from ._native import NativeUnavailableError
from ._native import available as native_available
from ._native import tls_available as native_tls_available
from ._tls import TLS, ServerTLS
from ._tlsclient import ClientContext, client_context
from .api import EchoClient, EchoServer

__version__ = "0.1.0"

__all__ = [
    "CLOSE_REASONS",
    "ClientContext",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DROP_REASONS",
    "ENGINES",
    "MODES",
    "TRANSPORTS",
    "ConnectionClosedError",
    "EchoClient",
    "EchoServer",
    "Event",
    "Faults",
    "NativeUnavailableError",
    "Stats",
    "TLS",
    "ServerTLS",
    "native_available",
    "native_tls_available",
    "client_context",
    "__version__",
]
