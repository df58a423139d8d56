"""Example-based tests of the pure core at its edges: limits, ordering, filters, refusals."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from runlease.core.commands import (
    AnyCommand,
    BlockRun,
    ClaimNext,
    CompleteRun,
    CreateTask,
    ExpireLease,
    ExpireSession,
    FailRun,
    HeartbeatRun,
    OpenSession,
    ReleaseRun,
    ReleaseSessionLeases,
    StartTask,
    StopSession,
)
from runlease.core.ids import (
    CLAIM_TOKEN_PREFIX,
    IdGenerator,
    hash_token,
    new_secret_token,
    token_matches,
)
from runlease.core.machine import Machine, Outcome
from runlease.core.model import Claim, Heartbeat, Run, SessionReleased, Task
from runlease.errors import (
    AUTONOMY_FOREIGN_RUN,
    AUTONOMY_LEASE_ALREADY_HELD,
    AUTONOMY_LEASE_EXPIRED,
    AUTONOMY_NO_ACTIVE_LEASE,
    AUTONOMY_SESSION_REQUIRED,
    INVALID_INPUT,
    INVALID_TRANSITION,
    NO_CLAIMABLE_RUN,
    PAYLOAD_TOO_LARGE,
    RUN_NOT_FOUND,
    SESSION_NOT_FOUND,
    SESSION_STOPPED,
    TASK_NOT_FOUND,
    LeaseRefused,
    RunleaseError,
)

T0 = 1_700_000_000.0
DAY = 86_400.0
HASH_RE = re.compile(r"sha256:[0-9a-f]{64}")
TOKEN_RE = re.compile(r"rl_claim_[A-Za-z0-9_-]")
ID_RE = re.compile(r"run_[0-9A-HJKMNP-TV-Z]{26}")


@pytest.fixture
def m() -> Iterator[Machine]:
    machine = Machine()
    yield machine
    machine.check_invariants()


# ------------------------------------------------------------------------------ helpers
def state_of(machine: Machine) -> bytes:
    leases = machine.leased_run_ids()
    return msgspec.json.encode(
        [
            machine.tasks,
            machine.runs,
            machine.sessions,
            machine.children,
            sorted(machine.index.run_ids()),
            machine.last_seq,
            leases,
            machine.high_water,
            machine.queue_seq,
        ]
    )


def refused(machine: Machine, command: AnyCommand) -> RunleaseError:
    """Apply a command that must be refused; check it changed nothing and return the error."""
    before = state_of(machine)
    with pytest.raises(RunleaseError) as info:
        machine.apply(command)
    assert state_of(machine) == before
    assert not TOKEN_RE.search(str(info.value)), "an error message quotes a claim token"
    return info.value


def status_of(machine: Machine, task_id: str) -> str:
    return machine.tasks[task_id].status


def code_of(machine: Machine, command: AnyCommand) -> str:
    return refused(machine, command).code


def task(
    machine: Machine,
    task_id: str,
    *,
    run_id: str | None = None,
    now: float = T0,
    priority: str = "medium",
    workspace_id: str | None = None,
    caps: list[str] | None = None,
    max_attempts: int | None = None,
    start: bool = True,
) -> str:
    """Create a task (started unless start=False); return its first run's id."""
    run_id = run_id or f"run_{task_id}"
    machine.apply(
        CreateTask(
            now=now,
            task_id=task_id,
            title=f"title of {task_id}",
            priority=priority,  # type: ignore[arg-type]
            workspace_id=workspace_id,
            required_capabilities=caps or [],
            max_attempts=max_attempts,
            start_run_id=run_id if start else None,
        )
    )
    return run_id


def session(
    machine: Machine,
    session_id: str,
    *,
    caps: list[str] | None = None,
    parent: str | None = None,
    ttl: float | None = None,
    auto_stop: bool = True,
    now: float = T0,
) -> None:
    machine.apply(
        OpenSession(
            now=now,
            session_id=session_id,
            agent="agent",
            parent_id=parent,
            ttl_seconds=ttl,
            auto_stop_on_parent=auto_stop,
            capabilities=caps or [],
        )
    )


def claim_cmd(
    session_id: str | None,
    *,
    now: float = T0,
    lease_seconds: float | None = None,
    workspace_id: str | None = None,
    token: str | None = None,
) -> ClaimNext:
    return ClaimNext(
        now=now,
        session_id=session_id,
        claim_token_hash=hash_token(token or new_secret_token(CLAIM_TOKEN_PREFIX)),
        lease_seconds=lease_seconds,
        workspace_id=workspace_id,
    )


def claim(machine: Machine, session_id: str, **kwargs: Any) -> Claim:
    outcome = machine.apply(claim_cmd(session_id, **kwargs))
    assert outcome.error is None, outcome.error
    assert isinstance(outcome.reply, Claim)
    return outcome.reply


def claimed_id(machine: Machine, session_id: str, **kwargs: Any) -> str:
    return claim(machine, session_id, **kwargs).run.id


def heartbeat(
    machine: Machine, session_id: str | None, run_id: str, *, now: float, secs: float | None = None
) -> Heartbeat:
    outcome = machine.apply(
        HeartbeatRun(now=now, session_id=session_id, run_id=run_id, lease_seconds=secs)
    )
    assert isinstance(outcome.reply, Heartbeat)
    return outcome.reply


