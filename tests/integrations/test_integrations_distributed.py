"""Distributed jobs: one reporting rank, the world size in the metadata, other ranks' failures."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pulse_core.emitter import TrainingRun
from pulse_core.events import ErrorReported, RunMeta, StatusChanged
from pulse_core.state import RunState
from pulse_core.testing import RecordingSink
from pulse_transports.integrations.distributed import (
    MainRun,
    PeerRun,
    RankError,
    RankInfo,
    agree_training_id,
    open_run,
    peer_ending,
    rank_dir,
    rank_info,
    read_rank_errors,
    registration_path,
    write_rank_error,
)

WORKER = Path(__file__).with_name("ddp_worker.py")
TID = "20261129-000000-000-aaaaaaaaaa"


class TestRankInfo:
    """The rank and world size come from the launcher's environment."""

    @pytest.mark.parametrize(
        ("env", "expected"),
        [
            ({}, RankInfo(0, 1, 0)),
            ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, RankInfo(3, 8, 1)),
            ({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4"}, RankInfo(2, 4, 0)),
            ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, RankInfo(0, 2, 0)),
            ({"LOCAL_RANK": "1", "WORLD_SIZE": "2"}, RankInfo(1, 2, 1)),
            ({"LOCAL_RANK": "0", "NODE_RANK": "1", "WORLD_SIZE": "4"}, RankInfo(1, 4, 0)),
            ({"RANK": "junk", "WORLD_SIZE": "0"}, RankInfo(0, 1, 0)),
        ],
    )
    def test_from_env(self, env: dict[str, str], expected: RankInfo) -> None:
        """Each launcher's variables give the global rank; only rank 0 is main."""
        info = rank_info(env)
        assert info == expected
        assert info.is_main is (expected.rank == 0)


class TestTrainingId:
    """Every rank agrees on the training_id."""

    def test_env_wins(self) -> None:
        """PULSE_TRAINING_ID is used by every rank, without a broadcast."""
        env = {"PULSE_TRAINING_ID": TID}
        assert agree_training_id(RankInfo(1, 2), None, env) == TID

    def test_broadcast_from_rank_zero(self) -> None:
        """Rank 0 makes an id; a non-zero rank gets the one the broadcast delivers."""
        sent: list[str] = []

        def broadcast(value: str) -> str:
            sent.append(value)
            return TID

        assert agree_training_id(RankInfo(0, 2), broadcast, {}) == TID
        assert sent[0] != ""  # rank 0 offered a fresh id
        assert agree_training_id(RankInfo(1, 2), lambda v: TID, {}) == TID

    def test_no_broadcast(self) -> None:
        """Without a way to share it, other ranks do not know the id."""
        assert agree_training_id(RankInfo(1, 2), None, {}) is None
        assert agree_training_id(RankInfo(0, 2), None, {})


class TestOpenRun:
    """open_run gives rank 0 the real run and other ranks a silent one."""

    def test_single_process(self, tmp_path: Path) -> None:
        """A single process gets a plain TrainingRun without world size."""
        sink = RecordingSink()
        with open_run(env={}, sinks=[sink], background=False) as run:
            assert type(run) is TrainingRun
            run.progress(step=1)
        assert sink.of_type(RunMeta)[0].world_size is None

    def test_rank_zero(self, tmp_path: Path) -> None:
        """Rank 0 of 4 reports, with world_size 4 in the metadata."""
        sink = RecordingSink()
        env = {"RANK": "0", "WORLD_SIZE": "4", "PULSE_TRAINING_ID": TID}
        with open_run(env=env, home=tmp_path, sinks=[sink], background=False) as run:
            assert isinstance(run, MainRun)
            assert run.training_id == TID
            run.progress(step=1)
        assert sink.of_type(RunMeta)[0].world_size == 4
        assert sink.of_type(StatusChanged)[-1].status == "done"

    def test_other_rank_is_silent(self, tmp_path: Path) -> None:
        """Rank 2 reports nothing and, once closed, leaves nothing behind."""
        env = {"RANK": "2", "WORLD_SIZE": "4", "PULSE_TRAINING_ID": TID}
        with open_run(env=env, home=tmp_path) as run:
            assert isinstance(run, PeerRun)
            run.progress(epoch=1, step=3)
            run.metrics(loss=0.5)
            run.status("running")
        assert list(tmp_path.iterdir()) == []

    def test_all_ranks(self, tmp_path: Path) -> None:
        """Configured, every rank reports its own run named after rank 0's."""
        sink = RecordingSink()
        env = {"RANK": "2", "WORLD_SIZE": "4", "PULSE_TRAINING_ID": TID, "PULSE_RANKS": "all"}
        with open_run(env=env, home=tmp_path, sinks=[sink], background=False) as run:
            assert run.training_id == f"{TID}.rank2"
        meta = sink.of_type(RunMeta)[0]
        assert (meta.world_size, meta.labels["rank"]) == (4, "2")


