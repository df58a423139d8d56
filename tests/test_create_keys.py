"""Idempotency keys of task creation in the pure core: answers, conflicts, expiry, pruning,
snapshots and replay, with a hypothesis model of random keyed creates over time."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runlease.core.commands import AnyCommand, CancelTask, CreateTask, DeleteTask
from runlease.core.create_keys import DEFAULT_IDEMPOTENCY_WINDOW, MAX_KEY_CHARS, fingerprint
from runlease.core.machine import Machine
from runlease.core.model import Actor, Ownership
from runlease.core.snapshot import SnapshotV1, decode_snapshot, encode_snapshot
from runlease.errors import (
    CONFLICT,
    INVALID_INPUT,
    PAYLOAD_TOO_LARGE,
    TASK_NOT_FOUND,
    InvalidInput,
    NotFound,
    RunleaseError,
)

T0 = 1_700_000_000.0
HOUR = 3600.0


class Creates:
    """Issues creates with fresh task and run ids, as the shell would."""

    def __init__(self, machine: Machine) -> None:
        self.m = machine
        self.count = 0
        self.journal: list[AnyCommand] = []

    def apply(self, command: AnyCommand) -> Any:
        outcome = self.m.apply(command)
        if outcome.events:
            self.journal.append(command)
        return outcome.reply

    def create(self, now: float = T0, **fields: Any) -> Any:
        self.count += 1
        fields.setdefault("title", "write the report")
        start = fields.pop("start", False)
        return self.apply(
            CreateTask(
                now=now,
                task_id=f"tsk_{self.count}",
                start_run_id=f"run_{self.count}" if start else None,
                **fields,
            )
        )


@pytest.fixture
def creates() -> Creates:
    return Creates(Machine())


# ------------------------------------------------------------------------ answers
def test_same_key_and_request_answers_the_first_task_and_changes_nothing(
    creates: Creates,
) -> None:
    first = creates.create(idempotency_key="k1", priority="high", start=True)
    assert not first.already
    seq = creates.m.last_seq
    again = creates.create(T0 + 10, idempotency_key="k1", priority="high", start=True)
    assert again.already
    assert again.id == first.id
    assert list(creates.m.tasks) == [first.id]
    assert len(creates.m.runs) == 1  # the retry enqueued nothing either
    assert creates.m.last_seq == seq  # no event: nothing to journal
    assert len(creates.journal) == 1
    assert not creates.m.tasks[first.id].already  # the flag is on the reply only


def test_a_different_request_with_the_key_is_a_conflict_naming_the_first_task(
    creates: Creates,
) -> None:
    first = creates.create(idempotency_key="k1", title="a")
    for different in ({"title": "b"}, {"title": "a", "start": True}, {"title": "a", "draft": True}):
        with pytest.raises(InvalidInput) as info:
            creates.create(T0 + 1, idempotency_key="k1", **different)
        assert info.value.code == CONFLICT
        assert info.value.exit_code == 3
        assert first.id in info.value.message
    assert list(creates.m.tasks) == [first.id]


def test_the_fingerprint_ignores_who_asked_when_and_the_ids_drawn(creates: Creates) -> None:
    first = creates.create(
        idempotency_key="k1",
        metadata={"a": 1, "b": [1, 2]},
        owner=Ownership(kind="pool", ref="indexer"),
        actor=Actor(kind="agent_session", ref="ses_1"),
        start=True,
    )
    # Another session (the first one's agent restarted), later, with its keys in another
    # order: the same request.
    again = creates.create(
        T0 + HOUR,
        idempotency_key="k1",
        metadata={"b": [1, 2], "a": 1},
        owner=Ownership(kind="pool", ref="indexer"),
        actor=Actor(kind="human", ref="operator"),
        start=True,
    )
    assert again.already
    assert again.id == first.id


def test_every_shaping_field_is_in_the_fingerprint() -> None:
    base = CreateTask(now=T0, task_id="tsk_1", title="t")
    changed = {
        "title": "u",
        "description": "d",
        "priority": "high",
        "scope": "global",
        "workspace_id": "ws",
        "max_attempts": 2,
        "metadata": {"a": 1},
        "required_capabilities": ["gpu"],
        "start_run_id": "run_1",
        "parent_task_id": "tsk_0",
        "preferred_capabilities": ["gpu"],
        "owner": Ownership(kind="pool", ref="p"),
        "draft": True,
        "approval_policy": "manual",
        "required_artifacts": ["out.txt"],
        "auto_enqueue_on_ready": True,
        "stale_after": 60.0,
        "tags": ["urgent"],
    }
    stamps = {"now", "actor", "origin", "task_id", "idempotency_key", "idempotency_window"}
    # A field added to CreateTask later must land in one of the two lists.
    assert set(changed) | stamps == set(CreateTask.__struct_fields__)
    for field, value in changed.items():
        other = msgspec.structs.replace(base, **{field: value})
        assert fingerprint(other) != fingerprint(base), field
    for field, value in {
        "now": T0 + 1,
        "actor": Actor(kind="human", ref="x"),
        "origin": "cli",
        "task_id": "tsk_2",
        "idempotency_key": "other",
        "idempotency_window": 5.0,
    }.items():
        other = msgspec.structs.replace(base, **{field: value})
        assert fingerprint(other) == fingerprint(base), field
    # Only whether it starts counts, not the run id the shell drew.
    started = msgspec.structs.replace(base, start_run_id="run_1")
    assert fingerprint(msgspec.structs.replace(started, start_run_id="run_2")) == fingerprint(
        started
    )


def test_a_retry_answers_even_when_the_request_would_no_longer_pass(creates: Creates) -> None:
    parent = creates.create(title="parent")
    child = creates.create(idempotency_key="k1", title="child", parent_task_id=parent.id)
    creates.apply(DeleteTask(now=T0 + 1, task_id=child.id))
    creates.create(T0 + 2, idempotency_key="k2", title="x")
    with pytest.raises(NotFound) as info:
        creates.create(T0 + 3, idempotency_key="k1", title="child", parent_task_id=parent.id)
    assert info.value.code == TASK_NOT_FOUND
    assert child.id in info.value.message
    assert "deleted" in info.value.message


def test_a_key_whose_task_was_deleted_never_makes_a_second_task(creates: Creates) -> None:
    first = creates.create(idempotency_key="k1")
    creates.apply(DeleteTask(now=T0 + 1, task_id=first.id))
    with pytest.raises(NotFound) as info:
        creates.create(T0 + 2, idempotency_key="k1")
    assert info.value.code == TASK_NOT_FOUND
    assert first.id in info.value.message
    with pytest.raises(InvalidInput) as conflict:
        creates.create(T0 + 2, idempotency_key="k1", title="something else")
    assert conflict.value.code == CONFLICT
    assert creates.m.tasks == {}
    # Once the key has expired it is free again.
    made = creates.create(T0 + DEFAULT_IDEMPOTENCY_WINDOW, idempotency_key="k1")
    assert not made.already
    assert made.id != first.id


def test_a_retry_answers_after_the_parent_was_canceled(creates: Creates) -> None:
    parent = creates.create(title="parent")
    child = creates.create(idempotency_key="k1", title="child", parent_task_id=parent.id)
    creates.apply(CancelTask(now=T0 + 1, task_id=parent.id))
    again = creates.create(T0 + 2, idempotency_key="k1", title="child", parent_task_id=parent.id)
    assert again.already
    assert again.id == child.id
    with pytest.raises(InvalidInput):  # without the key, no new child below a canceled task
        creates.create(T0 + 2, title="child", parent_task_id=parent.id)


def test_creates_without_a_key_keep_nothing(creates: Creates) -> None:
    a = creates.create()
    b = creates.create()
    assert a.id != b.id
    assert creates.m.create_keys == {}


def test_a_refused_create_does_not_take_the_key(creates: Creates) -> None:
    with pytest.raises(InvalidInput):
        creates.create(idempotency_key="k1", priority="nope")
    assert creates.m.create_keys == {}
    made = creates.create(T0 + 1, idempotency_key="k1", title="another request")
    assert not made.already


# ------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("key", "code"),
    [
        ("", INVALID_INPUT),
        ("  ", INVALID_INPUT),
        ("has space", INVALID_INPUT),
        ("tab\tkey", INVALID_INPUT),
        ("é", INVALID_INPUT),
        ("semi;colon", INVALID_INPUT),
        ("rl_claim_abc", INVALID_INPUT),
        ("x" * (MAX_KEY_CHARS + 1), PAYLOAD_TOO_LARGE),
    ],
)
def test_a_malformed_key_is_invalid_input(creates: Creates, key: str, code: str) -> None:
    with pytest.raises(InvalidInput) as info:
        creates.create(idempotency_key=key)
    assert info.value.code == code
    assert "idempotency_key" in info.value.message
    assert creates.m.tasks == {}


def test_a_retry_with_a_payload_that_is_not_plain_data_is_invalid_input(
    creates: Creates,
) -> None:
    creates.create(idempotency_key="k1", metadata={"a": 1})
    with pytest.raises(InvalidInput) as info:
        creates.create(T0 + 1, idempotency_key="k1", metadata={"a": object()})
    assert info.value.code == INVALID_INPUT


def test_well_formed_keys(creates: Creates) -> None:
    for key in ("a", "x" * MAX_KEY_CHARS, "0b6f-2c1e:job/2024-05-01#3", "a.b_c+d=e@f"):
        assert not creates.create(idempotency_key=key).already


@pytest.mark.parametrize("window", [0.0, -1.0, float("inf"), float("nan")])
def test_a_window_that_is_not_positive_is_refused(creates: Creates, window: float) -> None:
    with pytest.raises(InvalidInput) as info:
        creates.create(idempotency_key="k1", idempotency_window=window)
    assert "idempotency_window" in info.value.message


# ------------------------------------------------------------------ expiry, pruning
def test_a_key_expires_after_the_window_of_the_create_that_made_it(creates: Creates) -> None:
    first = creates.create(idempotency_key="k1", idempotency_window=100.0)
    assert creates.create(T0 + 99.5, idempotency_key="k1", idempotency_window=5.0).already
    fresh = creates.create(T0 + 100.0, idempotency_key="k1", title="new", idempotency_window=5.0)
    assert not fresh.already
    assert fresh.id != first.id
    # The key now names the new task, for the new create's window.
    assert creates.create(T0 + 104.0, idempotency_key="k1", title="new").id == fresh.id
    assert not creates.create(T0 + 105.0, idempotency_key="k1", title="new").already


def test_the_default_window_is_a_day(creates: Creates) -> None:
    first = creates.create(idempotency_key="k1")
    assert creates.create(T0 + DEFAULT_IDEMPOTENCY_WINDOW - 1, idempotency_key="k1").id == first.id
    assert not creates.create(T0 + DEFAULT_IDEMPOTENCY_WINDOW, idempotency_key="k1").already


def test_expired_keys_are_pruned_from_the_front_as_keyed_creates_arrive(creates: Creates) -> None:
    for i in range(5):
        creates.create(T0 + i, idempotency_key=f"k{i}", idempotency_window=10.0)
    assert list(creates.m.create_keys) == [f"k{i}" for i in range(5)]
    creates.create(T0 + 12, idempotency_key="late", idempotency_window=10.0)
    # k0..k2 expired by T0 + 12 (created at T0..T0+2, kept 10 s); k3 and k4 are live.
    assert list(creates.m.create_keys) == ["k3", "k4", "late"]
    # A key reused after expiry moves to the back, in creation order.
    creates.create(T0 + 30, idempotency_key="k3", idempotency_window=10.0)
    assert list(creates.m.create_keys) == ["k3"]


# ------------------------------------------------------------- snapshots and replay
def test_keys_survive_a_snapshot_round_trip(creates: Creates) -> None:
    first = creates.create(idempotency_key="k1", metadata={"n": 1}, start=True)
    creates.create(T0 + 1, idempotency_key="k2", idempotency_window=50.0)
    restored = decode_snapshot(encode_snapshot(creates.m))
    assert restored.create_keys == creates.m.create_keys
    assert list(restored.create_keys) == ["k1", "k2"]
    again = Creates(restored)
    again.count = creates.count
    assert again.create(T0 + 2, idempotency_key="k1", metadata={"n": 1}, start=True).id == first.id
    with pytest.raises(InvalidInput) as info:
        again.create(T0 + 2, idempotency_key="k1")
    assert info.value.code == CONFLICT
    assert not again.create(T0 + 51, idempotency_key="k2").already


def test_a_snapshot_written_before_keys_existed_loads_with_none() -> None:
    old = msgspec.msgpack.encode(SnapshotV1(last_seq=0, tasks=[], runs=[], sessions=[]))
    assert b"create_keys" not in old
    assert decode_snapshot(old).create_keys == {}


def test_a_snapshot_without_keys_writes_no_field(creates: Creates) -> None:
    creates.create()
    assert b"create_keys" not in encode_snapshot(creates.m)


def test_a_create_record_without_key_fields_is_unchanged() -> None:
    command = CreateTask(now=T0, task_id="tsk_1", title="t")
    assert b"idempotency" not in msgspec.msgpack.encode(command)


def test_replaying_the_journal_rebuilds_the_keys(creates: Creates) -> None:
    first = creates.create(idempotency_key="k1", idempotency_window=100.0)
    creates.create(T0 + 1, idempotency_key="k1")  # answered, not journaled
    creates.create(T0 + 150, idempotency_key="k1", title="new")  # expired: a new task
    replayed = Machine()
    for command in creates.journal:
        replayed.apply(msgspec.msgpack.decode(msgspec.msgpack.encode(command), type=AnyCommand))
    assert replayed.create_keys == creates.m.create_keys
    assert list(replayed.tasks) == list(creates.m.tasks)
    assert first.id in replayed.tasks
    assert len(replayed.tasks) == 2


# --------------------------------------------------------------- hypothesis model
REQUESTS: list[dict[str, Any]] = [
    {"title": "a"},
    {"title": "a", "priority": "high"},
    {"title": "b", "metadata": {"x": 1, "y": 2}},
    {"title": "a", "start": True},
]
# Equal to REQUESTS[2]: metadata in another order is the same request.
SAME_AS_2: dict[str, Any] = {"title": "b", "metadata": {"y": 2, "x": 1}}
KEYS = ["k1", "k2", "k3", None]
WINDOWS = [50.0, 120.0]

step = st.one_of(
    st.tuples(
        st.just("create"),
        st.sampled_from(KEYS),
        st.sampled_from([0, 1, 2, 3, "2b"]),
        st.sampled_from(WINDOWS),
        st.floats(min_value=0, max_value=80, allow_nan=False),
    ),
    st.tuples(st.just("delete"), st.integers(0, 30), st.just(0), st.just(0.0), st.just(0.0)),
)


def _attempt(
    creates: Creates, now: float, *, key: str | None, window: float, request: dict[str, Any]
) -> tuple[Any, RunleaseError | None]:
    """A create's reply, or the error it was refused with."""
    try:
        return creates.create(now, idempotency_key=key, idempotency_window=window, **request), None
    except RunleaseError as exc:
        return None, exc


