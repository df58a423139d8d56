"""Core defects that once slipped through: each test fails on the code that had the defect."""

from __future__ import annotations

import math

import pytest

from runlease.core import stuck
from runlease.core.commands import (
    AnyCommand,
    CancelRun,
    CancelTask,
    CheckpointTask,
    ClaimNext,
    CreateTask,
    OpenSession,
    PublishTask,
    RejectTask,
    ReleaseRun,
    StartTask,
    StealRun,
    UpdateTask,
)
from runlease.core.ids import hash_token
from runlease.core.machine import Machine
from runlease.core.model import Ownership
from runlease.errors import INVALID_INPUT, INVALID_TRANSITION, InvalidInput, RunleaseError

T0 = 1_700_000_000.0


def _claim(machine: Machine, session_id: str, now: float) -> str:
    token = f"rl_claim_{session_id}_{now}"
    outcome = machine.apply(
        ClaimNext(now=now, session_id=session_id, claim_token_hash=hash_token(token))
    )
    assert outcome.error is None
    return outcome.reply.run.id


def _refusal(machine: Machine, command: AnyCommand) -> RunleaseError:
    with pytest.raises(RunleaseError) as info:
        machine.apply(command)
    machine.check_invariants()
    return info.value


@pytest.fixture
def machine() -> Machine:
    m = Machine()
    m.apply(CreateTask(now=T0, task_id="t", title="work", start_run_id="run_t"))
    for name in ("s1", "s2"):
        m.apply(OpenSession(now=T0, session_id=name, agent=name))
    return m


@pytest.mark.parametrize("second", ["s1", "s2"])
def test_a_reclaimed_run_does_not_keep_the_last_holders_checkpoint(
    machine: Machine, second: str
) -> None:
    run_id = _claim(machine, "s1", T0)
    machine.apply(CheckpointTask(now=T0 + 1, task_id="t", note="half way"))
    assert machine.runs[run_id].checkpoint_at == T0 + 1
    machine.apply(ReleaseRun(now=T0 + 2, session_id="s1", run_id=run_id))
    assert _claim(machine, second, T0 + 3) == run_id
    # The new lease starts clean, as a steal's does.
    assert machine.runs[run_id].checkpoint_at is None
    machine.check_invariants()


def test_a_stolen_run_does_not_keep_the_last_holders_checkpoint(machine: Machine) -> None:
    run_id = _claim(machine, "s1", T0)
    machine.apply(CheckpointTask(now=T0 + 1, task_id="t", note="half way"))
    machine.apply(
        StealRun(
            now=T0 + 2,
            task_id="t",
            session_id="s2",
            claim_token_hash=hash_token("rl_claim_steal"),
            force=True,
        )
    )
    assert machine.runs[run_id].checkpoint_at is None


@pytest.mark.parametrize("kind", ["human", "daemon", ""])
def test_an_owner_of_unknown_kind_is_refused_even_as_a_struct(machine: Machine, kind: str) -> None:
    owner = Ownership(kind=kind, ref="s1")  # type: ignore[arg-type]
    create = CreateTask(now=T0, task_id="owned", title="x", owner=owner, start_run_id="r2")
    error = _refusal(machine, create)
    assert error.code == INVALID_INPUT
    assert repr(kind) in error.message
    assert "owned" not in machine.tasks
    update = UpdateTask(now=T0, task_id="t", changes={"owner": owner})
    assert _refusal(machine, update).code == INVALID_INPUT
    assert machine.tasks["t"].owner is None
    # The known kinds still pass, as structs and as decoded dicts.
    for good in (Ownership(kind="pool", ref="s1"), {"kind": "agent_session", "ref": "s1"}):
        machine.apply(UpdateTask(now=T0, task_id="t", changes={"owner": good}))
    machine.check_invariants()


@pytest.mark.parametrize("threshold", [math.nan, math.inf, -1.0])
def test_stuck_refuses_a_threshold_that_is_not_a_finite_count_of_seconds(
    machine: Machine, threshold: float
) -> None:
    _claim(machine, "s1", T0)
    with pytest.raises(InvalidInput):
        stuck.stuck(machine, T0 + 200, threshold=threshold)
    # A real threshold finds the idle lease.
    assert [s.kind for s in stuck.stuck(machine, T0 + 200, threshold=60)] == ["no_progress"]


def test_a_canceled_draft_cannot_be_published_or_run(machine: Machine) -> None:
    machine.apply(CreateTask(now=T0, task_id="d", title="draft", draft=True))
    machine.apply(CancelTask(now=T0 + 1, task_id="d"))
    error = _refusal(machine, PublishTask(now=T0 + 2, task_id="d", run_id="run_d"))
    assert error.code == INVALID_TRANSITION
    assert "canceled" in error.message
    assert "run_d" not in machine.runs
    assert machine.tasks["d"].status == "canceled"


def test_a_canceled_task_awaiting_approval_cannot_be_rejected(machine: Machine) -> None:
    machine.apply(CreateTask(now=T0, task_id="a", title="needs a yes", approval_policy="manual"))
    machine.apply(CancelTask(now=T0 + 1, task_id="a", reason="not needed"))
    error = _refusal(machine, RejectTask(now=T0 + 2, task_id="a", reason="no"))
    assert error.code == INVALID_TRANSITION
    task = machine.tasks["a"]
    assert (task.approval_state, task.cancel_reason) == ("pending", "not needed")


def test_a_refused_run_move_names_the_run_its_status_and_what_it_allows(
    machine: Machine,
) -> None:
    machine.apply(CancelTask(now=T0 + 1, task_id="t"))
    error = _refusal(machine, CancelRun(now=T0 + 2, run_id="run_t"))
    assert error.code == INVALID_TRANSITION
    assert error.message == "run run_t is canceled; cannot cancel it (a canceled run is final)"
    restart = _refusal(machine, StartTask(now=T0 + 3, task_id="t", run_id="run_again"))
    assert restart.code == INVALID_TRANSITION
