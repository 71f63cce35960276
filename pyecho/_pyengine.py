"""The pure-Python engine, standard library only: the reference
implementation, the twin of the C core module for module.

- pyecho/_pyloop.py: the event loop (csrc/loop.c)
- pyecho/_pyserver.py: the server on it (csrc/server.c)
- pyecho/_pyudp.py: the server's datagram path (csrc/udp.c)
- pyecho/_pyfaults.py: the faults' generator and held-echo queue (csrc/faults.c)
- pyecho/_pyclient.py: the client (csrc/client.c)
- pyecho/_pytls.py: TLS on the server's connections (csrc/tls.c) and the TLS client
- pyecho/_framing.py: the framing, the executable spec (csrc/framing.c)
"""

from ._pyclient import PyClient
from ._pyserver import PyServer
from ._pytls import PyTlsClient

__all__ = ["PyClient", "PyServer", "PyTlsClient"]
