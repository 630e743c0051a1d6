"""The home feed follows what is being written, not every log it ever saw."""

from __future__ import annotations

import time
from pathlib import Path

from hubkit import meta, progress, status, write_log

from pulse_core.codec import encode
from pulse_transports._homefeed import HomeFeed


class TestIdleLogs:
    """A log silent for ``idle`` seconds is closed; it is followed again when it grows."""

    def test_a_silent_log_is_let_go_and_taken_up_again(self, tmp_path: Path) -> None:
        path = write_log(tmp_path, [meta("lost-1"), status("lost-1", 2, "running")])
        write_log(
            tmp_path, [meta("done-1"), status("done-1", 2, "running"), status("done-1", 3, "done")]
        )
        feed = HomeFeed(tmp_path, notifications=False, poll_interval=0.01)
        feed.idle = 0.2
        try:
            primed = feed.prime()
            assert set(primed) == {"lost-1", "done-1"}
            assert feed.followed == 1  # the ended run is not followed
            time.sleep(0.3)
            assert feed.step(timeout=0.05) == []
            assert feed.followed == 0  # silent past idle: let go (its file closed)
            with path.open("ab") as log:
                log.write(encode(progress("lost-1", 3, step=7)))
            events = feed.step(timeout=0.05)
            assert [(e.training_id, e.seq) for e in events if e.seq == 3] == [("lost-1", 3)]
            assert feed.followed == 1
        finally:
            feed.close()


class TestDeletedLogs:
    """What the feed keeps per ended log goes with the log (retention deleting runs)."""

    def test_a_deleted_ended_log_is_forgotten(self, tmp_path: Path) -> None:
        paths = [
            write_log(
                tmp_path,
                [
                    meta(f"done-{n}"),
                    status(f"done-{n}", 2, "running"),
                    status(f"done-{n}", 3, "done"),
                ],
            )
            for n in range(5)
        ]
        feed = HomeFeed(tmp_path, notifications=False, poll_interval=0.01)
        try:
            assert set(feed.prime()) == {f"done-{n}" for n in range(5)}
            assert feed.remembered == 5  # ended: skipped while unchanged
            for path in paths[:4]:
                path.unlink()
            feed.step(timeout=0.05)
            assert feed.remembered == 1
            assert feed.step(timeout=0.05) == []  # the one left is still not read again
        finally:
            feed.close()