def one_leased(machine: Machine, *, caps: list[str] | None = None, **task_kw: Any) -> str:
    """A task claimed by session "s" at T0; return the run id."""
    run_id = task(machine, "t", caps=caps, **task_kw)
    session(machine, "s", caps=caps)
    assert claimed_id(machine, "s") == run_id
    return run_id


# ------------------------------------------------------------------------- lease length
@pytest.mark.parametrize(
    ("requested", "seconds", "clamped"),
    [
        (None, 300.0, False),
        (0, 300.0, False),
        (0.0, 300.0, False),
        (0.5, 0.5, False),
        (1, 1.0, False),
        (DAY - 1, DAY - 1, False),
        (DAY, DAY, False),
        (DAY + 0.001, DAY, True),
        (10 * DAY, DAY, True),
        (float("inf"), DAY, True),
    ],
)
def test_lease_length_on_claim_and_heartbeat(
    m: Machine, requested: float | None, seconds: float, clamped: bool
) -> None:
    run_id = task(m, "t")
    session(m, "s")
    lease = claim(m, "s", lease_seconds=requested).lease
    assert (lease.lease_seconds, lease.lease_seconds_clamped) == (seconds, clamped)
    assert lease.lease_until == T0 + seconds
    assert m.runs[run_id].lease_until == T0 + seconds

    now = T0 + min(seconds, 1.0) / 2
    beat = heartbeat(m, "s", run_id, now=now, secs=requested)
    # Renewal counts from now, not from the old deadline.
    assert beat.lease.lease_until == now + seconds
    assert (beat.lease.lease_seconds, beat.lease.lease_seconds_clamped) == (seconds, clamped)


@pytest.mark.parametrize("bad", [-1, -0.001, float("nan"), True, "300"])
def test_bad_lease_lengths_are_refused(m: Machine, bad: Any) -> None:
    run_id = task(m, "t")
    session(m, "s")
    assert code_of(m, claim_cmd("s", lease_seconds=bad)) == INVALID_INPUT
    claim(m, "s")
    hb = HeartbeatRun(now=T0, session_id="s", run_id=run_id, lease_seconds=bad)
    assert code_of(m, hb) == INVALID_INPUT


def test_heartbeat_moves_claimed_to_running_and_keeps_hash(m: Machine) -> None:
    run_id = one_leased(m)
    before = m.runs[run_id].claim_token_hash
    assert m.runs[run_id].status == "claimed"
    beat = heartbeat(m, "s", run_id, now=T0 + 10)
    assert beat.run.status == "running"
    assert m.runs[run_id].status == "running"
    assert m.runs[run_id].heartbeat_at == T0 + 10
    assert beat.lease.claim_token_hash == before
    assert status_of(m, "t") == "in_progress"


# ------------------------------------------------------------------------- task limits
@pytest.mark.parametrize(("attempts", "ok"), [(0, False), (1, True), (10, True), (11, False)])
def test_max_attempts_bounds(m: Machine, attempts: int, ok: bool) -> None:
    command = CreateTask(now=T0, task_id="t", title="x", max_attempts=attempts)
    if ok:
        reply = m.apply(command).reply
        assert isinstance(reply, Task)
        assert reply.max_attempts == attempts
    else:
        assert code_of(m, command) == INVALID_INPUT


def test_max_attempts_defaults_to_three_and_rejects_non_integers(m: Machine) -> None:
    reply = m.apply(CreateTask(now=T0, task_id="t", title="x")).reply
    assert isinstance(reply, Task)
    assert reply.max_attempts == 3
    for bad in (True, 2.0):
        bad_cmd = CreateTask(now=T0, task_id="u", title="x", max_attempts=bad)  # type: ignore[arg-type]
        assert code_of(m, bad_cmd) == INVALID_INPUT


def _object_of_size(size: int) -> dict[str, Any]:
    payload = {"k": "x" * (size - len('{"k":""}'))}
    assert len(msgspec.json.encode(payload)) == size
    return payload


def test_metadata_limit_is_exactly_16_kib(m: Machine) -> None:
    exact = CreateTask(now=T0, task_id="t", title="x", metadata=_object_of_size(16 * 1024))
    reply = m.apply(exact).reply
    assert isinstance(reply, Task)
    assert reply.metadata == _object_of_size(16 * 1024)
    over = CreateTask(now=T0, task_id="u", title="x", metadata=_object_of_size(16 * 1024 + 1))
    assert code_of(m, over) == PAYLOAD_TOO_LARGE


def test_failure_metadata_limit_is_exactly_16_kib(m: Machine) -> None:
    run_id = one_leased(m)
    over = FailRun(
        now=T0, session_id="s", run_id=run_id, error="e", metadata=_object_of_size(16 * 1024 + 1)
    )
    assert code_of(m, over) == PAYLOAD_TOO_LARGE
    exact = _object_of_size(16 * 1024)
    reply = m.apply(FailRun(now=T0, session_id="s", run_id=run_id, error="e", metadata=exact))
    assert isinstance(reply.reply, Run)
    assert reply.reply.failure_metadata == exact


def test_metadata_must_be_an_object(m: Machine) -> None:
    command = CreateTask(now=T0, task_id="t", title="x", metadata=[1, 2])  # type: ignore[arg-type]
    assert code_of(m, command) == INVALID_INPUT