class TestPeerFailures:
    """A failure on another rank reaches rank 0's run as its error."""

    def test_peer_writes_its_error(self, tmp_path: Path) -> None:
        """An exception on rank 1 becomes rank-1.json with its code and traceback."""
        peer = PeerRun(TID, rank=1, world_size=2, home=tmp_path)
        with pytest.raises(RuntimeError), peer:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1 GiB")
        (error,) = read_rank_errors(tmp_path, TID)
        assert (error.rank, error.error_code, error.is_retryable) == (1, "CUDA_OOM", True)
        assert error.pid == os.getpid()
        assert "Traceback" in error.details["traceback"]

    def test_interrupt_is_not_a_failure(self, tmp_path: Path) -> None:
        """Ctrl-C on a peer writes nothing: rank 0 sees the same interrupt."""
        peer = PeerRun(TID, rank=1, world_size=2, home=tmp_path)
        peer.fail_with(KeyboardInterrupt())
        assert read_rank_errors(tmp_path, TID) == []
        assert peer.current_status == "cancelled"

    def test_watcher_reports_into_the_run(self, tmp_path: Path) -> None:
        """Rank 0's watcher turns a rank error file into the run's error, ending it."""
        sink = RecordingSink()
        run = MainRun(TID, sinks=[sink], background=False, ranks_home=tmp_path, poll=0.01)
        run.progress(epoch=1, step=2)
        PeerRun(TID, rank=1, world_size=2, home=tmp_path).error("CUDA_OOM", "OOM", True)
        deadline = time.monotonic() + 5
        while run.current_status != "error" and time.monotonic() < deadline:
            time.sleep(0.01)
        run.close()
        (event,) = sink.of_type(ErrorReported)
        assert event.error_code == "CUDA_OOM"
        assert event.message == "rank 1 failed: OOM"
        assert event.details is not None
        assert event.details["rank"] == 1
        assert [s.status for s in sink.of_type(StatusChanged)][-1] == "error"

    def test_peer_error_wins_over_rank_zero_follow_on(self, tmp_path: Path) -> None:
        """Rank 0 failing after a peer died records the peer's error, not its own."""
        sink = RecordingSink()
        run = MainRun(TID, sinks=[sink], background=False, ranks_home=tmp_path, poll=60)
        run.progress(step=1)
        write_rank_error(
            tmp_path, TID, RankError(rank=3, error_code="CUDA_OOM", message="OOM", timestamp=1.0)
        )
        run.fail_with(RuntimeError("Connection closed by peer"))
        run.close()
        codes = [(e.error_code, (e.details or {}).get("rank")) for e in sink.of_type(ErrorReported)]
        assert codes == [("CUDA_OOM", 3)]

    def test_own_failure_without_peers(self, tmp_path: Path) -> None:
        """With no peer error, rank 0's own failure is reported after a short wait."""
        sink = RecordingSink()
        run = MainRun(
            TID, sinks=[sink], background=False, ranks_home=tmp_path, poll=60, peer_wait=0.05
        )
        run.fail_with(MemoryError())
        run.close()
        assert [e.error_code for e in sink.of_type(ErrorReported)] == ["OUT_OF_MEMORY"]

    def test_unreadable_files_are_skipped(self, tmp_path: Path) -> None:
        """Junk in the rank folder is ignored; good files are read oldest first."""
        folder = rank_dir(tmp_path, TID)
        folder.mkdir(parents=True)
        (folder / "rank-9.json").write_text("{not json")
        (folder / "notes.txt").write_text("hello")
        for rank, stamp in ((2, 5.0), (1, 3.0)):
            error = RankError(rank=rank, error_code="BAD code", message="x", timestamp=stamp)
            write_rank_error(tmp_path, TID, error)
        errors = read_rank_errors(tmp_path, TID)
        assert [(e.rank, e.error_code) for e in errors] == [
            (1, "UNHANDLED_EXCEPTION"),
            (2, "UNHANDLED_EXCEPTION"),
        ]


