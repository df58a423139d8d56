"""The write-ahead log: one flush per group commit, LMDB as the checkpoint behind it.

A "crash" here is a copy of the data directory taken while the store is still open: it
holds exactly what a killed process leaves on disk (the log's writes, LMDB as of its last
checkpoint), and booting the copy is what the next start would do.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runlease import open_runtime
from runlease.errors import STORAGE_CORRUPT, InvalidInput, Unavailable
from runlease.persistence import store as store_module
from runlease.persistence import wal
from runlease.persistence.store import Store
from runlease.runtime import Runtime
from runlease.runtime.journal import JournalCommitter

MAP_SIZE = 1 << 20


def open_store(data_dir: Path, durability: str = "durable", **kw: bool) -> Store:
    return Store.open(data_dir, durability=durability, map_size=MAP_SIZE, **kw)  # type: ignore[arg-type]


def crash_copy(data_dir: Path, target: Path) -> Path:
    """What a crash of the open store at this moment leaves on disk."""
    shutil.copytree(data_dir, target)
    return target


def journal(store: Store) -> list[tuple[int, bytes]]:
    return list(store.iter_journal())


def segments(data_dir: Path) -> list[Path]:
    return [path for _n, path in wal.list_segments(data_dir / "db" / "wal")]


def numbered(n: int, start: int = 0) -> list[bytes]:
    return [f"record-{i}".encode() for i in range(start, start + n)]


def frame_offsets(path: Path) -> list[tuple[int, int, int]]:
    """(offset, end, seq) of every valid frame of a segment, in file order."""
    data = path.read_bytes()
    return [(f.end - len(f.body) - 28, f.end, f.seq) for f in wal._frames_after(data, 0)]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


# ------------------------------------------------------------------- the hot path
def test_a_durable_append_is_one_log_write_and_one_flush_and_no_lmdb_commit(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_store(data_dir) as store:
        calls: list[str] = []
        real_fdatasync, real_fsync = os.fdatasync, os.fsync

        def fdatasync(fd: int) -> None:
            calls.append("fdatasync")
            real_fdatasync(fd)

        def fsync(fd: int) -> None:
            calls.append("fsync")
            real_fsync(fd)

        monkeypatch.setattr(os, "fdatasync", fdatasync)
        monkeypatch.setattr(os, "fsync", fsync)
        before = store.stats()
        store.append(numbered(50))
        after = store.stats()
        monkeypatch.undo()
        assert calls == ["fdatasync"]
        assert after.lmdb_commits == before.lmdb_commits
        assert (after.commits, after.fsyncs) == (before.commits + 1, before.fsyncs + 1)
        assert journal(store) == list(enumerate(numbered(50), start=1))


def test_records_appended_are_read_back_before_and_after_a_checkpoint(data_dir: Path) -> None:
    with open_store(data_dir) as store:
        store.append(numbered(3))
        store.checkpoint()
        store.append(numbered(4, start=3))
        assert store.records_only_in_log == 4
        assert journal(store) == list(enumerate(numbered(7), start=1))
        assert list(store.iter_journal(5)) == [(6, b"record-5"), (7, b"record-6")]
        assert store.checkpoint() == 7
        assert store.records_only_in_log == 0
        assert journal(store) == list(enumerate(numbered(7), start=1))
    with open_store(data_dir) as store:
        assert store.last_seq() == 7
        assert journal(store) == list(enumerate(numbered(7), start=1))


def test_a_snapshot_checkpoints_the_records_it_covers(data_dir: Path) -> None:
    with open_store(data_dir) as store:
        store.append(numbered(5))
        store.write_snapshot(5, b"image")
        assert store.records_only_in_log == 0
        with store._env.begin() as txn:
            assert txn.get((5).to_bytes(8, "big"), db=store._journal) is not None


def store_of(rt: Runtime) -> Store:
    committer = rt._committer
    assert isinstance(committer, JournalCommitter)
    return committer._store


def signal_after(monkeypatch: pytest.MonkeyPatch, name: str) -> trio.Event:
    """An event set (from the worker thread) once ``Store.<name>`` has done its work."""
    done = trio.Event()
    token = trio.lowlevel.current_trio_token()
    real = getattr(Store, name)

    def wrapped(self: Store) -> object:
        result = real(self)
        if result:
            trio.from_thread.run_sync(done.set, trio_token=token)
        return result

    monkeypatch.setattr(Store, name, wrapped)
    return done


async def test_relaxed_mode_flushes_the_log_soon_after_a_write(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushed = signal_after(monkeypatch, "sync_log")
    async with open_runtime(data_dir=data_dir, durability="relaxed") as rt:
        store = store_of(rt)
        await rt.create_task("written, flushed later", start=True)
        # No further write comes: the flush must happen on its own, off the commit path.
        with trio.fail_after(30):
            await flushed.wait()
        assert not store.log_unsynced
        stats = store.stats()
        assert stats.log_syncs >= 1
        assert stats.fsyncs == 0


async def test_the_runtime_checkpoints_the_log_when_records_pile_up(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "CHECKPOINT_RECORDS", 3)
    checkpointed = signal_after(monkeypatch, "checkpoint")
    async with open_runtime(data_dir=data_dir) as rt:
        store = store_of(rt)
        for i in range(3):
            await rt.create_task(f"t{i}", start=True)
        with trio.fail_after(30):
            await checkpointed.wait()
        assert store.stats().checkpoints >= 1
        with store._env.begin() as txn:
            assert txn.get((1).to_bytes(8, "big"), db=store._journal) is not None


# ------------------------------------------------------------------------- replay
@pytest.mark.parametrize("durability", ["durable", "relaxed"])
def test_a_crash_between_the_log_write_and_the_checkpoint_loses_nothing(
    data_dir: Path, tmp_path: Path, durability: str
) -> None:
    with open_store(data_dir, durability) as store:
        store.append(numbered(3))
        store.checkpoint()
        store.append(numbered(2, start=3))
        store.append(numbered(2, start=5))
        crashed = crash_copy(data_dir, tmp_path / "crashed")
    with open_store(crashed, durability) as store:
        assert store.last_seq() == 7
        assert journal(store) == list(enumerate(numbered(7), start=1))
        # Boot replayed the log into LMDB and started a new log.
        assert store.records_only_in_log == 0
        with store._env.begin() as txn:
            assert txn.get((7).to_bytes(8, "big"), db=store._journal) is not None
        assert store.append([b"after"]) == 8
    with open_store(crashed, durability) as store:
        assert [seq for seq, _ in journal(store)] == list(range(1, 9))


def test_checkpoints_delete_the_log_segments_they_cover(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wal, "FIRST_SEGMENT_BYTES", 64 * 1024)
    with open_store(data_dir) as store:
        big = [b"x" * 3000] * 10
        for _ in range(10):  # ~300 KB through 64 KiB, 128 KiB, ... segments
            store.append(big)
        assert len(segments(data_dir)) >= 3
        store.checkpoint()
        # Only the active segment (and a spare made ahead) remain.
        assert len(segments(data_dir)) <= 2
        assert store.last_seq() == 100
    assert segments(data_dir) == []  # a clean close leaves everything in LMDB
    with open_store(data_dir) as store:
        assert store.last_seq() == 100
        assert len(journal(store)) == 100


def test_a_log_spanning_segments_replays_in_order(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wal, "FIRST_SEGMENT_BYTES", 64 * 1024)
    with open_store(data_dir) as store:
        for i in range(12):
            store.append([b"%d-" % i + b"y" * 4000] * 5)
        assert len(segments(data_dir)) >= 3
        expected = journal(store)
        crashed = crash_copy(data_dir, tmp_path / "crashed")
    with open_store(crashed) as store:
        assert journal(store) == expected


# --------------------------------------------------------------------- torn ends
def _zero(path: Path, start: int, end: int) -> None:
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(bytes(end - start))


@pytest.mark.parametrize("cut", ["header", "middle", "last-byte"])
def test_a_torn_last_write_is_dropped(data_dir: Path, tmp_path: Path, cut: str) -> None:
    with open_store(data_dir) as store:
        store.append(numbered(3))
        store.append(numbered(3, start=3))
        crashed = crash_copy(data_dir, tmp_path / "crashed")
    (segment,) = segments(crashed)
    frames = frame_offsets(segment)
    start, end, seq = frames[-2]  # a frame of the last write
    assert seq == 5
    torn_from = {"header": start + 2, "middle": (start + end) // 2, "last-byte": end - 1}[cut]
    _zero(segment, torn_from, frames[-1][1])
    with open_store(crashed) as store:
        assert journal(store) == list(enumerate(numbered(4), start=1))
        assert store.append([b"next"]) == 5


def test_a_torn_write_in_relaxed_mode_drops_what_followed_it_unflushed(
    data_dir: Path, tmp_path: Path
) -> None:
    with open_store(data_dir, "relaxed") as store:
        store.append(numbered(2))
        assert store.sync_log()
        store.append(numbered(2, start=2))
        store.append(numbered(2, start=4))  # written, never flushed: after the hole too
        crashed = crash_copy(data_dir, tmp_path / "crashed")
    (segment,) = segments(crashed)
    frames = frame_offsets(segment)
    _zero(segment, frames[2][0], frames[3][1])  # the power cut lost the middle write only
    with open_store(crashed, "relaxed") as store:
        assert journal(store) == list(enumerate(numbered(2), start=1))


# --------------------------------------------------------------------- refusals
def _refused(data_dir: Path, match: str) -> Unavailable:
    with pytest.raises(Unavailable, match=match) as info:
        open_store(data_dir)
    assert info.value.code == STORAGE_CORRUPT
    assert "write-ahead log" in info.value.message
    return info.value


def test_a_damaged_record_followed_by_flushed_ones_is_refused(
    data_dir: Path, tmp_path: Path
) -> None:
    with open_store(data_dir) as store:
        for i in range(4):
            store.append(numbered(2, start=2 * i))
        crashed = crash_copy(data_dir, tmp_path / "crashed")
    (segment,) = segments(crashed)
    _start, end, seq = frame_offsets(segment)[2]
    raw = bytearray(segment.read_bytes())
    raw[end - 2] ^= 0x01
    segment.write_bytes(raw)
    error = _refused(crashed, "is damaged")
    assert f"record {seq}" in error.message
    assert str(segment) in error.message
    _refused(crashed, "is damaged")  # refusing changed nothing


def test_a_missing_record_is_refused(data_dir: Path, tmp_path: Path) -> None:
    with open_store(data_dir) as store:
        for i in range(3):
            store.append(numbered(1, start=i))
        crashed = crash_copy(data_dir, tmp_path / "crashed")
    (segment,) = segments(crashed)
    frames = frame_offsets(segment)
    raw = segment.read_bytes()
    start, end, _ = frames[1]
    segment.write_bytes(raw[:start] + raw[end:] + bytes(end - start))  # record 2 cut out
    _refused(crashed, "record 2")


def test_a_log_that_starts_after_the_checkpoint_is_refused(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wal, "FIRST_SEGMENT_BYTES", 64 * 1024)
    with open_store(data_dir) as store:
        for _ in range(6):
            store.append([b"z" * 5000] * 5)
        crashed = crash_copy(data_dir, tmp_path / "crashed")
    first, *rest = segments(crashed)
    assert rest
    first.unlink()
    _refused(crashed, "are missing")


def test_a_segment_of_another_store_is_refused(data_dir: Path, tmp_path: Path) -> None:
    with open_store(data_dir) as store:
        store.append(numbered(2))
        crashed = crash_copy(data_dir, tmp_path / "crashed")
    with open_store(tmp_path / "other") as other:
        other.append(numbered(2))
        foreign = crash_copy(tmp_path / "other", tmp_path / "foreign")
    (mine,) = segments(crashed)
    (theirs,) = segments(foreign)
    shutil.copyfile(theirs, mine)
    _refused(crashed, "belongs to store")


def test_a_missing_log_directory_is_refused(data_dir: Path, tmp_path: Path) -> None:
    with open_store(data_dir) as store:
        store.append(numbered(2))
        crashed = crash_copy(data_dir, tmp_path / "crashed")
    shutil.rmtree(crashed / "db" / "wal")
    _refused(crashed, "is missing")


def test_fresh_store_never_discards_a_log_holding_records(data_dir: Path, tmp_path: Path) -> None:
    with open_store(data_dir) as store:
        store.append(numbered(2))
        crashed = crash_copy(data_dir, tmp_path / "crashed")
    os.truncate(crashed / "db" / "data.mdb", 0)
    with pytest.raises(InvalidInput, match="still holds records"):
        open_store(crashed, fresh=True)


# --------------------------------------------------------------------- formats
def test_a_store_of_the_previous_format_boots_and_is_upgraded(data_dir: Path) -> None:
    with open_store(data_dir) as store:
        store.append(numbered(3))
    with open_store(data_dir) as store, store._env.begin(write=True) as txn:
        txn.put(b"store_format", (2).to_bytes(8, "big"), db=store._meta)
    shutil.rmtree(data_dir / "db" / "wal")
    identity = (data_dir / "identity").read_text().replace('"format":3', '"format":2')
    (data_dir / "identity").write_text(identity)
    with open_store(data_dir) as store:
        assert journal(store) == list(enumerate(numbered(3), start=1))
        store.append([b"after the upgrade"])
        with store._env.begin() as txn:
            assert txn.get(b"store_format", db=store._meta) == (3).to_bytes(8, "big")
    assert '"format":3' in (data_dir / "identity").read_text()
    with open_store(data_dir) as store:
        assert store.last_seq() == 4


def test_the_format_says_a_log_may_hold_records(data_dir: Path) -> None:
    """A runlease that knows only format 2 refuses this store instead of missing the log."""
    assert store_module.STORE_FORMAT == 3
    with open_store(data_dir) as store:
        store.append(numbered(1))
        with store._env.begin() as txn:
            assert txn.get(b"store_format", db=store._meta) == (3).to_bytes(8, "big")
    assert '"format":3' in (data_dir / "identity").read_text()


# ------------------------------------------------------- random crashes and flips
class _Base:
    def __init__(self, path: Path, acknowledged: list[bytes], unacknowledged: list[bytes]) -> None:
        self.path = path
        self.acknowledged = acknowledged
        self.unacknowledged = unacknowledged
        self.last_write: tuple[int, int] = (0, 0)


@pytest.fixture(scope="module")
def crash_base(tmp_path_factory: pytest.TempPathFactory) -> _Base:
    """A crash image: five acknowledged writes after a checkpoint, and a sixth write in
    flight (its bytes in the log, not acknowledged)."""
    root = tmp_path_factory.mktemp("wal-crash")
    written: list[bytes] = []
    with open_store(root / "live") as store:
        store.append(numbered(4))
        store.checkpoint()
        written.extend(numbered(4))
        for i in range(5):
            batch = [b"ack-%d-%d-" % (i, j) + b"p" * (j * 37) for j in range(1 + i % 3)]
            store.append(batch)
            written.extend(batch)
        active = store._log._active
        assert active is not None
        before = active.used
        in_flight = [b"in-flight-%d" % j + b"q" * 300 for j in range(4)]
        store.append(in_flight)
        base = _Base(crash_copy(root / "live", root / "image"), written, in_flight)
        base.last_write = (before, active.used)
    return base


def _boot(data_dir: Path) -> list[bytes] | str:
    try:
        with open_store(data_dir) as store:
            records = journal(store)
    except Unavailable as exc:
        return exc.code
    assert [seq for seq, _ in records] == list(range(1, len(records) + 1))
    return [body for _, body in records]


@settings(
    max_examples=int(os.environ.get("WAL_EXAMPLES", "0")) or 150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    kept_sectors=st.lists(st.booleans(), min_size=4, max_size=4),
    flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 7)), max_size=3),
)
def test_a_boot_yields_an_acknowledged_prefix_or_refuses(
    crash_base: _Base,
    tmp_path_factory: pytest.TempPathFactory,
    kept_sectors: list[bool],
    flips: list[tuple[int, int]],
) -> None:
    """Any subset of the in-flight write's sectors reached the disk, and bits flipped.

    Without flips every acknowledged record must come back (plus perhaps part of the
    write in flight, in order). With flips a boot may also keep a shorter prefix (a flip in
    the last write looks like a torn end) or refuse with STORAGE_CORRUPT, never anything
    else: no reordering, no altered record, no crash.
    """
    target = tmp_path_factory.mktemp("wal-example") / "data"
    shutil.copytree(crash_base.path, target)
    (segment,) = segments(target)
    start, end = crash_base.last_write
    sector = max(1, -(-(end - start) // len(kept_sectors)))
    raw = bytearray(segment.read_bytes())
    for i, kept in enumerate(kept_sectors):
        if not kept:
            lo = start + i * sector
            raw[lo : min(end, lo + sector)] = bytes(min(end, lo + sector) - lo)
    used = end + 64
    for where, bit in flips:
        raw[where % used] ^= 1 << bit
    segment.write_bytes(raw)
    result = _boot(target)
    everything = crash_base.acknowledged + crash_base.unacknowledged
    if isinstance(result, str):
        assert flips, f"refused ({result}) with no damage but a torn write"
        assert result == STORAGE_CORRUPT
        return
    assert result == everything[: len(result)], "not a prefix of what was written"
    if not flips:
        assert len(result) >= len(crash_base.acknowledged), "lost acknowledged records"
    shutil.rmtree(target.parent, ignore_errors=True)


def test_frames_check_their_sequence_and_body() -> None:
    data = wal.frame(7, 6, b"body")
    found = wal._frame_at(data, 0)
    assert found is not None
    assert (found.seq, found.synced, found.body) == (7, 6, b"body")
    for at in range(len(data)):
        damaged = bytearray(data)
        damaged[at] ^= 0x10
        assert wal._frame_at(bytes(damaged), 0) is None, at
    header = struct.pack(">4sIQQ", b"RLFR", 4, 7, 6)
    assert zlib.crc32(b"body", zlib.crc32(header)) == int.from_bytes(data[24:28], "big")