def test_result_limit_is_exactly_64_kib(m: Machine) -> None:
    run_id = one_leased(m)
    too_big = "x" * (64 * 1024 - 1)  # a JSON string: two quotes more
    assert len(msgspec.json.encode(too_big)) == 64 * 1024 + 1
    over = CompleteRun(now=T0, session_id="s", run_id=run_id, result=too_big)
    assert code_of(m, over) == PAYLOAD_TOO_LARGE
    exact = "x" * (64 * 1024 - 2)
    outcome = m.apply(CompleteRun(now=T0, session_id="s", run_id=run_id, result=exact))
    assert isinstance(outcome.reply, Run)
    assert outcome.reply.result == exact
    assert status_of(m, "t") == "completed"


@pytest.mark.parametrize(
    "payload",
    [
        {"claim_token": "anything"},
        {"deep": [{"x": "rl_claim_abc"}]},
        ["rl_claim_" + "A" * 43],
        {"rl_claim_" + "A" * 43: 1},
        "prefix rl_claim_ suffix",
    ],
)
def test_results_and_metadata_carrying_claim_tokens_are_refused(m: Machine, payload: Any) -> None:
    run_id = one_leased(m)
    complete = CompleteRun(now=T0, session_id="s", run_id=run_id, result=payload)
    error = refused(m, complete)
    assert error.code == INVALID_INPUT
    assert "rl_claim_A" not in error.message
    if isinstance(payload, dict):
        fail = FailRun(now=T0, session_id="s", run_id=run_id, error="e", metadata=payload)
        assert code_of(m, fail) == INVALID_INPUT
        create = CreateTask(now=T0, task_id="u", title="x", metadata=payload)
        assert code_of(m, create) == INVALID_INPUT


def test_the_result_is_a_private_copy(m: Machine) -> None:
    run_id = one_leased(m)
    result: dict[str, Any] = {"files": ["a"]}
    m.apply(CompleteRun(now=T0, session_id="s", run_id=run_id, result=result))
    result["files"].append("b")
    assert m.runs[run_id].result == {"files": ["a"]}


def test_title_limit(m: Machine) -> None:
    reply = m.apply(CreateTask(now=T0, task_id="t", title="x" * 512)).reply
    assert isinstance(reply, Task)
    assert len(reply.title) == 512
    assert code_of(m, CreateTask(now=T0, task_id="u", title="x" * 513)) == PAYLOAD_TOO_LARGE
    assert code_of(m, CreateTask(now=T0, task_id="u", title="   ")) == INVALID_INPUT
    assert code_of(m, CreateTask(now=T0, task_id="u", title="see rl_claim_x")) == INVALID_INPUT


def test_reason_limit_on_block(m: Machine) -> None:
    run_id = one_leased(m)
    too_long = BlockRun(now=T0, session_id="s", run_id=run_id, reason="r" * 2049)
    assert code_of(m, too_long) == PAYLOAD_TOO_LARGE
    assert code_of(m, BlockRun(now=T0, session_id="s", run_id=run_id, reason="")) == INVALID_INPUT
    m.apply(BlockRun(now=T0, session_id="s", run_id=run_id, reason="r" * 2048))
    assert m.runs[run_id].reason == "r" * 2048


def test_capability_count_limit(m: Machine) -> None:
    caps = [f"cap{i}" for i in range(32)]
    reply = m.apply(
        CreateTask(now=T0, task_id="t", title="x", required_capabilities=[*caps, "cap0"])
    ).reply
    assert isinstance(reply, Task)
    assert reply.required_capabilities == tuple(sorted(caps))  # duplicates collapse
    too_many = CreateTask(now=T0, task_id="u", title="x", required_capabilities=[*caps, "cap32"])
    assert code_of(m, too_many) == PAYLOAD_TOO_LARGE
    session(m, "s", caps=caps)
    too_many_offered = OpenSession(
        now=T0, session_id="s2", agent="a", capabilities=[*caps, "cap32"]
    )
    assert code_of(m, too_many_offered) == PAYLOAD_TOO_LARGE
    bad_name = CreateTask(now=T0, task_id="u", title="x", required_capabilities=["two words"])
    assert code_of(m, bad_name) == INVALID_INPUT


def test_create_refuses_duplicates_and_bad_scope(m: Machine) -> None:
    task(m, "t")
    assert code_of(m, CreateTask(now=T0, task_id="t", title="x")) == INVALID_INPUT
    reused_run = CreateTask(now=T0, task_id="u", title="x", start_run_id="run_t")
    assert code_of(m, reused_run) == INVALID_INPUT
    scoped = CreateTask(now=T0, task_id="u", title="x", scope="workspace")
    assert code_of(m, scoped) == INVALID_INPUT
    global_ws = CreateTask(now=T0, task_id="u", title="x", scope="global", workspace_id="w")
    assert code_of(m, global_ws) == INVALID_INPUT
    bad_priority = CreateTask(now=T0, task_id="u", title="x", priority="asap")  # type: ignore[arg-type]
    assert code_of(m, bad_priority) == INVALID_INPUT


# ---------------------------------------------------------------------- claim ordering
def test_claims_go_by_priority_first(m: Machine) -> None:
    for i, priority in enumerate(["low", "medium", "urgent", "high"]):
        task(m, f"t{i}", run_id=f"run_{i}", priority=priority, now=T0 + i)
    session(m, "s")
    order = []
    for _ in range(4):
        run_id = claimed_id(m, "s", now=T0 + 10)
        order.append(m.tasks[m.runs[run_id].task_id].priority)
        m.apply(CompleteRun(now=T0 + 10, session_id="s", run_id=run_id))
    assert order == ["urgent", "high", "medium", "low"]


