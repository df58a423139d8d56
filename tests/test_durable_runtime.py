"""The durable runtime across restarts, damaged snapshots, newer data, locks and full disks.

Every test drives the embedded runtime on a temporary data directory. Time is a wall clock
the test sets by hand (``clock=``), so it can jump between a close and the next open; inside
one open nothing waits on time. Where a test looks at the disk itself it opens the LMDB
store with :class:`~runlease.persistence.store.Store` while the runtime is closed.
"""

from __future__ import annotations

import logging
import shutil
import struct
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from runlease import open_runtime
from runlease.core.model import Event, Run, Session, Task
from runlease.core.snapshot import UnsupportedFormat
from runlease.errors import (
    AUTONOMY_LEASE_EXPIRED,
    DATA_DIR_LOCKED,
    SESSION_STOPPED,
    STORAGE_CORRUPT,
    STORAGE_FAILED,
    RunleaseError,
    Unavailable,
)
from runlease.persistence.records import RECORD_VERSION
from runlease.persistence.store import Store
from runlease.runtime.journal import JournalCommitter
from runlease.runtime.runtime import Durability, Runtime

START = 1_700_000_000.0


class ManualClock:
    """Wall time that moves only when the test moves it."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class State(msgspec.Struct, frozen=True):
    """Everything a restart must bring back, as the read API shows it."""

    tasks: list[Task]
    runs: list[Run]
    sessions: list[Session]
    last_event_seq: int
    queued_runs: int
    leased_runs: int


def state_of(rt: Runtime) -> State:
    tasks = rt.list_tasks()
    status = rt.status()
    return State(
        tasks=tasks,
        runs=[run for task in tasks for run in rt.runs_of(task.id)],
        sessions=rt.list_sessions(),
        last_event_seq=status.last_event_seq,
        queued_runs=status.queued_runs,
        leased_runs=status.leased_runs,
    )


def store_of(rt: Runtime) -> Store:
    committer = rt._committer
    assert isinstance(committer, JournalCommitter)
    return committer._store


def snapshot_seqs(data_dir: Path) -> list[int]:
    with Store.open(data_dir, durability="durable") as store:
        return store.snapshot_seqs()


def rewrite_snapshot(data_dir: Path, seq: int, damage: Callable[[bytes], bytes]) -> None:
    """Replace the stored bytes of one snapshot (there is no public API for harm)."""
    key = struct.pack(">Q", seq)
    with (
        Store.open(data_dir, durability="durable") as store,
        store._env.begin(write=True, db=store._snapshots) as txn,
    ):
        blob = txn.get(key)
        assert blob is not None, f"no snapshot {seq}"
        txn.put(key, damage(bytes(blob)))


def last_seq(data_dir: Path) -> int:
    with Store.open(data_dir, durability="durable") as store:
        return store.last_seq()


def fail_snapshots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every snapshot write fail, so the journal keeps every record after the last."""

    def refuse(self: Store, seq: int, data: bytes) -> None:
        raise OSError("snapshot writes are switched off by the test")

    monkeypatch.setattr(Store, "write_snapshot", refuse)