@given(st.lists(step, max_size=40))
def test_model_of_keyed_creates(steps: list[tuple[Any, ...]]) -> None:
    creates = Creates(Machine())
    now = T0
    # The model: key -> (request number, task id, expires at).
    model: dict[str, tuple[int, str, float]] = {}
    made_by_key: dict[str, list[str]] = {}
    deleted: set[str] = set()
    made: list[str] = []
    for kind, key, variant, window, advance in steps:
        now += advance
        if kind == "delete":
            if made:
                task_id = made[key % len(made)]
                if task_id not in deleted and not creates.m.subtasks.get(task_id):
                    task = creates.m.tasks[task_id]
                    if task.current_run_id is None:
                        creates.apply(DeleteTask(now=now, task_id=task_id))
                        deleted.add(task_id)
            continue
        number = 2 if variant == "2b" else variant
        request = dict(SAME_AS_2 if variant == "2b" else REQUESTS[number])
        entry = model.get(key) if key is not None else None
        live = entry is not None and now < entry[2]
        reply, error = _attempt(creates, now, key=key, window=window, request=request)
        if error is not None:
            assert live
            assert entry is not None
            if entry[0] != number:
                assert error.code == CONFLICT
                assert entry[1] in error.message
            else:
                assert error.code == TASK_NOT_FOUND
                assert entry[1] in deleted
            continue
        if live:
            assert entry is not None
            assert entry[0] == number, "a different request must conflict"
            assert reply.already
            assert reply.id == entry[1]
            continue
        assert not reply.already
        made.append(reply.id)
        if key is not None:
            model[key] = (number, reply.id, now + window)
            made_by_key.setdefault(key, []).append(reply.id)
        # At most one task per live key: a key makes a new task only once it expired.
        for key_made in made_by_key.values():
            assert len(key_made) == len(set(key_made))
    for key, (_, task_id, expires_at) in model.items():
        kept = creates.m.create_keys.get(key)
        if expires_at > now:
            assert kept is not None
            assert (kept.task_id, kept.expires_at) == (task_id, expires_at)
    # The journal replays to the same keys and tasks, and a snapshot keeps them.
    replayed = Machine()
    for command in creates.journal:
        replayed.apply(command)
    assert replayed.create_keys == creates.m.create_keys
    assert replayed.tasks.keys() == creates.m.tasks.keys()
    assert decode_snapshot(encode_snapshot(creates.m)).create_keys == creates.m.create_keys
