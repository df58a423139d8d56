"""The LMDB store: an append-only journal of records plus the newest two snapshots.

Layout of a data directory::

    <data_dir>/            mode 0700, created if missing
        lock               exclusive flock while a Store has the directory open; holds its pid
        db/                the LMDB environment (data.mdb, lock.mdb), files mode 0600
            journal        8-byte big-endian sequence -> one record (see records.py)
            snapshots      8-byte big-endian sequence -> header + snapshot image
            meta           small named values: store format, last sequence

Sequences start at 1 and have no gaps. A snapshot stored under sequence S holds the state
after records 1..S; boot decodes the newest valid snapshot and replays the records after S.

Durability modes:

``durable``
    Every commit is flushed to stable storage (fsync) before :meth:`Store.append` returns,
    so a record the runtime acknowledged survives a process crash, an OS crash and a power
    cut (given a disk that honours flushes).
``relaxed``
    Commits reach the OS page cache but are not flushed. A record survives the runtime
    process crashing or being killed, but an OS crash or power cut can lose the most recent
    commits (the database itself stays consistent: it rolls back to an older commit).
    :meth:`Store.close` flushes, so a clean shutdown loses nothing.

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

Failures: whenever a write raises ``STORAGE_FAILED`` the batch is absent, except in one
case LMDB cannot resolve: the final flush of the commit itself failing. Then LMDB marks the
environment unusable, the store refuses all further work, and the batch may or may not be
present after a restart (it is never partly present). Callers must treat an unacknowledged
batch as "unknown", which replay handles because every journaled command was valid.

All methods are thread-safe (one internal lock), but the store is designed for one writer
thread: the runtime hands it everything that accumulated while the previous commit ran.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self, TypeVar

import lmdb
import msgspec

from runlease.core.snapshot import UnsupportedFormat
from runlease.errors import DATA_DIR_LOCKED, STORAGE_FAILED, InternalError, Unavailable

log = logging.getLogger(__name__)

Durability = Literal["durable", "relaxed"]

MiB: Final = 1024 * 1024
DEFAULT_MAP_SIZE: Final = 64 * MiB
# Past this the map stops doubling and appends fail with STORAGE_FAILED.
MAX_MAP_SIZE: Final = 1 << 40
STORE_FORMAT: Final = 1

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

# Journal reads hold the lock per chunk, never across a yield.
_READ_CHUNK_RECORDS: Final = 4096
_READ_CHUNK_BYTES: Final = 8 * MiB
# Journal trimming deletes this many records per write transaction, so appends interleave.
_TRIM_CHUNK: Final = 20_000

_T = TypeVar("_T")


class StoreStats(msgspec.Struct, kw_only=True):
    """Counters since the store was opened."""

    durability: str
    # Write transactions committed (appends, snapshots, trims).
    commits: int = 0
    # Commits flushed to disk: every commit when durable, none when relaxed.
    fsyncs: int = 0
    append_batches: int = 0
    records_appended: int = 0
    snapshots_written: int = 0
    records_trimmed: int = 0
    map_size: int = 0
    map_grows: int = 0


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
        lock_fd: int,
        last_seq: int,
        compress_snapshots: bool,
    ) -> None:
        self.data_dir = data_dir
        self.durability: Durability = durability
        self._env = env
        self._journal = journal
        self._snapshots = snapshots
        self._meta = meta
        self._lock_fd: int | None = lock_fd
        self._last_seq = last_seq
        self._compress = compress_snapshots
        self._mutex = threading.Lock()
        self._closed = False
        # Set once LMDB can no longer be trusted (a failed remap, a panic); then every call
        # raises STORAGE_FAILED with this text instead of touching the environment.
        self._broken: str | None = None
        self._stats = StoreStats(durability=durability, map_size=env.info()["map_size"])
        self._snapshot_problems: list[SnapshotProblem] = []

    # ---------------------------------------------------------------------- opening
    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        durability: Durability,
        map_size: int = DEFAULT_MAP_SIZE,
        compress_snapshots: bool = True,
    ) -> Store:
        """Open (creating if needed) the store in ``data_dir`` and lock it for this process.

        ``map_size`` is only the starting size of the memory map; it doubles whenever a
        write needs more. Raises ``Unavailable(code=DATA_DIR_LOCKED)`` at once if another
        Store (in this or another process) has the directory open.
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
            env = _open_env(data_dir / "db", durability=durability, map_size=map_size)
            try:
                if durability == "durable":
                    _reserve(data_dir / "db", env.info()["map_size"], "open the store")
                journal, snapshots, meta, last_seq = _open_databases(env)
            except BaseException:
                env.close()
                raise
        except BaseException:
            _unlock(lock_fd)
            raise
        return cls(
            data_dir=data_dir,
            durability=durability,
            env=env,
            journal=journal,
            snapshots=snapshots,
            meta=meta,
            lock_fd=lock_fd,
            last_seq=last_seq,
            compress_snapshots=compress_snapshots,
        )

    def close(self) -> None:
        """Flush (in relaxed mode), close the environment and release the directory lock."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            try:
                if self.durability == "relaxed" and self._broken is None:
                    self._env.sync(True)
            except lmdb.Error as exc:
                log.warning("flushing %s on close failed: %s", self.data_dir, exc)
            finally:
                self._env.close()
                if self._lock_fd is not None:
                    _unlock(self._lock_fd)
                    self._lock_fd = None

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

    def append(self, records: Sequence[bytes]) -> int:
        """Commit a batch of records in one write transaction; return the last sequence.

        The records get consecutive sequences after :meth:`last_seq`. Either the whole batch
        is committed (flushed to disk first when durable) or none of it is: on failure this
        raises ``Unavailable(code=STORAGE_FAILED)`` and the store is unchanged and still
        readable. The caller may retry the same batch once the cause is fixed; until then
        its in-memory state is ahead of the journal and it must not acknowledge the batch.
        A full memory map is not a failure: the map grows and the batch is retried.
        """
        if not records:
            return self._last_seq
        with self._mutex:
            self._check_open()
            first = self._last_seq + 1
            last = self._last_seq + len(records)
            items = [(_U64.pack(first + i), record) for i, record in enumerate(records)]

            def write(txn: lmdb.Transaction[bytes]) -> None:
                _consumed, added = txn.cursor(self._journal).putmulti(items, append=True)
                if added != len(items):
                    # Only possible if the journal holds keys past last_seq: a bug.
                    raise InternalError(
                        f"journal in {self.data_dir} already has records after {first - 1}"
                    )
                txn.put(_META_LAST_SEQ, _U64.pack(last), db=self._meta)

            self._write("append records to the journal", write)
            self._last_seq = last
            self._stats.append_batches += 1
            self._stats.records_appended += len(records)
            return last

    def iter_journal(self, after_seq: int = 0) -> Iterator[tuple[int, bytes]]:
        """Yield ``(seq, record)`` for every record after ``after_seq``, in order.

        Raises :class:`InternalError` if records in that range are missing (trimmed after a
        snapshot, so replay must start from a snapshot instead). No transaction is held
        open between items, so appends may run while the caller replays.
        """
        if after_seq < 0:
            raise ValueError(f"after_seq must be >= 0, got {after_seq}")
        expected = after_seq + 1
        while True:
            chunk, last = self._read_chunk(expected)
            if not chunk:
                break
            for seq, record in chunk:
                if seq != expected:
                    raise self._gap(expected, seq)
                yield seq, record
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
            with self._env.begin(db=self._journal) as txn:
                cursor = txn.cursor()
                return _U64.unpack(cursor.key())[0] if cursor.first() else None

    def _read_chunk(self, start: int) -> tuple[list[tuple[int, bytes]], int]:
        """Records from ``start`` on (a bounded chunk), and the last sequence at that time."""
        chunk: list[tuple[int, bytes]] = []
        size = 0
        with self._mutex:
            self._check_open()
            with self._env.begin(db=self._journal) as txn:
                cursor = txn.cursor()
                if cursor.set_range(_U64.pack(start)):
                    for key, value in cursor.iternext(keys=True, values=True):
                        chunk.append((_U64.unpack(key)[0], value))
                        size += len(value)
                        if len(chunk) >= _READ_CHUNK_RECORDS or size >= _READ_CHUNK_BYTES:
                            break
            return chunk, self._last_seq

    def _gap(self, expected: int, found: int | None) -> InternalError:
        where = "the journal ends" if found is None else f"the next one is {found}"
        return InternalError(
            f"journal record {expected} is missing from {self.data_dir} ({where}); records "
            "up to the older kept snapshot are trimmed, so replay must start from a snapshot"
        )

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

            trim_through = self._write("write a snapshot", write)
            self._stats.snapshots_written += 1
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
            with self._env.begin(db=self._snapshots) as txn:
                seqs = _keys(txn.cursor())
        for seq in reversed(seqs):
            with self._mutex:
                self._check_open()
                with self._env.begin(db=self._snapshots) as txn:
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
            with self._env.begin(db=self._snapshots) as txn:
                return _keys(txn.cursor())

    # ------------------------------------------------------------------------ stats
    def stats(self) -> StoreStats:
        with self._mutex:
            return msgspec.structs.replace(self._stats)

    # -------------------------------------------------------------------- internals
    def _check_open(self) -> None:
        if self._closed:
            raise Unavailable(f"the store in {self.data_dir} is closed")
        if self._broken is not None:
            raise Unavailable(self._broken, code=STORAGE_FAILED)

    def _write(self, what: str, body: Callable[[lmdb.Transaction[bytes]], _T]) -> _T:
        """Run ``body`` in one write transaction and commit it, growing the map if full.

        Any other failure aborts the whole transaction and raises STORAGE_FAILED.
        The caller holds the mutex, so no transaction of this store is open during a grow.
        """
        while True:
            txn = self._env.begin(write=True)
            try:
                result = body(txn)
                txn.commit()
            except lmdb.MapFullError:
                txn.abort()
                self._grow(what)
                continue
            except (lmdb.Error, OSError) as exc:
                txn.abort()
                error = _storage_failed(f"could not {what} in {self.data_dir}", exc)
                if isinstance(exc, lmdb.PanicError):
                    self._broken = error.message
                raise error from exc
            except BaseException:
                txn.abort()
                raise
            self._stats.commits += 1
            if self.durability == "durable":
                self._stats.fsyncs += 1
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
            _reserve(self.data_dir / "db", new, what)
        try:
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


def _reserve(db_dir: Path, size: int, what: str) -> None:
    """Allocate disk blocks for the first ``size`` bytes of the data file (see the module doc)."""
    path = db_dir / "data.mdb"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _storage_failed(
            f"could not {what}: reserving {_size(size)} of disk for {path} failed", exc
        ) from exc


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
            max_dbs=4,
            sync=durable,
            metasync=durable,
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
        raise _storage_failed(f"cannot open the database in {path}", exc) from exc


def _open_databases(
    env: lmdb.Environment,
) -> tuple[lmdb._Database, lmdb._Database, lmdb._Database, int]:
    """Open (creating) the named databases; check the format; find the last sequence."""
    try:
        with env.begin(write=True) as txn:
            journal = env.open_db(b"journal", txn=txn)
            snapshots = env.open_db(b"snapshots", txn=txn)
            meta = env.open_db(b"meta", txn=txn)
            stored = txn.get(_META_FORMAT, db=meta)
            if stored is None:
                txn.put(_META_FORMAT, _U64.pack(STORE_FORMAT), db=meta)
            elif _U64.unpack(stored)[0] > STORE_FORMAT:
                raise UnsupportedFormat(
                    f"the store in {env.path()} has format {_U64.unpack(stored)[0]}, newer "
                    f"than this runlease supports (up to {STORE_FORMAT})"
                )
            last = 0
            raw = txn.get(_META_LAST_SEQ, db=meta)
            if raw is not None:
                last = _U64.unpack(raw)[0]
            cursor = txn.cursor(journal)
            if cursor.last():
                last = max(last, _U64.unpack(cursor.key())[0])
            cursor = txn.cursor(snapshots)
            if cursor.last():
                last = max(last, _U64.unpack(cursor.key())[0])
    except (lmdb.Error, OSError) as exc:
        raise _storage_failed(f"cannot open the databases in {env.path()}", exc) from exc
    return journal, snapshots, meta, last