def fail_appends(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Simulate a full disk: every journal append fails. Returns the batch sizes tried."""
    tried: list[int] = []

    def full(self: Store, records: Sequence[bytes], events: Sequence[Event] = ()) -> int:
        tried.append(len(records))
        raise Unavailable("no space left on device (simulated)", code=STORAGE_FAILED)

    monkeypatch.setattr(Store, "append", full)
    return tried


async def expect_code(code: str, call: Any) -> RunleaseError:
    with pytest.raises(RunleaseError) as info:
        await call
    assert info.value.code == code, info.value
    return info.value


# --------------------------------------------------------------------- reopen
@pytest.mark.parametrize("with_snapshot", [True, False], ids=["snapshot", "journal-only"])
async def test_state_and_leases_survive_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_snapshot: bool
) -> None:
    data_dir = tmp_path / "data"
    clock = ManualClock()
    if not with_snapshot:
        fail_snapshots(monkeypatch)
    async with open_runtime(clock, data_dir=data_dir) as rt:
        urgent = await rt.create_task("urgent", priority="urgent", start=True)
        high = await rt.create_task("high", priority="high", start=True, metadata={"k": [1, "x"]})
        await rt.create_task("pending only")  # no run
        finish = await rt.create_task("finish me", start=True)
        flaky = await rt.create_task("flaky", start=True, max_attempts=2)
        await rt.create_task("queued", priority="low", start=True)
        parent = await rt.open_session(agent="parent", ttl=3600)
        child = await rt.open_session(agent="child", parent=parent.id, capabilities=["py"])
        finisher = await rt.open_session(agent="finisher")
        quitter = await rt.open_session(agent="quitter")

        held_by_parent = await parent.claim_next(lease_seconds=600)
        assert held_by_parent.task.id == urgent.id
        held_by_child = await child.claim_next(lease_seconds=900)
        assert held_by_child.task.id == high.id
        beat = await child.heartbeat(held_by_child.run.id, lease_seconds=1200)
        claim = await finisher.claim_next()
        assert claim.task.id == finish.id
        await finisher.complete(claim.run.id, result={"files": 3, "ok": True})
        claim = await finisher.claim_next()
        assert claim.task.id == flaky.id
        await finisher.fail(claim.run.id, error="boom")
        retry = await rt.start_task(flaky.id)
        claim = await quitter.claim_next()
        assert claim.run.id == retry.id
        await quitter.release(claim.run.id, reason="not mine")
        await quitter.stop()
        clock.now += 5
        before = state_of(rt)
        events_before = rt.status().last_event_seq

    assert snapshot_seqs(data_dir) == ([last_seq(data_dir)] if with_snapshot else [])
    clock.now += 10  # no lease runs out
    async with open_runtime(clock, data_dir=data_dir) as rt:
        report = rt.boot_report
        assert report is not None
        assert report.orphaned_leases == []
        assert report.expired_sessions == []
        assert (report.snapshot_seq > 0) == with_snapshot
        assert report.replayed == (0 if with_snapshot else store_of(rt).last_seq())
        assert state_of(rt) == before

        # The holders of unexpired leases carry on where they were.
        again = await rt.session(child.id).heartbeat(held_by_child.run.id, lease_seconds=60)
        assert again.lease.claim_token_hash == beat.lease.claim_token_hash
        assert again.lease.lease_until == clock.now + 60
        done = await rt.session(parent.id).complete(held_by_parent.run.id, result="after restart")
        assert done.status == "completed"
        assert done.result == "after restart"
        await expect_code(SESSION_STOPPED, rt.session(quitter.id).claim_next())
        # New work flows, and the event counter continues instead of restarting.
        claim = await rt.session(finisher.id).claim_next()
        assert claim.run.id == retry.id
        assert claim.run.attempt == 2
        # The history outlives the restart and goes on from where it stood.
        assert rt.history.get(1).seq == 1
        assert rt.history.last_seq > events_before
        assert rt.history.read(after_seq=events_before - 1, limit=1)[0].seq == events_before
        rt._machine.check_invariants()


async def test_leases_that_ran_out_while_down_are_expired_on_boot(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    clock = ManualClock()
    async with open_runtime(clock, data_dir=data_dir) as rt:
        short = await rt.create_task("short lease", priority="urgent", start=True)
        long = await rt.create_task("long lease", priority="high", start=True)
        brief = await rt.open_session(agent="brief")
        mortal = await rt.open_session(agent="mortal", ttl=60)
        child = await rt.open_session(agent="child-of-mortal", parent=mortal.id)
        expiring = await brief.claim_next(lease_seconds=30)
        assert expiring.task.id == short.id
        kept = await mortal.claim_next(lease_seconds=3600)
        assert kept.task.id == long.id

    clock.now += 100  # past the 30 s lease and the 60 s TTL, not the hour-long lease
    async with open_runtime(clock, data_dir=data_dir) as rt:
        report = rt.boot_report
        assert report is not None
        assert report.orphaned_leases == [expiring.run.id]
        assert report.expired_sessions == [mortal.id]

        run = rt.get_run(expiring.run.id)
        assert run.status == "queued"
        assert run.reason == "orphaned_on_boot"
        assert run.recovery_count == 1
        assert run.claim_token_hash is None
        assert run.lease_until is None
        [expired] = [e for e in rt.events() if e.kind == "lease_expired"]
        assert expired.run_id == expiring.run.id
        assert expired.at == clock.now
        assert expired.data["reason"] == "orphaned_on_boot"
        assert expired.data["previous_session_id"] == brief.id
        assert expired.data["previous_lease_until"] == START + 30
        assert expired.data["outcome"] == "requeued"
        # The session whose TTL passed is stopped, its (unexpired) lease given back, and
        # its auto-stopping child stopped with it.
        run = rt.get_run(kept.run.id)
        assert run.status == "queued"
        assert run.reason == "ttl_expired"
        assert run.recovery_count == 0
        assert rt.get_session(mortal.id).state == "stopped"
        assert rt.get_session(mortal.id).stop_reason == "ttl_expired"
        assert rt.get_session(child.id).stop_reason == "parent_stopped"
        assert rt.get_session(brief.id).state == "live"

        # The old holders are told their lease is gone; the run goes to the next claimer.
        await expect_code(AUTONOMY_LEASE_EXPIRED, rt.session(brief.id).complete(expiring.run.id))
        await expect_code(SESSION_STOPPED, rt.session(mortal.id).heartbeat(kept.run.id))
        again = await rt.session(brief.id).claim_next(lease_seconds=30)
        assert again.run.id == expiring.run.id
        assert again.run.attempt == 1
        rt._machine.check_invariants()

    # The expiries were journaled like any change: the next boot does not redo them.
    async with open_runtime(clock, data_dir=data_dir) as rt:
        assert rt.boot_report is not None
        assert rt.boot_report.orphaned_leases == []
        assert rt.boot_report.expired_sessions == []
        assert rt.get_run(expiring.run.id).status == "claimed"
    # The new lease runs out too. Attempt 1 plus two recoveries uses up the default
    # max_attempts=3, so the run is parked for a person instead of requeued forever.
    clock.now += 100
    async with open_runtime(clock, data_dir=data_dir) as rt:
        assert rt.boot_report is not None
        assert rt.boot_report.orphaned_leases == [expiring.run.id]
        run = rt.get_run(expiring.run.id)
        assert run.recovery_count == 2
        assert run.status == "needs_attention"
        assert run.error == "lease_recovery_exhausted"
        assert run.reason == "orphaned_on_boot"
        assert rt.get_task(short.id).status == "needs_attention"


async def test_every_lease_that_ran_out_while_down_is_orphaned_on_boot(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    clock = ManualClock()
    async with open_runtime(clock, data_dir=data_dir) as rt:
        for i in range(3):
            await rt.create_task(f"t{i}", start=True)
            agent = await rt.open_session(agent=f"a{i}")
            await agent.claim_next(lease_seconds=30)
    clock.now += 100
    async with open_runtime(clock, data_dir=data_dir) as rt:
        assert rt.boot_report is not None
        assert len(rt.boot_report.orphaned_leases) == 3
        reasons = [e.data["reason"] for e in rt.events() if e.kind == "lease_expired"]
        assert reasons == ["orphaned_on_boot"] * 3


# ----------------------------------------------------------------- snapshots
async def three_generations(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> State:
    """Two snapshots (S1 < S2), then records after S2 only in the journal.

    Leases taken in each generation stay held, so a restored claim token from each part
    of the history (older snapshot, journal between, journal after) must still work.
    """
    clock = ManualClock()
    for generation in range(3):
        if generation == 2:
            fail_snapshots(monkeypatch)
        async with open_runtime(clock, data_dir=data_dir) as rt:
            for i in range(4):
                await rt.create_task(f"g{generation}-{i}", start=True)
            holder = await rt.open_session(agent=f"holder-{generation}")
            await holder.claim_next(lease_seconds=3600)
            worker = await rt.open_session(agent=f"worker-{generation}")
            claim = await worker.claim_next()
            await worker.complete(claim.run.id, result={"generation": generation})
            clock.now += 1
            state = state_of(rt)
    monkeypatch.undo()
    return state


async def finish_held_leases(rt: Runtime, state: State) -> None:
    for session in state.sessions:
        if session.lease_run_id is not None:
            run = await rt.session(session.id).complete(session.lease_run_id, result="late")
            assert run.status == "completed"


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "flipped-byte": lambda blob: blob[:-7] + bytes([blob[-7] ^ 0x40]) + blob[-6:],
    "torn-half": lambda blob: blob[: len(blob) // 2],
    "torn-header": lambda blob: blob[:9],
    "empty": lambda blob: b"",
}


@pytest.mark.parametrize("damage", DAMAGE)
async def test_damaged_newest_snapshot_falls_back_to_the_older_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    data_dir = tmp_path / "data"
    expected = await three_generations(data_dir, monkeypatch)
    older, newest = snapshot_seqs(data_dir)
    end = last_seq(data_dir)
    assert older < newest < end

    pristine = tmp_path / "pristine"
    shutil.copytree(data_dir, pristine)
    async with open_runtime(ManualClock(START + 10), data_dir=pristine) as rt:
        assert rt.boot_report is not None
        assert rt.boot_report.snapshot_seq == newest
        assert rt.boot_report.replayed == end - newest
        assert state_of(rt) == expected

    rewrite_snapshot(data_dir, newest, DAMAGE[damage])
    async with open_runtime(ManualClock(START + 10), data_dir=data_dir) as rt:
        assert rt.boot_report is not None
        assert rt.boot_report.snapshot_seq == older
        assert rt.boot_report.replayed == end - older
        assert state_of(rt) == expected
        rt._machine.check_invariants()
        await finish_held_leases(rt, expected)


async def test_boot_report_counts_a_snapshot_the_store_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    await three_generations(data_dir, monkeypatch)
    rewrite_snapshot(data_dir, snapshot_seqs(data_dir)[-1], DAMAGE["flipped-byte"])
    async with open_runtime(ManualClock(START + 10), data_dir=data_dir) as rt:
        assert rt.boot_report is not None
        assert rt.boot_report.skipped_snapshots == 1


async def test_both_snapshots_damaged_stops_boot_instead_of_starting_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    await three_generations(data_dir, monkeypatch)
    for seq in snapshot_seqs(data_dir):
        rewrite_snapshot(data_dir, seq, DAMAGE["torn-half"])
    # The journal before the older snapshot is trimmed, so there is nothing to rebuild
    # from: boot must refuse rather than serve a state missing acknowledged work.
    with pytest.raises(Unavailable, match="missing") as info:
        async with open_runtime(ManualClock(START + 10), data_dir=data_dir):
            pytest.fail("booted without the history")
    assert info.value.code == STORAGE_CORRUPT


async def test_periodic_snapshots_trim_the_journal_and_keep_state(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    data_dir = tmp_path / "data"
    clock = ManualClock()
    async with open_runtime(
        clock, data_dir=data_dir, snapshot_every_records=10, snapshot_every_seconds=3600
    ) as rt:
        agent = await rt.open_session(agent="a")
        for i in range(60):
            await rt.create_task(f"t{i}", start=True)
            claim = await agent.claim_next()
            await agent.complete(claim.run.id, result=i)
            if i % 10 == 9:
                await trio.sleep(2)  # mock time: the snapshotter checks once a second
        stats = store_of(rt).stats()
        assert stats.snapshots_written >= 3
        assert stats.records_trimmed > 0
        expected = state_of(rt)
    async with open_runtime(clock, data_dir=data_dir) as rt:
        assert rt.boot_report is not None
        assert rt.boot_report.snapshot_seq == store_of(rt).last_seq()
        assert len(store_of(rt).snapshot_seqs()) == 2
        assert state_of(rt) == expected


# ------------------------------------------------------------ newer versions
@pytest.mark.parametrize(
    "command",
    [
        {"op": "create_task", "now": START, "task_id": "tsk_new", "title": "from the future"},
        {"op": "teleport_task", "now": START, "task_id": "tsk_new", "where": "mars"},
    ],
    ids=["known-command", "unknown-command"],
)
async def test_a_record_from_a_newer_version_stops_boot(
    tmp_path: Path, command: dict[str, Any]
) -> None:
    data_dir = tmp_path / "data"
    clock = ManualClock()
    async with open_runtime(clock, data_dir=data_dir) as rt:
        task = await rt.create_task("old", start=True)
    newer = RECORD_VERSION + 1
    with Store.open(data_dir, durability="durable") as store:
        before = store.last_seq()
        store.append([msgspec.msgpack.encode({"v": newer, "cmd": command})])

    for _ in range(2):  # every attempt fails the same way; none "repairs" the data
        with pytest.raises(UnsupportedFormat) as info:
            async with open_runtime(clock, data_dir=data_dir):
                pytest.fail("booted past a record it cannot read")
        assert f"version {newer} is newer" in info.value.message
        assert "run the newer runlease" in info.value.message
    # The failed boots released the directory and left the records alone.
    with Store.open(data_dir, durability="durable") as store:
        assert store.last_seq() == before + 1
        assert [seq for seq, _ in store.iter_journal(before)] == [before + 1]
    assert task.current_run_id is not None


# -------------------------------------------------------------------- locking
LOCK_PROBE = textwrap.dedent(
    """
    import sys
    import trio
    from runlease import open_runtime
    from runlease.errors import RunleaseError

    async def main() -> None:
        try:
            async with open_runtime(data_dir=sys.argv[1]):
                print("opened")
        except RunleaseError as exc:
            print(exc.code)

    trio.run(main)
    """
)


async def test_a_second_runtime_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with open_runtime(data_dir=data_dir) as rt:
        first = await rt.create_task("first", start=True)
        error = await expect_code(DATA_DIR_LOCKED, _open_and_close(data_dir))
        assert str(data_dir) in error.message
        probe = await trio.run_process(
            [sys.executable, "-c", LOCK_PROBE, str(data_dir)], capture_stdout=True
        )
        assert probe.stdout.decode().split() == [DATA_DIR_LOCKED]
        # The refused opens did not disturb the one holding the directory.
        second = await rt.create_task("second", start=True)
    async with open_runtime(data_dir=data_dir) as rt:
        assert [t.id for t in rt.list_tasks()] == [first.id, second.id]
    probe = await trio.run_process(
        [sys.executable, "-c", LOCK_PROBE, str(data_dir)], capture_stdout=True
    )
    assert probe.stdout.decode().split() == ["opened"]


async def _open_and_close(data_dir: Path) -> None:
    async with open_runtime(data_dir=data_dir):
        pass


# ------------------------------------------------------------------ disk full
async def test_a_failed_commit_fails_its_callers_and_turns_writes_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    clock = ManualClock()
    caplog.set_level(logging.CRITICAL, logger="runlease.journal")
    async with open_runtime(clock, data_dir=data_dir) as rt:
        kept = await rt.create_task("kept", start=True)
        other = await rt.create_task("other", start=True)
        agent = await rt.open_session(agent="agent")
        claim = await agent.claim_next(lease_seconds=3600)
        acknowledged = state_of(rt)

        tried = fail_appends(monkeypatch)
        errors: list[RunleaseError] = []

        async def write(i: int) -> None:
            try:
                await rt.create_task(f"lost {i}", start=True)
            except RunleaseError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for i in range(16):
                nursery.start_soon(write, i)
        # Everyone whose record was in a failed commit hears so; nobody got a false "ok".
        assert len(errors) == 16
        assert {e.code for e in errors} == {STORAGE_FAILED}
        assert tried, "the journal never tried to write"
        assert any(r.getMessage() == "storage_failed" for r in caplog.records)

        # From now on writes are refused with the same clear error...
        error = await expect_code(STORAGE_FAILED, rt.create_task("later"))
        assert "read-only" in error.message
        await expect_code(STORAGE_FAILED, agent.heartbeat(claim.run.id))
        await expect_code(STORAGE_FAILED, rt.open_session(agent="late"))
        # ...and reads keep working, showing exactly what was acknowledged.
        assert state_of(rt) == acknowledged
        assert rt.get_task(kept.id).title == "kept"
        assert rt.get_session(agent.id).state == "live"
        assert [t.id for t in rt.list_tasks(limit=2)] == [kept.id, other.id]
        assert rt.status().tasks >= 2
        monkeypatch.undo()

    # With the disk healthy again, a restart has everything that was acknowledged.
    async with open_runtime(clock, data_dir=data_dir) as rt:
        assert state_of(rt) == acknowledged
        run = await rt.session(agent.id).complete(claim.run.id, result="after the disk")
        assert run.status == "completed"
        task = await rt.create_task("writes work again")
        assert rt.get_task(task.id).title == "writes work again"


async def test_after_a_failed_commit_reads_show_only_acknowledged_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="runlease.journal")
    async with open_runtime(ManualClock(), data_dir=tmp_path / "data") as rt:
        await rt.create_task("kept", start=True)
        agent = await rt.open_session(agent="agent")
        claim = await agent.claim_next()
        fail_appends(monkeypatch)
        await expect_code(STORAGE_FAILED, agent.complete(claim.run.id, result=1))
        await expect_code(STORAGE_FAILED, rt.create_task("never acknowledged"))
        await expect_code(STORAGE_FAILED, agent.complete(claim.run.id, result=1))
        assert rt.get_run(claim.run.id).status == "claimed"
        assert [t.title for t in rt.list_tasks()] == ["kept"]


# --------------------------------------------------------------- group commit
@pytest.mark.parametrize("durability", ["durable", "relaxed"])
async def test_concurrent_writers_share_commits(tmp_path: Path, durability: Durability) -> None:
    writers, each = 64, 16
    async with open_runtime(data_dir=tmp_path / "data", durability=durability) as rt:
        store = store_of(rt)
        before = store.stats()

        async def writer(w: int) -> None:
            for i in range(each):
                await rt.create_task(f"w{w}-{i}", start=True)

        async with trio.open_nursery() as nursery:
            for w in range(writers):
                nursery.start_soon(writer, w)
        stats = store.stats()
        records = stats.records_appended - before.records_appended
        commits = stats.append_batches - before.append_batches
        assert records == writers * each
        # One transaction per wave of writers, not per record (typically ~64 per commit).
        assert commits * 8 <= records, f"{records} records took {commits} commits"
        if durability == "durable":
            assert stats.fsyncs == stats.commits
        else:
            assert stats.fsyncs == 0

        # A lone writer waits for each commit before sending the next record: no batching
        # to be had, and none faked with a delay.
        for i in range(10):
            await rt.create_task(f"alone-{i}")
        after = store.stats()
        assert after.append_batches - stats.append_batches == 10
        assert after.records_appended - stats.records_appended == 10


async def test_the_map_grows_when_full_and_nothing_is_lost(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    payload = {"blob": "x" * 8000}
    async with open_runtime(data_dir=data_dir, map_size=1024 * 1024) as rt:
        for i in range(300):  # ~2.4 MB of records into a 1 MiB map
            await rt.create_task(f"big {i}", metadata=payload)
        await trio.to_thread.run_sync(store_of(rt).checkpoint)  # LMDB takes them here
        stats = store_of(rt).stats()
        assert stats.map_grows >= 1
        assert stats.map_size > 1024 * 1024
        expected = state_of(rt)
    async with open_runtime(data_dir=data_dir, map_size=1024 * 1024) as rt:
        assert state_of(rt) == expected
