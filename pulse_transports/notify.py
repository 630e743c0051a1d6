"""Waking readers when a folder changes: OS notifications, else polling.

This module owns :class:`Notifier`: OS notifications through ``watchfiles``
(inotify, FSEvents, ...) when available, polling otherwise (or when
``PULSE_FOLLOW_POLLING=1``). Log followers (:mod:`pulse_transports.follow`)
and ``pulse watch`` wait on it. Must never import :mod:`pulse_transports.cli`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any, Final

from pulse_core._log import get_logger
from pulse_core.closing import ClosesOnExit

log = get_logger("pulse.follow")

#: Environment variable that forces polling instead of OS notifications.
ENV_POLLING: Final = "PULSE_FOLLOW_POLLING"
#: Polling interval when notifications are not available (seconds).
POLL_INTERVAL: Final = 0.05


def _polling_forced() -> bool:
    return os.environ.get(ENV_POLLING, "").strip().lower() in ("1", "true", "yes", "on")


class Notifier(ClosesOnExit):
    """Wake a reader when anything in a folder changes.

    Uses ``watchfiles`` (OS notifications; latency ~10 ms) in a daemon thread
    when it is installed, the folder exists and polling is not forced;
    otherwise :meth:`wait` simply sleeps ``poll_interval`` and says "maybe".

    Args:
        folder: the folder to watch (not recursive).
        poll_interval: the polling period without notifications.
        notifications: False to force polling; None for the default
            (notifications unless ``PULSE_FOLLOW_POLLING`` is set).
    """

    #: watchfiles step (ms): how long it waits for more changes before waking us.
    STEP_MS: Final = 5
    #: watchfiles debounce (ms): the longest it groups a stream of changes.
    DEBOUNCE_MS: Final = 20

    def __init__(
        self,
        folder: Path | str,
        *,
        poll_interval: float = POLL_INTERVAL,
        notifications: bool | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.poll_interval = poll_interval
        self._changed = threading.Event()
        self._paths: set[str] = set()
        self._paths_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.mode = "polling"
        wanted = not _polling_forced() if notifications is None else notifications
        if wanted and self.folder.is_dir():
            try:
                # The watcher is set up here, synchronously, so no change made
                # after __init__ returns is missed.
                from watchfiles._rust_notify import RustNotify

                notify = RustNotify([str(self.folder)], False, False, 300, False, False)
            except Exception as exc:  # noqa: BLE001 - not installed, no inotify slots, ...
                log.debug("pulse file notifications unavailable; polling", error=str(exc))
            else:
                self.mode = "notify"
                self._thread = threading.Thread(
                    target=self._watch, args=(notify,), name="pulse-notifier", daemon=True
                )
                self._thread.start()

    def _watch(self, notify: Any) -> None:
        try:
            while not self._stop.is_set():
                result = notify.watch(self.DEBOUNCE_MS, self.STEP_MS, 500, self._stop)
                if isinstance(result, set) and result:
                    with self._paths_lock:
                        self._paths.update(path for _change, path in result)
                    self._changed.set()
        except Exception as exc:  # noqa: BLE001 - any watcher failure falls back to polling
            log.warning("pulse file notifications failed; polling", error=str(exc))
            self.mode = "polling"
            self._changed.set()
        finally:
            with contextlib.suppress(Exception):
                notify.close()

    def wait(self, timeout: float) -> bool:
        """Block until something may have changed, or *timeout* seconds pass.

        Returns:
            True if a change was notified (always True when polling, after
            ``min(timeout, poll_interval)``), False on timeout.
        """
        if self.mode == "polling":
            self._stop.wait(max(0.0, min(timeout, self.poll_interval)))
            return True
        fired = self._changed.wait(max(0.0, timeout))
        self._changed.clear()
        return fired

    def take_changed(self) -> set[str] | None:
        """The paths notified as changed since the last call (and forget them).

        Returns:
            None when polling (any file may have changed).
        """
        if self.mode == "polling":
            return None
        with self._paths_lock:
            paths, self._paths = self._paths, set()
        return paths

    def close(self) -> None:
        """Stop watching."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
