"""The hub wire protocol: handshake lines, control messages, limits, addresses.

This module owns what the hub (:mod:`pulse_transports.hub`) and its clients
(the ``socket`` sink, :mod:`pulse_transports.subscribe`) say to each other
besides events: the client ``hello``, the hub's ``welcome`` and ``error``
lines, the subscriber control messages (``snapshot``, ``live``,
``resync``), the framing limit, the error codes, hub addresses, and the
small blocking socket helpers the producer sink and the synchronous
subscriber share. Events themselves are encoded by :mod:`pulse_core.codec`
exactly as in the log. specs/hub-protocol.md is the normative text.

Framing: one JSON object per line, UTF-8, ending with ``\\n``; a line longer
than the hub's ``max_frame`` (default 1 MiB, newline included) closes the
connection when the hub receives it; a client receiving one skips it
(:class:`FrameTooLarge`). This module never imports asyncio.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

import attrs
import orjson

from pulse_core.codec import bound_dict, from_dict, parse_json
from pulse_core.errors import DecodeError, InvalidTrainingId, PulseError
from pulse_core.events import Event, validate_training_id

#: The hub protocol version this module speaks (the hello's ``protocol``).
PROTOCOL: Final = 2
SUPPORTED_PROTOCOLS: Final = (2,)
#: Longest line (newline included) either side accepts by default.
MAX_FRAME: Final = 1024 * 1024
#: Seconds a new connection has to send its hello.
HANDSHAKE_TIMEOUT: Final = 10.0
#: Seconds a line, once begun, has to reach its newline.
LINE_TIMEOUT: Final = 10.0
#: The fewest updates per second a subscriber may ask for (a lower ``rate`` is raised).
MIN_RATE: Final = 0.1
#: Most runs a subscriber's ``resume`` may name (the web stream's cursor cap).
MAX_RESUME: Final = 1024
#: The Unix socket's file name inside the PULSE home.
SOCKET_NAME: Final = "pulse.sock"
#: Environment variables: the hub token, and the Unix socket path (both sides).
ENV_TOKEN: Final = "PULSE_HUB_TOKEN"  # noqa: S105 - a variable name, not a secret
ENV_SOCKET: Final = "PULSE_HUB_SOCKET"
CLIENT_NAME: Final = "pulse-python/2"

Role: TypeAlias = Literal["producer", "subscriber"]
ROLES: Final = ("producer", "subscriber")

#: Every error code the hub sends, with what it means (the spec's table).
ERROR_CODES: Final[Mapping[str, str]] = {
    "bad_json": "the line is not a JSON object",
    "bad_hello": "the first line is not a valid pulse hello",
    "unsupported_protocol": "the hello asks for a protocol version the hub does not speak",
    "unauthorized": "the token is missing or wrong",
    "handshake_timeout": "no complete hello line arrived in time",
    "frame_too_large": "a line is longer than the hub's max_frame",
    "line_timeout": "a line was begun but not ended within the line timeout",
    "overloaded": "the hub holds too many bytes of unfinished lines",
    "too_many_connections": "the hub is at its connection limit",
    "bad_event": "a producer line is not a valid PULSE v2 event (dropped)",
    "wrong_training_id": "a producer sent an event of another run than its hello named (dropped)",
    "superseded": "a newer producer connection for the same training_id took over",
    "run_owned": "another live process writes this run (it holds the run's lock, or its "
    "connection spoke within the last seconds)",
    "seq_out_of_range": "a producer sent a seq far beyond the run's last one (dropped)",
    "hub_closing": "the hub is shutting down",
}
#: Codes that do not end the connection (a producer's rejected line).
NON_FATAL: Final = frozenset({"bad_event", "wrong_training_id", "seq_out_of_range"})


class HandshakeError(PulseError):
    """A hello (or welcome) is not acceptable; ``code`` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class HubRefused(HandshakeError):
    """The hub answered the hello with an error line."""


