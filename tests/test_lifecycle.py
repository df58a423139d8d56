"""The status tables, the command registry and the reply types, checked directly."""

from __future__ import annotations

import itertools
import typing
from typing import Any, assert_type

import msgspec
import pytest

from runlease.core import lifecycle
from runlease.core.commands import (
    AnyCommand,
    ClaimNext,
    Command,
    CompleteRun,
    CreateTask,
    ExpireLease,
    FinishAndClaim,
    OpenSession,
    PauseTask,
    StartTask,
)
from runlease.core.lifecycle import RUN_TRANSITIONS, TASK_TRANSITIONS, RunAction, TaskAction
from runlease.core.machine import Machine
from runlease.core.model import (
    CLOSED_TASK_STATUSES,
    FINAL_RUN_STATUSES,
    LEASED_RUN_STATUSES,
    SETTLED_RUN_STATUSES,
    Run,
    RunStatus,
    Session,
    Task,
    TaskStatus,
)
from runlease.core.outcome import Outcome
from runlease.core.registry import HANDLERS, handles
from runlease.errors import INVALID_TRANSITION, NO_CLAIMABLE_RUN, InvalidInput, RunleaseError

RUN_STATUSES: tuple[RunStatus, ...] = typing.get_args(RunStatus)
RUN_ACTIONS: tuple[RunAction, ...] = typing.get_args(RunAction)
TASK_STATUSES: tuple[TaskStatus, ...] = typing.get_args(TaskStatus)
TASK_ACTIONS: tuple[TaskAction, ...] = typing.get_args(TaskAction)


# ----------------------------------------------------------------------- the tables
def test_every_status_has_a_row() -> None:
    assert set(RUN_TRANSITIONS) == set(RUN_STATUSES)
    assert set(TASK_TRANSITIONS) == set(TASK_STATUSES)
    for row in RUN_TRANSITIONS.values():
        assert set(row) <= set(RUN_ACTIONS)
        assert set(row.values()) <= set(RUN_STATUSES)
    for task_row in TASK_TRANSITIONS.values():
        assert set(task_row) <= set(TASK_ACTIONS)
        assert set(task_row.values()) <= set(TASK_STATUSES)


@pytest.mark.parametrize(("status", "action"), list(itertools.product(RUN_STATUSES, RUN_ACTIONS)))
def test_a_run_moves_as_listed_or_is_refused(status: RunStatus, action: RunAction) -> None:
    run = Run(id="run_1", task_id="tsk_1", status=status, queued_at=0.0)
    allowed = RUN_TRANSITIONS[status]
    if action in allowed:
        assert lifecycle.next_run_status(run, action) == allowed[action]
        assert run.status == status  # checking does not apply
        assert lifecycle.move_run(run, action) == status
        assert run.status == allowed[action]
        return
    for attempt in (lifecycle.next_run_status, lifecycle.move_run):
        with pytest.raises(InvalidInput) as info:
            attempt(run, action)
        assert info.value.code == INVALID_TRANSITION
        message = info.value.message
        assert "run_1" in message
        assert f"is {status}" in message
        assert action.replace("_", "-") in message
        # It says what the status allows instead.
        if allowed:
            assert all(other.replace("_", "-") in message for other in allowed)
        else:
            assert "final" in message
        assert run.status == status  # a refusal changes nothing


@pytest.mark.parametrize(("status", "action"), list(itertools.product(TASK_STATUSES, TASK_ACTIONS)))
def test_a_task_action_is_allowed_as_listed_or_refused(
    status: TaskStatus, action: TaskAction
) -> None:
    task = Task(id="tsk_1", title="t", status=status, created_at=0.0, updated_at=0.0)
    allowed = TASK_TRANSITIONS[status]
    if action in allowed:
        assert lifecycle.check_task(task, action) == allowed[action]
    else:
        with pytest.raises(InvalidInput) as info:
            lifecycle.check_task(task, action)
        assert info.value.code == INVALID_TRANSITION
        assert "tsk_1" in info.value.message
        assert f"is {status}" in info.value.message
    assert task.status == status  # a task's status is only ever derived, never assigned


