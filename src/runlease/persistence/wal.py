"""The write-ahead log: the journal's records reach the disk here first, with one flush.

A durable LMDB commit flushes twice (its data pages, then its meta page), so committing
every group of records to LMDB costs two flushes. The log needs one: a group commit is a
single ``pwrite`` of its framed records into a segment file whose blocks were written
(zero-filled) when the segment was made, then one ``fdatasync``. Because the write never
grows the file, the flush has no file-size metadata to journal. LMDB becomes the
checkpoint behind the log: the store copies what only the log holds into LMDB in one
flushed transaction now and then, after which the segments it covers are deleted.

Layout: ``<data_dir>/db/wal/<number as 16 hex digits>.log``, numbered in the order they
were made. A segment is a header, then frames, then zeros up to its preallocated size::

    header  magic "RLWALSEG", version u16, flags u16, segment number u64,
            store id (16 bytes), sequence of its first frame u64, crc32 of all that
    frame   magic "RLFR", body length u32, sequence u64, synced-through u64,
            crc32 of the 24 bytes before it and the body, then the body (one journal
            record, exactly as the store keeps it in LMDB)

The header is written together with the segment's first frames. ``synced-through`` is
the newest sequence the log had flushed when the frame was written: in durable mode that
is the last frame of the previous group commit, in relaxed mode the last periodic flush.

Reading (at boot) stops at the first thing that is not the next frame: zeros, a bad
checksum, a torn frame, a frame with another sequence. That break is harmless only if it
was never flushed, and the frames written after it say whether it was: if any valid frame
found after the break (further in that segment, or in a later one) was written when the
log had already flushed the break's sequence, a flushed record is damaged and the log is
refused (``LogCorrupt``); otherwise the break is the torn end of writes a crash cut short
(never acknowledged in durable mode), and the log ends before it. So a boot yields a
prefix of what was written, never a record out of order, and never skips a damaged
record that was acknowledged as durable.

Nothing here is thread-safe or knows about LMDB; :class:`~runlease.persistence.store.Store`
owns a :class:`LogWriter` under its lock and translates ``OSError`` and ``LogCorrupt``
into coded errors.
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Final

KiB: Final = 1024
MiB: Final = 1024 * KiB
# The first segment of a writer is small (a store that is opened and closed pays little);
# each next one doubles up to the cap, so a busy store rotates rarely.
FIRST_SEGMENT_BYTES: Final = 1 * MiB
MAX_SEGMENT_BYTES: Final = 64 * MiB

_SEGMENT_MAGIC: Final = b"RLWALSEG"
_SEGMENT_VERSION: Final = 1
# magic, version, flags, number, store id, first sequence, crc32 of the bytes before it.
_SEGMENT_HEADER: Final = struct.Struct(">8sHHQ16sQI")
_FRAME_MAGIC: Final = b"RLFR"
# magic, body length, sequence, synced-through, crc32 of the bytes before it and the body.
_FRAME_HEADER: Final = struct.Struct(">4sIQQI")
_FRAME_CHECKED: Final = _FRAME_HEADER.size - 4
# The checked part of the header alone: a group commit packs it once per record.
_FRAME_HEAD: Final = struct.Struct(">4sIQQ")
_SEGMENT_NAME: Final = re.compile(r"^([0-9a-f]{16})\.log$")
_ZEROS: Final = bytes(MiB)


class LogCorrupt(Exception):
    """The log holds damage that cannot be a torn end: boot must not go on."""


def segment_path(directory: Path, number: int) -> Path:
    return directory / f"{number:016x}.log"


def frame(seq: int, synced_through: int, body: bytes) -> bytes:
    return b"".join(_frame_parts(seq, synced_through, body))


def _frame_parts(seq: int, synced_through: int, body: bytes) -> tuple[bytes, bytes, bytes]:
    head = _FRAME_HEAD.pack(_FRAME_MAGIC, len(body), seq, synced_through)
    return head, zlib.crc32(body, zlib.crc32(head)).to_bytes(4, "big"), body


def _segment_header(number: int, store_id: bytes, first_seq: int) -> bytes:
    header = _SEGMENT_HEADER.pack(
        _SEGMENT_MAGIC, _SEGMENT_VERSION, 0, number, store_id, first_seq, 0
    )
    crc = zlib.crc32(header[:-4])
    return header[:-4] + crc.to_bytes(4, "big")


def store_id_bytes(store_id: str) -> bytes:
    return bytes.fromhex(store_id)


# ------------------------------------------------------------------------ reading
class _Frame:
    __slots__ = ("body", "end", "seq", "synced")

    def __init__(self, seq: int, synced: int, body: bytes, end: int) -> None:
        self.seq = seq
        self.synced = synced
        self.body = body
        self.end = end


def _frame_at(data: bytes, offset: int) -> _Frame | None:
    """The valid frame starting at ``offset``, or None."""
    if offset + _FRAME_HEADER.size > len(data):
        return None
    magic, length, seq, synced, crc = _FRAME_HEADER.unpack_from(data, offset)
    if magic != _FRAME_MAGIC:
        return None
    start = offset + _FRAME_HEADER.size
    end = start + length
    if end > len(data) or synced >= seq:
        return None
    body = data[start:end]
    if zlib.crc32(body, zlib.crc32(data[offset : offset + _FRAME_CHECKED])) != crc:
        return None
    return _Frame(seq, synced, body, end)


def _frames_after(data: bytes, offset: int) -> list[_Frame]:
    """Every valid frame that starts at or after ``offset``, found by its magic."""
    found = []
    at = data.find(_FRAME_MAGIC, offset)
    while at >= 0:
        item = _frame_at(data, at)
        if item is not None:
            found.append(item)
            at = data.find(_FRAME_MAGIC, item.end)
        else:
            at = data.find(_FRAME_MAGIC, at + 1)
    return found


class _Header:
    __slots__ = ("first_seq", "number", "store_id")

    def __init__(self, number: int, store_id: bytes, first_seq: int) -> None:
        self.number = number
        self.store_id = store_id
        self.first_seq = first_seq


def _header_of(data: bytes) -> _Header | None:
    if len(data) < _SEGMENT_HEADER.size:
        return None
    magic, version, flags, number, store_id, first_seq, crc = _SEGMENT_HEADER.unpack_from(data)
    if magic != _SEGMENT_MAGIC or zlib.crc32(data[: _SEGMENT_HEADER.size - 4]) != crc:
        return None
    if version != _SEGMENT_VERSION or flags != 0:
        return None
    return _Header(number, store_id, first_seq)


class Recovered:
    """What the log holds after a given sequence, and the segment files it read."""

    def __init__(self) -> None:
        # (seq, body) for every frame after ``after_seq``, consecutive, in order.
        self.records: list[tuple[int, bytes]] = []
        self.segments: list[Path] = []
        self.highest_number = 0
        # Why the log was cut short at a torn end (None if it ended cleanly).
        self.torn_end: str | None = None


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """The segment files of ``directory`` in the order they were made."""
    found = []
    for entry in os.scandir(directory):
        match = _SEGMENT_NAME.match(entry.name)
        if match is not None:
            found.append((int(match.group(1), 16), Path(entry.path)))
    return sorted(found)


def read_log(directory: Path, store_id: str, after_seq: int) -> Recovered:
    """Read every segment of ``directory``; return the records after ``after_seq``.

    ``after_seq`` is what the checkpoint (LMDB) already holds. Raises :class:`LogCorrupt`
    for damage to flushed records, a frame out of sequence, a segment of another store, or
    a log that starts after ``after_seq + 1`` (records would be missing); ``OSError`` if
    a segment cannot be read.
    """
    result = Recovered()
    wanted_id = store_id_bytes(store_id)
    expected: int | None = None  # the sequence the next frame must carry
    broken: tuple[int, str] | None = None  # (first sequence lost, where)
    later: list[_Frame] = []  # valid frames found after the break
    for number, path in list_segments(directory):
        result.segments.append(path)
        result.highest_number = max(result.highest_number, number)
        with open(path, "rb") as f:
            data = f.read()
        if broken is not None:
            later.extend(_frames_after(data, 0))
            continue
        header = _header_of(data)
        where = f"{path}"
        if header is None:
            if not data.strip(b"\0"):
                continue  # made ahead of use and never written: nothing lost here
            broken = (expected if expected is not None else after_seq + 1, f"{where} header")
            later.extend(_frames_after(data, 0))
            continue
        if header.store_id != wanted_id:
            raise LogCorrupt(f"{path} belongs to store {header.store_id.hex()}, not {store_id}")
        if header.number != number:
            raise LogCorrupt(f"{path} says it is segment {header.number}")
        if expected is None:
            if header.first_seq > after_seq + 1:
                raise LogCorrupt(
                    f"{path} starts at record {header.first_seq}, but the checkpoint ends at "
                    f"{after_seq}: records {after_seq + 1}..{header.first_seq - 1} are missing"
                )
        elif header.first_seq != expected and not (
            # A segment left behind by a deletion that failed: everything before this one
            # is in the checkpoint anyway.
            expected <= after_seq + 1 and header.first_seq <= after_seq + 1
        ):
            raise LogCorrupt(
                f"{path} starts at record {header.first_seq}, but the segment before it "
                f"ends at {expected - 1}"
            )
        expected = header.first_seq
        offset = _SEGMENT_HEADER.size
        while True:
            item = _frame_at(data, offset)
            if item is None or item.seq != expected:
                break
            if item.seq > after_seq:
                result.records.append((item.seq, item.body))
            expected += 1
            offset = item.end
        if data[offset:].strip(b"\0"):
            broken = (expected, f"{where} at byte {offset}")
            later.extend(_frames_after(data, offset))
    if broken is not None:
        lost, where = broken
        vouched = [item for item in later if item.synced >= lost]
        if vouched:
            raise LogCorrupt(
                f"record {lost} in the write-ahead log is damaged ({where}), but record "
                f"{vouched[0].seq} after it was written once record {vouched[0].synced} "
                "was already flushed to disk"
            )
        result.torn_end = f"the log ends with an incomplete write at record {lost} ({where})"
        # Frames after the break were never flushed either: a torn end drops them all.
        result.records = [(seq, body) for seq, body in result.records if seq < lost]
    return result


# ------------------------------------------------------------------------ writing
class _Segment:
    __slots__ = ("fd", "first_seq", "last_seq", "number", "path", "size", "used")

    def __init__(self, number: int, path: Path, fd: int, size: int) -> None:
        self.number = number
        self.path = path
        self.fd: int | None = fd
        self.size = size
        self.used = 0
        self.first_seq: int | None = None
        self.last_seq = 0


def create_segment(directory: Path, number: int, size: int, *, zero_fill: bool) -> _Segment:
    """Make a segment file of ``size`` bytes.

    ``zero_fill`` (durable mode) writes zeros over the whole file and flushes it and its
    directory entry, so later writes and flushes never change its metadata. Without it
    (relaxed mode) the file is sized sparse and nothing is flushed: the log's deferred
    flush takes care of it. Raises ``OSError`` with nothing left behind.
    """
    path = segment_path(directory, number)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if zero_fill:
            written = 0
            while written < size:
                written += os.pwrite(fd, _ZEROS[: min(len(_ZEROS), size - written)], written)
            os.fsync(fd)
            sync_directory(directory)
        else:
            os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return _Segment(number, path, fd, size)


def sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LogWriter:
    """Appends group commits to the active segment. Not thread-safe: the store locks.

    ``durable`` flushes each append before it returns and zero-fills new segments;
    otherwise appends reach the page cache and :meth:`sync` flushes them later.
    """

    def __init__(
        self, directory: Path, store_id: str, *, next_number: int, synced_seq: int, durable: bool
    ) -> None:
        self.directory = directory
        self._store_id = store_id_bytes(store_id)
        self._next_number = next_number
        self._durable = durable
        self._next_size = FIRST_SEGMENT_BYTES
        self._active: _Segment | None = None
        self._spare: _Segment | None = None
        # Segments filled before the active one, oldest first, their descriptors closed.
        self._full: list[_Segment] = []
        self.written_seq = synced_seq
        # The newest sequence flushed to disk (the log's or the checkpoint's).
        self.synced_seq = synced_seq
        # A segment made since the last flush whose directory entry is not yet durable.
        self._unsynced_segments: list[_Segment] = []
        self._planning = False
        self.segments_created = 0

    # A new segment is made before anything of the batch is written, so a failure here
    # leaves the log as it was; failures after it leave it unknown.
    def make_room(self, nbytes: int) -> None:
        """Make sure the active segment can take ``nbytes`` of frames (and its header)."""
        active = self._active
        if active is not None and active.used + nbytes + self._header_need(active) <= active.size:
            return
        need = nbytes + _SEGMENT_HEADER.size
        spare = self._spare
        if spare is None or spare.size < need:
            if spare is not None:
                self._discard(spare)
                self._spare = None
            spare = self._new_segment(max(need, self._next_size))
        self._spare = None
        if active is not None:
            self._retire(active)
        self._active = spare

    def _header_need(self, segment: _Segment) -> int:
        return _SEGMENT_HEADER.size if segment.first_seq is None else 0

    def _new_segment(self, size: int) -> _Segment:
        size = -(-size // (64 * KiB)) * (64 * KiB)
        segment = create_segment(self.directory, self._next_number, size, zero_fill=self._durable)
        self._next_number += 1
        self._next_size = min(max(self._next_size, size) * 2, MAX_SEGMENT_BYTES)
        self.segments_created += 1
        if not self._durable:
            self._unsynced_segments.append(segment)
        return segment

    def _retire(self, segment: _Segment) -> None:
        if segment.fd is not None:
            if segment.last_seq > self.synced_seq:
                os.fdatasync(segment.fd)  # relaxed: its frames must not outlive it unflushed
            os.close(segment.fd)
            segment.fd = None
        if segment.first_seq is not None:
            self._full.append(segment)
        else:
            with contextlib.suppress(OSError):
                segment.path.unlink()

    def _discard(self, segment: _Segment) -> None:
        discard_segment(segment)

    def write(self, first_seq: int, records: Sequence[bytes]) -> None:
        """Write the frames of ``records`` (sequences from ``first_seq``); flush if durable.

        Call :meth:`make_room` with :func:`frames_size` first. An ``OSError`` here leaves
        the log unknown: the store must take no more appends.
        """
        active = self._active
        assert active is not None
        assert active.fd is not None
        synced = self.synced_seq
        parts: list[bytes] = []
        if active.first_seq is None:
            parts.append(_segment_header(active.number, self._store_id, first_seq))
            active.first_seq = first_seq
        for i, body in enumerate(records):
            parts.extend(_frame_parts(first_seq + i, synced, body))
        data = b"".join(parts)
        view = memoryview(data)
        offset = active.used
        while view:
            n = os.pwrite(active.fd, view, offset)
            view = view[n:]
            offset += n
        last = first_seq + len(records) - 1
        active.used = offset
        active.last_seq = last
        self.written_seq = last
        if self._durable:
            os.fdatasync(active.fd)
            self.synced_seq = last

    def sync_plan(self) -> SyncPlan | None:
        """What to flush to make everything written so far durable, or None if nothing.

        The plan holds its own descriptor, so the caller can run it without the lock while
        appends go on (and a rotation closes the segment's descriptor).
        """
        if self.written_seq <= self.synced_seq and not self._unsynced_segments:
            return None
        active = self._active
        fd = os.dup(active.fd) if active is not None and active.fd is not None else None
        plan = SyncPlan(fd, self.directory if self._unsynced_segments else None, self.written_seq)
        self._unsynced_segments = []
        return plan

    def synced(self, seq: int) -> None:
        self.synced_seq = max(self.synced_seq, seq)

    @property
    def unsynced(self) -> bool:
        return self.written_seq > self.synced_seq

    def plan_spare(self) -> tuple[int, int] | None:
        """Reserve the number and size of a segment to make ahead of time, if one is due.

        The caller makes it without the lock (:func:`create_segment`), then hands it to
        :meth:`install_spare` (or calls :meth:`spare_failed`).
        """
        active = self._active
        if self._spare is not None or self._planning or active is None:
            return None
        if active.used * 2 < active.size:
            return None
        number, size = self._next_number, self._next_size
        self._next_number += 1
        self._next_size = min(size * 2, MAX_SEGMENT_BYTES)
        self._planning = True
        return number, size

    def install_spare(self, segment: _Segment) -> bool:
        """Keep ``segment`` as the next one; False if the log moved past it meanwhile."""
        self._planning = False
        active = self._active
        if self._spare is not None or (active is not None and active.number > segment.number):
            return False
        self.segments_created += 1
        if not self._durable:
            self._unsynced_segments.append(segment)
        self._spare = segment
        return True

    def spare_failed(self) -> None:
        self._planning = False

    def covered_through(self, seq: int) -> list[Path]:
        """Forget the filled segments whose frames are all at or before ``seq``.

        Returns their paths for the caller to delete once ``seq`` is durable elsewhere.
        """
        gone = [segment for segment in self._full if segment.last_seq <= seq]
        self._full = [segment for segment in self._full if segment.last_seq > seq]
        return [segment.path for segment in gone]

    def all_paths(self) -> list[Path]:
        paths = [segment.path for segment in self._full]
        for segment in (self._active, self._spare):
            if segment is not None:
                paths.append(segment.path)
        return paths

    def close(self) -> None:
        for segment in (self._active, self._spare):
            if segment is not None and segment.fd is not None:
                os.close(segment.fd)
                segment.fd = None


class SyncPlan:
    """One deferred flush: a duplicate descriptor of the active segment, and whether the
    directory (new segments' names) needs flushing too."""

    def __init__(self, fd: int | None, directory: Path | None, seq: int) -> None:
        self.fd = fd
        self.directory = directory
        self.seq = seq

    def run(self) -> None:
        if self.fd is not None:
            os.fdatasync(self.fd)
        if self.directory is not None:
            sync_directory(self.directory)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def discard_segment(segment: _Segment) -> None:
    if segment.fd is not None:
        os.close(segment.fd)
        segment.fd = None
    with contextlib.suppress(OSError):
        segment.path.unlink()


def segment_has_records(path: Path) -> bool:
    """Whether the segment file holds any valid frame (a fresh start must not drop it)."""
    with open(path, "rb") as f:
        data = f.read()
    return bool(_frames_after(data, 0))


def frames_size(records: Sequence[bytes]) -> int:
    return sum(len(body) for body in records) + _FRAME_HEADER.size * len(records)