def test_claims_within_a_priority_go_by_enqueue_order_not_id(m: Machine) -> None:
    task(m, "a", run_id="run_z", now=T0 + 1)
    task(m, "b", run_id="run_y", now=T0 + 2)
    task(m, "c", run_id="run_b", now=T0 + 2)
    task(m, "d", run_id="run_a", now=T0 + 3)
    session(m, "s")
    order = []
    for _ in range(4):
        run_id = claimed_id(m, "s", now=T0 + 10)
        order.append(run_id)
        m.apply(CompleteRun(now=T0 + 10, session_id="s", run_id=run_id))
    assert order == ["run_z", "run_y", "run_b", "run_a"]


def test_a_released_run_keeps_its_place_in_the_queue(m: Machine) -> None:
    task(m, "a", run_id="run_a", now=T0)
    session(m, "s")
    assert claimed_id(m, "s", now=T0 + 1) == "run_a"
    task(m, "b", run_id="run_b", now=T0 + 2)
    m.apply(ReleaseRun(now=T0 + 3, session_id="s", run_id="run_a"))
    assert m.runs["run_a"].queued_at == T0
    assert claimed_id(m, "s", now=T0 + 4) == "run_a"


# ----------------------------------------------------------------------------- filters
def test_capability_filter(m: Machine) -> None:
    task(m, "gpu", run_id="run_gpu", caps=["gpu", "py"], priority="urgent")
    task(m, "plain", run_id="run_plain", priority="low")
    session(m, "py_only", caps=["py"])
    session(m, "both", caps=["gpu", "py", "net"])
    # The urgent run needs gpu, which py_only lacks: it gets the plain one.
    assert claimed_id(m, "py_only") == "run_plain"
    assert claimed_id(m, "both") == "run_gpu"


def test_capability_filter_leaves_nothing_claimable(m: Machine) -> None:
    task(m, "gpu", caps=["gpu"])
    session(m, "none")
    assert code_of(m, claim_cmd("none")) == NO_CLAIMABLE_RUN


def test_workspace_filter(m: Machine) -> None:
    task(m, "g", run_id="run_g", priority="urgent")
    task(m, "a", run_id="run_a", workspace_id="ws_a", priority="high")
    task(m, "b", run_id="run_b", workspace_id="ws_b", priority="low")
    for name in ("s1", "s2", "s3", "s4"):
        session(m, name)
    assert code_of(m, claim_cmd("s1", workspace_id="ws_c")) == NO_CLAIMABLE_RUN
    # A workspace claim sees only that workspace, never global tasks.
    assert claimed_id(m, "s1", workspace_id="ws_b") == "run_b"
    assert claimed_id(m, "s2", workspace_id="ws_a") == "run_a"
    assert code_of(m, claim_cmd("s3", workspace_id="ws_a")) == NO_CLAIMABLE_RUN
    # No workspace named: only the global task.
    assert claimed_id(m, "s3") == "run_g"
    assert code_of(m, claim_cmd("s4")) == NO_CLAIMABLE_RUN
    assert m.tasks["a"].scope == "workspace"
    assert m.tasks["g"].scope == "global"


def test_a_claim_naming_no_workspace_takes_global_tasks_only(m: Machine) -> None:
    task(m, "a", run_id="run_a", workspace_id="ws_a", priority="urgent")
    task(m, "g", run_id="run_g", priority="low")
    session(m, "s")
    session(m, "t")
    assert claimed_id(m, "s") == "run_g"
    # The workspace task waits for a claim that names its workspace.
    assert code_of(m, claim_cmd("t")) == NO_CLAIMABLE_RUN
    assert code_of(m, claim_cmd("t", workspace_id="ws_b")) == NO_CLAIMABLE_RUN
    assert claimed_id(m, "t", workspace_id="ws_a") == "run_a"


def test_bad_workspace_name_on_claim(m: Machine) -> None:
    task(m, "t")
    session(m, "s")
    assert code_of(m, claim_cmd("s", workspace_id="two words")) == INVALID_INPUT


# ------------------------------------------------------------------- refusal codes
def test_session_required(m: Machine) -> None:
    run_id = one_leased(m)
    for missing in (None, ""):
        assert code_of(m, claim_cmd(missing)) == AUTONOMY_SESSION_REQUIRED
        for cmd in (
            HeartbeatRun(now=T0, session_id=missing, run_id=run_id),
            CompleteRun(now=T0, session_id=missing, run_id=run_id),
            FailRun(now=T0, session_id=missing, run_id=run_id, error="e"),
            ReleaseRun(now=T0, session_id=missing, run_id=run_id),
            BlockRun(now=T0, session_id=missing, run_id=run_id, reason="r"),
        ):
            error = refused(m, cmd)
            assert error.code == AUTONOMY_SESSION_REQUIRED
            assert isinstance(error, LeaseRefused)
            assert error.exit_code == 5


def test_no_active_lease(m: Machine) -> None:
    task(m, "queued", run_id="run_queued")
    session(m, "idle")
    for cmd in (
        HeartbeatRun(now=T0, session_id="idle", run_id="run_queued"),
        CompleteRun(now=T0, session_id="idle", run_id="run_queued"),
        FailRun(now=T0, session_id="idle", run_id="run_queued", error="e"),
        ReleaseRun(now=T0, session_id="idle", run_id="run_queued"),
        BlockRun(now=T0, session_id="idle", run_id="run_queued", reason="r"),
    ):
        assert code_of(m, cmd) == AUTONOMY_NO_ACTIVE_LEASE