class FrameTooLarge(ValueError):
    """A received line of ``size`` bytes was over the frame ``limit``; it was skipped whole."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"skipped a line of {size} bytes, longer than the limit of {limit}")
        self.size = size
        self.limit = limit


@attrs.frozen
class Hello:
    """A parsed client hello.

    Attributes:
        role: ``producer`` or ``subscriber``.
        protocol: the protocol version asked for.
        token: the shared secret, if sent.
        training_id: the producer's run; for a subscriber, the one run it
            wants (None: every run).
        resume: subscriber only: the last seq seen per run.
        rate: subscriber only: the most updates per second per run it wants.
        client: a free-form client name, for logs.
    """

    role: Role
    protocol: int = PROTOCOL
    token: str | None = None
    training_id: str | None = None
    resume: Mapping[str, int] = attrs.field(factory=dict)
    rate: float | None = None
    client: str | None = None


def _loads_object(line: bytes | str, code: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise HandshakeError("bad_json", f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise HandshakeError(code, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def parse_hello(line: bytes | str) -> Hello:
    """Parse and check a client's first line.

    Raises:
        HandshakeError: ``bad_json``, ``bad_hello`` or ``unsupported_protocol``
            with a message naming the problem.
    """
    obj = _loads_object(line, "bad_hello")
    if obj.get("hello") != "pulse":
        raise HandshakeError("bad_hello", 'the first line must be {"hello": "pulse", ...}')
    protocol = obj.get("protocol", PROTOCOL)
    if protocol.__class__ is not int:
        raise HandshakeError("bad_hello", f"'protocol' must be an integer, got {protocol!r:.40}")
    if protocol not in SUPPORTED_PROTOCOLS:
        raise HandshakeError(
            "unsupported_protocol",
            f"protocol {protocol} is not supported; this hub speaks {list(SUPPORTED_PROTOCOLS)}",
        )
    role = obj.get("role")
    if role not in ROLES:
        raise HandshakeError(
            "bad_hello", f"'role' must be 'producer' or 'subscriber', got {role!r:.40}"
        )
    token = obj.get("token")
    if token is not None and not isinstance(token, str):
        raise HandshakeError("bad_hello", "'token' must be a string")
    client = obj.get("client")
    training_id = obj.get("training_id")
    if training_id is not None or role == "producer":
        try:
            training_id = validate_training_id(training_id)
        except InvalidTrainingId as exc:
            raise HandshakeError("bad_hello", f"bad 'training_id': {exc}") from None
    resume: dict[str, int] = {}
    rate: float | None = None
    if role == "subscriber":
        raw = obj.get("resume") or {}
        if not isinstance(raw, dict):
            raise HandshakeError("bad_hello", "'resume' must be an object {training_id: last_seq}")
        if len(raw) > MAX_RESUME:
            # Each entry costs the hub: as in the web stream's cursor, later ones are ignored.
            raw = dict(itertools.islice(raw.items(), MAX_RESUME))
        for key, value in raw.items():
            try:
                validate_training_id(key)
            except InvalidTrainingId as exc:
                raise HandshakeError("bad_hello", f"bad training_id in 'resume': {exc}") from None
            if value.__class__ is not int or value < 0:
                raise HandshakeError(
                    "bad_hello",
                    f"'resume' seq of {key!r} must be an integer >= 0, got {value!r:.40}",
                )
            resume[key] = value
        raw_rate = obj.get("rate")
        if raw_rate is not None:
            if raw_rate.__class__ not in (int, float) or not raw_rate > 0:
                raise HandshakeError(
                    "bad_hello", f"'rate' must be a positive number, got {raw_rate!r:.40}"
                )
            rate = max(float(raw_rate), MIN_RATE)
    return Hello(
        role=role,
        protocol=protocol,
        token=token,
        training_id=training_id,
        resume=resume,
        rate=rate,
        client=str(client)[:100] if client is not None else None,
    )


def _line(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)


def hello_line(
    role: Role,
    *,
    training_id: str | None = None,
    token: str | None = None,
    resume: Mapping[str, int] | None = None,
    rate: float | None = None,
) -> bytes:
    """Encode a client hello."""
    obj: dict[str, Any] = {
        "hello": "pulse",
        "role": role,
        "protocol": PROTOCOL,
        "client": CLIENT_NAME,
    }
    if training_id is not None:
        obj["training_id"] = training_id
    if token is not None:
        obj["token"] = token
    if resume:
        obj["resume"] = dict(resume)
    if rate is not None:
        obj["rate"] = rate
    return _line(obj)


def welcome_line(**fields: Any) -> bytes:
    """Encode the hub's welcome (``hub``, ``protocol`` and *fields*)."""
    return _line({"welcome": {"hub": "pulse", "protocol": PROTOCOL, **fields}})


def error_line(code: str, message: str, **extra: Any) -> bytes:
    """Encode an error line; ``fatal`` says whether the hub closes after it."""
    return _line(
        {"error": {"code": code, "message": message, "fatal": code not in NON_FATAL, **extra}}
    )


def snapshot_line(training_id: str, view: Mapping[str, Any], limit: int = MAX_FRAME) -> bytes:
    """Encode one run's v2 view as a ``snapshot`` line of at most *limit* bytes.

    A view too large for the line (long error texts and details, many
    metrics) is cut down as the codec bounds events: small fields whole,
    long texts truncated with a visible marker, long lists shortened.
    """
    line = _line({"snapshot": {training_id: view}})
    if len(line) <= limit:
        return line
    wrapper = len(line) - len(orjson.dumps(view))
    bounded = bound_dict(dict(view), max(limit - wrapper, 256))
    return _line({"snapshot": {training_id: bounded}})


def live_line(runs: tuple[str, ...], now: float) -> bytes:
    """Encode the ``live`` line that ends a subscriber's catch-up."""
    return _line({"live": {"runs": list(runs), "time": now}})


def resync_line(reason: str, buffered: int) -> bytes:
    """Encode the ``resync`` line sent to a subscriber before it is dropped."""
    return _line({"resync": {"reason": reason, "buffered": buffered}})


