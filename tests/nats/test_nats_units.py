"""Unit tests of the NATS transport that need no server: names, options, documents, queue."""

from __future__ import annotations

from pathlib import Path

import pytest

from pulse_core.codec import MAX_LINE_BYTES, decode
from pulse_core.errors import ConfigError, InvalidTrainingId
from pulse_core.events import (
    ErrorReported,
    Event,
    Heartbeat,
    Metrics,
    Progress,
    RunMeta,
    StatusChanged,
    UnknownEvent,
)
from pulse_core.reducer import replay
from pulse_transports.nats import (
    NatsAuthError,
    NatsOptions,
    NatsSink,
    NatsUnavailable,
    StoreConfig,
    explain,
    history_document,
    msg_id,
    read_document,
    redact,
    run_filter,
    run_token,
    state_document,
    subject_of,
    training_id_of,
)
from pulse_transports.registry import make_sinks

TID = "exp.v2_run-1"


def _events(tid: str = TID) -> list[Event]:
    return [
        RunMeta(training_id=tid, seq=1, timestamp=10.0, name="n", total_epochs=2),
        StatusChanged(training_id=tid, seq=2, timestamp=11.0, status="preparing"),
        StatusChanged(training_id=tid, seq=3, timestamp=12.0, status="running"),
        Progress(training_id=tid, seq=4, timestamp=13.0, epoch=1, total_epochs=2),
        Metrics(training_id=tid, seq=5, timestamp=14.0, loss=0.5, extra={"lr": 0.1}),
        Metrics(training_id=tid, seq=6, timestamp=15.0, loss=0.25),
        ErrorReported(training_id=tid, seq=7, timestamp=16.0, error_code="X", message="m"),
    ]


class TestRunToken:
    """A training id maps one to one onto a dot-free subject token."""

    def test_dots_become_equals_and_back(self) -> None:
        assert run_token(TID) == "exp=v2_run-1"
        assert training_id_of(run_token(TID)) == TID

    def test_ids_that_would_make_empty_tokens_round_trip(self) -> None:
        for tid in ("a..b", "a.", "x.y.z.", "A-b_c"):
            token = run_token(tid)
            assert "." not in token
            assert training_id_of(token) == tid

    def test_invalid_ids_are_refused(self) -> None:
        with pytest.raises(InvalidTrainingId):
            run_token("a b")
        with pytest.raises(InvalidTrainingId):
            run_token("*")

    def test_run_filter_covers_one_run_or_all(self) -> None:
        assert run_filter(TID) == "pulse.v2.exp=v2_run-1.>"
        assert run_filter() == "pulse.v2.>"


class TestSubjects:
    """Kept kinds get a subject per event, sampled kinds one per run and kind."""

    def test_kept_events_have_their_own_subject(self) -> None:
        meta, status = _events()[:2]
        assert subject_of(meta) == "pulse.v2.exp=v2_run-1.meta.1"
        assert subject_of(status) == "pulse.v2.exp=v2_run-1.status.2"
        error = _events()[-1]
        assert subject_of(error) == "pulse.v2.exp=v2_run-1.error.7"

    def test_sampled_events_share_one_subject_per_kind(self) -> None:
        events = _events()
        assert subject_of(events[4]) == subject_of(events[5]) == "pulse.v2.exp=v2_run-1.metrics"
        beat = Heartbeat(training_id=TID, seq=9, timestamp=1.0)
        assert subject_of(beat) == "pulse.v2.exp=v2_run-1.heartbeat"

    def test_unknown_types_are_sampled_and_sanitised(self) -> None:
        odd = UnknownEvent(training_id=TID, seq=3, timestamp=1.0, type="gpu_temp")
        assert subject_of(odd) == "pulse.v2.exp=v2_run-1.gpu_temp"
        bad = UnknownEvent(training_id=TID, seq=3, timestamp=1.0, type="a.b*>")
        assert subject_of(bad) == "pulse.v2.exp=v2_run-1.unknown"

    def test_msg_id_is_training_id_and_seq(self) -> None:
        assert msg_id(_events()[2]) == f"{TID}:3"