PEER = """
import sys, time
from pathlib import Path
from pulse_transports.integrations.distributed import PeerRun
run = PeerRun(sys.argv[1], rank=int(sys.argv[2]), world_size=2, home=Path(sys.argv[3]))
print("ready", flush=True)
if sys.argv[4] == "exit":
    run.close()
    sys.exit(0)
if sys.argv[4] == "segfault":
    import ctypes
    ctypes.string_at(0)
if sys.argv[4] == "fork":
    import os, signal
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(write, b"x")  # after the fork hooks ran
        time.sleep(60)
    os.read(read, 1)
    os.kill(child, signal.SIGTERM)
    os.waitpid(child, 0)
    print("forked", flush=True)
time.sleep(60)
"""


def _peer(home: Path, rank: int = 1, then: str = "wait") -> subprocess.Popen[str]:
    """A real process holding rank *rank*'s PeerRun of run TID; ready when it returns."""
    proc = subprocess.Popen(
        [sys.executable, "-c", PEER, TID, str(rank), str(home), then],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


class TestPeerDeaths:
    """A rank that dies without a word is told apart from one that ended or was stopped."""

    def test_registered_while_open(self, tmp_path: Path) -> None:
        """A live peer is registered and not taken for dead; a closed one is unregistered."""
        proc = _peer(tmp_path)
        path = registration_path(tmp_path, TID, 1)
        assert path.exists()
        assert peer_ending(path) is None
        proc.kill()
        proc.wait()
        ended = _peer(tmp_path, rank=2, then="exit")
        ended.wait(timeout=30)
        assert not registration_path(tmp_path, TID, 2).exists()

    def test_fork_started_rank_unregisters(self, tmp_path: Path) -> None:
        """A rank started by multiprocessing with fork that returns unregisters (no atexit)."""
        code = (
            "import multiprocessing, sys\n"
            "from pathlib import Path\n"
            "from pulse_transports.integrations.distributed import PeerRun\n"
            "def rank(home):\n"
            f"    PeerRun({TID!r}, rank=1, world_size=2, home=Path(home))\n"
            "proc = multiprocessing.get_context('fork').Process(target=rank, args=(sys.argv[1],))\n"
            "proc.start(); proc.join(); sys.exit(proc.exitcode)\n"
        )
        subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
        assert not registration_path(tmp_path, TID, 1).exists()

    def test_sigkill_before_and_after_reaping(self, tmp_path: Path) -> None:
        """SIGKILL is read from the zombie's status, and inferred once it is reaped."""
        proc = _peer(tmp_path)
        path = registration_path(tmp_path, TID, 1)
        proc.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (ending := peer_ending(path)) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ending is not None
        assert (ending.rank, ending.pid, ending.signal) == (1, proc.pid, "SIGKILL")
        assert (ending.exit_code, ending.inferred, ending.stopped) == (-9, False, False)
        proc.wait()
        after = peer_ending(path)
        assert after is not None
        assert (after.signal, after.inferred, after.stopped) == ("SIGKILL", True, False)

    def test_registered_twice_then_sigkilled(self, tmp_path: Path) -> None:
        """A second registration line in the file is not mistaken for a SIGTERM trace."""
        proc = _peer(tmp_path)
        path = registration_path(tmp_path, TID, 1)
        first = path.read_bytes().partition(b"\n")[0]
        with path.open("ab") as extra:
            extra.write(first + b"\n")  # what a second run or loop in the rank appends
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        after = peer_ending(path)
        assert after is not None
        assert (after.signal, after.inferred, after.stopped) == ("SIGKILL", True, False)

    def test_sigterm_is_a_stop(self, tmp_path: Path) -> None:
        """A peer stopped with SIGTERM (the launcher's stop) is not a crash, reaped or not."""
        proc = _peer(tmp_path)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM
        ending = peer_ending(registration_path(tmp_path, TID, 1))
        assert ending is not None
        assert (ending.signal, ending.stopped) == ("SIGTERM", True)

    def test_segfault_is_named(self, tmp_path: Path) -> None:
        """A peer dying of SIGSEGV leaves faulthandler's trace, which names the signal."""
        proc = _peer(tmp_path, then="segfault")
        assert proc.wait(timeout=30) == -signal.SIGSEGV
        ending = peer_ending(registration_path(tmp_path, TID, 1))
        assert ending is not None
        assert (ending.signal, ending.stopped, ending.inferred) == ("SIGSEGV", False, False)
        assert "Segmentation fault" in ending.trace

    def test_forked_child_is_not_the_rank(self, tmp_path: Path) -> None:
        """A forked worker stopped with SIGTERM leaves no trace: the rank's SIGKILL stays one."""
        proc = _peer(tmp_path, then="fork")
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "forked"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ending = peer_ending(registration_path(tmp_path, TID, 1))
        assert ending is not None
        assert (ending.signal, ending.stopped, ending.trace) == ("SIGKILL", False, "")

    def test_watcher_reports_a_killed_peer(self, tmp_path: Path) -> None:
        """Rank 0's watcher ends the run PROCESS_CRASHED, retryable, naming rank 1 and SIGKILL."""
        sink = RecordingSink()
        run = MainRun(TID, sinks=[sink], background=False, ranks_home=tmp_path, poll=0.01)
        proc = _peer(tmp_path)
        run.progress(epoch=1, step=2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while run.current_status != "error" and time.monotonic() < deadline:
            time.sleep(0.01)
        run.close()
        (event,) = sink.of_type(ErrorReported)
        assert (event.error_code, event.is_retryable) == ("PROCESS_CRASHED", True)
        assert event.message.startswith("rank 1 was killed by SIGKILL")
        assert event.details is not None
        assert (event.details["rank"], event.details["pid"]) == (1, proc.pid)
        assert [s.status for s in sink.of_type(StatusChanged)][-1] == "error"

    def test_stopped_peer_leaves_the_cancel(self, tmp_path: Path) -> None:
        """Peers stopped with rank 0 by the launcher's SIGTERM leave rank 0's cancel standing."""
        sink = RecordingSink()
        run = MainRun(
            TID, sinks=[sink], background=False, ranks_home=tmp_path, poll=60, peer_wait=0.2
        )
        run.status("running")
        proc = _peer(tmp_path)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        run.request_cancel("cancelled by SIGTERM")
        run.close()
        assert sink.of_type(ErrorReported) == []
        assert [s.status for s in sink.of_type(StatusChanged)][-1] == "cancelled"

    def test_non_retryable_crash(self, tmp_path: Path) -> None:
        """A peer killed by another signal than SIGKILL is a crash that is not retryable."""
        sink = RecordingSink()
        run = MainRun(TID, sinks=[sink], background=False, ranks_home=tmp_path, poll=60)
        proc = _peer(tmp_path, then="segfault")
        proc.wait(timeout=30)
        run.fail_with(RuntimeError("Connection closed by peer"))
        run.close()
        (event,) = sink.of_type(ErrorReported)
        assert (event.error_code, event.is_retryable) == ("PROCESS_CRASHED", False)
        assert event.message == "rank 1 was killed by SIGSEGV"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _launch(
    home: Path, fail_rank: int | None = None, kill_rank: int | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Run the 2-process gloo worker; returns both ranks' results."""
    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "PULSE_HOME": str(home),
            "PULSE_TEST_FAIL_RANK": str(-1 if fail_rank is None else fail_rank),
            "PULSE_TEST_KILL_RANK": str(-1 if kill_rank is None else kill_rank),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, ""))
    return results


@pytest.mark.integrations
class TestTwoProcesses:
    """A real 2-process torch.distributed (gloo) job reports exactly one run."""

    def test_one_run_with_world_size(
        self, pulse_home: Path, read_runs: Callable[[], list[RunState]]
    ) -> None:
        """Both ranks train; one log exists, of world size 2, ending done at the last step."""
        results = _launch(pulse_home)
        assert [r.returncode for r in results] == [0, 0], results[0].stdout + results[1].stdout
        (state,) = read_runs()
        assert state.meta is not None
        assert (state.meta.world_size, state.meta.name) == (2, "ddp")
        assert (state.status, state.epoch, state.step, state.total_steps) == ("done", 2, 5, 5)
        assert "loss" in state.metrics

    def test_failure_on_rank_one(
        self, pulse_home: Path, read_runs: Callable[[], list[RunState]]
    ) -> None:
        """Rank 1's CUDA OOM ends the one run as error CUDA_OOM, naming rank 1."""
        results = _launch(pulse_home, fail_rank=1)
        assert all(r.returncode != 0 for r in results)
        (state,) = read_runs()
        assert state.status == "error"
        (error,) = state.errors
        assert error.error_code == "CUDA_OOM"
        assert error.details is not None
        assert error.details["rank"] == 1
        assert error.message.startswith("rank 1 failed: RuntimeError: CUDA out of memory")

    def test_torchrun(self, pulse_home: Path, read_runs: Callable[[], list[RunState]]) -> None:
        """Under torchrun (which SIGTERMs rank 0 when rank 1 dies) the run still ends CUDA_OOM."""
        env = {**os.environ, "PULSE_HOME": str(pulse_home), "PULSE_TEST_FAIL_RANK": "1"}
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        result = subprocess.run(
            [*command, "--nproc-per-node", "2", str(WORKER)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode != 0
        (state,) = read_runs()
        assert state.meta is not None
        assert state.meta.world_size == 2
        assert (state.status, state.errors[0].error_code) == ("error", "CUDA_OOM")

    def test_sigkill_of_rank_one(
        self, pulse_home: Path, read_runs: Callable[[], list[RunState]]
    ) -> None:
        """Rank 1 SIGKILLed: rank 0 ends the run PROCESS_CRASHED naming rank 1 and the signal."""
        results = _launch(pulse_home, kill_rank=1)
        assert results[1].returncode == -signal.SIGKILL
        (state,) = read_runs()
        assert state.status == "error"
        (error,) = state.errors
        assert (error.error_code, error.is_retryable) == ("PROCESS_CRASHED", True)
        assert error.message.startswith("rank 1 was killed by SIGKILL")
        assert error.details is not None
        assert (error.details["rank"], error.details["signal"]) == (1, "SIGKILL")

    def test_torchrun_sigkill_of_rank_one(
        self, pulse_home: Path, read_runs: Callable[[], list[RunState]]
    ) -> None:
        """Under torchrun, rank 1's SIGKILL is the run's error, not rank 0's cancel by SIGTERM."""
        env = {**os.environ, "PULSE_HOME": str(pulse_home), "PULSE_TEST_KILL_RANK": "1"}
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        result = subprocess.run(
            [*command, "--nproc-per-node", "2", str(WORKER)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode != 0
        (state,) = read_runs()
        assert state.status == "error"
        (error,) = state.errors
        assert (error.error_code, error.is_retryable) == ("PROCESS_CRASHED", True)
        assert error.message.startswith("rank 1 was killed by SIGKILL")
        assert error.details is not None
        assert error.details["rank"] == 1
        assert all("SIGTERM" not in entry.message for entry in state.timeline)
