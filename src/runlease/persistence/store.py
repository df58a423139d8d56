"""The store: an append-only journal of records plus the newest two snapshots.

Layout of a data directory::

    <data_dir>/            mode 0700, created if missing
        lock               exclusive flock while a Store has the directory open; holds its pid
        identity           JSON: store id, format, last sequence known durable (mode 0600)
        db/                the LMDB environment (data.mdb, lock.mdb), files mode 0600
            journal        8-byte big-endian sequence -> framed record (see below)
            snapshots      8-byte big-endian sequence -> header + snapshot image
            meta           small named values: store format, store id, last sequence,
                           first checksummed sequence, events through
            events         8-byte big-endian event seq -> framed event (see below)
            events_by_task task id + event seq -> b"", the index of each task's events
            wal/           the write-ahead log: segment files (see runlease.persistence.wal)

Sequences start at 1 and have no gaps. A snapshot stored under sequence S holds the state
after records 1..S; boot decodes the newest valid snapshot and replays the records after S.

Write-ahead log (format 3): :meth:`Store.append` writes a group commit to the log with one
``pwrite`` and, when durable, one ``fdatasync`` (LMDB would flush twice). LMDB is the
checkpoint behind the log: :meth:`Store.checkpoint` (called by the runtime off the commit
path, and by snapshots and :meth:`Store.close`) copies the records only the log holds into
LMDB in one flushed transaction, then deletes the log segments it covers. Until then those
records are kept in memory too, so reads of the journal see them. :meth:`Store.open`
replays the log's records after LMDB's last sequence into LMDB (one flushed transaction)
before anything else reads the store, and starts a new segment. The log's own rules (a torn
end is dropped, damage to a flushed record, a gap, or a log starting after LMDB's end is
``STORAGE_CORRUPT``) are in :mod:`runlease.persistence.wal`. Stores of format 2 and older
open and are upgraded; a runlease that knows only format 2 refuses format 3 (the meta
value and the identity file both say 3) instead of missing the log's records.

Integrity: the store fails closed. The identity file lives outside the database, so a
wiped, emptied or swapped database is noticed at open (``STORE_MISSING`` or
``STORAGE_CORRUPT``) instead of booting empty; so is a database that went back in time
(its last sequence is below the one the identity file recorded as durable). The identity
file is rewritten only at a clean close and after a durable snapshot, never per commit,
and it only ever vouches for a sequence LMDB itself holds durably (a checkpoint), so the
check holds however far the log runs ahead of LMDB.
Every journal record is framed as ``0xC1, frame version, crc32 (big-endian), body``; the
crc covers the 8-byte key, the two prefix bytes and the body, so a flipped byte or a
record under the wrong key is caught on read. ``0xC1`` is never the first byte of a
msgpack value, so records written before framing existed (bare msgpack maps) are told
apart without doubt, and they are accepted only below the ``checksummed_from`` sequence
kept in ``meta``: a damaged prefix cannot pass a newer record off as an unchecked one.
Before LMDB maps an existing data file, the store checks its meta pages and its length
itself and walks the whole file with py-lmdb's offline verifier (pure Python, reads with
``read``), because LMDB trusts the file and a truncated file or a damaged page pointer
would otherwise kill the process with SIGBUS or SIGSEGV.

Durability modes:

``durable``
    Every group commit is flushed to stable storage (one ``fdatasync`` of the log) before
    :meth:`Store.append` returns, so a record the runtime acknowledged survives a process
    crash, an OS crash and a power cut (given a disk that honours flushes).
``relaxed``
    Group commits reach the OS page cache (the log) but are not flushed before
    :meth:`Store.append` returns; :meth:`Store.sync_log` flushes them later (the runtime
    does within 50 ms). A record survives the runtime process crashing or being killed,
    but an OS crash or power cut can lose the most recent commits (boot then finds a torn
    end of the log and keeps what came before it). :meth:`Store.close` checkpoints, so a
    clean shutdown loses nothing.

Checkpoints (LMDB commits) are flushed in both modes: they are rare, and the log segments
they cover are deleted right after.

In durable mode LMDB runs with ``writemap``: the data file always has the size of the
whole map, so a commit never grows the file and its flush needs no file-size metadata
update, which makes a durable commit cheaper (by how much depends on the filesystem and
the load). A write into a shared file mapping that the disk cannot back would kill the
process with SIGBUS, so the store reserves the disk blocks of the whole map
(``posix_fallocate``) before LMDB may use them: at open and before each growth of the map.
A full disk therefore shows up as ``STORAGE_FAILED`` when the map would grow, with nothing
written, never as a crash mid-commit. The price: ``data.mdb`` takes the map's size on disk
(64 MiB at first, doubling as needed). Relaxed mode must not use ``writemap``: without
flushes the kernel may write LMDB's meta page before the pages it points to, and an OS
crash could then corrupt the database instead of just losing the newest commits. Without
it, a full disk fails the commit's own writes, which LMDB rolls back.

Failures: an append that fails before writing (no room for a new log segment: a full disk
is ``STORAGE_FAILED``, a descriptor shortage ``RESOURCE_EXHAUSTED``) leaves the batch absent
and the store usable. A write or flush of the log that fails midway leaves the batch
unknown: the store takes no more appends, and after a restart the batch may be present, or
a prefix of it (each record was valid after the ones before it). Callers must treat an
unacknowledged batch as "unknown", which replay handles. A checkpoint that fails loses
nothing (the log still holds its records) and is retried; an LMDB failure it cannot
resolve (a failed remap, a panic) makes the store refuse all further work.

History (events): :meth:`Store.append` takes the events of its records beside them. They
are readable (:meth:`Store.read_events`, :meth:`Store.get_event`) once the append
returned, kept in memory until the next checkpoint writes them into ``events`` and
``events_by_task`` in the same transaction as their records, with ``events_through`` in
``meta`` (the last journal record whose events are stored). The commit path only hands the
Event objects over: encoding, the index and the flush happen in the checkpoint. Records the
store replays from the log at open come without events (the store cannot compute them):
boot (``runlease.runtime.journal.load_machine``) regenerates the events of every record it
replays past ``events_through`` and stores them with :meth:`Store.store_replayed_events`
before serving. Events are history, not state: a store written before events were kept
(or by an older runlease that ignored them) starts its history at the first record boot
replays after the upgrade; nothing earlier is invented. Retention and the event format are
in :mod:`runlease.persistence.events`; :meth:`Store.compact_events` applies retention.

All methods are thread-safe (a mutex for LMDB writes and a lock for the log, taken in
that order, so appends never wait for a checkpoint), but the store is designed for one
writer thread: the runtime hands it everything that accumulated while the previous commit
ran. History reads take neither the mutex nor a write transaction: a short lock that only
growing the map and closing take (between those two) keeps the environment alive under
their read transaction, so a read never waits for a checkpoint's flush and may run on the
event loop's thread.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import functools
import itertools
import logging
import os
import struct
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from operator import attrgetter
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self, TypeVar

import lmdb
import lmdb.verify as lmdb_verify
import msgspec

from runlease.core.model import Event
from runlease.core.snapshot import UnsupportedFormat
from runlease.errors import (
    DATA_DIR_LOCKED,
    RESOURCE_EXHAUSTED,
    STORAGE_CORRUPT,
    STORAGE_FAILED,
    STORE_MISSING,
    InternalError,
    InvalidInput,
    RunleaseError,
    Unavailable,
)
from runlease.persistence import wal
from runlease.persistence.events import (
    EventCorrupt,
    HistoryRetention,
    check_retention,
    decode_event,
    decode_matching,
    encode_events,
    key_seq,
    seq_key,
    task_key,
    task_prefix,
)

log = logging.getLogger(__name__)

Durability = Literal["durable", "relaxed"]

MiB: Final = 1024 * 1024
DEFAULT_MAP_SIZE: Final = 64 * MiB
# Past this the map stops doubling and appends fail with STORAGE_FAILED.
MAX_MAP_SIZE: Final = 1 << 40
# 2: journal records are framed with a crc32 and the store has an identity (see above).
# 3: records reach the write-ahead log first; LMDB may lag behind it (see above).
STORE_FORMAT: Final = 3
WAL_DIR: Final = "wal"
IDENTITY_FILE: Final = "identity"

_U64: Final = struct.Struct(">Q")
# magic, header version, flags, seq, image length, stored length, crc32 of all that + body.
_SNAP_HEADER: Final = struct.Struct(">4sHHQQQI")
_SNAP_MAGIC: Final = b"RLSN"
_SNAP_HEADER_VERSION: Final = 1
_SNAP_FLAG_ZLIB: Final = 1
_SNAP_KNOWN_FLAGS: Final = _SNAP_FLAG_ZLIB
_SNAPSHOTS_KEPT: Final = 2

_META_FORMAT: Final = b"store_format"
_META_LAST_SEQ: Final = b"last_seq"
_META_STORE_ID: Final = b"store_id"
# Records from this sequence on must carry a checksum frame; older ones may be bare.
_META_CHECKSUMMED_FROM: Final = b"checksummed_from"
# The last journal record whose events are in the events database.
_META_EVENTS_THROUGH: Final = b"events_through"

# Journal record frame: magic, frame version, crc32. 0xC1 is the one byte msgpack never
# uses, so a bare (pre-checksum) record, always a msgpack map, can never start with it.
_REC_MAGIC: Final = 0xC1
_REC_FRAME_VERSION: Final = 1
_REC_PREFIX: Final = bytes((_REC_MAGIC, _REC_FRAME_VERSION))
_REC_CRC: Final = struct.Struct(">I")
_REC_HEADER_SIZE: Final = len(_REC_PREFIX) + _REC_CRC.size

# errno values that mean "short of a resource right now", not "the storage is bad".
_TRANSIENT_ERRNOS: Final = frozenset(
    (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR)
)
# LMDB errors that mean the file does not hold what LMDB expects.
_CORRUPTION_ERRORS: Final = (
    lmdb.CorruptedError,
    lmdb.PageNotFoundError,
    lmdb.BadValsizeError,
    lmdb.InvalidError,
    lmdb.VersionMismatchError,
    lmdb.BadTxnError,
    lmdb.BadDbiError,
    lmdb.IncompatibleError,
    lmdb.PageFullError,
    lmdb.CursorFullError,
)

# Journal reads hold the lock per chunk, never across a yield.
_READ_CHUNK_RECORDS: Final = 4096
_READ_CHUNK_BYTES: Final = 8 * MiB
# Journal trimming deletes this many records per write transaction, so appends interleave.
_TRIM_CHUNK: Final = 20_000
# When records only the log holds pass these, a checkpoint is due (checkpoint_due()); past
# the hard limit an append checkpoints itself, so memory stays bounded without a caller.
CHECKPOINT_RECORDS: Final = 20_000
CHECKPOINT_BYTES: Final = 16 * MiB
_PENDING_HARD_LIMIT: Final = 256 * MiB
# History reads look at this many stored events per read transaction, so a filtered scan
# of a long history never holds the environment lock for long.
_EVENT_SCAN_CHUNK: Final = 4096
# Compaction deletes this many events per write transaction, so appends and checkpoints
# interleave with a large first compaction.
_COMPACT_CHUNK: Final = 10_000
_event_seq: Final = attrgetter("seq")
# Past every event sequence a key can hold: the open upper end of a history read.
_NO_SEQ: Final = 1 << 64

_T = TypeVar("_T")


class StoreStats(msgspec.Struct, kw_only=True):
    """Counters since the store was opened."""

    durability: str
    # Group commits: appends written to the log.
    commits: int = 0
    # Group commits flushed before the append returned: all when durable, none when relaxed.
    fsyncs: int = 0
    append_batches: int = 0
    records_appended: int = 0
    snapshots_written: int = 0
    records_trimmed: int = 0
    map_size: int = 0
    map_grows: int = 0
    # Relaxed mode: flushes of the log made later, off the append path.
    log_syncs: int = 0
    log_segments_created: int = 0
    # LMDB write transactions (checkpoints, snapshots, trims), each flushed.
    lmdb_commits: int = 0
    checkpoints: int = 0
    records_checkpointed: int = 0
    events_checkpointed: int = 0
    events_regenerated: int = 0
    events_compacted: int = 0


class SnapshotProblem(msgspec.Struct, frozen=True):
    """A stored snapshot that failed its checks and was skipped."""

    seq: int
    reason: str


class Store:
    """The journal and snapshots of one data directory. Build it with :meth:`Store.open`."""

    def __init__(
        self,
        *,
        data_dir: Path,
        durability: Durability,
        env: lmdb.Environment,
        journal: lmdb._Database,
        snapshots: lmdb._Database,
        meta: lmdb._Database,
        events: lmdb._Database,
        events_by_task: lmdb._Database,
        lock_fd: int,
        data_fd: int,
        last_seq: int,
        compress_snapshots: bool,
        store_id: str,
        checksummed_from: int,
        log: wal.LogWriter,
        events_through: int = 0,
        last_event_seq: int = 0,
    ) -> None:
        self.data_dir = data_dir
        self.durability: Durability = durability
        self.store_id = store_id
        self._env = env
        self._journal = journal
        self._snapshots = snapshots
        self._meta = meta
        self._events = events
        self._events_by_task = events_by_task
        self._lock_fd: int | None = lock_fd
        # The data file stays open for the store's lifetime, so growing the map needs no
        # new descriptor (which could fail with EMFILE when the process is at its limit).
        self._data_fd: int | None = data_fd
        # The newest record appended (it is in the log), and the newest one in LMDB.
        self._last_seq = last_seq
        self._lmdb_last = last_seq
        self._checksummed_from = checksummed_from
        self._compress = compress_snapshots
        self._mutex = threading.Lock()
        # Keeps the environment alive under history reads: taken by those reads, and by
        # growing the map and closing (with the mutex held). Order: _mutex, _env_lock,
        # _log_lock.
        self._env_lock = threading.Lock()
        # Serialises identity-file rewrites, which run outside the mutex (they fsync).
        self._identity_lock = threading.Lock()
        self._identity_seq = 0
        self._closed = False
        # Set once LMDB can no longer be trusted (a failed remap, a panic); then every call
        # raises STORAGE_FAILED with this text instead of touching the environment.
        self._broken: str | None = None
        self._stats = StoreStats(durability=durability, map_size=env.info()["map_size"])
        self._snapshot_problems: list[SnapshotProblem] = []
        # The log and the records only it holds (after _lmdb_last), guarded by _log_lock.
        # Lock order: _mutex, then _log_lock; never the other way round.
        self._log = log
        self._log_lock = threading.Lock()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        # Set once a log write failed midway: the log's end is unknown, appends stop.
        self._log_failed: str | None = None
        # The hooks' delivery log, opened on first use (see read_hook_log).
        self._hooks: lmdb._Database | None = None
        # The events of the pending records, oldest first (guarded by _log_lock); LMDB
        # holds every stored event up to _events_lmdb_seq, these are the ones after it.
        self._pending_events: list[Event] = []
        self._events_lmdb_seq = last_event_seq
        # The last journal record whose events are stored (in LMDB or pending), and the
        # one LMDB's events_through says.
        self._events_through = events_through
        self._events_lmdb_through = events_through

    @property
    def wal_dir(self) -> Path:
        return self.data_dir / "db" / WAL_DIR

    @property
    def data_path(self) -> Path:
        """The LMDB data file, for messages that must name it."""
        return self.data_dir / "db" / "data.mdb"

    # ---------------------------------------------------------------------- opening
    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        durability: Durability,
        map_size: int = DEFAULT_MAP_SIZE,
        compress_snapshots: bool = True,
        fresh: bool = False,
        verify: bool = True,
    ) -> Store:
        """Open (creating if needed) the store in ``data_dir`` and lock it for this process.

        ``map_size`` is only the starting size of the memory map; it doubles whenever a
        write needs more. Raises ``Unavailable(code=DATA_DIR_LOCKED)`` at once if another
        Store (in this or another process) has the directory open.

        The store fails closed (see the module docstring): a directory whose identity file
        says it held a store, but whose database is gone or empty, raises
        ``Unavailable(code=STORE_MISSING)``; a database that fails its checks raises
        ``Unavailable(code=STORAGE_CORRUPT)``. ``fresh=True`` accepts a missing or empty
        database and gives it a new identity; it never discards a database holding data.
        ``verify=False`` skips the structural walk of the data file (tests and tools that
        just created the file themselves).
        """
        if durability not in ("durable", "relaxed"):
            raise ValueError(f"durability must be 'durable' or 'relaxed', not {durability!r}")
        data_dir = Path(data_dir)
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise _storage_failed(f"cannot create the data directory {data_dir}", exc) from exc
        lock_fd = _lock_data_dir(data_dir)
        try:
            return cls._open_locked(
                data_dir,
                lock_fd,
                durability=durability,
                map_size=map_size,
                compress_snapshots=compress_snapshots,
                fresh=fresh,
                verify=verify,
            )
        except BaseException:
            _unlock(lock_fd)
            raise

    @classmethod
    def _open_locked(
        cls,
        data_dir: Path,
        lock_fd: int,
        *,
        durability: Durability,
        map_size: int,
        compress_snapshots: bool,
        fresh: bool,
        verify: bool,
    ) -> Store:
        identity = _read_identity(data_dir)
        db_dir = data_dir / "db"
        data_path = db_dir / "data.mdb"
        if _has_data_file(data_path):
            # LMDB trusts the file it maps: check what can be checked without it first.
            _check_meta_pages(data_path)
            if verify:
                _verify_structure(data_path)
        elif identity is not None and not fresh:
            raise _store_missing(data_dir, f"{data_path} is missing or empty")
        env = _open_env(db_dir, durability=durability, map_size=map_size)
        data_fd: int | None = None
        try:
            try:
                data_fd = os.open(data_path, os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                raise _storage_failed(f"cannot open {data_path}", exc) from exc
            if durability == "durable":
                _reserve(data_fd, data_path, env.info()["map_size"], "open the store")
            state = _open_databases(env, data_path)
            store_id = _reconcile_identity(data_dir, identity, state, fresh=fresh)
            wal_dir = db_dir / WAL_DIR
            recovered = _recover_log(wal_dir, store_id, state, fresh=fresh)
            updates: dict[bytes, bytes] = {}
            if state.store_id != store_id:
                updates[_META_STORE_ID] = store_id.encode("ascii")
            if state.format != STORE_FORMAT:
                # A new store, or one of an older format: records from the next sequence on
                # are checksummed and go through the log, and the format says so.
                updates[_META_FORMAT] = _U64.pack(STORE_FORMAT)
                updates[_META_CHECKSUMMED_FROM] = _U64.pack(state.checksummed_from)
            if recovered.records:
                log.info(
                    "replaying %d records from the write-ahead log in %s into the checkpoint",
                    len(recovered.records),
                    wal_dir,
                )
            if updates or recovered.records:
                # One flushed transaction: after it LMDB holds everything the log held.
                _put_meta(env, state, updates, recovered.records, data_path)
            last_seq = recovered.records[-1][0] if recovered.records else state.last_seq
            # Everything is in LMDB now: the old segments go, a new one takes the appends.
            writer = _start_log(wal_dir, store_id, recovered, last_seq, durability)
            store = cls(
                data_dir=data_dir,
                durability=durability,
                env=env,
                journal=state.journal,
                snapshots=state.snapshots,
                meta=state.meta,
                events=state.events,
                events_by_task=state.events_by_task,
                lock_fd=lock_fd,
                data_fd=data_fd,
                last_seq=last_seq,
                compress_snapshots=compress_snapshots,
                store_id=store_id,
                checksummed_from=state.checksummed_from,
                log=writer,
                events_through=state.events_through,
                last_event_seq=state.last_event_seq,
            )
            if identity is None or identity.store_id != store_id or updates:
                store._flush_and_record_identity(last_seq, raise_errors=True)
            else:
                store._identity_seq = identity.durable_seq
        except BaseException:
            if data_fd is not None:
                os.close(data_fd)
            env.close()
            raise
        return store

    def close(self) -> None:
        """Checkpoint what only the log holds, record the durable sequence, close, unlock.

        If the checkpoint fails the log keeps its records and the next open replays them.
        """
        with self._mutex, self._identity_lock:
            if self._closed:
                return
            with self._log_lock:
                self._closed = True  # no append after this one
            try:
                if self._broken is None:
                    try:
                        self._checkpoint_locked("checkpoint the journal at close", None)
                    except RunleaseError as exc:
                        log.warning(
                            "checkpoint_failed",
                            extra={
                                "fields": {
                                    "data_dir": str(self.data_dir),
                                    "code": exc.code,
                                    "error": exc.message,
                                    "effect": "log_replayed_at_next_open",
                                }
                            },
                        )
                    self._flush_and_record_identity_locked(self._lmdb_last, raise_errors=False)
            finally:
                with self._log_lock:
                    self._log.close()
                    # Only once LMDB holds every record may the log go.
                    obsolete = self._log.all_paths() if not self._pending else []
                _delete_segments(self.wal_dir, obsolete)
                with self._env_lock:
                    self._env.close()
                if self._data_fd is not None:
                    os.close(self._data_fd)
                    self._data_fd = None
                if self._lock_fd is not None:
                    _unlock(self._lock_fd)
                    self._lock_fd = None

    def _flush_and_record_identity(self, seq: int, *, raise_errors: bool) -> None:
        """Make everything up to ``seq`` durable, then say so in the identity file.

        Runs outside the store mutex (a relaxed-mode flush can take a while and appends
        should not wait for it); the identity lock keeps :meth:`close` from closing the
        environment under it.
        """
        with self._identity_lock:
            if self._closed:
                return
            self._flush_and_record_identity_locked(seq, raise_errors=raise_errors)

    def _flush_and_record_identity_locked(self, seq: int, *, raise_errors: bool) -> None:
        if self.durability == "relaxed":
            try:
                self._env.sync(True)
            except lmdb.Error as exc:
                if raise_errors:
                    raise _storage_failed(
                        f"cannot flush the database in {self.data_dir}", exc
                    ) from exc
                log.warning("flushing %s failed: %s", self.data_dir, exc)
                return
        seq = max(seq, self._identity_seq)
        try:
            _write_identity(self.data_dir, _Identity(self.store_id, STORE_FORMAT, seq))
        except OSError as exc:
            if raise_errors:
                raise _storage_failed(f"cannot write {self.data_dir / IDENTITY_FILE}", exc) from exc
            # Not fatal: the file keeps an older durable sequence, a weaker check.
            log.warning("could not update %s: %s", self.data_dir / IDENTITY_FILE, exc)
            return
        self._identity_seq = seq

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---------------------------------------------------------------------- journal
    def last_seq(self) -> int:
        """The sequence of the newest committed record (0 for a new store)."""
        return self._last_seq

    def append(self, records: Sequence[bytes], events: Sequence[Event] = ()) -> int:
        """Commit a batch of records as one group commit; return the last sequence.

        ``events`` are the events those records caused, in order (seq ascending). They are
        readable by :meth:`read_events` once this returned, and reach LMDB with their
        records at the next checkpoint; nothing is done with them here but keeping them.

        The records get consecutive sequences after :meth:`last_seq` and are written to the
        log in one write; when durable, one ``fdatasync`` makes them durable before this
        returns, when relaxed they are in the OS's hands (they survive this process) and a
        later :meth:`sync_log` or :meth:`checkpoint` flushes them. They reach LMDB at the
        next checkpoint.

        Failures: ``RESOURCE_EXHAUSTED`` (a new log segment could not be opened for want of
        descriptors or memory) and ``STORAGE_FAILED`` before anything was written leave the
        batch absent and the store usable. A failed write or flush of the log itself
        raises ``STORAGE_FAILED`` and ends appends for this process; that batch may or may
        not be present after a restart (it is never partly present out of order). Either
        way the caller must not acknowledge the batch.
        """
        if not records:
            return self._last_seq
        with self._log_lock:
            self._check_appendable()
            first = self._last_seq + 1
            try:
                self._log.make_room(wal.frames_size(records))
            except OSError as exc:
                what = f"could not start a new segment of the write-ahead log in {self.wal_dir}"
                if _is_transient(exc):
                    raise _resource_exhausted(what, exc) from exc
                raise _storage_failed(what, exc) from exc
            try:
                self._log.write(first, records)
            except OSError as exc:
                error = _storage_failed(
                    f"could not write the write-ahead log in {self.wal_dir}", exc
                )
                self._log_failed = error.message
                raise error from exc
            self._pending.extend(records)
            self._pending_bytes += sum(len(record) for record in records)
            self._last_seq = last = first + len(records) - 1
            if events:
                self._pending_events.extend(events)
            self._events_through = last
            self._stats.commits += 1
            if self.durability == "durable":
                self._stats.fsyncs += 1
            self._stats.append_batches += 1
            self._stats.records_appended += len(records)
            self._stats.log_segments_created = self._log.segments_created
            overfull = self._pending_bytes >= _PENDING_HARD_LIMIT
        if overfull:
            self.checkpoint()
        return last

    def _check_appendable(self) -> None:
        self._check_open()
        if self._log_failed is not None:
            raise Unavailable(self._log_failed, code=STORAGE_FAILED)

    def sync_log(self) -> bool:
        """Flush log writes not flushed yet (relaxed mode); False if there were none.

        The flush runs without the log lock, on a duplicate of the segment's descriptor,
        so appends go on meanwhile.
        """
        with self._log_lock:
            if self._closed or self._log_failed is not None:
                return False
            try:
                plan = self._log.sync_plan()
            except OSError as exc:
                log.warning("cannot flush the log in %s now: %s", self.wal_dir, exc)
                return False
        if plan is None:
            return False
        try:
            plan.run()
        except OSError as exc:
            error = _storage_failed(f"could not flush the write-ahead log in {self.wal_dir}", exc)
            with self._log_lock:
                self._log_failed = error.message
            raise error from exc
        finally:
            plan.close()
        with self._log_lock:
            self._log.synced(plan.seq)
            self._stats.log_syncs += 1
        return True

    @property
    def log_unsynced(self) -> bool:
        """Whether the log holds writes not yet flushed (relaxed mode)."""
        return self._log.unsynced

    def checkpoint_due(self) -> bool:
        """Whether enough records wait in the log alone that a checkpoint should run."""
        return len(self._pending) >= CHECKPOINT_RECORDS or self._pending_bytes >= CHECKPOINT_BYTES

    @property
    def records_only_in_log(self) -> int:
        return len(self._pending)

    def checkpoint(self) -> int:
        """Copy the records only the log holds into LMDB in one flushed transaction.

        Then the log segments LMDB now covers are deleted, and the next segment is made
        ahead of time if the active one is filling up. Returns the sequence LMDB is durable
        through. Runs alongside appends (they take the log lock only). A failure raises
        (``STORAGE_FAILED``, ``RESOURCE_EXHAUSTED``) and loses nothing: the log keeps the
        records and a later checkpoint, or the next open, tries again.
        """
        with self._mutex:
            self._check_open()
            self._checkpoint_locked("checkpoint the journal", None)
            durable = self._lmdb_last
        self._prepare_spare_segment()
        return durable

    def _checkpoint_locked(
        self, what: str, also: Callable[[lmdb.Transaction[bytes]], _T] | None
    ) -> _T | None:
        """With the mutex held: one LMDB transaction with the pending records and ``also``."""
        with self._log_lock:
            first = self._lmdb_last + 1
            records = list(self._pending)
            # Appends add records and their events together, so these are exactly the
            # events of ``records``.
            events = list(self._pending_events)
            events_through = self._events_through
        if not records and also is None:
            return None
        last = first + len(records) - 1

        def write(txn: lmdb.Transaction[bytes]) -> _T | None:
            if records:
                self._put_records(txn, first, records)
                self._put_events(txn, events, append=True)
                if events_through != self._events_lmdb_through:
                    txn.put(_META_EVENTS_THROUGH, _U64.pack(events_through), db=self._meta)
            return also(txn) if also is not None else None

        result = self._write(what, write)
        if records:
            self._lmdb_last = last
            self._events_lmdb_through = events_through
            self._stats.checkpoints += 1
            self._stats.records_checkpointed += len(records)
            self._stats.events_checkpointed += len(events)
        with self._log_lock:
            del self._pending[: len(records)]
            self._pending_bytes -= sum(len(record) for record in records)
            if events:
                del self._pending_events[: len(events)]
                self._events_lmdb_seq = max(self._events_lmdb_seq, events[-1].seq)
            obsolete = self._log.covered_through(self._lmdb_last)
        _delete_segments(self.wal_dir, obsolete)
        return result

    def _put_records(self, txn: lmdb.Transaction[bytes], first: int, records: list[bytes]) -> None:
        items = []
        for i, record in enumerate(records):
            key = _U64.pack(first + i)
            items.append((key, _frame_record(key, record)))
        _consumed, added = txn.cursor(self._journal).putmulti(items, append=True)
        if added != len(items):
            # Only possible if the journal holds keys past the checkpoint: a bug.
            raise InternalError(f"journal in {self.data_dir} already has records after {first - 1}")
        txn.put(_META_LAST_SEQ, _U64.pack(first + len(records) - 1), db=self._meta)

    def _put_events(
        self, txn: lmdb.Transaction[bytes], events: Sequence[Event], *, append: bool
    ) -> None:
        """Write ``events`` (seq ascending) and their index entries; encoding happens here."""
        if not events:
            return
        items, index = encode_events(events)
        cursor = txn.cursor(self._events)
        # Appending at the end is the common case and the cheapest; anything else (events
        # boot regenerates over ones already stored) overwrites, with identical bytes.
        at_end = append and (not cursor.last() or key_seq(cursor.key()) < events[0].seq)
        _consumed, added = cursor.putmulti(items, append=at_end)
        if added != len(items) and at_end:
            raise InternalError(f"the events in {self.data_dir} are not in sequence order")
        if index:
            index.sort()
            txn.cursor(self._events_by_task).putmulti(index)

    def _prepare_spare_segment(self) -> None:
        """Make the next log segment now, off the append path, if the active one is half full."""
        with self._log_lock:
            if self._closed or self._log_failed is not None:
                return
            plan = self._log.plan_spare()
        if plan is None:
            return
        number, size = plan
        try:
            segment = wal.create_segment(
                self.wal_dir, number, size, zero_fill=self.durability == "durable"
            )
        except OSError as exc:
            log.warning("could not make the next log segment in %s: %s", self.wal_dir, exc)
            with self._log_lock:
                self._log.spare_failed()
            return
        with self._log_lock:
            keep = not self._closed and self._log.install_spare(segment)
        if not keep:
            wal.discard_segment(segment)

    def iter_journal(self, after_seq: int = 0) -> Iterator[tuple[int, bytes]]:
        """Yield ``(seq, record)`` for every record after ``after_seq``, in order.

        Raises :class:`InternalError` if records in that range are missing (trimmed after a
        snapshot, so replay must start from a snapshot instead), and
        ``Unavailable(code=STORAGE_CORRUPT)`` if a record fails its checksum or the
        database cannot be read. No transaction is held open between items, so appends
        may run while the caller replays.
        """
        if after_seq < 0:
            raise ValueError(f"after_seq must be >= 0, got {after_seq}")
        expected = after_seq + 1
        while True:
            chunk, last, framed_through = self._read_chunk(expected)
            if not chunk:
                break
            for seq, stored in chunk:
                if seq != expected:
                    raise self._gap(expected, seq)
                yield seq, stored if seq > framed_through else self._unframe_record(seq, stored)
                expected += 1
        # ``last`` was read with the final (empty) chunk, so a concurrent append cannot
        # make a complete journal look truncated.
        if after_seq > last:
            raise InternalError(
                f"asked for journal records after {after_seq}, but the journal in "
                f"{self.data_dir} ends at {last}"
            )
        if expected <= last:
            raise self._gap(expected, None)

    def first_seq(self) -> int | None:
        """The oldest sequence still in the journal, or None if it is empty."""
        with self._mutex:
            self._check_open()
            with self._reading("read the journal"), self._env.begin(db=self._journal) as txn:
                cursor = txn.cursor()
                if cursor.first():
                    return int(_U64.unpack(cursor.key())[0])
            with self._log_lock:
                return self._lmdb_last + 1 if self._pending else None

    def _read_chunk(self, start: int) -> tuple[list[tuple[int, bytes]], int, int]:
        """Records from ``start`` on (a bounded chunk), the last sequence at that time, and
        the last sequence read from LMDB (stored framed; the ones after it come from the
        records only the log holds, bare)."""
        chunk: list[tuple[int, bytes]] = []
        size = 0
        with self._mutex:
            self._check_open()
            with self._reading("read the journal"), self._env.begin(db=self._journal) as txn:
                cursor = txn.cursor()
                if cursor.set_range(_U64.pack(start)):
                    for key, value in cursor.iternext(keys=True, values=True):
                        chunk.append((_U64.unpack(key)[0], value))
                        size += len(value)
                        if len(chunk) >= _READ_CHUNK_RECORDS or size >= _READ_CHUNK_BYTES:
                            break
            framed_through = self._lmdb_last
            if not chunk:
                # The checkpoint cannot move while the mutex is held, so the records after
                # it are exactly the pending ones.
                with self._log_lock:
                    skip = max(0, start - framed_through - 1)
                    pending = self._pending[skip : skip + _READ_CHUNK_RECORDS]
                    chunk = [
                        (framed_through + 1 + skip + i, body) for i, body in enumerate(pending)
                    ]
                    return chunk, self._last_seq, framed_through
            return chunk, self._last_seq, framed_through

    @contextlib.contextmanager
    def _reading(self, what: str) -> Iterator[None]:
        """Translate LMDB and key-decoding errors raised while reading into coded errors."""
        try:
            yield
        except (lmdb.Error, struct.error, OSError) as exc:
            raise _read_error(f"could not {what} in {self.data_dir / 'db'}", exc) from exc

    def _unframe_record(self, seq: int, stored: bytes) -> bytes:
        """The record body stored under ``seq``, after checking its frame and checksum."""
        if stored[:1] == b"\xc1":
            if len(stored) < _REC_HEADER_SIZE:
                raise self._corrupt_record(seq, f"its {len(stored)} bytes are shorter than a frame")
            if stored[1] != _REC_FRAME_VERSION:
                raise self._corrupt_record(seq, f"unknown frame version {stored[1]}")
            body = stored[_REC_HEADER_SIZE:]
            crc = zlib.crc32(body, zlib.crc32(stored[:2], zlib.crc32(_U64.pack(seq))))
            if crc != _REC_CRC.unpack_from(stored, 2)[0]:
                raise self._corrupt_record(seq, "checksum mismatch")
            return body
        if seq >= self._checksummed_from:
            raise self._corrupt_record(
                seq,
                f"it has no checksum frame, but every record from {self._checksummed_from} "
                "on was written with one",
            )
        return stored  # written before records had checksums

    def _corrupt_record(self, seq: int, what: str) -> Unavailable:
        return _corrupt(
            f"journal record {seq} in {self.data_dir / 'db' / 'data.mdb'} is damaged: {what}"
        )

    def _gap(self, expected: int, found: int | None) -> InternalError:
        where = "the journal ends" if found is None else f"the next one is {found}"
        return InternalError(
            f"journal record {expected} is missing from {self.data_dir} ({where}); records "
            "up to the older kept snapshot are trimmed, so replay must start from a snapshot"
        )

    # ----------------------------------------------------------------------- history
    def events_through(self) -> int:
        """The last journal record whose events are stored (0: none are)."""
        with self._log_lock:
            return self._events_through

    def store_replayed_events(self, through: int, events: Sequence[Event]) -> None:
        """Store the events boot regenerated for the records up to ``through``.

        Boot calls this before serving, with the events of every record it replayed after
        :meth:`events_through` (seq ascending), in one flushed transaction. The events of
        records that were already stored are overwritten with identical bytes.
        """
        if through > self._last_seq:
            raise ValueError(f"record {through} is past the journal's end {self._last_seq}")
        with self._mutex:
            self._check_open()
            with self._log_lock:
                if through <= self._events_through:
                    return
                if self._pending:
                    raise InternalError("replayed events must be stored before any append")

            def write(txn: lmdb.Transaction[bytes]) -> None:
                self._put_events(txn, events, append=False)
                txn.put(_META_EVENTS_THROUGH, _U64.pack(through), db=self._meta)

            self._write("store the events of the replayed records", write)
            self._stats.events_regenerated += len(events)
            self._events_lmdb_through = through
            with self._log_lock:
                self._events_through = through
                if events:
                    self._events_lmdb_seq = max(self._events_lmdb_seq, events[-1].seq)

    def read_events(
        self,
        *,
        after_seq: int = 0,
        before_seq: int | None = None,
        limit: int,
        newest: bool = False,
        task_id: str | None = None,
        run_id: str | None = None,
        session_id: str | None = None,
        kinds: frozenset[str] | None = None,
    ) -> list[Event]:
        """Stored events with ``after_seq < seq < before_seq`` that match every filter given.

        Oldest first: the first ``limit`` such events, or with ``newest`` the last
        ``limit`` (still oldest first). Covers LMDB and the events not checkpointed yet.
        ``task_id`` walks its index (O(log n + k)); the other filters scan the range, a
        bounded chunk per read transaction. A damaged event in the way raises
        ``STORAGE_CORRUPT``.
        """
        after_seq = max(after_seq, 0)
        upper = _NO_SEQ if before_seq is None else min(before_seq, _NO_SEQ)
        if limit <= 0 or upper <= after_seq + 1:
            return []
        scanned = run_id is not None or session_id is not None or kinds is not None

        def matches(event: Event) -> bool:
            return (
                (task_id is None or event.task_id == task_id)
                and (run_id is None or event.run_id == run_id)
                and (session_id is None or event.session_id == session_id)
                and (kinds is None or event.kind in kinds)
            )

        # Without a scanned filter every candidate matches: read no more than asked for.
        budget = _EVENT_SCAN_CHUNK if scanned else min(limit, _EVENT_SCAN_CHUNK)
        wanted = [run_id, session_id, *(kinds if kinds is not None and len(kinds) == 1 else ())]
        needles = tuple(value.encode("utf-8", "surrogatepass") for value in wanted if value)
        found: list[Event] = []
        if newest:
            position: int | None = upper
            while position is not None and len(found) < limit:
                candidates, position = self._events_between(
                    after_seq, position, task_id, budget, needles, backward=True
                )
                found.extend(event for event in candidates if matches(event))
            del found[limit:]
            found.reverse()
        else:
            position = after_seq
            while position is not None and len(found) < limit:
                candidates, position = self._events_between(
                    position, upper, task_id, budget, needles, backward=False
                )
                found.extend(event for event in candidates if matches(event))
            del found[limit:]
        return found

    def get_event(self, seq: int) -> Event | None:
        """The stored event ``seq``, or None if there is none (never stored, or compacted)."""
        if not 0 < seq < _NO_SEQ:
            return None
        with self._env_lock:
            self._check_open()
            with self._log_lock:
                if seq > self._events_lmdb_seq:
                    pending = self._pending_events
                    i = bisect.bisect_left(pending, seq, key=_event_seq)
                    return pending[i] if i < len(pending) and pending[i].seq == seq else None
            with self._reading("read an event"), self._env.begin(db=self._events) as txn:
                stored = txn.get(seq_key(seq))
        return None if stored is None else self._decode_event(seq, stored)

    def event_bounds(self) -> tuple[int, int]:
        """(oldest stored event seq or 0, newest stored event seq or 0)."""
        with self._env_lock:
            self._check_open()
            with self._reading("read the event bounds"), self._env.begin(db=self._events) as txn:
                cursor = txn.cursor()
                oldest = key_seq(cursor.key()) if cursor.first() else 0
                newest = key_seq(cursor.key()) if cursor.last() else 0
                with self._log_lock:
                    pending = self._pending_events
                    if pending:
                        oldest = oldest or pending[0].seq
                        newest = pending[-1].seq
        return oldest, newest

    def compact_events(
        self, *, now: float, retention: HistoryRetention, keep_after: int | None
    ) -> int:
        """Delete the oldest events that break a retention limit; return how many went.

        Goes from the oldest event up and stops at the first one that may stay: older
        than ``now - retention.max_age`` or not among the newest ``retention.max_events``
        (counting the ones not checkpointed yet) is what makes an event go, and an event
        with seq > ``keep_after`` (the lowest hold) never goes. So what remains is always
        every event from some seq on. Events not checkpointed yet are left to a later
        compaction. Deletes in batches of bounded size, each its own transaction, with its
        index entries.
        """
        check_retention(retention)
        if retention.max_age is None and retention.max_events is None:
            return 0
        cutoff = None if retention.max_age is None else now - retention.max_age
        total = 0
        while True:
            with self._mutex:
                self._check_open()
                if not self._compaction_due(cutoff, retention.max_events, keep_after):
                    return total
                with self._log_lock:
                    pending = len(self._pending_events)
                batch = functools.partial(
                    self._compact_batch,
                    cutoff=cutoff,
                    max_events=retention.max_events,
                    keep_after=keep_after,
                    pending=pending,
                )
                deleted = self._write("compact the history", batch)
                self._stats.events_compacted += deleted
            total += deleted
            if deleted < _COMPACT_CHUNK:
                return total

    def _compact_batch(
        self,
        txn: lmdb.Transaction[bytes],
        *,
        cutoff: float | None,
        max_events: int | None,
        keep_after: int | None,
        pending: int,
    ) -> int:
        """Delete up to one batch of the oldest events that must go; return how many."""
        excess = 0
        if max_events is not None:
            excess = txn.stat(self._events)["entries"] + pending - max_events
        cursor = txn.cursor(self._events)
        index = txn.cursor(self._events_by_task)
        deleted = 0
        if not cursor.first():
            return 0
        while deleted < _COMPACT_CHUNK:
            seq = key_seq(cursor.key())
            if keep_after is not None and seq > keep_after:
                break
            event = self._decode_event(seq, cursor.value())
            if not (deleted < excess or (cutoff is not None and event.at < cutoff)):
                break
            if event.task_id is not None and index.set_key(task_key(event.task_id, seq)):
                index.delete()
            cursor.delete()
            deleted += 1
            if not cursor.key():  # the cursor ran off the end
                break
        return deleted

    def _compaction_due(
        self, cutoff: float | None, max_events: int | None, keep_after: int | None
    ) -> bool:
        """Whether the oldest stored event must go (a read transaction; saves a write one)."""
        with self._reading("read the history"), self._env.begin(db=self._events) as txn:
            cursor = txn.cursor()
            if not cursor.first():
                return False
            seq = key_seq(cursor.key())
            if keep_after is not None and seq > keep_after:
                return False
            if max_events is not None:
                with self._log_lock:
                    pending = len(self._pending_events)
                if txn.stat(self._events)["entries"] + pending > max_events:
                    return True
            return cutoff is not None and self._decode_event(seq, cursor.value()).at < cutoff

    def _events_between(
        self,
        lower: int,
        upper: int,
        task_id: str | None,
        budget: int,
        needles: tuple[bytes, ...],
        *,
        backward: bool,
    ) -> tuple[list[Event], int | None]:
        """Up to ``budget`` stored events with ``lower < seq < upper`` (of ``task_id``,
        holding ``needles``), ascending, or descending when ``backward``, and the position
        to go on from (None: the range is done). The events not checkpointed yet are the
        newest: last going up, first going down."""
        raw: list[tuple[int, bytes]] = []
        tail: list[Event] = []
        with self._env_lock:
            self._check_open()
            with self._log_lock:
                split = self._events_lmdb_seq
                pending = self._pending_events
                if upper - 1 > split and pending:
                    start = bisect.bisect_right(pending, max(lower, split), key=_event_seq)
                    stop = bisect.bisect_left(pending, upper, key=_event_seq)
                    tail = pending[start:stop]
            top = min(upper, split + 1)  # exclusive
            if top - 1 > lower:
                with self._reading("read the history"), self._env.begin() as txn:
                    walk = self._walk_events(txn, task_id, lower, top, backward=backward)
                    raw = list(itertools.islice(walk, budget + 1))
        more = len(raw) > budget
        del raw[budget:]
        if task_id is not None:
            tail = [event for event in tail if event.task_id == task_id]
        found = self._decode_matching(raw, needles)
        resume = raw[-1][0] if more else None
        if backward:
            return tail[::-1] + found, resume
        return (found, resume) if more else (found + tail, None)

    def _walk_events(
        self,
        txn: lmdb.Transaction[bytes],
        task_id: str | None,
        lower: int,
        upper: int,
        *,
        backward: bool,
    ) -> Iterator[tuple[int, bytes]]:
        """Stored ``(seq, framed event)`` with ``lower < seq < upper`` (of ``task_id``, through
        its index), ascending, or descending when ``backward``."""
        prefix = b"" if task_id is None else task_prefix(task_id)
        events = None if task_id is None else txn.cursor(self._events)
        cursor = txn.cursor(self._events if task_id is None else self._events_by_task)
        if backward:
            if not _seek_before(cursor, prefix + seq_key(upper)):
                return
            items = cursor.iterprev()
        else:
            if not cursor.set_range(prefix + seq_key(lower + 1)):
                return
            items = cursor.iternext()
        for key, value in items:
            if events is not None:
                if not key.startswith(prefix) or len(key) != len(prefix) + 8:
                    return  # past the task's entries
                key = key[len(prefix) :]
            seq = key_seq(key)
            if not lower < seq < upper:
                if (seq <= lower) if backward else (seq >= upper):
                    return
                continue
            if events is not None:
                stored = events.get(key)
                if stored is None:
                    continue
                value = stored
            yield seq, value

    def _decode_matching(
        self, raw: list[tuple[int, bytes]], needles: tuple[bytes, ...]
    ) -> list[Event]:
        try:
            return decode_matching(raw, needles)
        except EventCorrupt as exc:
            raise _corrupt(f"the history in {self.data_path} is damaged: {exc}") from None

    def _decode_event(self, seq: int, stored: bytes) -> Event:
        try:
            return decode_event(seq, stored)
        except EventCorrupt as exc:
            raise _corrupt(f"the history in {self.data_path} is damaged: {exc}") from None

    # -------------------------------------------------------------------- snapshots
    def write_snapshot(self, seq: int, data: bytes) -> None:
        """Store a snapshot of the state after record ``seq``; keep only the newest two.

        The snapshot (header with magic, format version, sequence, lengths and a crc32,
        then the image, zlib-compressed unless disabled) is written and older snapshots
        deleted in one transaction. Then journal records up to the older kept snapshot are
        deleted in small transactions, so if the newest snapshot proves unreadable the older
        one plus the journal still rebuild everything. ``seq`` must already be committed
        and must not be older than the newest stored snapshot.
        """
        if seq < 0:
            raise ValueError(f"snapshot seq must be >= 0, got {seq}")
        # Compress before taking the lock: zlib releases the GIL, appends carry on.
        blob = _pack_snapshot(seq, data, compress=self._compress)
        key = _U64.pack(seq)
        with self._mutex:
            self._check_open()
            if seq > self._last_seq:
                raise ValueError(
                    f"cannot snapshot at {seq}: the journal ends at {self._last_seq}; commit "
                    "the records a snapshot covers before writing it"
                )

            def write(txn: lmdb.Transaction[bytes]) -> int | None:
                cursor = txn.cursor(self._snapshots)
                if cursor.last() and _U64.unpack(cursor.key())[0] > seq:
                    newest = _U64.unpack(cursor.key())[0]
                    raise ValueError(
                        f"cannot snapshot at {seq}: a newer snapshot at {newest} exists"
                    )
                txn.put(key, blob, db=self._snapshots)
                seqs = _keys(txn.cursor(self._snapshots))
                for old in seqs[:-_SNAPSHOTS_KEPT]:
                    txn.delete(_U64.pack(old), db=self._snapshots)
                kept = seqs[-_SNAPSHOTS_KEPT:]
                return kept[0] if len(kept) == _SNAPSHOTS_KEPT else None

            # The records only the log holds go into the same transaction, so LMDB holds
            # every record the snapshot covers.
            trim_through = self._checkpoint_locked("write a snapshot", write)
            self._stats.snapshots_written += 1
            durable_seq = self._lmdb_last
        # The identity file learns the durable sequence here, not per commit (hot path).
        self._flush_and_record_identity(durable_seq, raise_errors=False)
        if trim_through is not None:
            self._trim_journal(trim_through)

    def _trim_journal(self, through: int) -> None:
        """Delete journal records with seq <= ``through``, a chunk per transaction."""
        while True:
            with self._mutex:
                self._check_open()

                def trim(txn: lmdb.Transaction[bytes]) -> int:
                    cursor = txn.cursor(self._journal)
                    deleted = 0
                    if not cursor.first():
                        return 0
                    while deleted < _TRIM_CHUNK and _U64.unpack(cursor.key())[0] <= through:
                        if not cursor.delete():
                            break
                        deleted += 1
                        if not cursor.key():  # the cursor ran off the end
                            break
                    return deleted

                deleted = self._write("trim the journal", trim)
                self._stats.records_trimmed += deleted
            if deleted < _TRIM_CHUNK:
                return

    def iter_snapshots(self) -> Iterator[tuple[int, bytes]]:
        """Yield ``(seq, image)`` for each valid snapshot, newest first.

        A torn or corrupt snapshot (bad magic, wrong length, checksum mismatch, failed
        decompression) is skipped, logged and recorded in :attr:`snapshot_problems`; the
        caller falls back to the next one. Each image is read in its own short transaction.
        """
        with self._mutex:
            self._check_open()
            self._snapshot_problems = []
            with self._reading("list the snapshots"), self._env.begin(db=self._snapshots) as txn:
                seqs = _keys(txn.cursor())
        for seq in reversed(seqs):
            with self._mutex:
                self._check_open()
                with (
                    self._reading(f"read snapshot {seq}"),
                    self._env.begin(db=self._snapshots) as txn,
                ):
                    blob = txn.get(_U64.pack(seq))
            if blob is None:
                continue  # deleted by a newer snapshot since we listed them
            try:
                image = _unpack_snapshot(seq, blob)
            except _CorruptSnapshot as exc:
                problem = SnapshotProblem(seq=seq, reason=str(exc))
                self._snapshot_problems.append(problem)
                log.warning("skipping snapshot %d in %s: %s", seq, self.data_dir, exc)
                continue
            yield seq, image

    def load_snapshots(self) -> list[tuple[int, bytes]]:
        """Every valid snapshot, newest first; see :meth:`iter_snapshots`."""
        return list(self.iter_snapshots())

    @property
    def snapshot_problems(self) -> list[SnapshotProblem]:
        """The snapshots the last :meth:`iter_snapshots` pass skipped, and why."""
        return list(self._snapshot_problems)

    def snapshot_seqs(self) -> list[int]:
        """The sequences of the stored snapshots, oldest first, without checking them."""
        with self._mutex:
            self._check_open()
            with self._reading("list the snapshots"), self._env.begin(db=self._snapshots) as txn:
                return _keys(txn.cursor())

    # ------------------------------------------------------------------------ stats
    def stats(self) -> StoreStats:
        with self._mutex:
            return msgspec.structs.replace(self._stats)

    # ----------------------------------------------------------- hook delivery log
    def read_hook_log(self) -> list[tuple[bytes, bytes]]:
        """Every entry of the hooks' delivery log (cursors and deliveries), by key.

        The log is the hooks' own: keys and values are opaque here (see
        runlease.runtime.hooks). It lives beside the journal, never on the commit path.
        """
        with self._mutex:
            self._check_open()

            def read(txn: lmdb.Transaction[bytes]) -> list[tuple[bytes, bytes]]:
                cursor = txn.cursor(self._hook_db(txn))
                return [(bytes(key), bytes(value)) for key, value in cursor]

            return self._write("read the hooks' delivery log", read)

    def write_hook_log(
        self, puts: Sequence[tuple[bytes, bytes]], deletes: Sequence[bytes] = ()
    ) -> None:
        """Store and delete delivery-log entries in one flushed LMDB transaction.

        Takes the LMDB mutex only, like a checkpoint: appends to the journal go on.
        """
        if not puts and not deletes:
            return
        with self._mutex:
            self._check_open()

            def write(txn: lmdb.Transaction[bytes]) -> None:
                db = self._hook_db(txn)
                for key in deletes:
                    txn.delete(key, db=db)
                for key, value in puts:
                    txn.put(key, value, db=db)

            self._write("write the hooks' delivery log", write)

    def _hook_db(self, txn: lmdb.Transaction[bytes]) -> lmdb._Database:
        """The delivery log's database, created on first use (old stores lack it)."""
        if self._hooks is None:
            self._hooks = self._env.open_db(b"hooks", txn=txn)
        return self._hooks

    # -------------------------------------------------------------------- internals
    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable(f"the store in {self.data_dir} is closed")
        if self._broken is not None:
            raise Unavailable(self._broken, code=STORAGE_FAILED)

    def _write(self, what: str, body: Callable[[lmdb.Transaction[bytes]], _T]) -> _T:
        """Run ``body`` in one write transaction and commit it, growing the map if full.

        A transient shortage (file descriptors, memory: see ``_TRANSIENT_ERRNOS``) aborts
        the transaction and raises RESOURCE_EXHAUSTED, leaving the store usable; any other
        failure aborts it and raises STORAGE_FAILED. The caller holds the mutex, so no
        transaction of this store is open during a grow.
        """
        while True:
            txn: lmdb.Transaction[bytes] | None = None
            try:
                txn = self._env.begin(write=True)
                result = body(txn)
                txn.commit()
            except lmdb.MapFullError:
                if txn is not None:
                    txn.abort()
                self._grow(what)
                continue
            except (lmdb.Error, OSError) as exc:
                if txn is not None:
                    txn.abort()
                if _is_transient(exc) and not isinstance(exc, lmdb.PanicError):
                    raise _resource_exhausted(f"could not {what} in {self.data_dir}", exc) from exc
                error = _storage_failed(f"could not {what} in {self.data_dir}", exc)
                if isinstance(exc, lmdb.PanicError):
                    self._broken = error.message
                raise error from exc
            except BaseException:
                if txn is not None:
                    txn.abort()
                raise
            self._stats.lmdb_commits += 1
            return result

    def _grow(self, what: str) -> None:
        current = self._env.info()["map_size"]
        new = current * 2
        if new > MAX_MAP_SIZE:
            raise Unavailable(
                f"could not {what} in {self.data_dir}: the database would pass "
                f"{MAX_MAP_SIZE // MiB} MiB; write a snapshot to trim the journal",
                code=STORAGE_FAILED,
            )
        # Reserve the disk first: if it is full, fail here with the environment untouched.
        if self.durability == "durable":  # the writemap mode, see the module docstring
            assert self._data_fd is not None  # open until close(), which takes the mutex
            _reserve(self._data_fd, self.data_dir / "db" / "data.mdb", new, what)
        try:
            with self._env_lock:  # no history read may hold a transaction across this
                self._env.set_mapsize(new)
        except lmdb.Error as exc:
            # LMDB unmapped the old map before failing to map the new one: the environment
            # must not be touched again in this process.
            error = _storage_failed(f"could not grow the map of {self.data_dir}", exc)
            self._broken = error.message
            raise error from exc
        log.info("grew the LMDB map of %s from %d to %d bytes", self.data_dir, current, new)
        self._stats.map_size = new
        self._stats.map_grows += 1


