"""Repeated lifecycle requests, rejection, the approval policy as a mutable field, and the
workspace binding of a task's children: in the core, in the runtime (journaled and replayed)
and through the trio client."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import trio
import trio.testing

import runlease
from runlease.core.commands import (
    AnyCommand,
    ApproveTask,
    CancelTask,
    ClaimNext,
    CompleteRun,
    CreateTask,
    OpenSession,
    PublishTask,
    RejectTask,
    StartTask,
    UpdateTask,
)
from runlease.core.ids import hash_token
from runlease.core.machine import Machine
from runlease.errors import (
    APPROVAL_REQUIRED,
    INVALID_SCOPE_BINDING,
    INVALID_TRANSITION,
    TASK_IS_DRAFT,
    RunleaseError,
)
from runlease.runtime.client import open_client
from socket_helpers import Served

T0 = 1_700_000_000.0


def _refusal(machine: Machine, command: AnyCommand) -> RunleaseError:
    with pytest.raises(RunleaseError) as info:
        machine.apply(command)
    machine.check_invariants()
    return info.value


@pytest.fixture
def machine() -> Machine:
    m = Machine()
    m.apply(OpenSession(now=T0, session_id="s1", agent="a"))
    return m


def _claim(machine: Machine, now: float) -> str:
    outcome = machine.apply(
        ClaimNext(now=now, session_id="s1", claim_token_hash=hash_token(f"rl_claim_{now}"))
    )
    return outcome.reply.run.id


# ------------------------------------------------------------------------ repeated start
def test_a_second_start_answers_the_queued_or_leased_run_and_enqueues_nothing(
    machine: Machine,
) -> None:
    machine.apply(CreateTask(now=T0, task_id="t", title="work", start_run_id="r1"))
    again = machine.apply(StartTask(now=T0 + 1, task_id="t", run_id="r2")).reply
    assert (again.id, again.status, again.already) == ("r1", "queued", True)
    assert "r2" not in machine.runs
    _claim(machine, T0 + 2)
    leased = machine.apply(StartTask(now=T0 + 3, task_id="t", run_id="r3")).reply
    assert (leased.id, leased.status, leased.already) == ("r1", "claimed", True)
    assert set(machine.runs) == {"r1"}
    # The mark is only on the reply: the record in the state never carries it.
    assert machine.runs["r1"].already is False
    machine.check_invariants()


def test_start_after_a_completed_run_is_still_refused_and_points_to_reopen(
    machine: Machine,
) -> None:
    machine.apply(CreateTask(now=T0, task_id="t", title="work", start_run_id="r1"))
    run_id = _claim(machine, T0 + 1)
    machine.apply(CompleteRun(now=T0 + 2, session_id="s1", run_id=run_id))
    error = _refusal(machine, StartTask(now=T0 + 3, task_id="t", run_id="r2"))
    assert error.code == INVALID_TRANSITION
    assert "task reopen t" in error.message


def test_a_first_start_is_not_marked(machine: Machine) -> None:
    machine.apply(CreateTask(now=T0, task_id="t", title="work"))
    run = machine.apply(StartTask(now=T0 + 1, task_id="t", run_id="r1")).reply
    assert (run.id, run.already) == ("r1", False)


# ---------------------------------------------------------------------- repeated publish
def test_a_second_publish_answers_the_task_unchanged(machine: Machine) -> None:
    machine.apply(CreateTask(now=T0, task_id="t", title="work", draft=True))
    first = machine.apply(PublishTask(now=T0 + 1, task_id="t", run_id="r1")).reply
    assert (first.already, first.current_run_id) == (False, "r1")
    again = machine.apply(PublishTask(now=T0 + 2, task_id="t", run_id="r2")).reply
    assert (again.already, again.current_run_id, again.updated_at) == (True, "r1", T0 + 1)
    assert set(machine.runs) == {"r1"}


def test_publishing_a_canceled_draft_is_refused(machine: Machine) -> None:
    machine.apply(CreateTask(now=T0, task_id="t", title="work", draft=True))
    machine.apply(CancelTask(now=T0 + 1, task_id="t", reason="no"))
    error = _refusal(machine, PublishTask(now=T0 + 2, task_id="t"))
    assert error.code == INVALID_TRANSITION


# ------------------------------------------------------------------ approve and reject
def test_a_second_approve_answers_the_run_the_first_made(machine: Machine) -> None:
    machine.apply(CreateTask(now=T0, task_id="t", title="work", approval_policy="manual"))
    first = machine.apply(ApproveTask(now=T0 + 1, task_id="t", run_id="r1")).reply
    assert (first.id, first.already) == ("r1", False)
    again = machine.apply(ApproveTask(now=T0 + 2, task_id="t", run_id="r2")).reply
    assert (again.id, again.already) == ("r1", True)
    assert set(machine.runs) == {"r1"}


def test_reject_leaves_the_task_blocked_its_children_alone_and_approvable(
    machine: Machine,
) -> None:
    machine.apply(CreateTask(now=T0, task_id="p", title="plan", approval_policy="manual"))
    machine.apply(
        CreateTask(now=T0, task_id="c", title="step", parent_task_id="p", start_run_id="rc")
    )
    task = machine.apply(RejectTask(now=T0 + 1, task_id="p", reason="not yet")).reply
    assert (task.status, task.approval_state, task.canceled) == ("blocked", "rejected", False)
    assert machine.tasks["c"].status == "ready"
    assert machine.runs["rc"].status == "queued"
    # Rejecting again records a new refusal; approving later lets it run.
    machine.apply(RejectTask(now=T0 + 2, task_id="p", reason="still no"))
    error = _refusal(machine, StartTask(now=T0 + 3, task_id="p", run_id="rx"))
    assert error.code == APPROVAL_REQUIRED
    run = machine.apply(ApproveTask(now=T0 + 4, task_id="p", run_id="rp")).reply
    assert (run.status, run.already) == ("queued", False)
    assert machine.tasks["p"].approval_state == "approved"
    error = _refusal(machine, RejectTask(now=T0 + 5, task_id="p"))
    assert error.code == INVALID_TRANSITION


def test_a_rejected_draft_stays_a_draft(machine: Machine) -> None:
    machine.apply(
        CreateTask(now=T0, task_id="t", title="work", draft=True, approval_policy="manual")
    )
    task = machine.apply(RejectTask(now=T0 + 1, task_id="t")).reply
    assert (task.status, task.approval_state) == ("draft", "rejected")
    error = _refusal(machine, ApproveTask(now=T0 + 2, task_id="t", run_id="r1"))
    assert error.code == TASK_IS_DRAFT


# --------------------------------------------------------------- approval_policy updates
def test_switching_to_manual_gates_a_task_that_never_ran(machine: Machine) -> None:
    machine.apply(CreateTask(now=T0, task_id="t", title="work"))
    task = machine.apply(
        UpdateTask(now=T0 + 1, task_id="t", changes={"approval_policy": "manual"})
    ).reply
    assert (task.approval_policy, task.approval_state, task.status) == (
        "manual",
        "pending",
        "blocked",
    )
    assert _refusal(machine, StartTask(now=T0 + 2, task_id="t", run_id="r1")).code == (
        APPROVAL_REQUIRED
    )
    task = machine.apply(
        UpdateTask(now=T0 + 3, task_id="t", changes={"approval_policy": "none"})
    ).reply
    assert (task.approval_policy, task.approval_state, task.status) == (
        "none",
        "not_required",
        "pending",
    )
    assert machine.apply(StartTask(now=T0 + 4, task_id="t", run_id="r1")).reply.id == "r1"


def test_switching_to_manual_keeps_a_run_that_exists_and_counts_as_approved(
    machine: Machine,
) -> None:
    machine.apply(CreateTask(now=T0, task_id="t", title="work", start_run_id="r1"))
    task = machine.apply(
        UpdateTask(now=T0 + 1, task_id="t", changes={"approval_policy": "manual"})
    ).reply
    assert (task.approval_state, task.status) == ("approved", "ready")
    assert machine.runs["r1"].status == "queued"
    assert _claim(machine, T0 + 2) == "r1"


def test_manual_approval_and_auto_enqueue_exclude_each_other(machine: Machine) -> None:
    machine.apply(CreateTask(now=T0, task_id="t", title="work", auto_enqueue_on_ready=True))
    error = _refusal(
        machine, UpdateTask(now=T0 + 1, task_id="t", changes={"approval_policy": "manual"})
    )
    assert error.code == APPROVAL_REQUIRED
    assert machine.tasks["t"].approval_policy == "none"
    both = {"approval_policy": "manual", "auto_enqueue_on_ready": False}
    task = machine.apply(UpdateTask(now=T0 + 2, task_id="t", changes=both)).reply
    assert (task.approval_policy, task.auto_enqueue_on_ready) == ("manual", False)


def test_an_unknown_approval_policy_is_invalid_input(machine: Machine) -> None:
    machine.apply(CreateTask(now=T0, task_id="t", title="work"))
    error = _refusal(
        machine, UpdateTask(now=T0 + 1, task_id="t", changes={"approval_policy": "maybe"})
    )
    assert error.code == "INVALID_INPUT"


# ---------------------------------------------------------------------- scope binding
@pytest.mark.parametrize(
    ("scope", "workspace"),
    [(None, None), ("global", None), ("workspace", "other")],
)
def test_a_child_of_a_workspace_task_must_be_in_that_workspace(
    machine: Machine, scope: str | None, workspace: str | None
) -> None:
    machine.apply(CreateTask(now=T0, task_id="p", title="plan", workspace_id="ws1"))
    error = _refusal(
        machine,
        CreateTask(
            now=T0 + 1,
            task_id="c",
            title="step",
            parent_task_id="p",
            scope=scope,  # type: ignore[arg-type]
            workspace_id=workspace,
        ),
    )
    assert error.code == INVALID_SCOPE_BINDING
    assert "ws1" in error.message
    assert "c" not in machine.tasks
    assert "p" not in machine.subtasks


def test_children_in_the_same_workspace_and_below_global_tasks_are_accepted(
    machine: Machine,
) -> None:
    machine.apply(CreateTask(now=T0, task_id="p", title="plan", workspace_id="ws1"))
    machine.apply(
        CreateTask(now=T0, task_id="c", title="step", parent_task_id="p", workspace_id="ws1")
    )
    machine.apply(CreateTask(now=T0, task_id="g", title="global"))
    machine.apply(
        CreateTask(now=T0, task_id="gc", title="step", parent_task_id="g", workspace_id="ws2")
    )
    assert machine.subtasks == {"p": ["c"], "g": ["gc"]}


# ------------------------------------------------------------------ runtime and journal
async def test_the_lifecycle_rules_replay_from_the_journal(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Durable commits wait on a real thread: time stands still while they do.
    autojump_clock.autojump_threshold = math.inf
    async with runlease.open_runtime(data_dir=tmp_path) as rt:
        manual = await rt.create_task("needs a yes", approval_policy="manual")
        rejected = await rt.reject_task(manual.id, reason="not now")
        assert (rejected.status, rejected.approval_state) == ("blocked", "rejected")
        run = await rt.approve_task(manual.id)
        assert (await rt.approve_task(manual.id)).already
        plain = await rt.create_task("plain", start=True)
        again = await rt.start_task(plain.id)
        assert again.already
        assert again.id == plain.current_run_id
        gated = await rt.create_task("gated")
        await rt.update_task(gated.id, {"approval_policy": "manual"})
        draft = await rt.create_task("draft", draft=True)
        await rt.publish_task(draft.id)
        assert (await rt.publish_task(draft.id)).already
        before = {t.id: (t, rt.runs_of(t.id)) for t in rt.list_tasks()}
    async with runlease.open_runtime(data_dir=tmp_path) as rt:
        after = {t.id: (t, rt.runs_of(t.id)) for t in rt.list_tasks()}
        assert after == before
        assert rt.get_task(manual.id).current_run_id == run.id
        assert rt.get_task(gated.id).status == "blocked"
        rt._machine.check_invariants()


async def test_the_trio_client_sees_the_marks_and_the_scope_binding(served: Served) -> None:
    async with open_client(served.path) as client:
        task = await client.create_task("t", workspace="ws1", start=True)
        again = await client.start_task(task.id)
        assert again.already
        assert again.id == task.current_run_id
        with pytest.raises(RunleaseError) as info:
            await client.create_task("child", parent=task.id)
        assert info.value.code == INVALID_SCOPE_BINDING
        manual = await client.create_task("m", workspace="ws1", approval_policy="manual")
        rejected = await client.reject_task(manual.id)
        assert (rejected.status, rejected.approval_state) == ("blocked", "rejected")
        updated = await client.update_task(manual.id, {"approval_policy": "none"})
        assert updated.approval_state == "not_required"
        shown = await client.show_task(task.id)
        assert not shown.task.already
        assert not any(run.already for run in shown.runs)