def test_foreign_run(m: Machine) -> None:
    task(m, "a", run_id="run_a")
    task(m, "b", run_id="run_b")
    session(m, "s1")
    session(m, "s2")
    session(m, "idle")
    mine = claimed_id(m, "s1")
    theirs = claimed_id(m, "s2")
    for session_id, run_id in (("s1", theirs), ("idle", theirs), ("idle", mine)):
        for cmd in (
            HeartbeatRun(now=T0, session_id=session_id, run_id=run_id),
            CompleteRun(now=T0, session_id=session_id, run_id=run_id),
            FailRun(now=T0, session_id=session_id, run_id=run_id, error="e"),
            ReleaseRun(now=T0, session_id=session_id, run_id=run_id),
            BlockRun(now=T0, session_id=session_id, run_id=run_id, reason="r"),
        ):
            assert code_of(m, cmd) == AUTONOMY_FOREIGN_RUN
    assert m.runs[mine].session_id == "s1"


def test_unknown_run_is_not_found(m: Machine) -> None:
    one_leased(m)
    for cmd in (
        HeartbeatRun(now=T0, session_id="s", run_id="run_missing"),
        CompleteRun(now=T0, session_id="s", run_id="run_missing"),
        FailRun(now=T0, session_id="s", run_id="run_missing", error="e"),
        ReleaseRun(now=T0, session_id="s", run_id="run_missing"),
        BlockRun(now=T0, session_id="s", run_id="run_missing", reason="r"),
    ):
        error = refused(m, cmd)
        assert error.code == RUN_NOT_FOUND
        assert error.exit_code == 4


def test_lease_expired_exactly_at_the_deadline(m: Machine) -> None:
    run_id = one_leased(m)
    just_before = HeartbeatRun(now=T0 + 299.999, session_id="s", run_id=run_id)
    assert isinstance(m.apply(just_before).reply, Heartbeat)
    deadline = m.runs[run_id].lease_until
    assert deadline == T0 + 299.999 + 300
    for cmd in (
        HeartbeatRun(now=deadline, session_id="s", run_id=run_id),
        CompleteRun(now=deadline, session_id="s", run_id=run_id),
        FailRun(now=deadline, session_id="s", run_id=run_id, error="e"),
        ReleaseRun(now=deadline + 1, session_id="s", run_id=run_id),
        BlockRun(now=deadline + 1, session_id="s", run_id=run_id, reason="r"),
    ):
        assert code_of(m, cmd) == AUTONOMY_LEASE_EXPIRED


def test_lease_already_held(m: Machine) -> None:
    run_id = one_leased(m)
    task(m, "other")
    assert code_of(m, claim_cmd("s", now=T0 + 299.999)) == AUTONOMY_LEASE_ALREADY_HELD
    assert m.runs[run_id].status == "claimed"


def test_claim_past_the_held_deadline_expires_it_first(m: Machine) -> None:
    run_id = one_leased(m)  # max_attempts 3: this expiry still requeues
    task(m, "other", run_id="run_other", priority="urgent")
    outcome = m.apply(claim_cmd("s", now=T0 + 300))
    assert [e.kind for e in outcome.events] == ["lease_expired", "run_claimed"]
    assert isinstance(outcome.reply, Claim)
    assert outcome.reply.run.id == "run_other"
    assert m.runs[run_id].status == "queued"
    assert m.runs[run_id].recovery_count == 1
    assert outcome.queued


def test_claim_past_the_deadline_with_nothing_else_reports_the_error(m: Machine) -> None:
    run_id = one_leased(m, max_attempts=1)
    outcome = m.apply(claim_cmd("s", now=T0 + 301))
    # The expiry happened (and is journaled); the claim's own failure rides in .error.
    assert outcome.reply is None
    assert outcome.error is not None
    assert outcome.error.code == NO_CLAIMABLE_RUN
    assert [e.kind for e in outcome.events] == ["lease_expired"]
    assert m.runs[run_id].status == "needs_attention"
    assert m.sessions["s"].lease_run_id is None


def test_session_stopped_and_not_found(m: Machine) -> None:
    run_id = one_leased(m)
    m.apply(StopSession(now=T0, session_id="s"))
    assert code_of(m, claim_cmd("s")) == SESSION_STOPPED
    assert code_of(m, HeartbeatRun(now=T0, session_id="s", run_id=run_id)) == SESSION_STOPPED
    assert code_of(m, claim_cmd("nobody")) == SESSION_NOT_FOUND
    assert code_of(m, CompleteRun(now=T0, session_id="nobody", run_id=run_id)) == (
        SESSION_NOT_FOUND
    )
    assert code_of(m, StopSession(now=T0, session_id="nobody")) == SESSION_NOT_FOUND
    assert code_of(m, ExpireSession(now=T0, session_id="nobody")) == SESSION_NOT_FOUND


def test_stale_holder_cannot_touch_a_reclaimed_run(m: Machine) -> None:
    run_id = one_leased(m)
    session(m, "new")
    m.apply(ExpireLease(now=T0 + 300, run_id=run_id))
    new_claim = claim(m, "new", now=T0 + 301)
    assert new_claim.run.id == run_id
    late = CompleteRun(now=T0 + 302, session_id="s", run_id=run_id)
    assert code_of(m, late) == AUTONOMY_LEASE_EXPIRED
    assert code_of(m, HeartbeatRun(now=T0 + 302, session_id="s", run_id=run_id)) == (
        AUTONOMY_LEASE_EXPIRED
    )
    assert m.runs[run_id].claim_token_hash == new_claim.lease.claim_token_hash
    assert m.runs[run_id].session_id == "new"


