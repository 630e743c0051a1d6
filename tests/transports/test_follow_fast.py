"""A state-only read (``LogFollower(fast=True)``) ends exactly as an ordinary one."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pulse_core.codec import encode
from pulse_core.events import Event, Heartbeat, Metrics, Progress, RunMeta, StatusChanged
from pulse_transports.follow import LogFollower, read_log

TID = "fast-follow"


def run(count: int) -> list[Event]:
    out: list[Event] = [RunMeta(TID, 1, 1.0, total_epochs=3), StatusChanged(TID, 2, 1.0, "running")]
    for seq in range(3, count + 3):
        if seq % 3 == 0:
            out.append(Progress(TID, seq, float(seq), epoch=seq // 10, step=seq))
        elif seq % 3 == 1:
            out.append(Metrics(TID, seq, float(seq), loss=1.0 / seq, extra={"acc": 0.5}))
        else:
            out.append(Heartbeat(TID, seq, float(seq)))
    return out


def read(path: Path, fast: bool, training_id: str | None) -> tuple[LogFollower, int]:
    follower = LogFollower(path, fast=fast, training_id=training_id)
    try:
        returned = len(follower.poll()) + len(follower.settle())
    finally:
        follower.close()
    return follower, returned + (follower.fast.folded if follower.fast else 0)


def summary(follower: LogFollower) -> tuple[object, ...]:
    return (
        follower.state,
        follower.lines,
        follower.bad_lines,
        follower.blank_lines,
        follower.skipped,
        [(b.line, b.offset, b.reason) for b in follower.bad],
        follower.offset,
    )


class TestStateOnlyRead:
    """Same state, counts and bad-line reports; the common lines are not returned."""

    @settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        st.integers(0, 60),
        st.lists(
            st.tuples(
                st.integers(0, 70),
                st.sampled_from(
                    [b"", b"garbage", b"{}", b'{"type":"progress"}', b"\x00\xff", b"   "]
                ),
            ),
            max_size=5,
        ),
        st.lists(st.integers(0, 70), max_size=4),
        st.booleans(),
        st.booleans(),
    )
    def test_same_as_ordinary_read(
        self,
        tmp_path: Path,
        count: int,
        junk: list[tuple[int, bytes]],
        repeats: list[int],
        owned: bool,
        torn: bool,
    ) -> None:
        """Bad, blank, repeated and torn lines: everything the follower reports is the same."""
        lines = [encode(e) for e in run(count)]
        for at in repeats:
            if lines:
                lines.insert(min(at, len(lines)), lines[at % len(lines)])
        for at, line in junk:
            lines.insert(min(at, len(lines)), line + b"\n")
        data = b"".join(lines)
        if torn and data:
            data = data[:-1]  # the last line without its newline
        path = tmp_path / f"{TID}.jsonl"
        path.write_bytes(data)
        owner = TID if owned else None
        slow, slow_events = read(path, False, owner)
        fast, fast_events = read(path, True, owner)
        assert summary(fast) == summary(slow)
        assert fast_events == slow_events

    def test_common_lines_not_returned(self, tmp_path: Path) -> None:
        """The run's first events come back; its common lines are only folded."""
        path = tmp_path / f"{TID}.jsonl"
        path.write_bytes(b"".join(encode(e) for e in run(30)))
        follower = LogFollower(path, fast=True)
        events = follower.poll()
        follower.close()
        assert [e.seq for e in events] == [1, 2]
        assert follower.fast is not None
        assert follower.fast.folded == 30
        assert follower.state.last_seq == 32
        assert read_log(path).state == follower.state
