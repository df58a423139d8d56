"""How events are kept on disk: their record format, the by-task index, and retention.

Events are the machine's audit record (``runlease.core.model.Event``). The store keeps
them beside the journal records that caused them (see :class:`~runlease.persistence.store.
Store`): in memory from the moment :meth:`Store.append` returns, in LMDB from the next
checkpoint on, written in the same transaction as their records. Two LMDB databases hold
them::

    events          8-byte big-endian event seq -> framed event
    events_by_task  task id (UTF-8, or a digest of a very long one), 0x00, 8-byte seq -> b""

An event is framed like a journal record: ``0xC1, frame version, crc32 (big-endian),
msgpack body``, the crc covering the 8-byte key, the two prefix bytes and the body, so a
flipped byte, or an event under the wrong key, is caught when it is read. A damaged event
makes that read fail with ``STORAGE_CORRUPT`` (:class:`EventCorrupt` here, translated by
the store): the store fails closed on damage everywhere, and quietly skipping an event
would give an operator a history with a hole in it and no sign of it. The state does not
depend on events, so the runtime keeps serving; only reads that reach the damaged event
fail.

Nothing here imports lmdb or does IO: these are the pure helpers the store uses.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Iterable
from typing import Final

import msgspec

from runlease.core.model import Event

_U64: Final = struct.Struct(">Q")
_FRAME_MAGIC: Final = 0xC1
_FRAME_VERSION: Final = 1
_FRAME_PREFIX: Final = bytes((_FRAME_MAGIC, _FRAME_VERSION))
_CRC: Final = struct.Struct(">I")
_HEADER_SIZE: Final = len(_FRAME_PREFIX) + _CRC.size
# LMDB keys are at most 511 bytes; ids are far shorter, but one that is not still gets a
# key of bounded size (reads check the task id of every event they return anyway).
_LONG_TASK_ID: Final = 256
_TASK_SEPARATOR: Final = b"\x00"


class HistoryRetention(msgspec.Struct, frozen=True, kw_only=True):
    """How long events are kept: an event goes once it breaks a limit that is set."""

    max_age: float | None = 30 * 86400.0  # seconds; None = no age limit
    max_events: int | None = None  # newest N kept; None = no count limit


class EventCorrupt(Exception):
    """A stored event failed its frame or checksum check, or does not decode."""


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(Event)


def seq_key(seq: int) -> bytes:
    return _U64.pack(seq)


def key_seq(key: bytes) -> int:
    return int(_U64.unpack(key)[0])


def encode_events(
    events: Iterable[Event],
) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """The stored items of ``events`` (seq key, framed event) and their index entries
    (:func:`task_key`, empty value), ready for ``putmulti``.

    The checkpoint encodes thousands of events at a time while the event loop waits for
    the interpreter, so the lookups are hoisted out of the loop and each task's key prefix
    is made once.
    """
    encode = _encoder.encode
    pack_seq = _U64.pack
    pack_crc = _CRC.pack
    crc32 = zlib.crc32
    frame = _FRAME_PREFIX
    prefixes: dict[str, bytes] = {}
    items = []
    index = []
    for event in events:
        key = pack_seq(event.seq)
        body = encode(event)
        items.append((key, frame + pack_crc(crc32(body, crc32(key + frame))) + body))
        task_id = event.task_id
        if task_id is not None:
            prefix = prefixes.get(task_id)
            if prefix is None:
                prefix = prefixes[task_id] = task_prefix(task_id)
            index.append((prefix + key, b""))
    return items, index


def check_event(seq: int, stored: bytes) -> None:
    """Check the frame and checksum of the event stored under ``seq``; raise EventCorrupt."""
    if len(stored) < _HEADER_SIZE or stored[0] != _FRAME_MAGIC:
        raise EventCorrupt(f"event {seq} has no valid frame")
    if stored[1] != _FRAME_VERSION:
        raise EventCorrupt(f"event {seq} has an unknown frame version {stored[1]}")
    body = memoryview(stored)[_HEADER_SIZE:]
    if (
        zlib.crc32(body, zlib.crc32(_U64.pack(seq) + _FRAME_PREFIX))
        != _CRC.unpack_from(stored, 2)[0]
    ):
        raise EventCorrupt(f"event {seq} fails its checksum")


def decode_event(seq: int, stored: bytes) -> Event:
    """The event stored under ``seq``, after checking its frame; raises EventCorrupt."""
    check_event(seq, stored)
    try:
        event = _decoder.decode(memoryview(stored)[_HEADER_SIZE:])
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError) as exc:
        raise EventCorrupt(f"event {seq} does not decode: {exc}") from None
    if event.seq != seq:
        raise EventCorrupt(f"event stored under {seq} says it is event {event.seq}")
    return event


def decode_matching(raw: Iterable[tuple[int, bytes]], needles: tuple[bytes, ...]) -> list[Event]:
    """Decode the stored events that contain every one of ``needles``, checking them all.

    A filtered scan decodes only the events that can match: an id or kind a filter asks
    for is in the encoded event as its UTF-8 bytes, so an event without them is skipped
    after its (cheap) checksum, not decoded. The caller still applies its exact filter.
    """
    found = []
    crc32, pack_seq, unpack_crc, prefix = zlib.crc32, _U64.pack, _CRC.unpack_from, _FRAME_PREFIX
    for seq, stored in raw:
        if needles and not all(needle in stored for needle in needles):
            # The checks of check_event, inlined: a scan passes over many events.
            if stored[:2] != prefix or len(stored) < _HEADER_SIZE:
                check_event(seq, stored)
            if (
                crc32(stored[_HEADER_SIZE:], crc32(pack_seq(seq) + prefix))
                != unpack_crc(stored, 2)[0]
            ):
                check_event(seq, stored)
            continue
        found.append(decode_event(seq, stored))
    return found


def task_prefix(task_id: str) -> bytes:
    """The common start of every index key of ``task_id``."""
    raw = task_id.encode("utf-8", "surrogatepass")
    if len(raw) > _LONG_TASK_ID or _TASK_SEPARATOR in raw:
        raw = b"\xff" + hashlib.blake2b(raw, digest_size=20).digest()
    return raw + _TASK_SEPARATOR


def task_key(task_id: str, seq: int) -> bytes:
    return task_prefix(task_id) + _U64.pack(seq)


def check_retention(retention: HistoryRetention) -> None:
    """Refuse limits that make no sense (a negative age or count)."""
    if retention.max_age is not None and not retention.max_age >= 0:
        raise ValueError(f"max_age must be a number of seconds >= 0, not {retention.max_age}")
    if retention.max_events is not None and retention.max_events < 0:
        raise ValueError(f"max_events must be >= 0, not {retention.max_events}")