def test_unknown_ids(m: Machine) -> None:
    assert code_of(m, StartTask(now=T0, task_id="nope", run_id="run_x")) == TASK_NOT_FOUND
    assert code_of(m, ExpireLease(now=T0, run_id="run_nope")) == RUN_NOT_FOUND
    assert code_of(m, claim_cmd("nope")) == SESSION_NOT_FOUND


def test_claim_token_of_the_wrong_form(m: Machine) -> None:
    task(m, "t")
    session(m, "s")
    for bad in (
        ClaimNext(now=T0, session_id="s", claim_token_hash="not-a-hash"),
        ClaimNext(now=T0, session_id="s", claim_token_hash="sha256:" + "A" * 64),
        ClaimNext(now=T0, session_id="s", claim_token="not-a-token"),
        ClaimNext(now=T0, session_id="s"),
    ):
        assert code_of(m, bad) == INVALID_INPUT


# ------------------------------------------------------------------ expiry, recovery
def test_lease_expiry_requeues_then_parks_when_recovery_is_exhausted(m: Machine) -> None:
    run_id = one_leased(m, max_attempts=3)
    # Early: a no-op.
    early = m.apply(ExpireLease(now=T0 + 299.9, run_id=run_id))
    assert (early.reply, early.events, early.queued) == (None, [], False)
    assert m.runs[run_id].status == "claimed"

    first = m.apply(ExpireLease(now=T0 + 300, run_id=run_id))
    run = m.runs[run_id]
    assert (run.status, run.attempt, run.recovery_count, run.reason) == (
        "queued",
        1,
        1,
        "lease_expired",
    )
    assert first.queued
    assert first.events[0].data["outcome"] == "requeued"
    assert status_of(m, "t") == "ready"
    assert m.sessions["s"].lease_run_id is None

    assert claimed_id(m, "s", now=T0 + 400) == run_id
    second = m.apply(ExpireLease(now=T0 + 1000, run_id=run_id))
    assert (run.status, run.recovery_count, run.error) == (
        "needs_attention",
        2,
        "lease_recovery_exhausted",
    )
    assert not second.queued
    assert second.events[0].data["outcome"] == "needs_attention"
    assert status_of(m, "t") == "needs_attention"
    assert run_id not in m.index
    # A second firing of the same deadline changes nothing.
    again = m.apply(ExpireLease(now=T0 + 1001, run_id=run_id))
    assert (again.reply, again.events) == (None, [])


def test_one_attempt_parks_on_the_first_expiry(m: Machine) -> None:
    run_id = one_leased(m, max_attempts=1)
    m.apply(ExpireLease(now=T0 + 300, run_id=run_id))
    assert m.runs[run_id].status == "needs_attention"
    assert m.runs[run_id].error == "lease_recovery_exhausted"


def test_expiry_event_carries_only_the_hash(m: Machine) -> None:
    run_id = one_leased(m)
    token_hash = m.runs[run_id].claim_token_hash
    assert token_hash is not None
    outcome = m.apply(ExpireLease(now=T0 + 300, run_id=run_id))
    data = outcome.events[0].data
    assert data["previous_claim_token_hash"] == token_hash
    assert CLAIM_TOKEN_PREFIX not in msgspec.json.encode(outcome.events).decode()
    assert run_id not in m.leased_run_ids()


def test_heartbeat_postpones_expiry(m: Machine) -> None:
    run_id = one_leased(m)
    heartbeat(m, "s", run_id, now=T0 + 200, secs=300)
    stale = m.apply(ExpireLease(now=T0 + 300, run_id=run_id))
    assert stale.events == []
    assert m.runs[run_id].status == "running"
    m.apply(ExpireLease(now=T0 + 500, run_id=run_id))
    assert m.runs[run_id].status == "queued"
    # The clock firing for a run that is no longer leased is a no-op.
    queued = m.apply(ExpireLease(now=T0 + 600, run_id=run_id))
    assert (queued.reply, queued.events, queued.queued) == (None, [], False)
    assert m.runs[run_id].recovery_count == 1


# ------------------------------------------------------------- finishing and restarting
def test_fail_with_attempts_left_then_start_again(m: Machine) -> None:
    run_id = one_leased(m, max_attempts=2)
    outcome = m.apply(FailRun(now=T0, session_id="s", run_id=run_id, error="boom"))
    assert outcome.events[0].data["attempts_left"] == 1
    assert m.runs[run_id].status == "failed"
    assert status_of(m, "t") == "ready"  # it can be started again
    assert m.sessions["s"].lease_run_id is None

    reply = m.apply(StartTask(now=T0 + 1, task_id="t", run_id="run_2")).reply
    assert isinstance(reply, Run)
    assert (reply.attempt, reply.previous_run_id, reply.status) == (2, run_id, "queued")
    assert status_of(m, "t") == "ready"
    assert claimed_id(m, "s", now=T0 + 2) == "run_2"
    m.apply(FailRun(now=T0 + 3, session_id="s", run_id="run_2", error="boom"))
    assert status_of(m, "t") == "failed"
    assert m.tasks["t"].closed_at == T0 + 3
    start = StartTask(now=T0 + 4, task_id="t", run_id="run_3")
    assert code_of(m, start) == INVALID_TRANSITION