# ---------------------------------------------------------------------- helpers
class _CorruptSnapshot(Exception):
    pass


def _pack_snapshot(seq: int, data: bytes, *, compress: bool) -> bytes:
    flags = _SNAP_FLAG_ZLIB if compress else 0
    body = zlib.compress(data, 1) if compress else data
    header = _SNAP_HEADER.pack(
        _SNAP_MAGIC, _SNAP_HEADER_VERSION, flags, seq, len(data), len(body), 0
    )
    crc = zlib.crc32(body, zlib.crc32(header[:-4]))
    return header[:-4] + struct.pack(">I", crc) + body


def _unpack_snapshot(key_seq: int, blob: bytes) -> bytes:
    size = _SNAP_HEADER.size
    if len(blob) < size:
        raise _CorruptSnapshot(f"{len(blob)} bytes is shorter than the {size}-byte header")
    magic, version, flags, seq, image_len, stored_len, crc = _SNAP_HEADER.unpack_from(blob)
    if magic != _SNAP_MAGIC:
        raise _CorruptSnapshot(f"bad magic {magic!r}")
    if version > _SNAP_HEADER_VERSION:
        # Not corruption: a newer runlease wrote it. Boot must stop, not fall back.
        raise UnsupportedFormat(
            f"snapshot {key_seq} has header version {version}, newer than this runlease "
            f"supports (up to {_SNAP_HEADER_VERSION}); run the newer runlease that wrote it"
        )
    if flags & ~_SNAP_KNOWN_FLAGS:
        raise UnsupportedFormat(f"snapshot {key_seq} uses unknown flags {flags:#x}")
    if seq != key_seq:
        raise _CorruptSnapshot(f"header says seq {seq}, stored under {key_seq}")
    if len(blob) - size != stored_len:
        raise _CorruptSnapshot(f"body is {len(blob) - size} bytes, header says {stored_len}")
    body = memoryview(blob)[size:]
    if zlib.crc32(body, zlib.crc32(memoryview(blob)[: size - 4])) != crc:
        raise _CorruptSnapshot("checksum mismatch")
    if flags & _SNAP_FLAG_ZLIB:
        try:
            image = zlib.decompress(body, bufsize=max(image_len, 1))
        except zlib.error as exc:
            raise _CorruptSnapshot(f"does not decompress: {exc}") from None
    else:
        image = bytes(body)
    if len(image) != image_len:
        raise _CorruptSnapshot(f"image is {len(image)} bytes, header says {image_len}")
    return image


