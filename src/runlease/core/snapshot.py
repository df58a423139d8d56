"""Whole-machine snapshots: one versioned msgpack image of every record. Pure, no IO.

A snapshot holds what cannot be recomputed: the task, run and session records, the raw
claim tokens of live leases, and the event counter. Everything derived from those (the
claim index, the parent-to-children map) is rebuilt by :meth:`Machine.restore`, so the
image stays small and can never disagree with itself about them.

The top-level Struct is tagged with its format version under the key ``format``. A reader
that meets a version it does not know refuses with :class:`UnsupportedFormat` instead of
guessing; a newer runlease adds ``SnapshotV2`` and keeps decoding ``SnapshotV1``.

The raw claim tokens make a snapshot as sensitive as the journal: keep both in a directory
only the runtime's user can read.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Final

import msgspec

from runlease.core.machine import Machine
from runlease.core.model import Run, SchedulerState, Session, Task
from runlease.errors import InternalError

SNAPSHOT_FORMAT: Final = 1


class UnsupportedFormat(InternalError):
    """Persisted data carries a format version newer than this runlease understands.

    Boot must stop on this error rather than fall back to older data: the newer writer
    may have relied on meanings this code does not know.
    """


class SnapshotV1(msgspec.Struct, kw_only=True, tag_field="format", tag=1, gc=False):
    """Format 1. Record lists keep the machine's dict order, which replay relies on."""

    last_seq: int
    tasks: list[Task]
    runs: list[Run]
    sessions: list[Session]
    # Raw claim tokens of live leases, by run id, in the order the leases were taken.
    tokens: dict[str, str]
    # The scheduler pause switch; absent in images written before it existed.
    scheduler: SchedulerState | None = None


class _FormatOnly(msgspec.Struct):
    """Reads just the version tag of an image whose body this code could not decode."""

    format: int | str | None = None


_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final = msgspec.msgpack.Decoder(SnapshotV1)
_format_decoder: Final = msgspec.msgpack.Decoder(_FormatOnly)


def encode_snapshot(machine: Machine) -> bytes:
    """Encode the machine's whole state. The machine must not change while this runs."""
    image = SnapshotV1(
        last_seq=machine.last_seq,
        tasks=list(machine.tasks.values()),
        runs=list(machine.runs.values()),
        sessions=list(machine.sessions.values()),
        tokens=machine.live_tokens(),
        scheduler=machine.scheduler,
    )
    return _encoder.encode(image)


def snapshot_format(data: bytes) -> int | None:
    """The format version an image declares, or None if it declares none readable."""
    try:
        version = _format_decoder.decode(data).format
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return version if isinstance(version, int) else None


def decode_snapshot(data: bytes) -> Machine:
    """Rebuild a machine from an image written by :func:`encode_snapshot`.

    Raises :class:`UnsupportedFormat` for an image from a newer runlease, and
    :class:`InternalError` for an image that does not decode or is inconsistent.
    """
    try:
        with _gc_paused():
            image = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        version = snapshot_format(data)
        if version is not None and version > SNAPSHOT_FORMAT:
            raise UnsupportedFormat(
                f"snapshot format version {version} is newer than this runlease supports "
                f"(up to {SNAPSHOT_FORMAT}); run the newer runlease that wrote it"
            ) from None
        raise InternalError(f"snapshot does not decode: {exc}") from exc
    try:
        with _gc_paused():
            return Machine.restore(
                tasks=image.tasks,
                runs=image.runs,
                sessions=image.sessions,
                tokens=image.tokens,
                last_seq=image.last_seq,
                scheduler=image.scheduler,
            )
    except (KeyError, ValueError) as exc:
        # A run naming a missing task, a run queued twice: the image contradicts itself.
        raise InternalError(f"snapshot is inconsistent: {exc!r}") from exc


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Hold off the cyclic GC while millions of acyclic objects are built.

    Every allocation counts towards a collection, and each full collection walks every
    container built so far, so a large decode would otherwise spend a third of its time in
    collections that find nothing (the records form no cycles).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