def _existing_run(m: Machine, start: StartTask) -> str:
    """Start a task that already has its run: answered with that run, nothing changed."""
    before = state_of(m)
    run = m.apply(start).reply
    assert run.already
    assert state_of(m) == before
    return run.id


def test_start_answers_the_queued_or_leased_run_and_is_refused_once_completed(
    m: Machine,
) -> None:
    task(m, "t", start=False)
    assert status_of(m, "t") == "pending"
    m.apply(StartTask(now=T0, task_id="t", run_id="run_1"))
    assert _existing_run(m, StartTask(now=T0, task_id="t", run_id="run_2")) == "run_1"
    session(m, "s")
    claim(m, "s")
    assert _existing_run(m, StartTask(now=T0, task_id="t", run_id="run_2")) == "run_1"
    heartbeat(m, "s", "run_1", now=T0 + 1)
    assert _existing_run(m, StartTask(now=T0, task_id="t", run_id="run_2")) == "run_1"
    m.apply(CompleteRun(now=T0 + 2, session_id="s", run_id="run_1"))
    assert code_of(m, StartTask(now=T0, task_id="t", run_id="run_2")) == INVALID_TRANSITION
    assert code_of(m, StartTask(now=T0, task_id="t", run_id="run_1")) == INVALID_INPUT


def test_release_keeps_the_attempt_and_requeues(m: Machine) -> None:
    run_id = one_leased(m)
    outcome = m.apply(ReleaseRun(now=T0 + 5, session_id="s", run_id=run_id, reason="handoff"))
    run = m.runs[run_id]
    assert (run.status, run.attempt, run.recovery_count, run.reason) == (
        "queued",
        1,
        0,
        "handoff",
    )
    assert run.claim_token_hash is None
    assert outcome.queued
    assert status_of(m, "t") == "ready"
    m.apply(claim_cmd("s", now=T0 + 6))
    m.apply(ReleaseRun(now=T0 + 7, session_id="s", run_id=run_id))
    assert m.runs[run_id].reason == "released"


def test_block_parks_the_run_and_frees_the_session(m: Machine) -> None:
    run_id = one_leased(m)
    task(m, "next", run_id="run_next")
    m.apply(BlockRun(now=T0 + 5, session_id="s", run_id=run_id, reason="needs credentials"))
    run = m.runs[run_id]
    assert (run.status, run.reason, run.claim_token_hash, run.lease_until) == (
        "needs_attention",
        "needs credentials",
        None,
        None,
    )
    assert status_of(m, "t") == "needs_attention"
    assert run_id not in m.index
    assert claimed_id(m, "s", now=T0 + 6) == "run_next"


def test_complete_settles_the_task(m: Machine) -> None:
    run_id = one_leased(m)
    m.apply(CompleteRun(now=T0 + 5, session_id="s", run_id=run_id, result={"ok": True}))
    assert m.runs[run_id].status == "completed"
    assert m.runs[run_id].ended_at == T0 + 5
    assert status_of(m, "t") == "completed"
    assert m.tasks["t"].closed_at == T0 + 5
    assert m.sessions["s"].lease_run_id is None


# ---------------------------------------------------------------------- session trees
def _tree(m: Machine) -> dict[str, str]:
    """root -> child -> grandchild (auto-stopping); root -> loner (not auto-stopping);
    each holds a lease on its own run."""
    session(m, "root", ttl=100)
    session(m, "child", parent="root")
    session(m, "grandchild", parent="child")
    session(m, "loner", parent="root", auto_stop=False)
    for name in ("root", "child", "grandchild", "loner"):
        task(m, f"task_{name}", run_id=f"run_{name}")
    return {name: claimed_id(m, name, lease_seconds=3600) for name in m.sessions}


def test_stop_session_stops_the_tree_with_reasons(m: Machine) -> None:
    held = _tree(m)
    outcome = m.apply(StopSession(now=T0 + 10, session_id="root", reason="done"))
    reply = outcome.reply
    assert isinstance(reply, SessionReleased)
    assert reply.reason == "session_stopped"
    assert sorted(reply.stopped_session_ids) == ["child", "grandchild", "root"]
    assert sorted(reply.released_run_ids) == sorted(
        held[name] for name in ("root", "child", "grandchild")
    )
    assert outcome.queued
    stop_reasons = {s.id: (s.state, s.stop_reason) for s in m.sessions.values()}
    assert stop_reasons == {
        "root": ("stopped", "done"),
        "child": ("stopped", "parent_stopped"),
        "grandchild": ("stopped", "parent_stopped"),
        "loner": ("live", None),
    }
    runs = {name: (m.runs[run_id].status, m.runs[run_id].reason) for name, run_id in held.items()}
    assert runs == {
        "root": ("queued", "session_stopped"),
        "child": ("queued", "parent_stopped"),
        "grandchild": ("queued", "parent_stopped"),
        "loner": ("claimed", None),
    }
    # Stopping again does nothing.
    again = m.apply(StopSession(now=T0 + 11, session_id="root"))
    assert isinstance(again.reply, SessionReleased)
    assert (again.reply.stopped_session_ids, again.events) == ([], [])
    assert code_of(m, OpenSession(now=T0, session_id="x", agent="a", parent_id="root")) == (
        SESSION_STOPPED
    )