def parse_welcome(line: bytes | str) -> dict[str, Any]:
    """Check the hub's answer to a hello.

    Returns:
        The welcome object.

    Raises:
        HubRefused: the hub answered with an error line.
        HandshakeError: the answer is neither.
    """
    obj = _loads_object(line, "bad_hello")
    if isinstance(obj.get("welcome"), dict):
        return obj["welcome"]  # type: ignore[no-any-return]
    error = obj.get("error")
    if isinstance(error, dict):
        raise HubRefused(str(error.get("code")), str(error.get("message")))
    raise HandshakeError("bad_hello", "the hub's answer is neither welcome nor error")


# --- what a subscriber receives ------------------------------------------------


@attrs.frozen
class Snapshot:
    """The v2 view of one run (``to_view``), sent before its events."""

    training_id: str
    view: Mapping[str, Any]


@attrs.frozen
class Live:
    """The catch-up (snapshots, missed events) is over; live events follow."""

    runs: tuple[str, ...] = ()
    time: float | None = None


@attrs.frozen
class Resync:
    """The subscriber fell too far behind and is dropped; resume to catch up."""

    reason: str
    buffered: int = 0


@attrs.frozen
class HubError:
    """An error line from the hub."""

    code: str
    message: str
    fatal: bool = True


Message: TypeAlias = Event | Snapshot | Live | Resync | HubError


def decode_message(line: bytes | str) -> Message:
    """Decode one line a subscriber receives.

    Raises:
        DecodeError: if it is neither an event nor a known control message.
    """
    obj = parse_json(line)
    if not isinstance(obj, dict):
        raise DecodeError("a hub message must be a JSON object", line)
    if "type" in obj:
        return from_dict(obj, line)
    if len(obj) == 1:
        ((kind, body),) = obj.items()
        if isinstance(body, dict):
            if kind == "snapshot" and len(body) == 1:
                ((tid, view),) = body.items()
                return Snapshot(tid, view)
            if kind == "live":
                return Live(tuple(body.get("runs", ())), body.get("time"))
            if kind == "resync":
                return Resync(str(body.get("reason", "")), int(body.get("buffered", 0)))
            if kind == "error":
                return HubError(
                    str(body.get("code")), str(body.get("message")), bool(body.get("fatal", True))
                )
    raise DecodeError("not an event or a known hub message", line)


# --- addresses -------------------------------------------------------------------


def default_socket_path(home: Path | str) -> Path:
    """The hub's Unix socket: ``$PULSE_HUB_SOCKET`` or ``<home>/pulse.sock``."""
    env = os.environ.get(ENV_SOCKET)
    return Path(env) if env else Path(home) / SOCKET_NAME


def parse_hostport(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6).

    Raises:
        ValueError: naming what is wrong.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port must be a number, got {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    return host, port


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@attrs.frozen
class Address:
    """Where a hub listens: a Unix socket path, or a TCP host and port."""

    path: Path | None = None
    host: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        return f"tcp:{self.host}:{self.port}"


def connect(address: Address, timeout: float) -> socket.socket:
    """Open a blocking connection to a hub (no hello yet).

    Raises:
        OSError: if the hub cannot be reached within *timeout*.
    """
    if address.path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(address.path))
        except BaseException:
            sock.close()
            raise
        return sock
    sock = socket.create_connection((address.host, address.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class LineReader:
    """Blocking line reads from a socket, with a frame limit.

    A line longer than the limit is never held whole: its bytes are dropped
    as they come, and once its newline has arrived :meth:`readline` raises
    :class:`FrameTooLarge`; the next call reads the line after it.

    Args:
        sock: a connected socket (its timeout applies per ``recv``).
        limit: the longest line accepted, newline included.
    """

    def __init__(self, sock: socket.socket, limit: int = MAX_FRAME) -> None:
        self.sock = sock
        self.limit = limit
        self._buffer = bytearray()
        self._skipped = 0  # bytes dropped so far of an over-long line
        self.eof = False

    def pending(self) -> bool:
        """True if a whole line is already buffered."""
        return b"\n" in self._buffer

    def readline(self, timeout: float | None) -> bytes | None:
        """Return the next line (with its newline), or None on timeout.

        Raises:
            EOFError: the peer closed the connection.
            FrameTooLarge: a line over the limit was skipped (read on).
            OSError: the connection failed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            index = self._buffer.find(b"\n")
            if index >= 0:
                size = self._skipped + index + 1
                if size > self.limit:
                    del self._buffer[: index + 1]
                    self._skipped = 0
                    raise FrameTooLarge(size, self.limit)
                line = bytes(self._buffer[: index + 1])
                del self._buffer[: index + 1]
                return line
            if len(self._buffer) >= self.limit:
                self._skipped += len(self._buffer)
                self._buffer.clear()
            if self.eof:
                raise EOFError("the hub closed the connection")
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.sock.settimeout(left)
            else:
                self.sock.settimeout(None)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                self.eof = True
                continue
            self._buffer += chunk
