"""Compaction of a run's JSONL log: which lines stay, and the rewrite itself.

This module owns the choice of lines a compacted log keeps (:func:`compact_lines`)
and the rewrite of a log into ``<log>.tmp`` (:func:`write_compacted`). The file
transport (:mod:`pulse_transports.file`) decides when to compact, renames the
temp file over the log and reopens it.

A big log is compacted out of process: ``python -m pulse_transports._compact
LOG TARGET PARENT_PID`` reads the log, writes and fsyncs ``LOG.tmp``, renames it
over ``LOG`` and prints ``{"kept": lines, "before": bytes, "after": bytes}``.
Decoding a multi-MiB log holds the GIL for long stretches and makes garbage;
in a fresh interpreter that work never reaches the training thread (the
writer thread waits for the child without the GIL). The child inherits the
run's lock fd, so a new writer cannot take the run while the child may still
rename; and it renames nothing once the writer that started it is gone. It
lowers its own CPU priority (``nice``) so that it yields a shared core to training.

The writer starts the child with :func:`run_child`: ``os.posix_spawn`` (a
``vfork``-style clone in glibc) costs the writer ~0.3-0.4 ms of CPU holding the
GIL, where ``subprocess.Popen``'s Python-level setup held it 0.6-1.5 ms in one
stretch -- time a training thread running Python waits for the GIL.

Imports no pulse_transports module but the file helpers (:mod:`~pulse_transports._logfile`):
the child imports little more than this one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import orjson

from pulse_core.codec import decode
from pulse_core.errors import DecodeError
from pulse_core.events import Event, Heartbeat, Metrics, Progress, StateCheckpoint
from pulse_transports._logfile import discard, replace, write_file

_SAMPLES: Final = (Progress, Metrics)
#: Exit code of a child whose parent (the writer) is gone before the rename.
ORPHANED: Final = 3
#: How much the child lowers its CPU priority.
NICENESS: Final = 10
#: What starts the child's report line in its output (stdout and stderr are
#: one pipe, so a warning may come before or after it).
REPORT_MARK: Final = b"\npulse-compact-report "
#: Bytes of the child's output kept (its report, or the end of its traceback).
OUTPUT_KEPT: Final = 64 * 1024


def tmp_path(path: Path) -> Path:
    """The temp file a compaction writes beside *path* before renaming it over."""
    return path.with_name(path.name + ".tmp")


def compact_lines(lines: list[bytes], target: int) -> list[bytes]:
    """Choose the lines a compacted log keeps, in their original order.

    Every line that is not progress, metrics or heartbeat is kept (bad lines
    are dropped); progress and metrics are downsampled in fixed buckets to fit
    *target* bytes; only the last heartbeat is kept; checkpoints are dropped
    (their line counts no longer hold; the writer appends a new one). Deterministic.
    """
    essential: list[int] = []
    samples: list[tuple[int, Event]] = []
    last_heartbeat = -1
    for index, line in enumerate(lines):
        try:
            event = decode(line)
        except DecodeError:
            continue
        if isinstance(event, _SAMPLES):
            samples.append((index, event))
        elif isinstance(event, Heartbeat):
            last_heartbeat = index
        elif isinstance(event, StateCheckpoint):
            continue  # the writer appends a fresh one right after compacting
        else:
            essential.append(index)
    if last_heartbeat >= 0:
        essential.append(last_heartbeat)
    essential_bytes = sum(len(lines[i]) + 1 for i in essential)
    budget = max(target - essential_bytes, target // 4)
    keep = set(essential)
    if samples:
        average = sum(len(lines[i]) + 1 for i, _ in samples) / len(samples)
        room = max(int(budget / average), 4)
        if room >= len(samples):
            keep.update(i for i, _ in samples)
        else:
            # Buckets are equal ranges of seq (not of line count), so a run
            # compacted many times keeps an even resolution over its whole
            # length. Each bucket keeps up to 5 lines: the last progress and
            # the first, last, lowest- and highest-loss metrics.
            buckets = max(room // 5, 1)
            first_seq, last_seq = samples[0][1].seq, samples[-1][1].seq
            span = max(last_seq - first_seq + 1, 1)
            grouped: dict[int, list[tuple[int, Event]]] = {}
            for item in samples:
                grouped.setdefault((item[1].seq - first_seq) * buckets // span, []).append(item)
            for bucket in grouped.values():
                keep.update(_bucket_keep(bucket))
    return [lines[i] for i in sorted(keep)]


def _bucket_keep(bucket: list[tuple[int, Event]]) -> set[int]:
    progress = [i for i, e in bucket if isinstance(e, Progress)]
    metrics = [(i, e) for i, e in bucket if isinstance(e, Metrics)]
    chosen: set[int] = set()
    if progress:
        chosen.add(progress[-1])
    if metrics:
        chosen.add(metrics[0][0])
        chosen.add(metrics[-1][0])
        with_loss = [
            (e.loss, i) for i, e in metrics if isinstance(e, Metrics) and e.loss is not None
        ]
        if with_loss:
            chosen.add(min(with_loss)[1])
            chosen.add(max(with_loss)[1])
    return chosen


def write_compacted(path: Path, target: int) -> tuple[int, int, int]:
    """Write the compacted *path* to its temp file and fsync it (no rename).

    Returns:
        (lines kept, bytes before, bytes after). On an error the temp file is
        removed and the log is untouched.
    """
    data = path.read_bytes()
    kept = compact_lines(data.splitlines(), target=target)
    body = b"".join(line + b"\n" for line in kept)
    write_file(tmp_path(path), body)
    return len(kept), len(data), len(body)


def run_child(
    command: list[str], env: Mapping[str, str], keep_fd: int, timeout: float
) -> tuple[int | None, bytes]:
    """Run *command* (an absolute executable first) and wait for it, without the GIL.

    The child gets ``/dev/null`` as stdin, one pipe as stdout and stderr, and
    *keep_fd* (the run's lock) as its fd 3 or 4; no other descriptor of ours
    (inheritable ones are closed in it, as ``close_fds`` does). Returns its
    exit code (None if someone else reaped it) and the last
    :data:`OUTPUT_KEPT` bytes it wrote.

    Raises:
        OSError: the child could not be started.
        TimeoutError: it ran past *timeout* seconds; it was killed.
    """
    read_fd, write_fd = os.pipe()
    lifted: list[int] = []
    try:
        # Sources of the child's dup2s above 2: the child's own 0-2 are set first.
        write_fd, keep_fd = (_above_stdio(fd, lifted) for fd in (write_fd, keep_fd))
        closed = [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable(write_fd, keep_fd)]
        actions: list[tuple[Any, ...]] = [
            *closed,
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, write_fd, 1),
            (os.POSIX_SPAWN_DUP2, write_fd, 2),
            (os.POSIX_SPAWN_DUP2, keep_fd, 4 if keep_fd == 3 else 3),
        ]
        spawn = _libc[0] if _libc else None
        if spawn is None:
            pid = os.posix_spawn(command[0], command, env, file_actions=actions)
        else:
            pid = spawn.spawn(command, env, actions)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
        for fd in lifted:
            with contextlib.suppress(OSError):
                os.close(fd)
    try:
        output = _read_until_exit(read_fd, pid, time.monotonic() + timeout)
    finally:
        os.close(read_fd)
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:  # reaped by the application (a SIGCHLD handler, os.wait())
        return None, output
    return os.waitstatus_to_exitcode(status), output


class _LibcSpawn:
    """libc's ``posix_spawn`` called through ctypes, which lets the GIL go meanwhile.

    ``os.posix_spawn`` holds the GIL until the child has exec'ed: the parent
    thread is suspended until then (a ``vfork``-style clone), and on a loaded
    machine the child may wait milliseconds for a CPU -- all that time a
    training thread waits for the GIL. A foreign call through ctypes runs
    without it. Takes the same file actions as ``os.posix_spawn``.
    """

    def __init__(self) -> None:
        import ctypes  # ~5-20 ms: only for a writer that compacts in a child

        libc = ctypes.CDLL(None, use_errno=True)
        self._ctypes = ctypes
        self._spawn = libc.posix_spawn
        self._init = libc.posix_spawn_file_actions_init
        self._destroy = libc.posix_spawn_file_actions_destroy
        self._adders = {
            os.POSIX_SPAWN_OPEN: libc.posix_spawn_file_actions_addopen,
            os.POSIX_SPAWN_DUP2: libc.posix_spawn_file_actions_adddup2,
            os.POSIX_SPAWN_CLOSE: libc.posix_spawn_file_actions_addclose,
        }

    def spawn(
        self, command: list[str], env: Mapping[str, str], actions: list[tuple[Any, ...]]
    ) -> int:
        """Start *command* (an absolute path first); its pid. OSError if it cannot start."""
        c = self._ctypes
        # posix_spawn_file_actions_t: 80 bytes in glibc, a pointer on macOS.
        file_actions = c.create_string_buffer(_FILE_ACTIONS_BYTES)
        _check(self._init(file_actions))
        try:
            for kind, *args in actions:
                if kind == os.POSIX_SPAWN_OPEN:
                    args[1] = os.fsencode(args[1])
                _check(self._adders[kind](file_actions, *args))
            argv = (c.c_char_p * (len(command) + 1))(*map(os.fsencode, command), None)
            pairs = [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()]
            envp = (c.c_char_p * (len(pairs) + 1))(*pairs, None)
            pid = c.c_int()
            _check(self._spawn(c.byref(pid), argv[0], file_actions, None, argv, envp), command[0])
            return int(pid.value)
        finally:
            self._destroy(file_actions)


#: Room for a posix_spawn_file_actions_t (80 bytes in glibc, 8 on macOS).
_FILE_ACTIONS_BYTES: Final = 512
#: The prepared _LibcSpawn (empty until prepare_spawn; None if ctypes cannot do it).
_libc: list[_LibcSpawn | None] = []


def prepare_spawn() -> None:
    """Get ready to start compaction children without holding the GIL (once per process).

    Called when a log that may compact in a child is opened (on the thread
    that builds the run, before the training loop): importing ctypes there
    keeps that one-off cost out of the loop. Without ctypes or libc's
    functions, :func:`run_child` uses ``os.posix_spawn``.
    """
    if _libc:
        return
    try:
        _libc.append(_LibcSpawn())
    except (ImportError, OSError, AttributeError):
        _libc.append(None)


def _check(err: int, name: str | None = None) -> None:
    if err:
        raise OSError(err, os.strerror(err), name)


def _above_stdio(fd: int, lifted: list[int]) -> int:
    """*fd*, or a close-on-exec copy of it above 2 (noted in *lifted*) if it is 0-2."""
    if fd > 2:
        return fd
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    lifted.append(copy)
    return copy


def _inheritable(*keep: int) -> list[int]:
    """Our descriptors above 2 a child would inherit (made inheritable by the application)."""
    try:
        names = os.listdir("/proc/self/fd" if sys.platform == "linux" else "/dev/fd")
    except OSError:
        return []
    found = []
    for name in names:
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):  # the listing's own fd, now closed
                if os.get_inheritable(fd):
                    found.append(fd)
    return found


def _read_until_exit(fd: int, pid: int, deadline: float) -> bytes:
    """The child's output until it closes the pipe (exits); kill it at *deadline*."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    kept = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            raise TimeoutError(errno.ETIMEDOUT, "compaction child ran past its timeout")
        if not poller.poll(min(left, 1.0) * 1000):
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return kept
        kept = (kept + chunk)[-OUTPUT_KEPT:]


def read_report(output: bytes) -> tuple[int, int] | None:
    """(lines kept, lines before) from the child's output; None without a whole report.

    The report is the last line that starts with :data:`REPORT_MARK`, wherever
    it stands among what else the child printed (a warning at exit, say).
    """
    at = output.rfind(REPORT_MARK)
    if at < 0:
        return None
    line = output[at + len(REPORT_MARK) :].partition(b"\n")[0]
    try:
        report = orjson.loads(line)
        return int(report["kept"]), int(report["before"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def main(argv: list[str]) -> int:
    """The child's entry: compact LOG to TARGET bytes and rename, if PARENT_PID lives."""
    path, target, parent = Path(argv[0]), int(argv[1]), int(argv[2])
    with contextlib.suppress(OSError, AttributeError):
        os.nice(NICENESS)  # background work: the training process comes first
    kept, before, after = write_compacted(path, target)
    tmp = tmp_path(path)
    if os.getppid() != parent:
        # The writer died while we worked: a new writer may be about to append
        # to the old log; leave it whole (the inherited lock is released on exit).
        discard(tmp)
        return ORPHANED
    replace(tmp, path)
    report = orjson.dumps({"kept": kept, "before": before, "after": after})
    sys.stdout.buffer.write(REPORT_MARK + report + b"\n")
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
