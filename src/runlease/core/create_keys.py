"""Idempotency keys of task creation: a retried create answers the task it first made.

A caller that lost the reply to a create cannot know whether the task exists; sending the
same create again with the same ``idempotency_key`` answers the first task (marked
``already``) instead of making a second one. The same key with a different request is a
mistake on the caller's side and is refused with CONFLICT, naming the first task.

A key is kept for a window (24 h unless the host says otherwise) counted from the create
that made it. The window travels in the command, stamped by the shell, and expiry is
judged against the command's ``now``: replaying the journal, even under another window
setting, decides every create exactly as it was decided the first time.

Keys live in one insertion-ordered map beside the tasks, not on the task records, so
creates without a key cost nothing, and a key outlives the deletion of its task (a retry
must not bring a deleted task back as a new one). Keys are inserted in command order, so
the oldest sit at the front and each new key pops the expired ones there: pruning is
amortised O(1) per keyed create and needs no timer.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

import msgspec

from runlease.core import validate
from runlease.core.commands import CreateTask
from runlease.errors import CONFLICT, TASK_NOT_FOUND, InvalidInput, NotFound

DEFAULT_IDEMPOTENCY_WINDOW: Final = 24 * 60 * 60.0
MAX_KEY_CHARS: Final = 128
# Letters, digits and a few separators: enough for UUIDs, hashes and "job/2024-05-01#3"
# style names, nothing a shell or a log line would mangle.
_KEY_PATTERN: Final = re.compile(r"[A-Za-z0-9._:/@+=#-]+")

# Fields of a create that do not shape the task: when and by whom it was asked, the ids
# the shell generated, and the key and its window themselves. Every other field, present
# or added later, is part of the request's fingerprint.
#
# The actor is left out on purpose. A key names one intended task for the whole store,
# like a task id does; the retry that matters most comes from a caller that lost its
# reply, and it may come back as a new session (the old one expired or its agent
# restarted) or as the operator. Counting the actor would turn that honest retry into a
# conflict, and the task it would make is the same whoever asks.
_NOT_SHAPING: Final = frozenset(
    {"now", "actor", "origin", "task_id", "start_run_id", "idempotency_key", "idempotency_window"}
)

# Sorted keys: the same metadata written in another order is the same request.
_encoder: Final = msgspec.msgpack.Encoder(order="sorted")


class CreateKey(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """What a key remembers: the request it came with, the task it made, and until when.

    Persisted in snapshots (as an array: a million keys stay small); new fields may only
    be appended, with defaults.
    """

    key: str
    fingerprint: bytes
    task_id: str
    created_at: float
    expires_at: float


def check_key(value: object) -> str:
    """A key is 1 to 128 characters of letters, digits and ``. _ : / @ + = # -``."""
    key = validate.text(value, "idempotency_key", max_chars=MAX_KEY_CHARS)
    if _KEY_PATTERN.fullmatch(key) is None:
        raise InvalidInput(
            f"idempotency_key {key!r} may use only letters, digits and . _ : / @ + = # -"
        )
    return key


def check_window(value: object) -> float:
    """How long a key is kept: a positive, finite number of seconds."""
    return validate.positive_seconds(value, "idempotency_window")


def fingerprint(cmd: CreateTask) -> bytes:
    """A digest of every field of the create that shapes the task (see ``_NOT_SHAPING``)."""
    shape = {
        field: getattr(cmd, field) for field in cmd.__struct_fields__ if field not in _NOT_SHAPING
    }
    # Whether the create starts the task shapes it; the run id the shell drew does not.
    shape["start"] = cmd.start_run_id is not None
    try:
        encoded = _encoder.encode(shape)
    except (TypeError, ValueError, OverflowError) as exc:
        # Only an embedded caller can hand over such values; the wire decodes plain data.
        raise InvalidInput(f"the create's fields must be plain data: {exc}") from None
    return hashlib.blake2b(encoded, digest_size=16).digest()


def live_key(keys: dict[str, CreateKey], key: str, now: float) -> CreateKey | None:
    """The entry for ``key`` if it has not expired by ``now``."""
    entry = keys.get(key)
    if entry is None or entry.expires_at <= now:
        return None
    return entry


def earlier_task_id(keys: dict[str, CreateKey], cmd: CreateTask, key: str) -> str | None:
    """The task a live ``key`` made for this same request, or None if the key is free.

    Refuses with CONFLICT when the key made a task for a different request.
    """
    entry = live_key(keys, key, cmd.now)
    if entry is None:
        return None
    if entry.fingerprint != fingerprint(cmd):
        raise InvalidInput(
            f"idempotency_key {key!r} already created task {entry.task_id} from a different "
            "request; send that same request to get the task back, or use another key",
            code=CONFLICT,
        )
    return entry.task_id


def deleted_task(entry_task_id: str, key: str) -> NotFound:
    """The answer to a retry whose task was deleted since: the create happened, and its
    task is gone; making a new one would break the promise of one task per key."""
    return NotFound(
        f"task {entry_task_id}, created with idempotency_key {key!r}, has been deleted; "
        "a create with this key makes no new task while the key is kept: use another key",
        code=TASK_NOT_FOUND,
    )


def remember(keys: dict[str, CreateKey], cmd: CreateTask, key: str, task_id: str) -> None:
    """Keep ``key`` for the task just made, after dropping the expired keys at the front."""
    now = cmd.now
    window = cmd.idempotency_window
    if window is None:
        window = DEFAULT_IDEMPOTENCY_WINDOW
    prune(keys, now)
    # An expired entry for the same key may still sit further back: replace it, and move
    # the key to the end so the map stays in creation order.
    keys.pop(key, None)
    keys[key] = CreateKey(
        key=key,
        fingerprint=fingerprint(cmd),
        task_id=task_id,
        created_at=now,
        expires_at=now + window,
    )


def prune(keys: dict[str, CreateKey], now: float) -> None:
    """Drop expired keys from the front of the map.

    The front is the oldest key; a window shortened between restarts can leave a later key
    expiring before an earlier one, and such a key waits until the ones in front of it go.
    Lookups check expiry themselves, so a key kept a little longer changes no answer.
    """
    while keys:
        oldest = next(iter(keys.values()))
        if oldest.expires_at > now:
            return
        del keys[oldest.key]
