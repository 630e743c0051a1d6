"""The hub: live push of every run's events to UIs, over a Unix socket or TCP.

This module owns :class:`Hub`, an asyncio server that producers (the
``socket`` sink in training processes) and subscribers (UIs, ``pulse``
commands, a Rust backend) connect to. Its state and fan-out are a
:class:`~pulse_transports.inprocess.Bus`, so the hub limits, coalesces and
resumes exactly as the in-process transport does; this module adds the
network: listening, the handshake (:mod:`pulse_transports.wire`), framing
limits, authentication, reading run logs for resuming subscribers, and
keeping every failure on one connection away from the others.

Guarantees (specs/hub-protocol.md):

* A bad connection -- not JSON, a wrong hello, a wrong token, a line over
  ``max_frame``, silence before the hello, another run's events -- gets an
  ``error`` line naming the problem (and is closed unless the problem was
  one producer line), is logged through structlog, and never disturbs
  another connection.
* A slow subscriber never slows producers or other subscribers: what waits
  for it is bounded per subscriber (see the bus), and past the bound it is
  told to ``resync`` and dropped.
* Nothing here blocks the event loop on disk: run logs are read in a
  worker thread.
* Liveness is the hub's to tell: it checks the writer of every run it holds
  and does not consider ended or lost (the ``<id>.lock`` flock, as
  ``pulse ls`` does) when the run's producer connection drops and every
  ``liveness_tick`` seconds. Snapshots carry that liveness, and a change is
  pushed to the run's subscribers at once as a fresh snapshot, so a killed
  writer is ``lost`` for them within about a second, not after
  ``lost_after``. When a run turns lost and the home's
  ``training_status.json`` still shows it running, the hub heals the file
  (:func:`pulse_transports.v1.heal_v1_snapshot`).

The home's logs are followed (:class:`pulse_transports._homefeed.HomeFeed`,
``follow_home``): every run writing into the home is live in the hub whether
or not it reports over the socket, and the hub starts knowing every recent
run of the home, ended, alive or lost. A subscriber whose resume cursor is
ahead of what the hub holds for a run gets that run's snapshot.

Feeds bring events from elsewhere (e.g. :class:`pulse_transports.nats.NatsFeed`,
``pulse nats serve``): each is a coroutine function given the bus, run as a
task for the hub's life; it publishes to the bus as a producer connection
does, and its failures are logged, never the hub's.

Must not be imported by :mod:`pulse_core`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from pulse_core._log import get_logger
from pulse_core.codec import decode, encode
from pulse_core.errors import ConfigError, DecodeError, PulseError
from pulse_core.events import Event
from pulse_core.liveness import ALIVE, ENDED, LOST, LOST_AFTER, STALE_AFTER, Liveness
from pulse_core.policy import sampled
from pulse_core.projections import to_view
from pulse_core.state import RunState
from pulse_transports._homefeed import HomeFeed
from pulse_transports.file import lock_path, log_dir, log_path, writer_alive
from pulse_transports.follow import read_events
from pulse_transports.inprocess import (
    BUFFER,
    LIMIT,
    MAX_RUNS,
    RECENT,
    Bus,
    Item,
    StateSnapshot,
)
from pulse_transports.liveness import check_writer, run_liveness
from pulse_transports.wire import (
    HANDSHAKE_TIMEOUT,
    MAX_FRAME,
    Address,
    HandshakeError,
    Hello,
    Live,
    Resync,
    error_line,
    is_loopback,
    live_line,
    parse_hello,
    resync_line,
    snapshot_line,
    welcome_line,
)

log = get_logger("pulse.hub")

#: Default most updates per second per run and stream, per subscriber.
RATE: Final = 10.0
#: Default most open connections (each also needs a file descriptor).
MAX_CONNECTIONS: Final = 10_000
#: Error lines sent to one producer connection; later rejections are only counted.
_ERRORS_SENT: Final = 100
#: Items handed to one subscriber's socket per write.
_BATCH: Final = 256
#: Seconds a closing connection may take to flush before it is cut: long
#: enough for a paused subscriber to still read its ``resync`` line.
_GRACE: Final = 10.0
#: Default seconds between two checks of the held runs' writers.
LIVENESS_TICK: Final = 1.0
#: Seconds after a producer's disconnection at which its run's writer is
#: checked again: the kernel closes a dead process's socket and releases its
#: lock in no fixed order.
_RECHECKS: Final = (0.0, 0.1, 0.3)


def liveness_now(
    home: Path,
    training_id: str,
    state: RunState,
    *,
    now: float,
    stale_after: float = STALE_AFTER,
    lost_after: float = LOST_AFTER,
) -> Liveness:
    """One run's liveness, checking its writer's lock when it has one (blocking).

    A run reported only over the socket has no lock file: its writer is then
    unknown and silence alone decides.
    """
    if state.is_terminal:
        return ENDED
    writer = (
        check_writer(home, training_id, state) if lock_path(home, training_id).exists() else None
    )
    return run_liveness(
        state, now=now, writer=writer, stale_after=stale_after, lost_after=lost_after
    )


@attrs.frozen
class HubSettings:
    """Everything a hub is started with (``pulse serve`` options).

    Attributes:
        home: the PULSE home (run logs are read from ``<home>/logs/training``).
        socket_path: the Unix socket (mode 0600); None for TCP only.
        tcp: ``(host, port)`` to listen on as well; port 0 picks a free one.
        token: the shared secret TCP clients must send (Unix clients are
            trusted by the socket's file mode).
        allow_remote: permit a non-loopback TCP address (needs a token).
        rate: default most updates/s per run and stream for a subscriber;
            a subscriber may ask for fewer, not more.
        max_frame: the longest line accepted, newline included.
        handshake_timeout: seconds a new connection has to send its hello.
        subscriber_buffer: waiting items above which a subscriber's
            progress stays coalesced.
        subscriber_limit: waiting items above which it is dropped (resync).
        max_connections: connections beyond this are refused.
        recent: events kept in memory per run for resuming subscribers.
        max_runs: runs kept in memory.
        stale_after, lost_after: the liveness thresholds, seconds.
        liveness_tick: seconds between two checks of the held runs' writers.
        follow_home: follow every log in ``<home>/logs/training`` (else only
            the logs of runs whose writer is alive are read, at start).
    """

    home: Path
    socket_path: Path | None = None
    tcp: tuple[str, int] | None = None
    token: str | None = None
    allow_remote: bool = False
    rate: float = RATE
    max_frame: int = MAX_FRAME
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    subscriber_buffer: int = BUFFER
    subscriber_limit: int = LIMIT
    max_connections: int = MAX_CONNECTIONS
    recent: int = RECENT
    max_runs: int = MAX_RUNS
    stale_after: float = STALE_AFTER
    lost_after: float = LOST_AFTER
    liveness_tick: float = LIVENESS_TICK
    follow_home: bool = True

    def check(self) -> None:
        """Refuse unsafe or impossible settings.

        Raises:
            ConfigError: naming the setting and what to do.
        """
        if self.socket_path is None and self.tcp is None:
            raise ConfigError("the hub needs a Unix socket path or a TCP address")
        if self.tcp is not None and not is_loopback(self.tcp[0]):
            if not self.allow_remote:
                raise ConfigError(
                    f"refusing to listen on non-loopback address {self.tcp[0]!r}: "
                    "pass --allow-remote (and a token) to accept other machines"
                )
            if not self.token:
                raise ConfigError(
                    "a non-loopback TCP address needs a shared token: --token or $PULSE_HUB_TOKEN"
                )
        if not self.rate > 0:
            raise ConfigError(f"rate must be positive, got {self.rate}")
        if not self.liveness_tick > 0:
            raise ConfigError(f"liveness_tick must be positive, got {self.liveness_tick}")
        if self.max_frame < 1024:
            raise ConfigError(f"max_frame must be at least 1024 bytes, got {self.max_frame}")
        if not 1 <= self.subscriber_buffer <= self.subscriber_limit:
            raise ConfigError("need 1 <= subscriber_buffer <= subscriber_limit")


class HubAddressInUse(PulseError):
    """Another hub already listens on the socket, or the path is not a socket."""


class _Conn:
    """One accepted connection."""

    __slots__ = ("kind", "peer", "rejected", "role", "task", "training_id", "writer")

    def __init__(self, writer: asyncio.StreamWriter, kind: str) -> None:
        self.writer = writer
        self.kind = kind
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        self.role: str | None = None
        self.training_id: str | None = None
        self.rejected = 0
        self.task: asyncio.Task[Any] | None = asyncio.current_task()

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def close(self) -> None:
        """Close after flushing; cut it if the peer does not read within the grace."""
        transport = self.writer.transport
        if transport.is_closing():
            return
        transport.close()
        if transport.get_write_buffer_size():
            asyncio.get_running_loop().call_later(_GRACE, transport.abort)


#: A source of events besides producer connections: given the bus, runs until cancelled.
Feed = Callable[[Bus], Awaitable[None]]


class Hub:
    """The asyncio hub server.

    Args:
        settings: what to listen on and the limits.
        clock: the monotonic clock of the bus's rate limits.
        feeds: event sources run as tasks from :meth:`start` to :meth:`close`.
    """

    def __init__(
        self,
        settings: HubSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        feeds: Sequence[Feed] = (),
    ) -> None:
        settings.check()
        self.settings = settings
        self.bus = Bus(
            interval=1.0 / settings.rate,
            buffer=settings.subscriber_buffer,
            limit=settings.subscriber_limit,
            recent=settings.recent,
            max_runs=settings.max_runs,
            clock=clock,
            timer=False,
        )
        self.addresses: list[Address] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._conns: set[_Conn] = set()
        self._producers: dict[str, _Conn] = {}
        self._socket_inode: int | None = None
        self._closing = False
        self._encoded: dict[int, tuple[Event, bytes]] = {}
        self.refused = 0
        self._feeds = tuple(feeds)
        self._feed_tasks: list[asyncio.Task[None]] = []
        #: training id -> (its liveness at the last check, its last seq then).
        self.liveness: dict[str, tuple[Liveness, int]] = {}
        self._liveness_task: asyncio.Task[None] | None = None
        self._checks: set[asyncio.Task[None]] = set()
        self._check_lock = asyncio.Lock()
        self.homefeed: HomeFeed | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> list[Address]:
        """Bind the listeners and load the runs whose writers are alive.

        Returns:
            The addresses listened on (a TCP port 0 resolved).

        Raises:
            HubAddressInUse: another hub answers on the socket path.
            OSError: a listener cannot be bound.
        """
        s = self.settings
        if s.follow_home:
            self.homefeed = HomeFeed(s.home, max_runs=s.max_runs)
            primed = await asyncio.to_thread(self.homefeed.prime)
            for tid, events in primed.items():
                self.bus.seed(tid, events)
            self._feeds = (*self._feeds, self.homefeed)
        else:
            await asyncio.to_thread(self._seed_live_runs)
        await self.check_liveness()  # the first snapshots already say who is lost
        if s.socket_path is not None:
            await self._bind_unix(s.socket_path)
        if s.tcp is not None:
            server = await asyncio.start_server(
                self._on_tcp, s.tcp[0], s.tcp[1], limit=s.max_frame, backlog=1024
            )
            self._servers.append(server)
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                self.addresses.append(Address(host=host, port=port))
        self._feed_tasks = [asyncio.create_task(self._run_feed(feed)) for feed in self._feeds]
        self._liveness_task = asyncio.create_task(self._watch_liveness())
        log.info("pulse hub listening", addresses=[str(a) for a in self.addresses])
        return self.addresses

    async def _run_feed(self, feed: Feed) -> None:
        """Run one feed; its failure is logged and never stops the hub."""
        try:
            await feed(self.bus)
        except asyncio.CancelledError:
            raise
        except Exception:  # a feed's bug must never stop the hub
            log.exception("pulse hub feed failed", feed=repr(feed))

    async def _bind_unix(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise HubAddressInUse(
                    f"{path} exists and is not a socket; remove it or pick --socket"
                )
            if await asyncio.to_thread(_answers, path):
                raise HubAddressInUse(f"a hub is already listening on {path}")
            path.unlink()  # left behind by a hub that died
        # The socket is created with mode 0600 (umask), so no other user can
        # connect even for an instant; chmod states it explicitly.
        old_umask = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(
                self._on_unix, str(path), limit=self.settings.max_frame, backlog=1024
            )
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self._socket_inode = path.stat().st_ino
        self._servers.append(server)
        self.addresses.append(Address(path=path))

    def _seed_live_runs(self) -> None:
        """Load the logs of runs whose writer holds the lock (a hub restart)."""
        folder = log_dir(self.settings.home)
        if not folder.is_dir():
            return
        logs = sorted(folder.glob("*.jsonl"), key=_mtime, reverse=True)
        for path in logs[: self.settings.max_runs]:
            tid = path.stem
            if writer_alive(self.settings.home, tid) is True:
                events = read_events(log_path(self.settings.home, tid), tid)
                if events:
                    self.bus.seed(tid, events)

    async def close(self) -> None:
        """Stop listening, tell every client the hub is closing, remove the socket."""
        if self._closing:
            return
        self._closing = True
        for server in self._servers:
            server.close()
        for task in self._feed_tasks:
            task.cancel()
        if self._feed_tasks:
            await asyncio.wait(self._feed_tasks, timeout=2.0)
        if self.homefeed is not None:
            await asyncio.to_thread(self.homefeed.close)
        background = [t for t in (self._liveness_task, *self._checks) if t is not None]
        for task in background:
            task.cancel()
        if background:
            await asyncio.wait(background, timeout=2.0)
        goodbye = error_line("hub_closing", "the hub is shutting down")
        tasks = []
        for conn in list(self._conns):
            if conn.role is not None:
                conn.send(goodbye)
            conn.close()
            if conn.task is not None and conn.task is not asyncio.current_task():
                conn.task.cancel()
                tasks.append(conn.task)
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        self.bus.close()
        path = self.settings.socket_path
        if path is not None and self._socket_inode is not None:
            with contextlib.suppress(OSError):
                if path.stat().st_ino == self._socket_inode:
                    path.unlink()
        log.info("pulse hub closed", **self.stats())

    def stats(self) -> dict[str, Any]:
        """Counters for logs and benchmarks."""
        roles: dict[str, int] = {}
        for conn in self._conns:
            key = conn.role or "handshake"
            roles[key] = roles.get(key, 0) + 1
        return {
            "connections": roles,
            "runs": len(self.bus.states()),
            "published": self.bus.published,
            "duplicates": self.bus.duplicates,
            "overflows": self.bus.overflows,
            "refused": self.refused,
        }

    # -- connections -------------------------------------------------------------

    async def _on_unix(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._serve(reader, writer, "unix")

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await self._serve(reader, writer, "tcp")

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, kind: str
    ) -> None:
        conn = _Conn(writer, kind)
        if self._closing:
            self._refuse(conn, "hub_closing", "the hub is shutting down")
            return
        if len(self._conns) >= self.settings.max_connections:
            self._refuse(
                conn,
                "too_many_connections",
                f"the hub is at its limit of {self.settings.max_connections} connections",
            )
            return
        self._conns.add(conn)
        try:
            hello = await self._handshake(conn, reader)
            if hello is None:
                return
            if hello.role == "producer":
                await self._producer(conn, reader, hello)
            else:
                await self._subscriber(conn, reader, hello)
        except asyncio.CancelledError:
            raise
        except (ConnectionError, OSError) as exc:
            log.debug("pulse hub connection lost", peer=conn.peer, role=conn.role, error=str(exc))
        except Exception:  # one connection's bug must never stop the hub
            log.exception("pulse hub connection failed", peer=conn.peer, role=conn.role)
        finally:
            self._conns.discard(conn)
            conn.close()

    def _refuse(self, conn: _Conn, code: str, message: str) -> None:
        """Send a fatal error line and close."""
        self.refused += 1
        log.warning(
            "pulse hub refused a connection",
            code=code,
            reason=message,
            peer=conn.peer,
            via=conn.kind,
            role=conn.role,
            training_id=conn.training_id,
        )
        conn.send(error_line(code, message))
        conn.close()

    async def _readline(self, conn: _Conn, reader: asyncio.StreamReader) -> bytes | None:
        """The next whole line, or None if the connection is over (refused if too long)."""
        try:
            line = await reader.readline()
        except (ValueError, asyncio.LimitOverrunError):
            self._refuse(
                conn,
                "frame_too_large",
                f"a line is longer than the limit of {self.settings.max_frame} bytes",
            )
            return None
        if not line.endswith(b"\n"):
            if line:
                log.info("pulse hub connection closed mid-line", peer=conn.peer, role=conn.role)
            return None
        return line

    async def _handshake(self, conn: _Conn, reader: asyncio.StreamReader) -> Hello | None:
        s = self.settings

        async def first_line() -> bytes | None:
            # Blank lines are ignored everywhere (hub-protocol.md section 1),
            # before the hello too; the timeout covers them all.
            while True:
                line = await self._readline(conn, reader)
                if line is None or line.strip():
                    return line

        try:
            line = await asyncio.wait_for(first_line(), s.handshake_timeout)
        except TimeoutError:
            self._refuse(
                conn, "handshake_timeout", f"no hello line within {s.handshake_timeout:g} s"
            )
            return None
        if line is None:
            return None
        try:
            hello = parse_hello(line)
        except HandshakeError as exc:
            self._refuse(conn, exc.code, exc.message)
            return None
        conn.role, conn.training_id = hello.role, hello.training_id
        if s.token and conn.kind == "tcp":
            given = (hello.token or "").encode()
            if not hmac.compare_digest(given, s.token.encode()):
                why = "the token is wrong" if hello.token else "this hub needs a token"
                self._refuse(conn, "unauthorized", why)
                return None
        return hello

    # -- producers ---------------------------------------------------------------

    async def _producer(self, conn: _Conn, reader: asyncio.StreamReader, hello: Hello) -> None:
        tid = hello.training_id
        assert tid is not None  # parse_hello requires it of a producer
        old = self._producers.get(tid)
        if old is not None:
            log.warning("pulse hub: a new producer took over a run", training_id=tid, old=old.peer)
            old.send(error_line("superseded", f"a newer connection reports run {tid!r}"))
            old.close()
        self._producers[tid] = conn
        try:
            if self.bus.last_seq(tid) is None:
                events = await asyncio.to_thread(
                    read_events, log_path(self.settings.home, tid), tid
                )
                if events:
                    self.bus.seed(tid, events)
            conn.send(
                welcome_line(
                    role="producer",
                    training_id=tid,
                    last_seq=self.bus.last_seq(tid),
                    max_frame=self.settings.max_frame,
                    time=time.time(),
                )
            )
            log.info("pulse producer connected", training_id=tid, peer=conn.peer, via=conn.kind)
            await self._read_events(conn, reader, tid)
        finally:
            if self._producers.get(tid) is conn:
                del self._producers[tid]
                if not self._closing:
                    self._spawn_check(tid)
            log.info("pulse producer disconnected", training_id=tid, peer=conn.peer)

    async def _read_events(self, conn: _Conn, reader: asyncio.StreamReader, tid: str) -> None:
        publish = self.bus.publish
        count = 0
        while True:
            line = await self._readline(conn, reader)
            if line is None:
                return
            if line.isspace():
                continue
            try:
                event = decode(line)
            except DecodeError as exc:
                self._reject(conn, "bad_event", str(exc))
                continue
            if event.training_id != tid:
                self._reject(
                    conn,
                    "wrong_training_id",
                    f"this connection reports run {tid!r}; "
                    f"an event of run {event.training_id!r} was dropped",
                    seq=event.seq,
                )
                continue
            publish(event)
            count += 1
            if count & 63 == 0:
                # A fast producer's buffered lines never need to wait for data,
                # so yield now and then: other connections get their turn.
                await asyncio.sleep(0)

    def _reject(self, conn: _Conn, code: str, message: str, **extra: Any) -> None:
        """Drop one producer line: log it, and answer with a non-fatal error."""
        conn.rejected += 1
        n = conn.rejected
        if sampled(n, 1000, first=10):
            log.warning(
                "pulse hub dropped a producer line",
                code=code,
                reason=message,
                training_id=conn.training_id,
                peer=conn.peer,
                rejected=n,
            )
        if n <= _ERRORS_SENT:
            conn.send(error_line(code, message, **extra))

    # -- liveness ----------------------------------------------------------------

    def _to_check(self, only: str | None = None) -> dict[str, RunState]:
        """The held runs whose writer may have died since the last check."""
        runs = self.bus.states()
        for gone in self.liveness.keys() - runs.keys():
            del self.liveness[gone]  # the bus forgot the run: so do we
        if only is not None:
            runs = {only: runs[only]} if only in runs else {}
        out = {}
        for tid, state in runs.items():
            if state.is_terminal:
                self.liveness.pop(tid, None)
                continue
            known = self.liveness.get(tid)
            if known is not None and known[0] == LOST and known[1] == state.last_seq:
                continue  # lost and silent since: nothing can have changed
            out[tid] = state
        return out

    def _measure(self, runs: dict[str, RunState]) -> dict[str, Liveness]:
        """Each run's liveness now (blocking: reads lock files)."""
        s = self.settings
        now = time.time()
        return {
            tid: liveness_now(
                s.home, tid, state, now=now, stale_after=s.stale_after, lost_after=s.lost_after
            )
            for tid, state in runs.items()
        }

    async def check_liveness(self, training_id: str | None = None) -> dict[str, Liveness]:
        """Check the writers of the held runs (or of one); push and heal what changed.

        Returns:
            The runs whose liveness changed, with their new liveness.
        """
        async with self._check_lock:
            runs = self._to_check(training_id)
            if not runs:
                return {}
            fresh = await asyncio.to_thread(self._measure, runs)
            changed: dict[str, Liveness] = {}
            states = self.bus.states()
            for tid, live in fresh.items():
                state = states.get(tid)
                if state is None or state.is_terminal:
                    continue  # it ended (or left) while we looked
                old = self.liveness.get(tid)
                self.liveness[tid] = (live, runs[tid].last_seq)
                # A run first seen alive is no news: its subscribers assume it.
                # Events that reached subscribers after a stale/lost snapshot
                # (late lines from the log) read as "alive": say it again.
                moved = old is not None and old[1] != runs[tid].last_seq
                if (old[0] if old is not None else ALIVE) != live or (live != ALIVE and moved):
                    changed[tid] = live
            for tid, live in changed.items():
                told = self.bus.restate(tid)
                log.info(
                    "pulse hub: run liveness changed", training_id=tid, liveness=live, told=told
                )
            if any(live == LOST for live in changed.values()):
                await asyncio.to_thread(self._heal_v1)
            return changed

    def _heal_v1(self) -> None:
        """Make the home's v1 snapshot honest about a run that turned lost (blocking)."""
        from pulse_transports.v1 import heal_v1_snapshot

        s = self.settings
        try:
            healed = heal_v1_snapshot(s.home, stale_after=s.stale_after, lost_after=s.lost_after)
        except Exception:  # a repair's failure must never stop the hub
            log.exception("pulse hub could not heal the v1 snapshot")
            return
        if healed:
            log.info("pulse hub healed the v1 snapshot of a lost run", home=str(s.home))

    def _spawn_check(self, training_id: str) -> None:
        """Check one run's writer now and a little later (its producer left)."""

        async def recheck() -> None:
            last = 0.0
            for at in _RECHECKS:
                await asyncio.sleep(at - last)
                last = at
                if await self.check_liveness(training_id) or training_id not in self.bus.states():
                    return

        task = asyncio.create_task(recheck())
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _watch_liveness(self) -> None:
        """Check the held runs' writers every tick, for the hub's life."""
        while True:
            try:
                await self.check_liveness()
            except asyncio.CancelledError:
                raise
            except Exception:  # the watch must outlive one bad check
                log.exception("pulse hub liveness check failed")
            await asyncio.sleep(self.settings.liveness_tick)

    # -- subscribers -------------------------------------------------------------

    async def _subscriber(self, conn: _Conn, reader: asyncio.StreamReader, hello: Hello) -> None:
        scope = hello.training_id
        resume = {t: s for t, s in hello.resume.items() if scope is None or t == scope}
        # A cursor ahead of what the hub holds (another hub's, or a reused id's) is
        # no resume: that run gets a snapshot and every later event (section 4).
        resume = {t: s for t, s in resume.items() if s <= (self.bus.last_seq(t) or s)}
        history: dict[str, list[Event]] = {}
        for tid, after in resume.items():
            if not self.bus.covers(tid, after):
                past = await asyncio.to_thread(
                    read_events, log_path(self.settings.home, tid), tid, after
                )
                if past is not None:
                    history[tid] = past
        interval = self.bus.interval
        if hello.rate is not None:
            interval = max(interval, 1.0 / hello.rate)
        sub = self.bus.stream(
            training_id=scope, interval=interval, resume=resume, history=history, marker=True
        )
        conn.send(
            welcome_line(
                role="subscriber",
                training_id=scope,
                rate=1.0 / interval,
                max_frame=self.settings.max_frame,
                time=time.time(),
            )
        )
        log.info(
            "pulse subscriber connected", peer=conn.peer, training_id=scope, resume=len(resume)
        )
        watcher = asyncio.create_task(self._watch(conn, reader, sub.close))
        writer = conn.writer
        try:
            while True:
                items = await sub.batch(_BATCH)
                if not items:
                    return
                writer.write(b"".join([self._line(item) for item in items]))
                if isinstance(items[-1], Resync):
                    log.warning("pulse subscriber dropped: too slow", peer=conn.peer)
                    return
                await writer.drain()
        finally:
            watcher.cancel()
            sub.close()
            log.info("pulse subscriber disconnected", peer=conn.peer)

    async def _watch(
        self, conn: _Conn, reader: asyncio.StreamReader, on_end: Callable[[], None]
    ) -> None:
        """Read (and ignore) what a subscriber sends, to notice it leaving."""
        try:
            while await self._readline(conn, reader) is not None:
                pass
        except (ConnectionError, OSError):
            pass
        finally:
            on_end()

    def _line(self, item: Item) -> bytes:
        if isinstance(item, StateSnapshot):
            known = self.liveness.get(item.training_id)
            live = known[0] if known is not None and not item.state.is_terminal else None
            view = to_view(item.state, now=time.time(), liveness=live)
            return snapshot_line(item.training_id, view)
        if isinstance(item, Live):
            return live_line(item.runs, item.time or time.time())
        if isinstance(item, Resync):
            return resync_line(item.reason, item.buffered)
        # Every subscriber gets the same event object: encode it once.
        cached = self._encoded.get(id(item))
        if cached is not None and cached[0] is item:
            return cached[1]
        line = encode(item)
        if len(self._encoded) >= 4096:
            self._encoded.clear()
        self._encoded[id(item)] = (item, line)
        return line


def _answers(path: Path) -> bool:
    """True if something accepts connections on the Unix socket *path*."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(1.0)
    try:
        sock.connect(str(path))
    except OSError:
        return False
    finally:
        sock.close()
    return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


async def run_hub(
    settings: HubSettings,
    stop: asyncio.Event,
    on_ready: Callable[[list[Address]], None],
    feeds: Sequence[Feed] = (),
) -> None:
    """Start a hub (with *feeds*), call *on_ready* with its addresses, serve until *stop*."""
    hub = Hub(settings, feeds=feeds)
    try:
        addresses = await hub.start()
        on_ready(addresses)
        await stop.wait()
    finally:
        await hub.close()
