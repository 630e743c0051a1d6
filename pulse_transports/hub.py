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
import os
import socket
import stat
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

from pulse_core._log import get_logger
from pulse_core.errors import PulseError
from pulse_core.liveness import Liveness
from pulse_transports._homefeed import HomeFeed
from pulse_transports._hubconn import ACCEPT_BATCH, CHUNK, Conn, Lane, listen_wide
from pulse_transports._hubliveness import liveness_now
from pulse_transports._hubowner import RunOwners
from pulse_transports._hubproducers import HubProducers
from pulse_transports._hubsettings import LIVENESS_TICK, MAX_CONNECTIONS, RATE, HubSettings
from pulse_transports._hubsubscribers import HubSubscribers
from pulse_transports.file import log_dir, log_path, writer_alive
from pulse_transports.follow import read_events
from pulse_transports.homemode import make_dirs
from pulse_transports.inprocess import Bus, EncodedEvents
from pulse_transports.wire import Address, error_line

__all__ = [
    "LIVENESS_TICK",
    "MAX_CONNECTIONS",
    "RATE",
    "Feed",
    "Hub",
    "HubAddressInUse",
    "HubSettings",
    "liveness_now",
    "run_hub",
    "start_threads",
]

log = get_logger("pulse.hub")

#: The hub's worker threads (log reads for welcomes and resumes, lock checks):
#: few and fixed, as each keeps a stack and a malloc arena (liveness checks
#: run one at a time, leaving the other to welcomes and resumes).
_WORKERS: Final = 2


class HubAddressInUse(PulseError):
    """Another hub already listens on the socket, or the path is not a socket."""


#: A source of events besides producer connections: given the bus, runs until cancelled.
Feed = Callable[[Bus], Awaitable[None]]


class Hub(HubSubscribers, HubProducers):
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
            keep_ended=settings.keep_ended,
            clock=clock,
            timer=False,
        )
        self.addresses: list[Address] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._conns: set[Conn] = set()
        self._producers: dict[str, Conn] = {}
        self._owners = RunOwners()
        self._socket_inode: int | None = None
        self._closing = False
        self._encoded = EncodedEvents()
        self.refused = 0
        self.held = 0
        self.lane = Lane()
        self._pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="pulse-hub")
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
        # Every worker now, not at the first busy moment: a thread started
        # while runs are held would keep its few objects among theirs.
        await start_threads(self._pool, _WORKERS)
        if s.follow_home:
            self.homefeed = HomeFeed(s.home, max_runs=s.max_runs)
            primed = await self._blocking(self.homefeed.prime)
            for tid, events in primed.items():
                self.bus.seed(tid, events)
            self._feeds = (*self._feeds, self.homefeed)
        else:
            await self._blocking(self._seed_live_runs)
        await self.check_liveness()  # the first snapshots already say who is lost
        if s.socket_path is not None:
            await self._bind_unix(s.socket_path)
        if s.tcp is not None:
            server = await asyncio.start_server(
                self._on_tcp, s.tcp[0], s.tcp[1], limit=CHUNK, backlog=ACCEPT_BATCH
            )
            for sock in server.sockets:
                listen_wide(sock)
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
        make_dirs(path.parent)
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
                self._on_unix, str(path), limit=CHUNK, backlog=ACCEPT_BATCH
            )
        finally:
            os.umask(old_umask)
        for sock in server.sockets:
            listen_wide(sock)
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
            await self._blocking(self.homefeed.close)
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
        self._pool.shutdown(wait=False, cancel_futures=True)
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
            "held": self.held,
            "lane_waits": self.lane.waited,
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
        # Reads of at most CHUNK bytes, and the stream buffers at most 2 * CHUNK
        # more (its limit): 1,000 connections hold megabytes, not hundreds.
        writer.transport.max_size = CHUNK  # type: ignore[attr-defined]
        conn = Conn(writer, kind)
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
            if not self._closing:
                raise
            # Cancelled by close(): end quietly (the stream protocol's done
            # callback would report a cancelled task with a traceback).
        except (ConnectionError, OSError) as exc:
            log.debug("pulse hub connection lost", error=str(exc), **conn.logged)
        except Exception:  # one connection's bug must never stop the hub
            log.exception("pulse hub connection failed", **conn.logged)
        finally:
            self._conns.discard(conn)
            self._release(conn)
            conn.close()


async def start_threads(executor: Executor | None, count: int) -> None:
    """Start *count* threads of *executor* (None: the loop's default one) now.

    An executor starts a thread at the first moment it has more work than
    threads: while runs are held, the thread's few objects (kept for the
    process's life) would sit among theirs and keep the allocator's memory
    once they expire.
    """
    loop = asyncio.get_running_loop()
    meet = threading.Barrier(count)
    await asyncio.gather(*(loop.run_in_executor(executor, _meet, meet) for _ in range(count)))


def _meet(barrier: threading.Barrier) -> None:
    """Wait for every worker at *barrier* (each in its own thread); never fails."""
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(5.0)


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
