"""A supervised child's stderr: passed through unchanged, its tail kept and classified.

This module owns the tee between a child's stderr and the supervisor's (a
pipe, or a pseudo-terminal when the supervisor's stderr is a terminal), the
bounded tail it keeps (40 lines / 8 KiB), and :func:`classify_text`, the
rules of :func:`pulse_core.emitter.classify_exception` applied to that text.
Private to :mod:`pulse_transports.supervise`, which re-exports the public
names; must not import other ``pulse_transports`` modules.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import sys
import termios
import threading
from typing import Any, Final

#: The stderr tail kept for the error's details.
TAIL_LINES: Final = 40
TAIL_BYTES: Final = 8192
#: Seconds to wait for the stderr pipe to drain after the child exited (a
#: grandchild may keep it open).
DRAIN_WAIT: Final = 2.0

_CUDA_OOM = re.compile(
    r"CUDA out of memory|OutOfMemoryError|ResourceExhaustedError|"
    r"RuntimeError:.*out of memory|CUBLAS_STATUS_ALLOC_FAILED",
    re.IGNORECASE,
)
_NOT_FOUND = re.compile(
    r"FileNotFoundError|DatasetNotFoundError|DataFileNotFound|No such file or directory"
)
_MEMORY = re.compile(r"\bMemoryError\b")
_TRACEBACK = "Traceback (most recent call last):"
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*$")


def classify_text(tail: str) -> tuple[str, bool]:
    """Map a crashed process's stderr tail to ``(error_code, is_retryable)``.

    The rules of :func:`pulse_core.emitter.classify_exception`, applied to
    text, newest line first (the last exception decides): CUDA/torch/TF
    out-of-memory -> ``CUDA_OOM`` (retryable); a missing file ->
    ``DATASET_NOT_FOUND``; ``MemoryError`` -> ``OUT_OF_MEMORY`` (retryable);
    another Python traceback -> ``UNHANDLED_EXCEPTION``; nothing recognised ->
    ``PROCESS_CRASHED``.
    """
    for line in reversed(tail.splitlines()):
        if _CUDA_OOM.search(line):
            return "CUDA_OOM", True
        if _NOT_FOUND.search(line):
            return "DATASET_NOT_FOUND", False
        if _MEMORY.search(line):
            return "OUT_OF_MEMORY", True
    if _TRACEBACK in tail:
        return "UNHANDLED_EXCEPTION", False
    return "PROCESS_CRASHED", False


def last_words(tail: str) -> str:
    """The line of a stderr tail that says most: the last exception line, else the last line."""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return line
    return lines[-1] if lines else ""


def bounded_tail(
    data: bytes, lines: int = TAIL_LINES, limit: int = TAIL_BYTES, cut: bool = False
) -> str:
    """The last *lines* lines of *data*, at most *limit* bytes, decoded with replacement.

    *cut* says *data* lost its beginning: its first line is partial and dropped.
    """
    if cut and b"\n" in data:
        data = data.split(b"\n", 1)[1]
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
    # A line redrawn with "\r" (a progress bar) counts as what a terminal shows last.
    shown = [line.rsplit("\r", 1)[-1] for line in text.rstrip("\n").split("\n")][-lines:]
    while len(shown) > 1 and len("\n".join(shown).encode()) > limit:
        shown.pop(0)
    tail = "\n".join(shown)
    return tail.encode()[-limit:].decode("utf-8", errors="ignore") if shown else ""


class StderrTee:
    """Pass a child's stderr through unchanged and keep its tail.

    A daemon thread reads the pipe and writes every chunk to *target* (a file
    descriptor; None: keep the tail only), keeping the last bytes for
    :meth:`tail`.
    """

    def __init__(self, source: int, target: int | None) -> None:
        self._source = source
        self._target = target
        self._buffer = bytearray()
        self._cut = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, name="pulse-stderr", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            while True:
                try:
                    chunk = os.read(self._source, 65536)
                except InterruptedError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                self._forward(chunk)
                with self._lock:
                    self._buffer += chunk
                    if len(self._buffer) > 4 * TAIL_BYTES:
                        del self._buffer[: -2 * TAIL_BYTES]
                        self._cut = True
        finally:
            with contextlib.suppress(OSError):
                os.close(self._source)

    def _forward(self, chunk: bytes) -> None:
        if self._target is None:
            return
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(self._target, view) :]
        except OSError:
            self._target = None  # the terminal went away: keep the tail only

    def drain(self, timeout: float = DRAIN_WAIT) -> None:
        """Wait for the pipe to close (every writer gone), at most *timeout* s."""
        self._thread.join(timeout)

    def tail(self) -> str:
        """The last lines of what the child wrote to stderr so far."""
        with self._lock:
            data, cut = bytes(self._buffer), self._cut
        return bounded_tail(data, cut=cut)


def tee_target(stderr: Any) -> tuple[bool, int | None]:
    """Whether to tee a Popen ``stderr`` argument, and the descriptor to pass it to."""
    if stderr is None:
        try:
            return True, sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):
            return True, 2
    if stderr == subprocess.DEVNULL:
        return True, None
    if isinstance(stderr, int):
        return (True, stderr) if stderr >= 0 else (False, None)  # PIPE, STDOUT: the caller's
    fileno = getattr(stderr, "fileno", None)
    if fileno is not None:
        with contextlib.suppress(OSError, ValueError):
            return True, int(fileno())
    return False, None


def tee_channel(target: int | None) -> tuple[int, int]:
    """The ``(read, write)`` descriptors the child's stderr goes through.

    A pipe; a pseudo-terminal when *target* is a terminal, so the child still
    sees one (colours, progress bars) -- with output translation off and the
    terminal's size, so every byte reaches *target* unchanged.
    """
    if target is not None and os.isatty(target):
        with contextlib.suppress(OSError):
            read_end, write_end = os.openpty()
            try:
                attributes = termios.tcgetattr(write_end)
                attributes[1] &= ~termios.OPOST  # no "\n" -> "\r\n": bytes pass unchanged
                termios.tcsetattr(write_end, termios.TCSANOW, attributes)
                with contextlib.suppress(OSError):
                    size = fcntl.ioctl(target, termios.TIOCGWINSZ, b"\0" * 8)
                    fcntl.ioctl(write_end, termios.TIOCSWINSZ, size)
            except (OSError, termios.error):
                os.close(read_end)
                os.close(write_end)
            else:
                return read_end, write_end
    return os.pipe()