def test_the_status_groups_agree_with_the_tables() -> None:
    def changes(status: RunStatus) -> set[RunStatus]:
        return set(RUN_TRANSITIONS[status].values()) - {status}

    assert {s for s in RUN_STATUSES if not changes(s)} == FINAL_RUN_STATUSES
    assert {s for s in RUN_STATUSES if "heartbeat" in RUN_TRANSITIONS[s]} == LEASED_RUN_STATUSES
    assert set(RUN_STATUSES) - LEASED_RUN_STATUSES - {"queued"} == SETTLED_RUN_STATUSES
    assert {s for s in TASK_STATUSES if not TASK_TRANSITIONS[s]} == CLOSED_TASK_STATUSES
    # Only a claim or a steal starts a lease, and only from the queue or another lease.
    for status, row in RUN_TRANSITIONS.items():
        for action, target in row.items():
            if target in LEASED_RUN_STATUSES and status not in LEASED_RUN_STATUSES:
                assert action in ("claim", "steal"), (status, action)


@pytest.mark.parametrize(
    ("run_status", "attempt", "blocked", "expected"),
    [
        (None, 1, False, "pending"),
        (None, 1, True, "blocked"),
        ("queued", 1, False, "ready"),
        ("queued", 1, True, "blocked"),
        ("claimed", 1, True, "in_progress"),
        ("running", 1, False, "in_progress"),
        ("failed", 1, False, "ready"),  # attempts left: can be started again
        ("failed", 1, True, "blocked"),
        ("failed", 3, False, "failed"),
        ("completed", 1, True, "completed"),
        ("canceled", 1, False, "canceled"),
        ("needs_attention", 1, True, "needs_attention"),
    ],
)
def test_task_status_follows_its_run_and_blockers(
    run_status: RunStatus | None, attempt: int, blocked: bool, expected: TaskStatus
) -> None:
    blocker = Task(id="b", title="b", status="pending", created_at=0.0, updated_at=0.0)
    task = Task(
        id="t",
        title="t",
        max_attempts=3,
        blocked_by=("b",) if blocked else (),
        created_at=0.0,
        updated_at=0.0,
    )
    run = (
        None
        if run_status is None
        else Run(id="r", task_id="t", status=run_status, attempt=attempt, queued_at=0.0)
    )
    tasks = {"b": blocker, "t": task}
    assert lifecycle.task_status(task, run, tasks) == expected
    task.draft = True
    assert lifecycle.task_status(task, run, tasks) == "draft"
    task.canceled = True
    assert lifecycle.task_status(task, run, tasks) == "canceled"


