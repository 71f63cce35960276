"""What a protocol error says, the same for both engines' clients: what was
expected and what came (docs/PROTOCOL.md, "The client")."""

from __future__ import annotations

import errno
import socket

from ._pycompat import MSG_DONTWAIT

# A UDP client skips a datagram equal to one of the last this many it sent:
# a late or duplicated echo (csrc/client.c's UDP_RECENT).
UDP_RECENT = 16
# The largest datagram payload a client can receive, with room to spare.
UDP_MAX = 64 * 1024
SHOWN = 40  # bytes of data shown in a message


def preview(data: bytes | bytearray | memoryview) -> str:
    """data for a message: its repr, cut after SHOWN bytes."""
    data = bytes(data)
    if len(data) <= SHOWN:
        return repr(data)
    return f"{bytes(data[:SHOWN])!r}... ({len(data)} bytes)"


def udp_mismatch(sent: bytes, got: bytes | bytearray | memoryview) -> OSError:
    """A datagram that is neither the echo of the one sent nor a late echo
    of an earlier one."""
    return OSError(
        errno.EPROTO,
        f"protocol error: expected the echo of the {len(sent)}-byte datagram sent, "
        f"{preview(sent)}, got a {len(got)}-byte datagram, {preview(got)} "
        f"(the echo of none of the last {UDP_RECENT} sent)",
    )


def peek_surplus(fd: int) -> bytes:
    """What waits unread in a TCP socket beyond the echo (left there by the
    client that found it), without taking it; b"" if nothing can be seen."""
    sock = socket.socket(fileno=fd)
    try:
        return sock.recv(SHOWN, socket.MSG_PEEK | MSG_DONTWAIT)
    except OSError:
        return b""
    finally:
        sock.detach()  # the client's descriptor: not ours to close


def tcp_surplus(expected: int, reply: bytes | bytearray, surplus: bytes) -> OSError:
    """The server sent more than the framing says it would."""
    more = f"then {surplus!r}{'...' * (len(surplus) >= SHOWN)}" if surplus else "then more"
    return OSError(
        errno.EPROTO,
        f"protocol error: the server sent more than its framing allows: expected "
        f"{expected} bytes of echo, got {preview(reply)}, {more} "
        "(is it in another mode, or not an echo server?)",
    )
