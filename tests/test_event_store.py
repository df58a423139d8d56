"""The store's history: events kept beside their records, read back, compacted, rebuilt.

Store-level tests feed the store records and events by hand (it never decodes records);
the boot tests drive a real durable runtime, take what a crash would leave on disk (a copy
of the data directory while the store is open, as tests/test_write_ahead_log.py does), and
boot the copy.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runlease import open_runtime
from runlease.core.model import Event
from runlease.errors import STORAGE_CORRUPT, Unavailable
from runlease.persistence.events import HistoryRetention, seq_key
from runlease.persistence.store import Store
from runlease.runtime import journal
from runlease.runtime.journal import BootReport, JournalCommitter, load_machine, take_snapshot
from runlease.runtime.runtime import Runtime

MAP_SIZE = 1 << 20
START = 1_700_000_000.0
TASKS = ("task_a", "task_b", "task_c")
RUNS = ("run_1", "run_2")
SESSIONS = ("ses_x", "ses_y")
KINDS = ("task.created", "run.claimed", "run.completed")
ALL = 1 << 30


def open_store(data_dir: Path) -> Store:
    return Store.open(data_dir, durability="durable", map_size=MAP_SIZE)


def event(seq: int, *, at: float | None = None, task: int | None = None) -> Event:
    """A plausible event whose fields vary with ``seq`` (or the given task)."""
    task_index = seq % 4 if task is None else task
    return Event(
        seq=seq,
        kind=KINDS[seq % len(KINDS)],
        at=START + seq if at is None else at,
        task_id=TASKS[task_index] if task_index < len(TASKS) else None,
        run_id=RUNS[seq % 2] if seq % 3 else None,
        session_id=SESSIONS[seq % 2] if seq % 5 else None,
        data={"n": seq, "note": "x" * (seq % 7)},
    )


def append_events(store: Store, events: list[Event], per_record: int = 2) -> None:
    """Append one record per ``per_record`` events, each batch as one group commit."""
    for i in range(0, len(events), per_record):
        store.append([f"record for {events[i].seq}".encode()], events[i : i + per_record])


def everything(store: Store) -> list[Event]:
    return store.read_events(limit=ALL)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(tmp_path / "data") as opened:
        yield opened


# ------------------------------------------------------------------ reading back
def test_events_are_readable_once_appended_and_after_a_checkpoint(store: Store) -> None:
    events = [event(seq) for seq in range(1, 21)]
    append_events(store, events[:10])
    assert everything(store) == events[:10]
    assert store.get_event(3) == events[2]
    store.checkpoint()
    append_events(store, events[10:])
    # Half in LMDB, half only in memory beside the log: one history either way.
    assert everything(store) == events
    assert [store.get_event(seq) for seq in (1, 10, 11, 20)] == [events[i] for i in (0, 9, 10, 19)]
    assert store.get_event(21) is None
    assert store.events_through() == store.last_seq()


def test_events_survive_a_clean_reopen(tmp_path: Path) -> None:
    events = [event(seq) for seq in range(1, 30)]
    with open_store(tmp_path / "data") as store:
        append_events(store, events, per_record=3)
        through = store.last_seq()
    with open_store(tmp_path / "data") as store:
        assert everything(store) == events
        assert store.events_through() == through
        assert store.event_bounds() == (1, 29)


def test_an_empty_store_has_no_history(store: Store) -> None:
    assert everything(store) == []
    assert store.event_bounds() == (0, 0)
    assert store.get_event(1) is None
    store.append([b"a record that emitted nothing"])
    assert store.events_through() == 1
    assert store.read_events(limit=10, newest=True) == []


def test_out_of_range_arguments_find_nothing_instead_of_failing(store: Store) -> None:
    events = [event(seq) for seq in range(1, 6)]
    append_events(store, events)
    store.checkpoint()
    assert [store.get_event(seq) for seq in (0, -1, 1 << 64, 1 << 70)] == [None] * 4
    assert store.read_events(after_seq=-10, limit=ALL) == events
    assert store.read_events(before_seq=1 << 70, limit=2, newest=True) == events[-2:]
    assert store.read_events(after_seq=1 << 70, limit=ALL) == []
    assert store.read_events(before_seq=-3, limit=ALL, newest=True) == []


@dataclass(frozen=True)
class Query:
    """One read_events call, and what a plain list says it must return."""

    limit: int
    newest: bool = False
    after_seq: int = 0
    before_seq: int | None = None
    task_id: str | None = None
    run_id: str | None = None
    session_id: str | None = None
    kinds: frozenset[str] | None = None

    def run(self, store: Store) -> list[Event]:
        return store.read_events(**asdict(self))

    def expect(self, events: list[Event]) -> list[Event]:
        chosen = [
            e
            for e in events
            if self.after_seq < e.seq
            and (self.before_seq is None or e.seq < self.before_seq)
            and (self.task_id is None or e.task_id == self.task_id)
            and (self.run_id is None or e.run_id == self.run_id)
            and (self.session_id is None or e.session_id == self.session_id)
            and (self.kinds is None or e.kind in self.kinds)
        ]
        if self.limit <= 0:
            return []
        return chosen[-self.limit :] if self.newest else chosen[: self.limit]


@pytest.mark.parametrize("checkpointed", [0, 17, 40], ids=["memory", "split", "lmdb"])
def test_filters_ranges_and_newest(store: Store, checkpointed: int) -> None:
    events = [event(seq) for seq in range(1, 41)]
    append_events(store, events[:checkpointed])
    store.checkpoint()
    append_events(store, events[checkpointed:])
    queries = [
        Query(limit=5),
        Query(limit=5, newest=True),
        Query(limit=100, task_id="task_b"),
        Query(limit=3, task_id="task_b", newest=True),
        Query(limit=4, task_id="task_a", after_seq=10, before_seq=30),
        Query(limit=4, task_id="task_a", after_seq=10, before_seq=30, newest=True),
        Query(limit=100, run_id="run_2", session_id="ses_x"),
        Query(limit=2, run_id="run_1", newest=True, before_seq=25),
        Query(limit=100, kinds=frozenset({"run.claimed"}), task_id="task_c"),
        Query(limit=6, kinds=frozenset({"task.created", "run.completed"}), newest=True),
        Query(limit=100, task_id="task_unknown"),
        Query(limit=100, after_seq=40),
        Query(limit=100, after_seq=12, before_seq=13),
        Query(limit=0),
    ]
    for query in queries:
        assert query.run(store) == query.expect(events), query


def test_a_long_filtered_scan_crosses_read_chunks(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runlease.persistence import store as store_module

    monkeypatch.setattr(store_module, "_EVENT_SCAN_CHUNK", 7)
    events = [event(seq) for seq in range(1, 101)]
    append_events(store, events[:60], per_record=5)
    store.checkpoint()
    append_events(store, events[60:], per_record=5)
    wanted = [e for e in events if e.run_id == "run_1"]
    assert store.read_events(limit=ALL, run_id="run_1") == wanted
    assert store.read_events(limit=9, run_id="run_1", newest=True) == wanted[-9:]
    assert store.read_events(limit=50, task_id="task_a") == [
        e for e in events if e.task_id == "task_a"
    ]
    assert (
        store.read_events(limit=12, task_id="task_a", newest=True)
        == [e for e in events if e.task_id == "task_a"][-12:]
    )


# --------------------------------------------------------------------- retention
def test_compaction_by_age_drops_only_old_events(store: Store) -> None:
    events = [event(seq, at=START + seq * 10) for seq in range(1, 21)]
    append_events(store, events)
    store.checkpoint()
    retention = HistoryRetention(max_age=100.0)
    # now - max_age = START + 105: events 1..10 (at <= START + 100) are older than that.
    deleted = store.compact_events(now=START + 205, retention=retention, keep_after=None)
    assert deleted == 10
    assert everything(store) == events[10:]
    assert store.event_bounds() == (11, 20)
    assert store.get_event(10) is None
    # Their index entries went with them: the task filter finds only what is left.
    assert store.read_events(limit=ALL, task_id="task_a") == [
        e for e in events[10:] if e.task_id == "task_a"
    ]
    assert index_entries(store) == sum(1 for e in events[10:] if e.task_id is not None)
    assert store.compact_events(now=START + 205, retention=retention, keep_after=None) == 0


def test_compaction_by_count_keeps_the_newest(store: Store) -> None:
    events = [event(seq) for seq in range(1, 31)]
    append_events(store, events[:25])
    store.checkpoint()
    append_events(store, events[25:])  # not checkpointed: counted, never dropped here
    retention = HistoryRetention(max_age=None, max_events=8)
    assert store.compact_events(now=START, retention=retention, keep_after=None) == 22
    assert everything(store) == events[22:]
    assert store.stats().events_compacted == 22


def test_compaction_never_passes_a_hold(store: Store) -> None:
    events = [event(seq) for seq in range(1, 31)]
    append_events(store, events)
    store.checkpoint()
    retention = HistoryRetention(max_age=0.0, max_events=0)
    assert store.compact_events(now=START + 1e6, retention=retention, keep_after=12) == 12
    assert everything(store) == events[12:]
    assert store.compact_events(now=START + 1e6, retention=retention, keep_after=12) == 0
    assert store.compact_events(now=START + 1e6, retention=retention, keep_after=None) == 18
    assert store.event_bounds() == (0, 0)


def test_compaction_without_limits_keeps_everything(store: Store) -> None:
    append_events(store, [event(seq, at=0.0) for seq in range(1, 11)])
    store.checkpoint()
    none = HistoryRetention(max_age=None, max_events=None)
    assert store.compact_events(now=START, retention=none, keep_after=None) == 0
    assert len(everything(store)) == 10
    with pytest.raises(ValueError, match="max_events"):
        store.compact_events(now=START, retention=HistoryRetention(max_events=-1), keep_after=None)


def test_compaction_runs_in_bounded_batches(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from runlease.persistence import store as store_module

    monkeypatch.setattr(store_module, "_COMPACT_CHUNK", 4)
    append_events(store, [event(seq) for seq in range(1, 31)])
    store.checkpoint()
    commits = store.stats().lmdb_commits
    retention = HistoryRetention(max_age=None, max_events=5)
    assert store.compact_events(now=START, retention=retention, keep_after=None) == 25
    assert store.stats().lmdb_commits - commits == 7  # ceil(25 / 4) write transactions
    assert [e.seq for e in everything(store)] == list(range(26, 31))


def index_entries(store: Store) -> int:
    with store._env.begin(db=store._events_by_task) as txn:
        return int(txn.stat(store._events_by_task)["entries"])


# ------------------------------------------------------------------------ damage
def test_a_damaged_event_is_reported_as_corrupt_storage(tmp_path: Path) -> None:
    events = [event(seq) for seq in range(1, 11)]
    with open_store(tmp_path / "data") as store:
        append_events(store, events)
    with open_store(tmp_path / "data") as store:
        with store._env.begin(write=True, db=store._events) as txn:
            stored = bytearray(txn.get(seq_key(4)) or b"")
            stored[-1] ^= 0x40
            txn.put(seq_key(4), bytes(stored))
        # Reads that do not reach it still work; those that do fail closed.
        assert store.read_events(limit=3) == events[:3]
        assert store.read_events(after_seq=4, limit=ALL) == events[4:]
        for read in (
            lambda: store.read_events(limit=ALL),
            lambda: store.get_event(4),
            lambda: store.read_events(limit=1, task_id=events[3].task_id, after_seq=3),
            # A filtered scan that would not decode it still checks it on the way.
            lambda: store.read_events(limit=ALL, run_id="run_nowhere", newest=True),
        ):
            with pytest.raises(Unavailable) as info:
                read()
            assert info.value.code == STORAGE_CORRUPT
            assert "event 4" in info.value.message


def test_an_event_stored_under_another_key_is_caught(tmp_path: Path) -> None:
    with open_store(tmp_path / "data") as store:
        append_events(store, [event(seq) for seq in range(1, 5)])
    with open_store(tmp_path / "data") as store:
        with store._env.begin(write=True, db=store._events) as txn:
            txn.put(seq_key(2), txn.get(seq_key(3)) or b"")
        with pytest.raises(Unavailable) as info:
            store.get_event(2)
        assert info.value.code == STORAGE_CORRUPT


# --------------------------------------------------------------- model checking
@dataclass(frozen=True)
class Append:
    events_per_record: list[int]
    spacing: int  # seconds between the events' times


@dataclass(frozen=True)
class Checkpoint:
    pass


@dataclass(frozen=True)
class Reopen:
    pass


@dataclass(frozen=True)
class Compact:
    retention: HistoryRetention
    keep_after: int | None


Step = Append | Checkpoint | Reopen | Compact
steps = st.one_of(
    st.builds(
        Append,
        st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=4),
        st.integers(min_value=0, max_value=30),
    ),
    st.builds(Checkpoint),
    st.builds(Reopen),
    st.builds(
        Compact,
        st.builds(
            HistoryRetention,
            max_age=st.one_of(st.none(), st.floats(min_value=0, max_value=400)),
            max_events=st.one_of(st.none(), st.integers(min_value=0, max_value=40)),
        ),
        st.one_of(st.none(), st.integers(min_value=0, max_value=80)),
    ),
)
queries = st.builds(
    Query,
    limit=st.integers(min_value=1, max_value=40),
    newest=st.booleans(),
    after_seq=st.integers(min_value=0, max_value=80),
    before_seq=st.one_of(st.none(), st.integers(min_value=0, max_value=90)),
    task_id=st.one_of(st.none(), st.sampled_from(TASKS)),
    run_id=st.one_of(st.none(), st.sampled_from(RUNS)),
    session_id=st.one_of(st.none(), st.sampled_from(SESSIONS)),
    kinds=st.one_of(st.none(), st.frozensets(st.sampled_from(KINDS), min_size=1)),
)


def model_compaction(stored: list[Event], total: int, now: float, step: Compact) -> int:
    """How many of the oldest checkpointed events the retention rule drops."""
    max_age, max_events = step.retention.max_age, step.retention.max_events
    if max_age is None and max_events is None:
        return 0
    excess = total - max_events if max_events is not None else 0
    drop = 0
    for e in stored:
        if step.keep_after is not None and e.seq > step.keep_after:
            break
        too_old = max_age is not None and e.at < now - max_age
        if not (drop < excess or too_old):
            break
        drop += 1
    return drop


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    plan=st.lists(steps, min_size=1, max_size=25), reads=st.lists(queries, min_size=1, max_size=4)
)
def test_the_history_matches_a_list_model(plan: list[Step], reads: list[Query]) -> None:
    kept: list[Event] = []  # the model: every retained event, oldest first
    checkpointed = 0  # how many of ``kept`` LMDB holds
    seq = 0
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "data")
        try:
            for step in plan:
                if isinstance(step, Append):
                    records, batch = [], []
                    for count in step.events_per_record:
                        records.append(b"r")
                        for _ in range(count):
                            seq += 1
                            batch.append(event(seq, at=START + seq * step.spacing))
                    store.append(records, batch)
                    kept += batch
                elif isinstance(step, Checkpoint):
                    store.checkpoint()
                    checkpointed = len(kept)
                elif isinstance(step, Reopen):
                    store.close()  # a clean close checkpoints
                    store = open_store(Path(tmp) / "data")
                    checkpointed = len(kept)
                else:
                    now = START + seq * 10
                    drop = model_compaction(kept[:checkpointed], len(kept), now, step)
                    deleted = store.compact_events(
                        now=now, retention=step.retention, keep_after=step.keep_after
                    )
                    assert deleted == drop
                    del kept[:drop]
                    checkpointed -= drop
                for query in reads:
                    assert query.run(store) == query.expect(kept), query
                oldest = kept[0].seq if kept else 0
                newest = kept[-1].seq if kept else 0
                assert store.event_bounds() == (oldest, newest)
        finally:
            store.close()


# ---------------------------------------------------------------------- boot
async def drive(rt: Runtime, rounds: int, tag: str) -> None:
    """Work that emits many kinds of events: create, claim, heartbeat, finish, release."""
    session = await rt.open_session(agent=f"agent-{tag}")
    for i in range(rounds):
        await rt.create_task(f"{tag}-{i}", start=True)
        claim = await session.claim_next(lease_seconds=600)
        await session.heartbeat(claim.run.id, lease_seconds=900)
        if i % 3 == 0:
            await session.complete(claim.run.id, result={"i": i})
        elif i % 3 == 1:
            await session.fail(claim.run.id, error=f"boom {i}")
        else:
            await session.release(claim.run.id, reason="later")
    await session.stop()


def store_of(rt: Runtime) -> Store:
    committer = rt._committer
    assert isinstance(committer, JournalCommitter)
    return committer._store


def boot_copy(data_dir: Path) -> tuple[list[Event], BootReport]:
    """Boot a crash copy as the next start would; return its history and boot report."""
    report = BootReport()
    with Store.open(data_dir, durability="durable") as store:
        load_machine(store, report)
        return everything(store), report


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("middle", ["none", "checkpoint", "snapshot"])
async def test_boot_regenerates_the_events_only_the_log_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, middle: str
) -> None:
    # No timed checkpoint during the test: the log alone holds what the test does not
    # checkpoint itself.
    monkeypatch.setattr(journal, "CHECKPOINT_EVERY_SECONDS", 3600.0)
    data_dir = tmp_path / "data"
    async with open_runtime(Clock(), data_dir=data_dir, durability="durable") as rt:
        store = store_of(rt)
        await drive(rt, 6, "first")
        if middle == "checkpoint":
            await trio.to_thread.run_sync(store.checkpoint)
        elif middle == "snapshot":
            await take_snapshot(rt._machine, rt._committer).done.wait()  # type: ignore[arg-type]
        await drive(rt, 6, "second")
        await rt.settled()
        acknowledged = everything(store)
        crash = tmp_path / "crash"
        shutil.copytree(data_dir, crash)
        lmdb_held = store.stats().events_checkpointed
    assert acknowledged, "the runtime emitted no events"
    assert acknowledged[-1].seq == len(acknowledged) + acknowledged[0].seq - 1
    assert (lmdb_held > 0) == (middle != "none")

    history, report = boot_copy(crash)
    assert history == acknowledged
    assert report.regenerated_events == len(acknowledged) - lmdb_held
    # Stored now: a second boot regenerates nothing and reads the same history.
    history, report = boot_copy(crash)
    assert history == acknowledged
    assert report.regenerated_events == 0
    assert report.replayed > 0


async def test_the_runtime_stores_events_with_their_records(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with open_runtime(Clock(), data_dir=data_dir, durability="relaxed") as rt:
        await drive(rt, 4, "only")
        await rt.settled()
        published = rt.events()
        stored = everything(store_of(rt))
    assert stored[-len(published) :] == published
    with Store.open(data_dir, durability="relaxed") as store:
        assert everything(store) == stored  # a clean stop checkpointed them


async def test_the_checkpoint_loop_applies_the_retention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "CHECKPOINT_EVERY_SECONDS", 3600.0)
    clock = Clock()
    async with open_runtime(clock, data_dir=tmp_path / "data") as rt:
        await drive(rt, 3, "old")
        await rt.settled()
        store = store_of(rt)
        committer = rt._committer
        assert isinstance(committer, JournalCommitter)
        held: list[int | None] = [None]
        committer._history_retention = HistoryRetention(max_age=60.0)
        committer._keep_events_after = lambda: held[0]
        old = everything(store)
        clock.now += 3600
        await drive(rt, 2, "new")
        await rt.settled()
        new = [e for e in everything(store) if e.seq > old[-1].seq]
        held[0] = old[2].seq  # a reader still needs what follows the third old event
        await trio.to_thread.run_sync(store.checkpoint)
        await committer._compact_history()
        assert everything(store) == old[3:] + new
        held[0] = None
        await committer._compact_history()
        assert everything(store) == new


async def test_a_store_from_before_events_starts_its_history_at_the_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    async with open_runtime(Clock(), data_dir=data_dir) as rt:
        await drive(rt, 3, "old")
        await take_snapshot(rt._machine, rt._committer).done.wait()  # type: ignore[arg-type]
        at_snapshot = rt._machine.last_seq
        # No snapshot at shutdown: the records after this one stay to be replayed.
        monkeypatch.setattr(Store, "write_snapshot", lambda *_: None)
        await drive(rt, 2, "after")
        await rt.settled()
        acknowledged = everything(store_of(rt))
    # What a store written before events were kept holds: records, snapshots, no history.
    with Store.open(data_dir, durability="durable") as store:
        with store._env.begin(write=True) as txn:
            txn.drop(store._events, delete=False)
            txn.drop(store._events_by_task, delete=False)
            txn.delete(b"events_through", db=store._meta)
        snapshot = store.snapshot_seqs()[-1]
    with caplog.at_level("INFO", logger="runlease.journal"):
        history, report = boot_copy(data_dir)
    assert report.snapshot_seq == snapshot
    assert f"history starts after journal record {snapshot}" in caplog.text
    # The replayed records' events come back; the snapshot's records have none to give.
    assert history == [e for e in acknowledged if e.seq > at_snapshot]
    assert history
    caplog.clear()
    with caplog.at_level("INFO", logger="runlease.journal"):
        assert boot_copy(data_dir)[0] == history
    assert "history" not in caplog.text


def test_reads_see_one_history_while_checkpoints_move_it(tmp_path: Path) -> None:
    """Appends and checkpoints on one thread, reads on another: never a gap or a repeat."""
    store = open_store(tmp_path / "data")
    appended = [0]

    def write() -> None:
        seq = 0
        for batch in range(1000):
            store.append([b"r"], [event(seq + 1), event(seq + 2), event(seq + 3)])
            seq += 3
            appended[0] = seq
            if batch % 40 == 0:
                store.checkpoint()

    writer = threading.Thread(target=write)
    writer.start()
    failures: list[str] = []
    try:
        while True:
            finished = not writer.is_alive()
            at_least = appended[0]
            seqs = [e.seq for e in store.read_events(limit=ALL)]
            if seqs != list(range(1, len(seqs) + 1)) or len(seqs) < at_least:
                failures.append(f"forward read: {len(seqs)} events, {at_least} appended")
            newest = [e.seq for e in store.read_events(limit=50, newest=True)]
            if newest != seqs[-50:] and (not newest or newest[-1] < seqs[-1]):
                failures.append(f"newest read {newest[-3:]} behind the forward read")
            if newest and newest != list(range(newest[0], newest[0] + len(newest))):
                failures.append(f"newest read has a gap: {newest}")
            if finished:
                break
    finally:
        writer.join()
        store.close()
    assert not failures, failures[:3]
    assert appended[0] == 3000


async def test_the_checkpoint_loop_compacts_by_the_runtime_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Quick rounds on trio's own clock (a mock clock would jump to the deadline below
    # while a round waits for its worker thread); the runtime's clock is the test's.
    monkeypatch.setattr(journal, "CHECKPOINT_EVERY_SECONDS", 0.01)
    monkeypatch.setattr(journal, "COMPACT_IDLE_EVERY_SECONDS", 0.05)
    clock = Clock()
    async with open_runtime(clock, data_dir=tmp_path / "data", durability="relaxed") as rt:
        committer = rt._committer
        assert isinstance(committer, JournalCommitter)
        store = store_of(rt)
        await drive(rt, 2, "old")
        await rt.settled()
        kept = len(everything(store))
        committer._history_retention = HistoryRetention(max_age=60.0)
        # Hear each compaction round of the loop, with how many events it left.
        send, rounds = trio.open_memory_channel[int](100)
        compact = committer._compact_history

        async def watched() -> None:
            await compact()
            send.send_nowait(len(everything(store)))

        committer._compact_history = watched  # type: ignore[method-assign]
        with trio.fail_after(60):
            # By the runtime's clock nothing is old yet, though by the wall clock these
            # events are years old.
            assert await rounds.receive() == kept
            clock.now += 3600
            while await rounds.receive():
                pass
        assert store.stats().events_compacted == kept