def _task(**fields: object) -> Task:
    return Task(id="t", title="t", created_at=0.0, updated_at=0.0, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("approval_state", ["pending", "rejected"])
def test_a_task_awaiting_approval_is_blocked(approval_state: str) -> None:
    task = _task(approval_policy="manual", approval_state=approval_state)
    assert lifecycle.task_status(task, None, {"t": task}) == "blocked"
    task.approval_state = "approved"
    queued = Run(id="r", task_id="t", queued_at=0.0)
    assert lifecycle.task_status(task, queued, {"t": task}) == "ready"
    task.draft = True  # a draft is a draft first, whatever its approval
    assert lifecycle.task_status(task, None, {"t": task}) == "draft"


def test_a_task_with_no_run_is_ready_once_its_dependencies_are_satisfied() -> None:
    blocker = _task(status="in_progress")
    blocker.id = "b"
    task = _task(blocked_by=("b",), had_dependencies=True)
    tasks = {"b": blocker, "t": task}
    assert lifecycle.task_status(task, None, tasks) == "blocked"
    blocker.status = "completed"
    assert lifecycle.task_status(task, None, tasks) == "ready"
    task.blocked_by = ()  # the dependency removed instead
    blocker.status = "in_progress"
    assert lifecycle.task_status(task, None, tasks) == "ready"
    never = _task()  # never had a dependency and never started: nothing said it may run
    assert lifecycle.task_status(never, None, {"t": never}) == "pending"


# ----------------------------------------------------------------- the command table
def test_every_command_has_exactly_one_handler_with_its_reply_type() -> None:
    commands = set(typing.get_args(AnyCommand))
    assert set(HANDLERS) == commands
    for command_type in commands:
        (base,) = [b for b in command_type.__orig_bases__ if typing.get_origin(b) is Command]
        (reply_type,) = typing.get_args(base)
        handler = HANDLERS[command_type]
        hints = typing.get_type_hints(handler)
        assert typing.get_origin(hints["return"]) is Outcome, handler.__qualname__
        assert typing.get_args(hints["return"]) == (reply_type,), (
            f"{handler.__qualname__} answers {hints['return']}, "
            f"{command_type.__name__} promises {reply_type}"
        )


def test_a_command_cannot_get_a_second_handler() -> None:
    with pytest.raises(TypeError, match="PauseTask is already handled"):

        @handles(PauseTask)
        def second(m: Any, cmd: PauseTask) -> Outcome[Task]:
            raise AssertionError("never registered")

    assert HANDLERS[PauseTask].__name__ == "pause_task"


def test_replies_are_typed_by_their_command() -> None:
    machine = Machine()
    created = machine.apply(CreateTask(now=1.0, task_id="t", title="x"))
    assert_type(created, Outcome[Task])
    opened = machine.apply(OpenSession(now=1.0, session_id="s", agent="a"))
    assert_type(opened.result(), Session)
    paused = machine.apply(PauseTask(now=2.0, task_id="t", reason="why"))
    assert_type(paused.result(), Task)
    assert paused.result().paused
    started = machine.apply(StartTask(now=2.0, task_id="t", run_id="run_t"))
    assert_type(started.result(), Run)
    expired = machine.apply(ExpireLease(now=3.0, run_id="run_t"))
    assert_type(expired.reply, Run | None)
    assert expired.reply is None  # nothing leased: nothing to expire


# ------------------------------------------------------------- the bytes stay the same
def test_the_type_parameter_leaves_the_encoding_unchanged() -> None:
    """Journal records written before commands were generic decode to the same commands
    and encode to the same bytes: the tag first, then the command's fields, then the
    common ones."""
    claim = ClaimNext(
        now=12.5,
        session_id="s",
        claim_token_hash="sha256:" + "a" * 64,
        lease_seconds=30.0,
        scope="global",
        priority_min=20,
    )
    step = FinishAndClaim(
        now=12.5, finish=CompleteRun(now=12.5, session_id="s", run_id="r"), claim=claim
    )
    encoded = msgspec.msgpack.encode(step)
    plain = msgspec.msgpack.decode(encoded)
    assert list(plain) == ["op", "finish", "claim", "now"]
    assert plain["op"] == "finish_and_claim"
    assert list(plain["finish"]) == ["op", "session_id", "run_id", "now"]
    assert list(plain["claim"]) == [
        "op",
        "session_id",
        "claim_token_hash",
        "lease_seconds",
        "scope",
        "priority_min",
        "now",
    ]
    assert msgspec.msgpack.decode(encoded, type=AnyCommand) == step
    # Written by the version before the type parameter (same bytes, by hand).
    old = bytes.fromhex(
        "84a26f70aa70617573655f7461736ba77461736b5f6964a9765f7461736b5f6964"
        "a6726561736f6ea8765f726561736f6ea36e6f77cb4029000000000000"
    )
    pause = PauseTask(now=12.5, task_id="v_task_id", reason="v_reason")
    assert msgspec.msgpack.decode(old, type=AnyCommand) == pause
    assert msgspec.msgpack.encode(pause) == old


def test_an_outcome_that_changed_state_and_refuses_raises_from_result() -> None:
    """A claim whose own stale lease it expires first, then finds nothing: the expiry is a
    change to journal, and the caller still gets the refusal."""
    machine = Machine()
    # One attempt: the expiry parks the run instead of requeueing it.
    machine.apply(CreateTask(now=1.0, task_id="t", title="x", start_run_id="run_t", max_attempts=1))
    machine.apply(OpenSession(now=1.0, session_id="s", agent="a"))
    token = "sha256:" + "b" * 64
    machine.apply(ClaimNext(now=1.0, session_id="s", claim_token_hash=token, lease_seconds=5))
    late = machine.apply(ClaimNext(now=100.0, session_id="s", claim_token_hash=token))
    assert [e.kind for e in late.events] == ["lease_expired"]
    with pytest.raises(RunleaseError) as info:
        late.result()
    assert info.value.code == NO_CLAIMABLE_RUN
    machine.check_invariants()