def _seek_before(cursor: lmdb.Cursor[bytes], key: bytes) -> bool:
    """Put the cursor on the last item below ``key``; False if there is none."""
    if cursor.set_range(key):
        return cursor.prev()
    return cursor.last()


def _keys(cursor: lmdb.Cursor[bytes]) -> list[int]:
    """Every key of the cursor's database as a sequence number, ascending."""
    return [_U64.unpack(key)[0] for key in cursor.iternext(keys=True, values=False)]


def _storage_failed(what: str, exc: BaseException) -> Unavailable:
    detail = str(exc) or type(exc).__name__
    full = isinstance(exc, lmdb.DiskError) or (
        isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    )
    # A full disk often surfaces as a short write, which LMDB reports as EIO.
    hint = (
        "the disk is full: free space on that filesystem, then restart runlease"
        if full
        else "check that its filesystem has free space and is healthy and that runlease may "
        "write there, then restart runlease"
    )
    return Unavailable(f"{what}: {detail}; {hint}", code=STORAGE_FAILED)


def _lock_data_dir(data_dir: Path) -> int:
    """Take the directory's exclusive lock without waiting and write our pid into it."""
    path = data_dir / "lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise _storage_failed(f"cannot open the lock file {path}", exc) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read_pid(fd)
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise _storage_failed(f"cannot lock {path}", exc) from exc
        by = f"process {holder}" if holder else "another process"
        raise Unavailable(
            f"the data directory {data_dir} is in use by {by}; stop that runtime or choose "
            "another data directory",
            code=DATA_DIR_LOCKED,
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        _unlock(fd)
        raise _storage_failed(f"cannot write the lock file {path}", exc) from exc
    return fd


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _unlock(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _reserve(fd: int, path: Path, size: int, what: str) -> None:
    """Allocate disk blocks for the first ``size`` bytes of the data file (see the module doc)."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if _is_transient(exc):
            raise _resource_exhausted(
                f"could not {what}: reserving {_size(size)} of disk for {path} failed", exc
            ) from exc
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise Unavailable(
                f"could not {what}: the disk is full. Durable mode reserves its whole "
                f"memory map on disk up front, so it needs {_size(size)} free for {path}, "
                f"and that filesystem has {_free_space(path)} free. Free space there, or run "
                "with --durability relaxed, which reserves nothing in advance",
                code=STORAGE_FAILED,
            ) from exc
        raise _storage_failed(
            f"could not {what}: reserving {_size(size)} of disk for {path} failed", exc
        ) from exc


def _free_space(path: Path) -> str:
    try:
        stats = os.statvfs(path)
    except OSError:
        return "unknown"
    return _size(stats.f_bavail * stats.f_frsize)


def _size(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n // 1024} KiB"


def _open_env(path: Path, *, durability: Durability, map_size: int) -> lmdb.Environment:
    durable = durability == "durable"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        return lmdb.open(
            str(path),
            map_size=map_size,
            subdir=True,
            # journal, snapshots, meta, events, their index and the hooks' delivery log,
            # with room to spare.
            max_dbs=16,
            # Every LMDB commit is a checkpoint (or a snapshot, or a trim), rare and flushed
            # in both modes: the log is deleted behind it, and an unflushed commit could
            # leave the file inconsistent after a power cut.
            sync=True,
            metasync=True,
            mode=0o600,
            # Durable only (see the module docstring for why relaxed must not).
            # With writemap LMDB sizes the file to the whole map up front (sparse), so a
            # commit never grows the file and its sync needs no filesystem-metadata flush:
            # measured here, ~0.3 ms per durable commit instead of ~4 ms. Safe against a
            # full disk only together with _reserve().
            writemap=durable,
            readahead=False,
            max_spare_txns=0,
        )
    except (lmdb.Error, OSError) as exc:
        raise _read_error(f"cannot open the database in {path}", exc) from exc


class _DbState(msgspec.Struct, kw_only=True):
    journal: lmdb._Database
    snapshots: lmdb._Database
    meta: lmdb._Database
    last_seq: int
    # 0 for an environment that never had a store format written (a new store).
    format: int
    store_id: str | None
    has_data: bool
    checksummed_from: int
    events: lmdb._Database
    events_by_task: lmdb._Database
    # The last journal record whose events are stored (0: none, or an older store).
    events_through: int
    last_event_seq: int


def _open_databases(env: lmdb.Environment, data_path: Path) -> _DbState:
    """Open (creating) the named databases and read what the store keeps in ``meta``."""
    try:
        with env.begin(write=True) as txn:
            journal = env.open_db(b"journal", txn=txn)
            snapshots = env.open_db(b"snapshots", txn=txn)
            meta = env.open_db(b"meta", txn=txn)
            events = env.open_db(b"events", txn=txn)
            events_by_task = env.open_db(b"events_by_task", txn=txn)
            raw_format = txn.get(_META_FORMAT, db=meta)
            stored_format = 0 if raw_format is None else _U64.unpack(raw_format)[0]
            if stored_format > STORE_FORMAT:
                raise UnsupportedFormat(
                    f"the store in {env.path()} has format {stored_format}, newer "
                    f"than this runlease supports (up to {STORE_FORMAT})"
                )
            meta_last = 0
            raw = txn.get(_META_LAST_SEQ, db=meta)
            if raw is not None:
                meta_last = _U64.unpack(raw)[0]
            last = meta_last
            has_records = False
            cursor = txn.cursor(journal)
            if cursor.last():
                has_records = True
                last = max(last, _U64.unpack(cursor.key())[0])
            cursor = txn.cursor(snapshots)
            if cursor.last():
                has_records = True
                last = max(last, _U64.unpack(cursor.key())[0])
            raw_id = txn.get(_META_STORE_ID, db=meta)
            raw_from = txn.get(_META_CHECKSUMMED_FROM, db=meta)
            raw_events_through = txn.get(_META_EVENTS_THROUGH, db=meta)
            events_through = 0 if raw_events_through is None else key_seq(raw_events_through)
            cursor = txn.cursor(events)
            last_event_seq = key_seq(cursor.key()) if cursor.last() else 0
    except (lmdb.Error, OSError, struct.error) as exc:
        raise _read_error(f"cannot open the databases in {env.path()}", exc) from exc
    has_data = has_records or meta_last > 0
    store_id = None
    if raw_id is not None:
        store_id = raw_id.decode("ascii", "replace")
        if not _valid_store_id(store_id):
            raise _corrupt(f"{data_path} holds a malformed store id {raw_id!r}")
    if stored_format == 0:
        if has_data:
            raise _corrupt(f"{data_path} holds records but no store format in its meta data")
        checksummed_from = last + 1
    elif stored_format < 2:
        # Written before records had checksums: everything from here on gets one.
        checksummed_from = last + 1
    elif raw_from is None:
        checksummed_from = 1  # the strict reading: every record must carry a checksum
    else:
        try:
            checksummed_from = _U64.unpack(raw_from)[0]
        except struct.error:
            raise _corrupt(f"{data_path} holds a malformed checksummed_from value") from None
    return _DbState(
        journal=journal,
        snapshots=snapshots,
        meta=meta,
        last_seq=last,
        format=stored_format,
        store_id=store_id,
        has_data=has_data,
        checksummed_from=checksummed_from,
        events=events,
        events_by_task=events_by_task,
        events_through=events_through,
        last_event_seq=last_event_seq,
    )


def _put_meta(
    env: lmdb.Environment,
    state: _DbState,
    values: dict[bytes, bytes],
    records: list[tuple[int, bytes]],
    data_path: Path,
) -> None:
    """Write meta values and the records the log held beyond LMDB, in one transaction."""
    while True:
        try:
            with env.begin(write=True) as txn:
                for key, value in values.items():
                    txn.put(key, value, db=state.meta)
                if records:
                    items = []
                    for seq, record in records:
                        key = _U64.pack(seq)
                        items.append((key, _frame_record(key, record)))
                    _consumed, added = txn.cursor(state.journal).putmulti(items, append=True)
                    if added != len(items):
                        raise _corrupt(
                            f"{data_path} already holds records after {records[0][0] - 1}, "
                            "which the write-ahead log holds too"
                        )
                    txn.put(_META_LAST_SEQ, _U64.pack(records[-1][0]), db=state.meta)
        except lmdb.MapFullError:
            new = env.info()["map_size"] * 2
            if new > MAX_MAP_SIZE:
                raise _storage_failed(
                    f"cannot replay the write-ahead log into {data_path}",
                    OSError(errno.ENOSPC, "the map would pass its maximum size"),
                ) from None
            data_fd = os.open(data_path, os.O_RDWR | os.O_CLOEXEC)
            try:
                if env.flags()["writemap"]:
                    _reserve(data_fd, data_path, new, "replay the write-ahead log")
            finally:
                os.close(data_fd)
            env.set_mapsize(new)
        except (lmdb.Error, OSError) as exc:
            what = f"cannot write the store's meta data and replayed records to {data_path}"
            if _is_transient(exc):
                raise _resource_exhausted(what, exc) from exc
            raise _storage_failed(what, exc) from exc
        else:
            return


def _recover_log(wal_dir: Path, store_id: str, state: _DbState, *, fresh: bool) -> wal.Recovered:
    """Read the log of a store whose LMDB holds records up to ``state.last_seq``.

    A store of format 3 must have its log directory (it is made before the format is
    written, and it may hold every record, even when LMDB holds none); an older store gets
    one. ``fresh`` refuses a log that still holds records and clears an empty one.
    """
    if not wal_dir.is_dir():
        if state.format >= 3 and not fresh:
            raise _corrupt(
                f"the write-ahead log {wal_dir} is missing, and records acknowledged since "
                "the last checkpoint may be in it"
            )
        try:
            wal_dir.mkdir(mode=0o700, exist_ok=True)
            wal.sync_directory(wal_dir.parent)
        except OSError as exc:
            raise _storage_failed(f"cannot create {wal_dir}", exc) from exc
        return wal.Recovered()
    try:
        if fresh:
            for _number, path in wal.list_segments(wal_dir):
                if wal.segment_has_records(path):
                    raise InvalidInput(
                        f"refusing to start a fresh store in {wal_dir.parent.parent}: its "
                        f"write-ahead log {path} still holds records. The fresh-store option "
                        "only replaces a missing or empty store; move the data directory "
                        "aside yourself if you really mean to discard it"
                    )
                path.unlink()
            return wal.Recovered()
        recovered = wal.read_log(wal_dir, store_id, state.last_seq)
    except wal.LogCorrupt as exc:
        raise _corrupt(f"the write-ahead log in {wal_dir} is damaged: {exc}") from None
    except OSError as exc:
        raise _read_error(f"cannot read the write-ahead log in {wal_dir}", exc) from exc
    if recovered.torn_end is not None:
        log.warning("%s; dropping it (it was never acknowledged)", recovered.torn_end)
    return recovered


def _start_log(
    wal_dir: Path, store_id: str, recovered: wal.Recovered, last_seq: int, durability: Durability
) -> wal.LogWriter:
    """Delete the segments LMDB now covers and open the log for appends after ``last_seq``."""
    _delete_segments(wal_dir, recovered.segments)
    writer = wal.LogWriter(
        wal_dir,
        store_id,
        next_number=recovered.highest_number + 1,
        synced_seq=last_seq,
        durable=durability == "durable",
    )
    try:
        writer.make_room(0)  # the first segment, made now rather than on the first append
    except OSError as exc:
        writer.close()
        what = f"cannot create a segment of the write-ahead log in {wal_dir}"
        if _is_transient(exc):
            raise _resource_exhausted(what, exc) from exc
        raise _storage_failed(what, exc) from exc
    return writer


def _delete_segments(wal_dir: Path, paths: Sequence[Path]) -> None:
    """Delete log segments whose records LMDB holds durably; a failure only leaves them."""
    if not paths:
        return
    try:
        for path in paths:
            path.unlink(missing_ok=True)
        wal.sync_directory(wal_dir)
    except OSError as exc:
        log.warning("could not delete old log segments in %s: %s", wal_dir, exc)


# ------------------------------------------------------------------- integrity
def _frame_record(key: bytes, record: bytes) -> bytes:
    crc = zlib.crc32(record, zlib.crc32(_REC_PREFIX, zlib.crc32(key)))
    return b"".join((_REC_PREFIX, _REC_CRC.pack(crc), record))


def _is_transient(exc: BaseException) -> bool:
    code = exc.errno if isinstance(exc, OSError) else getattr(exc, "code", None)
    return code in _TRANSIENT_ERRNOS


def _resource_exhausted(what: str, exc: BaseException) -> Unavailable:
    detail = str(exc) or type(exc).__name__
    return Unavailable(
        f"{what}: {detail}; the process is short of file descriptors or memory right now. "
        "Nothing was written; retry later, and raise the limit (ulimit -n) or close idle "
        "connections if this keeps happening",
        code=RESOURCE_EXHAUSTED,
    )


def _corrupt(message: str) -> Unavailable:
    return Unavailable(
        f"{message}. runlease will not serve from damaged storage: restore the data "
        "directory from a backup (or move it aside to start over)",
        code=STORAGE_CORRUPT,
    )


def _read_error(what: str, exc: BaseException) -> Unavailable:
    """A failure while reading: corruption if the data is malformed, else an IO failure."""
    if isinstance(exc, (*_CORRUPTION_ERRORS, struct.error)):
        return _corrupt(f"{what}: {exc}")
    if _is_transient(exc):
        return _resource_exhausted(what, exc)
    return _storage_failed(what, exc)


def _store_missing(data_dir: Path, what: str) -> Unavailable:
    return Unavailable(
        f"the data directory {data_dir} has held a store (its {IDENTITY_FILE} file says so), "
        f"but {what}. Restore db/ from a backup, or, to discard the old store for good and "
        "start empty, start with the fresh-store option (runlease serve --fresh-store)",
        code=STORE_MISSING,
    )


class _Identity(msgspec.Struct, frozen=True):
    """The identity file: which store this directory holds, and how far it is durable."""

    store_id: str
    format: int
    durable_seq: int


_identity_decoder: Final = msgspec.json.Decoder(_Identity)


def _valid_store_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def _read_identity(data_dir: Path) -> _Identity | None:
    path = data_dir / IDENTITY_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise _corrupt(f"{path} is a directory, not the store's identity file") from None
    except OSError as exc:
        raise _storage_failed(f"cannot read {path}", exc) from exc
    try:
        identity = _identity_decoder.decode(raw)
    # Damaged bytes fail in more ways than DecodeError (bad UTF-8, for one).
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise _corrupt(f"the identity file {path} is unreadable ({exc})") from None
    if identity.format > STORE_FORMAT:
        raise UnsupportedFormat(
            f"{path} has format {identity.format}, newer than this runlease supports "
            f"(up to {STORE_FORMAT}); run the newer runlease that wrote it"
        )
    if not _valid_store_id(identity.store_id) or identity.format < 1 or identity.durable_seq < 0:
        raise _corrupt(f"the identity file {path} holds invalid values")
    return identity


def _write_identity(data_dir: Path, identity: _Identity) -> None:
    """Replace the identity file atomically: temp file, fsync, rename, fsync the directory."""
    path = data_dir / IDENTITY_FILE
    tmp = data_dir / f".{IDENTITY_FILE}.tmp"
    data = msgspec.json.encode(identity) + b"\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _reconcile_identity(
    data_dir: Path, identity: _Identity | None, state: _DbState, *, fresh: bool
) -> str:
    """Check the database against the identity file; return the store id to use."""
    data_path = data_dir / "db" / "data.mdb"
    if fresh:
        if state.has_data:
            raise InvalidInput(
                f"refusing to start a fresh store in {data_dir}: its database {data_path} "
                f"still holds data (up to sequence {state.last_seq}). The fresh-store option "
                "only replaces a missing or empty database; move the data directory aside "
                "yourself if you really mean to discard it"
            )
        if identity is not None:
            log.warning(
                "starting a fresh store in %s as asked; discarding the identity of store %s",
                data_dir,
                identity.store_id,
            )
        return uuid.uuid4().hex
    if identity is None:
        if state.store_id is not None:
            if state.has_data:
                log.warning(
                    "the identity file of %s is missing; recreating it from the database",
                    data_dir,
                )
            return state.store_id
        if state.has_data:
            log.warning("%s predates store identities; giving it one now", data_dir)
        return uuid.uuid4().hex
    if state.store_id is None:
        if state.has_data:
            raise _corrupt(
                f"{data_path} has no store id, but the identity file names store "
                f"{identity.store_id}: the database was replaced by another one"
            )
        raise _store_missing(data_dir, f"its database {data_path} is empty")
    if state.store_id != identity.store_id:
        raise _corrupt(
            f"{data_path} belongs to store {state.store_id}, but the identity file names "
            f"store {identity.store_id}: the database was replaced by another one"
        )
    if state.last_seq < identity.durable_seq:
        raise _corrupt(
            f"{data_path} ends at sequence {state.last_seq}, but sequence "
            f"{identity.durable_seq} was already durable: the database went back in time "
            "(an older copy, or a damaged newest commit)"
        )
    return state.store_id


def _has_data_file(data_path: Path) -> bool:
    """Whether ``data.mdb`` exists with any content (LMDB starts afresh on an empty one)."""
    try:
        return data_path.stat().st_size > 0
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise _storage_failed(f"cannot inspect {data_path}", exc) from exc


# LMDB 0.9 (the version py-lmdb bundles), 64-bit, native byte order. A meta page is a
# 16-byte page header (pgno u64, pad u16, flags u16, lower u16, upper u16) followed by
# mm_magic u32, mm_version u32, mm_address, mm_mapsize, two 48-byte MDB_db records (the
# free db's md_pad holds the page size), mm_last_pg u64, mm_txnid u64.
_LMDB_MAGIC: Final = 0xBEEFC0DE
_LMDB_DATA_VERSION: Final = 1
_LMDB_P_META: Final = 0x08
_LMDB_PAGE_HEADER: Final = struct.Struct("=QHHHH")
_LMDB_META: Final = struct.Struct("=IIQQ48s48sQQ")
_LMDB_META_PAGE_BYTES: Final = _LMDB_PAGE_HEADER.size + _LMDB_META.size


class _LmdbMeta(msgspec.Struct, frozen=True):
    page_size: int
    last_pg: int
    txnid: int


def _parse_meta_page(raw: bytes, pgno: int) -> _LmdbMeta | str:
    """The meta page's fields, or why it is not a valid meta page."""
    if len(raw) < _LMDB_META_PAGE_BYTES:
        return "it lies past the end of the file"
    _pgno, _pad, flags, _lower, _upper = _LMDB_PAGE_HEADER.unpack_from(raw)
    magic, version, _addr, _mapsize, free_db, _main_db, last_pg, txnid = _LMDB_META.unpack_from(
        raw, _LMDB_PAGE_HEADER.size
    )
    if not flags & _LMDB_P_META:
        return "it is not marked as a meta page"
    if magic != _LMDB_MAGIC:
        return f"bad magic {magic:#x}"
    if version != _LMDB_DATA_VERSION:
        return f"data version {version}, expected {_LMDB_DATA_VERSION}"
    page_size = struct.unpack_from("=I", free_db)[0]
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        return f"implausible page size {page_size}"
    if _pgno != pgno:
        return f"it says it is page {_pgno}"
    return _LmdbMeta(page_size=page_size, last_pg=last_pg, txnid=txnid)


def _check_meta_pages(data_path: Path) -> None:
    """Read LMDB's two meta pages ourselves and check the file holds the pages they cover.

    LMDB maps the file and trusts it: a page past the end of a truncated file is a SIGBUS
    on first touch. In durable (writemap) mode LMDB would also extend the file to the map
    size with zeros at open, hiding the truncation, so this runs before ``lmdb.open``.
    """
    try:
        fd = os.open(data_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _storage_failed(f"cannot open {data_path}", exc) from exc
    try:
        size = os.fstat(fd).st_size
        first = _parse_meta_page(os.pread(fd, _LMDB_META_PAGE_BYTES, 0), 0)
        # The second meta page sits one page in; only a valid first one says where that is.
        candidates = (
            [first.page_size]
            if isinstance(first, _LmdbMeta)
            else [4096, os.sysconf("SC_PAGE_SIZE")]
        )
        second: _LmdbMeta | str = "no plausible page size to find it by"
        for page_size in dict.fromkeys(candidates):
            second = _parse_meta_page(os.pread(fd, _LMDB_META_PAGE_BYTES, page_size), 1)
            if isinstance(second, _LmdbMeta):
                break
    except OSError as exc:
        raise _storage_failed(f"cannot read {data_path}", exc) from exc
    finally:
        os.close(fd)
    valid = [meta for meta in (first, second) if isinstance(meta, _LmdbMeta)]
    if not valid:
        raise _corrupt(
            f"{data_path} is not a usable LMDB file: meta page 0: {first}; meta page 1: {second}"
        )
    newest = max(valid, key=lambda meta: meta.txnid)
    needed = (newest.last_pg + 1) * newest.page_size
    if size < needed:
        raise _corrupt(
            f"{data_path} is truncated: it is {size} bytes, but its newest commit "
            f"(transaction {newest.txnid}) uses {needed} bytes"
        )


def _verify_structure(data_path: Path) -> None:
    """Walk every page of the data file with py-lmdb's offline verifier.

    It reads the file with plain reads and checks each B-tree page LMDB could follow (page
    types, bounds, key order, overflow extents, the free list), so a damaged page is a
    coded error here instead of a crash inside LMDB later.
    """
    try:
        problems: list[str] = lmdb_verify.verify(  # type: ignore[no-untyped-call]
            str(data_path), subdir=False
        )
    except lmdb_verify.VerifyError as exc:
        raise _corrupt(f"{data_path} fails verification: {exc}") from None
    except OSError as exc:
        raise _storage_failed(f"cannot read {data_path}", exc) from exc
    except MemoryError:
        raise _resource_exhausted(
            f"cannot verify {data_path}", OSError(errno.ENOMEM, "out of memory")
        ) from None
    except Exception as exc:  # the verifier itself tripped over malformed input
        raise _corrupt(f"{data_path} fails verification ({type(exc).__name__}: {exc})") from None
    if problems:
        shown = "; ".join(problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise _corrupt(f"{data_path} fails verification: {shown}{more}")
