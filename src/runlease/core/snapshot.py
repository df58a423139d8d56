"""Whole-machine snapshots: one versioned msgpack image of every record. Pure, no IO.

A snapshot holds what cannot be recomputed: the task, run and session records, the order
in which live leases were taken, the event and enqueue counters, the clock's high-water
mark, the idempotency keys of creates and the access tokens (hashed). Everything derived
from those (the claim index, the parent-to-children map) is rebuilt by
:meth:`Machine.restore`, so the image stays small and can never disagree with itself about them.

The top-level Struct is tagged with its format version under the key ``format``. A reader
that meets a version it does not know refuses with :class:`UnsupportedFormat` instead of
guessing; a newer runlease adds ``SnapshotV2`` and keeps decoding ``SnapshotV1``.

Raw claim tokens are never written: a lease is kept as its token's hash on the run.
Images written before that carry ``tokens`` (raw tokens by run id); they still load, only
the run ids and their order are taken from it, and the next image drops them.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Final

import msgspec

from runlease.core.create_keys import CreateKey
from runlease.core.machine import Machine
from runlease.core.model import AccessToken, Run, SchedulerState, Session, Task
from runlease.errors import InternalError

SNAPSHOT_FORMAT: Final = 1


class UnsupportedFormat(InternalError):
    """Persisted data carries a format version newer than this runlease understands.

    Boot must stop on this error rather than fall back to older data: the newer writer
    may have relied on meanings this code does not know.
    """


class SnapshotV1(
    msgspec.Struct, kw_only=True, tag_field="format", tag=1, gc=False, omit_defaults=True
):
    """Format 1. Record lists keep the machine's dict order, which replay relies on.

    Fields only ever gain defaults; defaults are left out of the image, so ``tokens`` is
    never written (a reader too old to know ``leased`` refuses the image instead of
    loading leases it cannot see).
    """

    last_seq: int
    tasks: list[Task]
    runs: list[Run]
    sessions: list[Session]
    # Old images only: raw claim tokens of live leases, by run id, in lease order.
    tokens: dict[str, str] = {}
    # Run ids of live leases, in the order the leases were taken.
    leased: list[str] = []
    # The scheduler pause switch; absent in images written before it existed.
    scheduler: SchedulerState | None = None
    # The newest command time applied (boot never starts the clock before it); None in
    # images written before it was kept (restore then takes the newest record time).
    high_water: float | None = None
    # The enqueue counter behind Run.queue_seq.
    queue_seq: int = 0
    # Idempotency keys of creates, oldest first; absent in images written before them.
    create_keys: list[CreateKey] = []
    # Access tokens (their hashes, never the secrets); absent in images written before them.
    access_tokens: list[AccessToken] = []


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
        leased=machine.leased_run_ids(),
        scheduler=machine.scheduler,
        high_water=machine.high_water or None,
        queue_seq=machine.queue_seq,
        create_keys=list(machine.create_keys.values()),
        access_tokens=list(machine.access_tokens.values()),
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
                leased=image.leased or list(image.tokens),
                last_seq=image.last_seq,
                scheduler=image.scheduler,
                high_water=image.high_water or _newest_record_time(image),
                queue_seq=image.queue_seq,
                create_keys=image.create_keys,
                access_tokens=image.access_tokens,
            )
    except (KeyError, ValueError) as exc:
        # A run naming a missing task, a run queued twice: the image contradicts itself.
        raise InternalError(f"snapshot is inconsistent: {exc!r}") from exc


def _newest_record_time(image: SnapshotV1) -> float:
    """The clock's high-water mark for an image written before it was kept.

    Every change stamps some record with its time, so the newest time on any record is the
    newest change the image holds (a lower bound of the true mark, never above it).
    """
    newest = 0.0
    for task in image.tasks:
        newest = max(newest, task.updated_at)
    for run in image.runs:
        for at in (run.queued_at, run.claimed_at, run.heartbeat_at, run.ended_at):
            if at is not None and at > newest:
                newest = at
    for session in image.sessions:
        for at in (session.opened_at, session.stopped_at):
            if at is not None and at > newest:
                newest = at
    return newest


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
