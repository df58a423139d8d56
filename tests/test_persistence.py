"""The LMDB store and the journal record envelope."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import msgspec
import pytest

from runlease.core.commands import (
    AnyCommand,
    BlockRun,
    ClaimNext,
    CompleteRun,
    CreateTask,
    ExpireLease,
    ExpireSession,
    FailRun,
    FinishAndClaim,
    HeartbeatRun,
    OpenSession,
    ReleaseRun,
    ReleaseSessionLeases,
    StartTask,
    StopSession,
)
from runlease.core.snapshot import UnsupportedFormat
from runlease.errors import (
    DATA_DIR_LOCKED,
    STORAGE_FAILED,
    InternalError,
    InvalidInput,
    Unavailable,
)
from runlease.persistence import store as store_module
from runlease.persistence.records import (
    RECORD_VERSION,
    JournalRecord,
    decode_command,
    decode_record,
    encode_record,
)
from runlease.persistence.store import Store

NOW = 1_700_000_000.0
KiB = 1024


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "data", durability="durable") as opened:
        yield opened


def records(n: int, *, start: int = 0, size: int = 0) -> list[bytes]:
    return [f"record-{i}".encode() + b"x" * size for i in range(start, start + n)]


def journal(store: Store, after: int = 0) -> list[tuple[int, bytes]]:
    return list(store.iter_journal(after))


# --------------------------------------------------------------------------- records
ALL_COMMANDS: list[AnyCommand] = [
    CreateTask(
        now=NOW,
        task_id="task_1",
        title="t",
        priority="high",
        workspace_id="ws",
        metadata={"a": [1, 2.5, None, "x"]},
        required_capabilities=["py"],
        start_run_id="run_1",
    ),
    StartTask(now=NOW, task_id="task_1", run_id="run_2"),
    OpenSession(now=NOW, session_id="ses_1", agent="a", parent_id="ses_0", ttl_seconds=5.0),
    StopSession(now=NOW, session_id="ses_1", reason="done"),
    ReleaseSessionLeases(now=NOW, session_id="ses_1", reason="ttl_expired"),
    ExpireSession(now=NOW, session_id="ses_1"),
    ClaimNext(now=NOW, session_id="ses_1", claim_token="rl_claim_abc", lease_seconds=30.0),
    HeartbeatRun(now=NOW, session_id="ses_1", run_id="run_1", lease_seconds=60.0),
    CompleteRun(now=NOW, session_id="ses_1", run_id="run_1", result={"ok": True}),
    FailRun(now=NOW, session_id=None, run_id="run_1", error="e", metadata={"k": 1}),
    ReleaseRun(now=NOW, session_id="ses_1", run_id="run_1", reason="r"),
    BlockRun(now=NOW, session_id="ses_1", run_id="run_1", reason="b"),
    ExpireLease(now=NOW + 0.125, run_id="run_1"),
    FinishAndClaim(
        now=NOW,
        finish=FailRun(now=0.0, session_id="ses_1", run_id="run_1", error="e"),
        claim=ClaimNext(now=0.0, session_id="ses_1", claim_token="rl_claim_d", workspace_id="w"),
    ),
]


@pytest.mark.parametrize("cmd", ALL_COMMANDS, ids=lambda c: type(c).__name__)
def test_every_command_round_trips_through_a_record(cmd: AnyCommand) -> None:
    data = encode_record(cmd)
    record = decode_record(data)
    assert record.v == RECORD_VERSION
    assert type(record.cmd) is type(cmd)
    assert record.cmd == cmd
    assert decode_command(data) == cmd


def test_newer_record_version_stops_with_the_version_named() -> None:
    known_shape = msgspec.msgpack.encode({"v": RECORD_VERSION + 1, "cmd": ALL_COMMANDS[1]})
    unknown_op = msgspec.msgpack.encode({"v": 7, "cmd": {"op": "teleport", "now": NOW}})
    for data in (known_shape, unknown_op):
        with pytest.raises(UnsupportedFormat) as info:
            decode_record(data)
        assert isinstance(info.value, InternalError)
        assert f"version {RECORD_VERSION + 1 if data is known_shape else 7}" in info.value.message


def test_a_damaged_record_is_an_internal_error() -> None:
    for data in (b"", b"\xc1", msgspec.msgpack.encode({"v": 1, "cmd": {"op": "nope"}})):
        with pytest.raises(InternalError) as info:
            decode_record(data)
        assert not isinstance(info.value, UnsupportedFormat)
    with pytest.raises(InternalError, match="invalid version"):
        decode_record(msgspec.msgpack.encode(JournalRecord(v=0, cmd=ALL_COMMANDS[1])))


def test_an_unstorable_command_is_refused_before_it_is_applied() -> None:
    huge = CompleteRun(now=NOW, session_id="s", run_id="r", result={"n": 2**70})
    with pytest.raises(InvalidInput, match="cannot be stored"):
        encode_record(huge)


# ---------------------------------------------------------------------------- journal
def test_new_store_is_empty_and_private(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh" / "data"
    with Store.open(data_dir, durability="durable") as store:
        assert store.last_seq() == 0
        assert journal(store) == []
        assert store.load_snapshots() == []
        assert store.first_seq() is None
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "db").stat().st_mode) == 0o700
    for name in ("data.mdb", "lock.mdb"):
        assert stat.S_IMODE((data_dir / "db" / name).stat().st_mode) & 0o077 == 0


def test_batches_get_consecutive_sequences(store: Store) -> None:
    assert store.append(records(3)) == 3
    assert store.append([]) == 3
    assert store.append(records(1, start=3)) == 4
    assert store.append(records(5, start=4)) == 9
    assert store.last_seq() == 9
    assert journal(store) == [(i + 1, f"record-{i}".encode()) for i in range(9)]
    assert journal(store, 6) == [(7, b"record-6"), (8, b"record-7"), (9, b"record-8")]
    assert journal(store, 9) == []
    with pytest.raises(InternalError, match="ends at 9"):
        journal(store, 10)


def test_reading_spans_many_chunks(store: Store) -> None:
    store.append(records(10_000))
    seqs = [seq for seq, _ in store.iter_journal(0)]
    assert seqs == list(range(1, 10_001))


def test_reopen_sees_everything(tmp_path: Path) -> None:
    for durability in ("durable", "relaxed"):
        data_dir = tmp_path / durability
        with Store.open(data_dir, durability=durability) as store:
            store.append(records(4))
            store.append(records(2, start=4))
        with Store.open(data_dir, durability=durability) as store:
            assert store.last_seq() == 6
            assert journal(store) == [(i + 1, f"record-{i}".encode()) for i in range(6)]
            assert store.append([b"after"]) == 7


def test_stats_count_commits_and_fsyncs(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d", durability="durable") as store:
        for _ in range(5):
            store.append(records(10))
        stats = store.stats()
        assert (stats.commits, stats.fsyncs, stats.append_batches) == (5, 5, 5)
        assert stats.records_appended == 50
    with Store.open(tmp_path / "r", durability="relaxed") as store:
        store.append(records(10))
        stats = store.stats()
        assert (stats.commits, stats.fsyncs, stats.durability) == (1, 0, "relaxed")


def test_map_grows_transparently(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    with Store.open(data_dir, durability="relaxed", map_size=64 * KiB) as store:
        # Small batches, then one batch far bigger than the whole starting map.
        for i in range(20):
            store.append(records(10, start=i * 10, size=2 * KiB))
        store.append(records(200, start=200, size=8 * KiB))
        assert store.last_seq() == 400
        assert store.checkpoint() == 400  # the records reach LMDB here
        assert store.stats().map_grows > 0
        assert store.stats().map_size > 2 * 1024 * KiB
        assert len(journal(store)) == 400
    with Store.open(data_dir, durability="relaxed", map_size=64 * KiB) as store:
        got = journal(store)
        assert [seq for seq, _ in got] == list(range(1, 401))
        assert got[-1][1] == b"record-399" + b"x" * 8 * KiB
        store.append(records(50, start=400, size=8 * KiB))
        assert store.last_seq() == 450


# ------------------------------------------------------------------ storage failures
class _FailingTxn:
    """Wraps a real write transaction; fails the way a full disk would."""

    def __init__(self, real: lmdb.Transaction[bytes], fail_on: str, exc: Exception) -> None:
        self._real = real
        self._fail_on = fail_on
        self._exc = exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def put(self, *args: Any, **kwargs: Any) -> bool:
        if self._fail_on == "put":
            raise self._exc
        return self._real.put(*args, **kwargs)

    def commit(self) -> None:
        if self._fail_on == "commit":
            raise self._exc  # like mdb_txn_commit failing: nothing reaches the file
        self._real.commit()


class _FailingEnv:
    def __init__(self, real: lmdb.Environment, fail_on: str, exc: Exception) -> None:
        self._real = real
        self._fail_on = fail_on
        self._exc = exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def begin(self, *args: Any, **kwargs: Any) -> Any:
        txn = self._real.begin(*args, **kwargs)
        if kwargs.get("write"):
            return _FailingTxn(txn, self._fail_on, self._exc)
        return txn


@pytest.mark.parametrize(
    ("fail_on", "exc", "disk_full"),
    [
        ("commit", lmdb.DiskError("mdb_txn_commit", errno.ENOSPC), True),
        ("put", OSError(errno.ENOSPC, "No space left on device"), True),
        ("commit", OSError(errno.EIO, "Input/output error"), False),
    ],
)
def test_a_disk_full_checkpoint_loses_nothing_and_keeps_the_store_readable(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fail_on: str,
    exc: Exception,
    disk_full: bool,
) -> None:
    data_dir = tmp_path / "d"
    with Store.open(data_dir, durability="durable") as store:
        store.append(records(3))
        store.checkpoint()
        real_env = store._env
        monkeypatch.setattr(store, "_env", _FailingEnv(real_env, fail_on, exc))
        assert store.append(records(4, start=3)) == 7  # the log takes it
        with pytest.raises(Unavailable) as info:
            store.checkpoint()
        assert info.value.code == STORAGE_FAILED
        assert str(data_dir) in info.value.message
        assert ("disk is full" in info.value.message) == disk_full
        # Nothing is lost, and reads still work.
        assert store.last_seq() == 7
        assert journal(store) == [(i + 1, f"record-{i}".encode()) for i in range(7)]
        with pytest.raises(Unavailable):
            store.write_snapshot(7, b"image")
        assert store.load_snapshots() == []
        # Once space is back, the checkpoint goes through.
        monkeypatch.setattr(store, "_env", real_env)
        assert store.checkpoint() == 7
        assert store.records_only_in_log == 0
    with Store.open(data_dir, durability="durable") as store:
        assert [seq for seq, _ in journal(store)] == list(range(1, 8))


def test_a_checkpoint_failing_until_close_leaves_the_log_to_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "d"
    with Store.open(data_dir, durability="durable") as store:
        store.append(records(2))
        monkeypatch.setattr(
            store, "_env", _FailingEnv(store._env, "commit", lmdb.DiskError("full", errno.ENOSPC))
        )
        store.append(records(100, start=2))
        with pytest.raises(Unavailable):
            store.checkpoint()
    monkeypatch.undo()
    with Store.open(data_dir, durability="durable") as store:
        assert store.last_seq() == 102
        assert journal(store) == [(i + 1, f"record-{i}".encode()) for i in range(102)]


_REAL_WRITE_FAILURE = """
import os, resource, signal, sys
from pathlib import Path
from runlease.errors import RunleaseError
from runlease.persistence.store import Store

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
data_dir = Path(sys.argv[1])
with Store.open(data_dir, durability=sys.argv[2], map_size=256 * 1024) as store:
    store.append([b"before"] * 10)
    files = [data_dir / "db" / "data.mdb", *(data_dir / "db" / "wal").iterdir()]
    size = max(os.path.getsize(path) for path in files)
    # The kernel now refuses to grow files much, as a nearly full disk would.
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 64 * 1024, resource.RLIM_INFINITY))
    try:
        for _ in range(100):
            store.append([os.urandom(1000) for _ in range(100)])
    except RunleaseError as exc:
        print(exc.code)
        print(exc.message)
    print(store.last_seq(), len(list(store.iter_journal(0))))
    print(store.append([b"small"]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE semantics")
@pytest.mark.parametrize("durability", ["durable", "relaxed"])
def test_a_real_failed_write_rolls_back_the_batch(tmp_path: Path, durability: str) -> None:
    """The kernel refuses the write; the batch is absent and the store keeps working.

    Both modes meet the refusal when the log makes its next (bigger) segment, before any
    byte of the batch is written.
    """
    data_dir = tmp_path / "d"
    result = subprocess.run(
        [sys.executable, "-c", _REAL_WRITE_FAILURE, str(data_dir), durability],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    code, message, counts, after = result.stdout.splitlines()
    assert code == STORAGE_FAILED
    assert str(data_dir) in message
    last, readable = map(int, counts.split())
    assert last == readable
    assert (last - 10) % 100 == 0  # whole batches only
    assert int(after) == last + 1
    with Store.open(data_dir, durability="durable") as store:
        assert store.last_seq() == last + 1
        assert len(journal(store)) == last + 1
        store.append(records(500, size=KiB))  # room again: the map grows


def test_a_disk_too_full_to_grow_the_map_fails_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store.open(tmp_path / "d", durability="durable", map_size=64 * KiB) as store:
        store.append(records(3))

        def no_space(fd: int, offset: int, length: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "posix_fallocate", no_space)
        store.append(records(100, start=3, size=4 * KiB))  # the log takes it
        with pytest.raises(Unavailable) as info:
            store.checkpoint()
        assert info.value.code == STORAGE_FAILED
        assert "disk is full" in info.value.message
        assert store.last_seq() == 103
        assert len(journal(store)) == 103
        assert store.append([b"still taken by the log"]) == 104
        monkeypatch.undo()
        assert store.checkpoint() == 104


def test_a_failed_remap_retires_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "d"
    with Store.open(data_dir, durability="durable", map_size=64 * KiB) as store:
        store.append(records(3))

        class _NoRemap:
            def __init__(self, real: lmdb.Environment) -> None:
                self._real = real

            def __getattr__(self, name: str) -> Any:
                return getattr(self._real, name)

            def set_mapsize(self, size: int) -> None:
                raise lmdb.Error("mdb_env_set_mapsize", errno.ENOMEM)

        monkeypatch.setattr(store, "_env", _NoRemap(store._env))
        store.append(records(100, start=3, size=4 * KiB))  # the log takes it
        with pytest.raises(Unavailable) as info:
            store.checkpoint()
        assert info.value.code == STORAGE_FAILED
        # From now on nothing touches LMDB in this process.
        for call in (lambda: store.append([b"x"]), lambda: journal(store), store.load_snapshots):
            with pytest.raises(Unavailable) as again:
                call()
            assert again.value.code == STORAGE_FAILED
        monkeypatch.undo()
    with Store.open(data_dir, durability="durable") as store:
        assert store.last_seq() == 103  # the log kept what LMDB could not take


# ---------------------------------------------------------------------------- locking
def _open_in_subprocess(data_dir: Path) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from runlease.errors import RunleaseError
        from runlease.persistence.store import Store
        try:
            Store.open(Path(sys.argv[1]), durability="durable").close()
        except RunleaseError as exc:
            print(exc.code)
            print(exc.message)
        else:
            print("OPENED")
        """
    )
    return subprocess.run(
        [sys.executable, "-c", script, str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )


def test_a_second_process_is_refused_at_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    with Store.open(data_dir, durability="durable"):
        result = _open_in_subprocess(data_dir)
        code, message = result.stdout.splitlines()[:2]
        assert code == DATA_DIR_LOCKED
        assert str(data_dir) in message
        assert f"process {os.getpid()}" in message
        # The same process cannot open it twice either.
        with pytest.raises(Unavailable) as info:
            Store.open(data_dir, durability="relaxed")
        assert info.value.code == DATA_DIR_LOCKED
    assert _open_in_subprocess(data_dir).stdout.startswith("OPENED")


def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "d", durability="durable")
    store.close()
    store.close()  # closing twice is fine
    with pytest.raises(Unavailable):
        store.append([b"x"])
    with pytest.raises(Unavailable):
        journal(store)


def test_a_newer_store_format_stops_open_and_releases_the_lock(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    with Store.open(data_dir, durability="durable") as store, store._env.begin(write=True) as txn:
        txn.put(b"store_format", (99).to_bytes(8, "big"), db=store._meta)
    with pytest.raises(UnsupportedFormat, match="format 99"):
        Store.open(data_dir, durability="durable")
    assert _open_in_subprocess(data_dir).stdout.startswith(UnsupportedFormat.default_code)


# -------------------------------------------------------------------------- snapshots
def _rewrite_snapshot(store: Store, seq: int, change: Any) -> None:
    """Damage a stored snapshot in place, as a torn write or bit rot would."""
    key = seq.to_bytes(8, "big")
    with store._env.begin(write=True, db=store._snapshots) as txn:
        blob = txn.get(key)
        assert blob is not None
        txn.put(key, change(blob))


def _flip_last_byte(blob: bytes) -> bytes:
    return blob[:-1] + bytes([blob[-1] ^ 0x40])


@pytest.mark.parametrize("compress", [True, False])
def test_snapshots_round_trip_newest_first(tmp_path: Path, compress: bool) -> None:
    with Store.open(tmp_path / "d", durability="durable", compress_snapshots=compress) as store:
        store.append(records(5))
        store.write_snapshot(2, b"image at 2" * 100)
        store.write_snapshot(5, b"image at 5" * 100)
        assert store.load_snapshots() == [(5, b"image at 5" * 100), (2, b"image at 2" * 100)]
        assert store.snapshot_problems == []
        assert store.stats().snapshots_written == 2
    with Store.open(tmp_path / "d", durability="durable") as store:
        assert [seq for seq, _ in store.load_snapshots()] == [5, 2]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_flip_last_byte, "checksum"),
        (lambda blob: blob[: len(blob) // 2], "header says"),
        (lambda blob: blob[:10], "shorter than"),
        (lambda blob: b"XXXX" + blob[4:], "magic"),
        (lambda blob: b"", "shorter than"),
    ],
)
def test_a_corrupt_newest_snapshot_is_skipped(tmp_path: Path, damage: Any, reason: str) -> None:
    with Store.open(tmp_path / "d", durability="durable") as store:
        store.append(records(6))
        three, six = os.urandom(4 * KiB), os.urandom(4 * KiB)
        store.write_snapshot(3, three)
        store.write_snapshot(6, six)
        _rewrite_snapshot(store, 6, damage)
        assert store.load_snapshots() == [(3, three)]
        [problem] = store.snapshot_problems
        assert problem.seq == 6
        assert reason in problem.reason
        # The journal still holds everything after the older snapshot.
        assert [seq for seq, _ in journal(store, 3)] == [4, 5, 6]


def test_a_snapshot_from_a_newer_runlease_stops_boot(store: Store) -> None:
    store.append(records(2))
    store.write_snapshot(2, b"image")
    # Header version lives right after the 4-byte magic.
    _rewrite_snapshot(store, 2, lambda blob: blob[:4] + (9).to_bytes(2, "big") + blob[6:])
    with pytest.raises(UnsupportedFormat, match="header version 9"):
        store.load_snapshots()


def test_snapshots_keep_two_and_trim_the_journal_behind_the_older(store: Store) -> None:
    store.append(records(4))
    store.write_snapshot(3, b"s3")
    # One snapshot: nothing trimmed, a corrupt snapshot could still fall back to replay.
    assert store.first_seq() == 1
    store.append(records(4, start=4))
    store.write_snapshot(6, b"s6")
    assert store.snapshot_seqs() == [3, 6]
    assert store.first_seq() == 4
    store.append(records(3, start=8))
    store.write_snapshot(9, b"s9")
    assert store.snapshot_seqs() == [6, 9]
    assert store.first_seq() == 7
    assert [seq for seq, _ in journal(store, 6)] == [7, 8, 9, 10, 11]
    assert store.stats().records_trimmed == 6
    with pytest.raises(InternalError, match="record 1 is missing"):
        journal(store, 0)
    with pytest.raises(InternalError, match="record 4 is missing"):
        journal(store, 3)


def test_trimming_spans_many_transactions(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d", durability="relaxed") as store:
        store.append(records(50_000))
        store.write_snapshot(45_000, b"a")
        store.write_snapshot(50_000, b"b")
        assert store.first_seq() == 45_001
        assert store.stats().records_trimmed == 45_000


def test_last_seq_survives_a_fully_trimmed_journal(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    with Store.open(data_dir, durability="durable") as store:
        store.append(records(3))
        store.write_snapshot(3, b"a")
        store.write_snapshot(3, b"b")  # replaces the snapshot at 3
        assert store.snapshot_seqs() == [3]
        assert store.load_snapshots() == [(3, b"b")]
    with Store.open(data_dir, durability="durable") as store:
        assert store.last_seq() == 3
        assert store.append([b"next"]) == 4


def test_snapshot_sequence_is_checked(store: Store) -> None:
    store.append(records(5))
    with pytest.raises(ValueError, match="journal ends at 5"):
        store.write_snapshot(6, b"x")
    store.write_snapshot(4, b"x")
    with pytest.raises(ValueError, match="newer snapshot at 4"):
        store.write_snapshot(2, b"x")
    assert store.snapshot_seqs() == [4]


def test_snapshots_grow_the_map_too(tmp_path: Path) -> None:
    with Store.open(tmp_path / "d", durability="relaxed", map_size=64 * KiB) as store:
        store.append(records(1))
        image = os.urandom(3 * 1024 * KiB)  # incompressible
        store.write_snapshot(1, image)
        assert store.load_snapshots() == [(1, image)]
        assert store.stats().map_grows > 0


def test_durability_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durability"):
        Store.open(tmp_path, durability="sometimes")  # type: ignore[arg-type]


def test_storage_failure_message_names_the_cause() -> None:
    full = store_module._storage_failed("could not x", OSError(errno.ENOSPC, "no space"))
    other = store_module._storage_failed("could not x", OSError(errno.EACCES, "denied"))
    assert full.code == other.code == STORAGE_FAILED
    assert "disk is full" in full.message
    assert "free space" in other.message


def test_threads_append_read_and_snapshot_while_the_map_grows(tmp_path: Path) -> None:
    """The runtime's shape: one writer thread, a snapshot writer, and readers, all at once."""
    errors: list[BaseException] = []
    batches = 300
    with Store.open(tmp_path / "d", durability="relaxed", map_size=64 * KiB) as store:
        done = threading.Event()

        def guarded(body: Any) -> Any:
            def run() -> None:
                try:
                    body()
                except BaseException as exc:  # reported below
                    errors.append(exc)
                    done.set()

            return run

        def write() -> None:
            for i in range(batches):
                store.append(records(20, start=i * 20, size=200))
            done.set()

        def snapshot() -> None:
            while not done.is_set():
                seq = store.last_seq()
                if seq and seq > max(store.snapshot_seqs(), default=-1):
                    store.write_snapshot(seq, os.urandom(2 * KiB))

        def read() -> None:
            while not done.is_set():
                snapshots = store.load_snapshots()
                start = snapshots[0][0] if snapshots else 0
                try:
                    seqs = [seq for seq, _ in store.iter_journal(start)]
                except InternalError as exc:
                    # Two newer snapshots can trim the records a slow reader still wants;
                    # the store must then say so, never skip records silently.
                    if "is missing" not in exc.message:
                        raise
                    continue
                assert seqs == list(range(start + 1, start + 1 + len(seqs)))

        threads = [threading.Thread(target=guarded(f)) for f in (write, snapshot, read, read)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors, errors
        assert store.last_seq() == batches * 20
        assert store.stats().map_grows > 0
        newest = store.load_snapshots()[0][0]
        assert [seq for seq, _ in store.iter_journal(newest)] == list(
            range(newest + 1, batches * 20 + 1)
        )