class TestRedaction:
    """URLs are shown without userinfo and configured secrets never appear."""

    def test_userinfo_is_hidden(self) -> None:
        assert redact("nats://alice:pw@host:4222") == "nats://***@host:4222"
        assert redact("tls://s3cret@host") == "tls://***@host"

    def test_every_server_of_a_list_is_redacted(self) -> None:
        text = redact("nats://a:b@h1:4222,nats://c:d@h2:4222")
        assert text == "nats://***@h1:4222,nats://***@h2:4222"

    def test_plain_urls_are_unchanged(self) -> None:
        assert redact("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"

    def test_options_hide_their_own_secrets(self) -> None:
        options = NatsOptions(url="nats://u:pw@h:1", token="tok-123", password="pass-456")
        shown = options.redact("failed with tok-123 and pass-456 at nats://u:pw@h:1")
        assert "tok-123" not in shown
        assert "pass-456" not in shown
        assert "pw@" not in shown
        assert "tok-123" not in repr(options)
        assert options.shown == "nats://***@h:1"


class TestOptions:
    """Given values win, the PULSE_NATS_* variables fill the rest, then defaults."""

    def test_given_values_win_over_the_environment(self) -> None:
        env = {"PULSE_NATS_URL": "nats://env:1", "PULSE_NATS_TOKEN": "env-token"}
        options = NatsOptions.resolve({"url": "nats://given:2"}, env)
        assert options.url == "nats://given:2"
        assert options.token == "env-token"

    def test_defaults_without_anything(self) -> None:
        options = NatsOptions.resolve({}, {})
        assert options.url == "nats://127.0.0.1:4222"
        assert options.token is None

    def test_credentials_are_passed_through(self, tmp_path: Path) -> None:
        creds = tmp_path / "user.creds"
        options = NatsOptions.resolve(
            {"url": "nats://a:1,nats://b:2", "user": "u", "password": "p", "creds": str(creds)}, {}
        )
        kwargs = options.connect_kwargs()
        assert kwargs["servers"] == ["nats://a:1", "nats://b:2"]
        assert (kwargs["user"], kwargs["password"]) == ("u", "p")
        assert kwargs["user_credentials"] == str(creds)
        assert "tls" not in kwargs

    def test_tls_is_enabled_by_a_tls_url(self) -> None:
        kwargs = NatsOptions(url="tls://h:4222", tls_hostname="h").connect_kwargs()
        assert kwargs["tls"] is not None
        assert kwargs["tls_hostname"] == "h"

    def test_authorization_failures_are_named(self) -> None:
        options = NatsOptions(url="nats://127.0.0.1:1", token="s3cret")
        error = explain(Exception("nats: 'Authorization Violation' s3cret"), options)
        assert isinstance(error, NatsAuthError)
        assert "refused the credentials" in str(error)
        assert "s3cret" not in str(error)
        other = explain(OSError("connection refused"), options)
        assert isinstance(other, NatsUnavailable)
        assert "nats://127.0.0.1:1" in str(other)


class TestStoreConfig:
    """The stream bounds sampled subjects, ages and bytes; bad limits are refused."""

    def test_stream_config_has_every_limit(self) -> None:
        config = StoreConfig().stream_config()
        assert config.subjects == ["pulse.v2.>"]
        assert config.max_msgs_per_subject == 256
        assert config.max_age == 30 * 86400.0
        assert config.max_bytes == 1 << 30
        assert config.duplicate_window == 120.0
        assert config.discard is not None
        assert config.discard.value == "old"

    def test_kv_config_keeps_one_value_per_run(self) -> None:
        config = StoreConfig(bucket="b").kv_config()
        assert (config.bucket, config.history) == ("b", 1)
        assert config.ttl == 30 * 86400.0

    def test_from_table_reads_limits_and_ignores_the_rest(self) -> None:
        store = StoreConfig.from_table({"url": "x", "max_msgs_per_subject": 10, "max_age": 600})
        assert (store.max_msgs_per_subject, store.max_age) == (10, 600)

    def test_mistyped_or_impossible_limits_are_refused(self) -> None:
        with pytest.raises(ConfigError, match="max_msgs_per_subject"):
            StoreConfig.from_table({"max_msgs_per_subject": "ten"})
        with pytest.raises(ConfigError, match="max_msgs_per_subject"):
            StoreConfig.from_table({"max_msgs_per_subject": 0})
        with pytest.raises(ConfigError, match="duplicate_window"):
            StoreConfig(max_age=10.0, duplicate_window=60.0).check()


class TestDocuments:
    """The bucket's values carry the state, view and v1 snapshot, and read back."""

    def test_state_and_history_round_trip(self) -> None:
        state = replay(_events())
        doc = read_document(
            state_document(state, stream_seq=42, now=20.0),
            history_document(state, stream_seq=42),
        )
        assert doc.training_id == TID
        assert doc.stream_seq == 42
        assert doc.state == state

    def test_without_history_the_rest_is_whole(self) -> None:
        state = replay(_events())
        doc = read_document(state_document(state, stream_seq=1, now=20.0))
        assert doc.state.history == {}
        assert doc.state.metrics == state.metrics
        assert doc.state.errors == state.errors

    def test_view_and_v1_are_stored(self) -> None:
        import orjson

        state = replay(_events())
        raw = orjson.loads(state_document(state, stream_seq=3, now=20.0))
        assert raw["view"]["status"] == "running"
        assert raw["v1"]["loss"] == 0.25
        assert set(raw["v1"]) == {"status", "epoch", "total_epochs", "loss", "message", "timestamp"}

    def test_other_formats_are_refused(self) -> None:
        with pytest.raises(ValueError, match="version"):
            read_document(b'{"format": 99}')
        with pytest.raises(ValueError, match="JSON"):
            read_document(b"not json")


class TestSinkQueue:
    """Without a server the sink queues: samples coalesce, kept events stay, bounds hold."""

    def test_progress_coalesces_between_kept_events(self) -> None:
        sink = NatsSink(url="nats://127.0.0.1:1")
        events = _events()
        for event in events[:3]:
            sink.write(event)
        for seq in range(10, 20):
            sink.write(Progress(training_id=TID, seq=seq, timestamp=1.0, step=seq))
        sink.write(StatusChanged(training_id=TID, seq=20, timestamp=2.0, status="running"))
        sink.write(Progress(training_id=TID, seq=21, timestamp=3.0, step=21))
        seqs = [item.event.seq for item in sink._queue]
        assert seqs == [1, 2, 3, 19, 20, 21]
        assert sink.coalesced == 9

    def test_the_byte_budget_drops_samples_first(self) -> None:
        sink = NatsSink(url="nats://127.0.0.1:1", buffer_bytes=64 * 1024, queue=10_000)
        big = "x" * 3000
        sink.write(RunMeta(training_id=TID, seq=1, timestamp=1.0))
        for seq in range(2, 60):
            sink.write(
                StatusChanged(
                    training_id=TID, seq=seq, timestamp=1.0, status="running", message=big
                )
            )
            sink.write(Metrics(training_id=TID, seq=seq + 1000, timestamp=1.0, extra={"a": 1.0}))
        assert sink._bytes <= 64 * 1024
        kinds = [item.kind for item in sink._queue]
        assert kinds[0] is None
        assert sink._queue[0].event.seq == 1
        assert sink.dropped > 0
        assert all(k is None for k in kinds[:-1])  # statuses kept before samples

    def test_an_oversized_error_sheds_its_details(self) -> None:
        sink = NatsSink(url="nats://127.0.0.1:1")
        error = ErrorReported(
            training_id=TID,
            seq=5,
            timestamp=1.0,
            error_code="X",
            message="m",
            details={"blob": "y" * (2 << 20)},
        )
        sink.write(error)
        held = sink._queue[0]
        # The codec bounds every line to 64 KiB (issue 13.11): the details are
        # truncated with a marker rather than shed, and the payload fits.
        back = decode(held.payload)
        assert isinstance(back, ErrorReported)
        assert back.details is not None
        assert "…[truncated" in back.details["blob"]
        assert len(held.payload) <= MAX_LINE_BYTES


class TestRegistry:
    """The transport loads by name and its options are checked like any other's."""

    def test_nats_is_built_from_configuration(self, tmp_path: Path) -> None:
        sinks = make_sinks(
            ("nats",), tmp_path, {"nats": {"url": "nats://h:1", "max_msgs_per_subject": 8}}
        )
        assert isinstance(sinks[0], NatsSink)
        assert sinks[0].store.max_msgs_per_subject == 8
        assert sinks[0].interval == 0.1

    def test_unknown_option_is_named(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"'colour'.*valid options"):
            make_sinks(("nats",), tmp_path, {"nats": {"colour": "red"}})

    def test_bad_queue_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="queue"):
            make_sinks(("nats",), tmp_path, {"nats": {"queue": 2}})