def test_ttl_expiry_stops_the_tree(m: Machine) -> None:
    held = _tree(m)
    early = m.apply(ExpireSession(now=T0 + 99.9, session_id="root"))
    assert (early.reply, early.events) == (None, [])
    assert m.sessions["root"].state == "live"
    outcome = m.apply(ExpireSession(now=T0 + 100, session_id="root"))
    assert isinstance(outcome.reply, SessionReleased)
    assert outcome.reply.reason == "ttl_expired"
    assert m.sessions["root"].stop_reason == "ttl_expired"
    assert m.sessions["child"].stop_reason == "parent_stopped"
    assert m.sessions["loner"].state == "live"
    root_run = m.runs[held["root"]]
    assert (root_run.status, root_run.reason, root_run.recovery_count) == (
        "queued",
        "ttl_expired",
        0,
    )
    assert m.runs[held["child"]].reason == "parent_stopped"
    assert m.runs[held["loner"]].status == "claimed"
    # The TTL firing again, or for a session stopped by its parent, is a no-op.
    assert m.apply(ExpireSession(now=T0 + 200, session_id="root")).events == []
    assert m.apply(ExpireSession(now=T0 + 200, session_id="child")).events == []


def test_open_session_deadline_and_parent_checks(m: Machine) -> None:
    outcome = m.apply(OpenSession(now=T0, session_id="s", agent="a", ttl_seconds=60))
    assert outcome.deadlines == [(T0 + 60, "session", "s")]
    assert code_of(m, OpenSession(now=T0, session_id="s", agent="a")) == INVALID_INPUT
    assert code_of(m, OpenSession(now=T0, session_id="x", agent="a", ttl_seconds=0)) == (
        INVALID_INPUT
    )
    assert code_of(m, OpenSession(now=T0, session_id="x", agent="a", parent_id="nope")) == (
        SESSION_NOT_FOUND
    )
    assert code_of(m, OpenSession(now=T0, session_id="x", agent="two words")) == INVALID_INPUT


def test_release_session_leases_keeps_the_session_live(m: Machine) -> None:
    run_id = one_leased(m)
    bogus = ReleaseSessionLeases(now=T0, session_id="s", reason="because")
    assert code_of(m, bogus) == INVALID_INPUT
    outcome = m.apply(ReleaseSessionLeases(now=T0 + 1, session_id="s", reason="parent_stopped"))
    assert isinstance(outcome.reply, SessionReleased)
    assert outcome.reply.released_run_ids == [run_id]
    assert outcome.reply.stopped_session_ids == []
    assert m.sessions["s"].state == "live"
    assert (m.runs[run_id].status, m.runs[run_id].reason) == ("queued", "parent_stopped")
    empty = m.apply(ReleaseSessionLeases(now=T0 + 2, session_id="s", reason="ttl_expired"))
    assert isinstance(empty.reply, SessionReleased)
    assert empty.reply.released_run_ids == []
    assert not empty.queued


# ---------------------------------------------------------------------- ids and hashes
def test_ids_sort_by_creation_and_are_unique_within_a_millisecond() -> None:
    gen = IdGenerator()
    ids = [gen.new("run", T0) for _ in range(2000)]
    ids += [gen.new("run", T0 + 0.0005) for _ in range(100)]  # the same millisecond
    ids += [gen.new("run", T0 + 0.001 * k) for k in range(2, 200)]
    ids += [gen.new("run", T0 - 5) for _ in range(10)]  # the clock stepped back
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(ID_RE.fullmatch(i) for i in ids)


def test_ids_sort_across_a_millisecond_whatever_the_random_part() -> None:
    high = IdGenerator(random_bytes=lambda n: b"\xff" * n)
    low = IdGenerator(random_bytes=lambda n: b"\x00" * n)
    first = high.new("task", T0)
    second = low.new("task", T0 + 0.001)
    assert first < second
    assert first.startswith("task_")
    assert len(first) == len("task_") + 26


def test_ids_keep_order_when_a_millisecond_runs_out_of_counter() -> None:
    gen = IdGenerator(random_bytes=lambda n: b"\x00" * n)
    first = gen.new("run", T0)
    gen._last_rand = (1 << 80) - 1  # as if 2**80 ids were made in this millisecond
    second = gen.new("run", T0)
    third = gen.new("run", T0)
    fourth = gen.new("run", T0 + 0.001)
    # The counter borrowed the next millisecond; later ids still sort after it.
    assert first < second < third < fourth


def test_token_and_hash_format(m: Machine) -> None:
    token = new_secret_token(CLAIM_TOKEN_PREFIX)
    assert re.fullmatch(r"rl_claim_[A-Za-z0-9_-]{43}", token)
    assert new_secret_token(CLAIM_TOKEN_PREFIX) != token
    digest = hash_token(token)
    assert HASH_RE.fullmatch(digest)
    assert digest == "sha256:" + hashlib.sha256(token.encode()).hexdigest()
    assert token_matches(token, digest)
    assert not token_matches(token + "x", digest)
    assert not token_matches(token, None)

    task(m, "t")
    session(m, "s")
    outcome: Outcome[Any] = m.apply(claim_cmd("s", token=token))
    assert isinstance(outcome.reply, Claim)
    assert outcome.reply.lease.claim_token_hash == digest
    assert outcome.reply.run.claim_token_hash == digest
    assert outcome.events[0].data["claim_token_hash"] == digest
    wire = msgspec.json.encode([outcome.reply, outcome.events]).decode()
    assert token not in wire
    assert CLAIM_TOKEN_PREFIX not in wire
