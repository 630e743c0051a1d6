"""The client side of a hub connection: where the hub is, and the first exchange.

This private module owns what the socket sink (:mod:`pulse_transports.socket`)
and the blocking subscriber (:mod:`pulse_transports.subscribe`) both do to
reach a hub: :func:`hub_address` (a TCP ``HOST:PORT``, a Unix socket path, or
the home's socket) and :func:`handshake` (connect, send the hello, read the
welcome). The lines themselves are :mod:`pulse_transports.wire`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pulse_transports.wire import (
    MAX_FRAME,
    Address,
    LineReader,
    connect,
    default_socket_path,
    parse_hostport,
    parse_welcome,
)


def hub_address(
    home: Path | str, path: Path | str | None = None, tcp: str | None = None
) -> Address:
    """Where to reach the hub: *tcp* if given, else the socket *path*, else the home's socket.

    Raises:
        ValueError: *tcp* is not ``HOST:PORT``.
    """
    if tcp:
        host, port = parse_hostport(tcp)
        return Address(host=host, port=port)
    return Address(path=Path(path) if path else default_socket_path(home))


def handshake(
    address: Address, hello: bytes, timeout: float, limit: int = MAX_FRAME
) -> tuple[LineReader, dict[str, Any]]:
    """Connect to the hub, send *hello* and read its welcome.

    Returns:
        The connection's line reader (its socket is ``reader.sock``) and the welcome.

    Raises:
        OSError: the hub cannot be reached, or sent no welcome within *timeout*.
        HubRefused: the hub answered with an error (e.g. unauthorized).
        HandshakeError: the answer is neither a welcome nor an error.
    """
    sock = connect(address, timeout)
    try:
        sock.sendall(hello)
        reader = LineReader(sock, limit)
        line = reader.readline(timeout)
        if line is None:
            raise TimeoutError(f"no welcome from the hub within {timeout:g} s")
        return reader, parse_welcome(line)
    except BaseException:
        sock.close()
        raise
