"""A lease call on a run the session does not hold says why, and a repeated finish is a no-op.

The core cases first (one per situation: unknown run, lease ran out, run taken, finished by
the session itself), then the same answers through the embedded API under trio's MockClock
and over the socket through both clients. The hypothesis model (test_machine_model.py)
predicts these codes over random histories; the CLI's exit codes are in
test_cli_lease_loss.py.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import runlease
from runlease.client import Client
from runlease.core.commands import (
    AnyCommand,
    BlockRun,
    CancelRun,
    ClaimNext,
    CompleteRun,
    CreateTask,
    ExpireLease,
    FailRun,
    FinishAndClaim,
    ForceReleaseRun,
    HeartbeatRun,
    OpenSession,
    RecoverRun,
    ReleaseRun,
    ReleaseSessionLeases,
    StealRun,
    UnblockTask,
)
from runlease.core.ids import CLAIM_TOKEN_PREFIX, hash_token, new_secret_token
from runlease.core.machine import Machine
from runlease.core.model import Actor, Claim, Finished, Run
from runlease.core.snapshot import decode_snapshot, encode_snapshot
from runlease.errors import (
    AUTONOMY_FOREIGN_RUN,
    AUTONOMY_LEASE_ALREADY_HELD,
    AUTONOMY_LEASE_EXPIRED,
    AUTONOMY_NO_ACTIVE_LEASE,
    RUN_ALREADY_FINISHED,
    RUN_NOT_FOUND,
    InvalidInput,
    LeaseRefused,
    NotFound,
    RunleaseError,
)
from runlease.runtime.client import open_client
from runlease.runtime.server import SocketServer, serve_socket
from test_machine_model import fingerprint

T0 = 1_700_000_000.0
OPERATOR = Actor(kind="human", ref="operator")
ISO_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


# ------------------------------------------------------------------------------ helpers
def state(m: Machine) -> bytes:
    return msgspec.json.encode([m.tasks, m.runs, m.sessions, m.last_seq, m.leased_run_ids()])


def refusal(m: Machine, command: AnyCommand) -> RunleaseError:
    """Apply a command that must be refused without changing anything."""
    before = state(m)
    with pytest.raises(RunleaseError) as info:
        m.apply(command)
    assert state(m) == before
    return info.value


def open_session(m: Machine, session_id: str) -> None:
    m.apply(OpenSession(now=T0, session_id=session_id, agent=f"agent-{session_id}"))


def claim(m: Machine, session_id: str, now: float, lease_seconds: float = 60) -> Claim:
    outcome = m.apply(
        ClaimNext(
            now=now,
            session_id=session_id,
            claim_token_hash=hash_token(new_secret_token(CLAIM_TOKEN_PREFIX)),
            lease_seconds=lease_seconds,
        )
    )
    assert isinstance(outcome.reply, Claim)
    return outcome.reply


@pytest.fixture
def m() -> Machine:
    """Sessions "s" and "other"; one task ("t", three attempts) whose run "run_t" "s" holds
    under a 60 s lease taken at T0."""
    machine = Machine()
    machine.apply(CreateTask(now=T0, task_id="t", title="t", max_attempts=3, start_run_id="run_t"))
    open_session(machine, "s")
    open_session(machine, "other")
    assert claim(machine, "s", T0).run.id == "run_t"
    return machine


def late_calls(session_id: str, run_id: str, now: float) -> list[AnyCommand]:
    return [
        HeartbeatRun(now=now, session_id=session_id, run_id=run_id),
        CompleteRun(now=now, session_id=session_id, run_id=run_id, result={"late": True}),
        FailRun(now=now, session_id=session_id, run_id=run_id, error="late"),
        ReleaseRun(now=now, session_id=session_id, run_id=run_id),
        BlockRun(now=now, session_id=session_id, run_id=run_id, reason="late"),
        FinishAndClaim(
            now=now,
            finish=CompleteRun(now=now, session_id=session_id, run_id=run_id),
            claim=ClaimNext(
                now=now,
                session_id=session_id,
                claim_token_hash=hash_token(new_secret_token(CLAIM_TOKEN_PREFIX)),
            ),
        ),
    ]


def refused_all(m: Machine, session_id: str, run_id: str, now: float, code: str) -> list[str]:
    """Every lease call refused with ``code``; their messages."""
    messages = []
    for command in late_calls(session_id, run_id, now):
        error = refusal(m, command)
        assert error.code == code, (command, error)
        messages.append(error.message)
    return messages


# ------------------------------------------------------------------------------- core
def test_an_unknown_run_is_not_found(m: Machine) -> None:
    for message in refused_all(m, "s", "run_missing", T0 + 1, RUN_NOT_FOUND):
        assert "run_missing" in message
    error = refusal(m, CompleteRun(now=T0, session_id="s", run_id="run_missing"))
    assert isinstance(error, NotFound)
    assert error.exit_code == 4


def test_past_the_deadline_before_the_clock_fires(m: Machine) -> None:
    for message in refused_all(m, "s", "run_t", T0 + 61, AUTONOMY_LEASE_EXPIRED):
        assert "expired at" in message
        assert "(1.0 s ago)" in message
        assert ISO_RE.search(message)


def test_expired_and_requeued(m: Machine) -> None:
    m.apply(ExpireLease(now=T0 + 60, run_id="run_t"))
    loss = m.runs["run_t"].lease_loss
    assert loss is not None
    assert (loss.session_id, loss.cause, loss.at, loss.lease_until) == (
        "s",
        "lease_expired",
        T0 + 60,
        T0 + 60,
    )
    for message in refused_all(m, "s", "run_t", T0 + 70, AUTONOMY_LEASE_EXPIRED):
        assert "expired at" in message
        assert "(10.0 s ago)" in message
        assert "back in the queue" in message


def test_expired_then_claimed_by_another_session(m: Machine) -> None:
    m.apply(ExpireLease(now=T0 + 60, run_id="run_t"))
    claim(m, "other", T0 + 65)
    for message in refused_all(m, "s", "run_t", T0 + 70, AUTONOMY_LEASE_EXPIRED):
        assert "session other (agent agent-other) has held it" in message
    # The new holder is untouched and goes on.
    assert m.apply(CompleteRun(now=T0 + 71, session_id="other", run_id="run_t")).events


def test_expired_and_parked(m: Machine) -> None:
    m.apply(ExpireLease(now=T0 + 60, run_id="run_t"))
    claim(m, "other", T0 + 65)
    m.apply(ExpireLease(now=T0 + 125, run_id="run_t"))  # the second loss parks it
    assert m.runs["run_t"].status == "needs_attention"
    # The last holder hears about its own loss; the first one is told who held it last.
    for message in refused_all(m, "other", "run_t", T0 + 130, AUTONOMY_LEASE_EXPIRED):
        assert "parked in needs_attention (lease_recovery_exhausted)" in message
    refused_all(m, "s", "run_t", T0 + 130, AUTONOMY_FOREIGN_RUN)


def test_the_sessions_lifetime_ended_the_lease(m: Machine) -> None:
    m.apply(ReleaseSessionLeases(now=T0 + 5, session_id="s", reason="ttl_expired"))
    for message in refused_all(m, "s", "run_t", T0 + 6, AUTONOMY_LEASE_EXPIRED):
        assert "TTL ran out" in message


def test_stolen_with_force_names_the_thief(m: Machine) -> None:
    m.apply(
        StealRun(
            now=T0 + 10,
            task_id="t",
            session_id="other",
            claim_token_hash=hash_token(new_secret_token(CLAIM_TOKEN_PREFIX)),
            force=True,
        )
    )
    for message in refused_all(m, "s", "run_t", T0 + 12, AUTONOMY_FOREIGN_RUN):
        assert "was stolen from session s by session other" in message
        assert "(2.0 s ago)" in message


def test_stolen_after_expiry_is_an_expiry(m: Machine) -> None:
    m.apply(
        StealRun(
            now=T0 + 61,
            task_id="t",
            session_id="other",
            claim_token_hash=hash_token(new_secret_token(CLAIM_TOKEN_PREFIX)),
        )
    )
    for message in refused_all(m, "s", "run_t", T0 + 62, AUTONOMY_LEASE_EXPIRED):
        assert "session other (agent agent-other) has held it" in message


def test_force_released_and_canceled_name_the_operator(m: Machine) -> None:
    m.apply(ForceReleaseRun(now=T0 + 3, run_id="run_t", reason="stuck", actor=OPERATOR))
    for message in refused_all(m, "s", "run_t", T0 + 4, AUTONOMY_FOREIGN_RUN):
        assert "force-released from session s by human:operator" in message
    claim(m, "other", T0 + 5)
    m.apply(CancelRun(now=T0 + 6, run_id="run_t", actor=OPERATOR))
    for message in refused_all(m, "other", "run_t", T0 + 7, AUTONOMY_FOREIGN_RUN):
        assert "canceled from session other by human:operator" in message


def test_a_refused_operator_action_records_no_loss(m: Machine) -> None:
    m.apply(CompleteRun(now=T0 + 1, session_id="s", run_id="run_t"))
    error = refusal(m, CancelRun(now=T0 + 2, run_id="run_t", actor=OPERATOR))
    assert error.code == "INVALID_TRANSITION"
    assert m.runs["run_t"].lease_loss is None


def test_another_sessions_run_and_a_run_never_held(m: Machine) -> None:
    for message in refused_all(m, "other", "run_t", T0 + 1, AUTONOMY_FOREIGN_RUN):
        assert "held by session s (agent agent-s)" in message
    m.apply(CreateTask(now=T0, task_id="u", title="u", start_run_id="run_u"))
    for message in refused_all(m, "other", "run_u", T0 + 1, AUTONOMY_NO_ACTIVE_LEASE):
        assert "claim it first" in message
    # Queued again after its holder let go: anyone may claim it, so no lease, not foreign.
    m.apply(ReleaseRun(now=T0 + 2, session_id="s", run_id="run_t"))
    refused_all(m, "other", "run_t", T0 + 3, AUTONOMY_NO_ACTIVE_LEASE)
    # Ended by another session: foreign.
    claim(m, "s", T0 + 4)
    m.apply(CompleteRun(now=T0 + 5, session_id="s", run_id="run_t"))
    for message in refused_all(m, "other", "run_t", T0 + 6, AUTONOMY_FOREIGN_RUN):
        assert "run run_t is completed, last held by session s" in message


@pytest.mark.parametrize(
    "finish",
    [
        CompleteRun(now=0, session_id="s", run_id="run_t", result={"pages": 2}),
        FailRun(now=0, session_id="s", run_id="run_t", error="boom", metadata={"k": 1}),
        ReleaseRun(now=0, session_id="s", run_id="run_t", reason="handoff"),
        BlockRun(now=0, session_id="s", run_id="run_t", reason="needs a human"),
    ],
)
def test_a_repeated_finish_answers_again_and_changes_nothing(
    m: Machine, finish: CompleteRun | FailRun | ReleaseRun | BlockRun
) -> None:
    first = m.apply(msgspec.structs.replace(finish, now=T0 + 1))
    assert isinstance(first.reply, Run)
    assert first.reply.already is False
    before = state(m)
    again = m.apply(msgspec.structs.replace(finish, now=T0 + 2))
    assert state(m) == before
    assert (again.events, again.deadlines, again.queued) == ([], [], False)
    assert isinstance(again.reply, Run)
    assert again.reply.already is True
    assert msgspec.structs.replace(again.reply, already=False) == first.reply
    assert m.runs["run_t"].already is False, "only the reply carries the flag"


def test_a_different_outcome_is_refused_with_the_recorded_one(m: Machine) -> None:
    m.apply(CompleteRun(now=T0 + 1, session_id="s", run_id="run_t", result={"pages": 2}))
    error = refusal(m, FailRun(now=T0 + 2, session_id="s", run_id="run_t", error="x"))
    assert error.code == RUN_ALREADY_FINISHED
    assert isinstance(error, InvalidInput)
    assert error.exit_code == 3
    assert "already completed run run_t" in error.message
    assert "this fail is refused" in error.message
    other_result = CompleteRun(now=T0 + 2, session_id="s", run_id="run_t", result={"pages": 3})
    error = refusal(m, other_result)
    assert error.code == RUN_ALREADY_FINISHED
    assert "different result" in error.message
    error = refusal(m, HeartbeatRun(now=T0 + 2, session_id="s", run_id="run_t"))
    assert error.code == RUN_ALREADY_FINISHED


def test_after_its_own_release_the_session_must_claim_again(m: Machine) -> None:
    m.apply(ReleaseRun(now=T0 + 1, session_id="s", run_id="run_t", reason="handoff"))
    error = refusal(m, CompleteRun(now=T0 + 2, session_id="s", run_id="run_t"))
    assert error.code == AUTONOMY_NO_ACTIVE_LEASE
    assert isinstance(error, LeaseRefused)
    assert "released run run_t (handoff)" in error.message
    assert "claim it again" in error.message


def test_claiming_the_run_again_clears_the_sessions_old_loss(m: Machine) -> None:
    m.apply(ExpireLease(now=T0 + 60, run_id="run_t"))
    claim(m, "s", T0 + 61)
    assert m.runs["run_t"].lease_loss is None
    m.apply(CompleteRun(now=T0 + 62, session_id="s", run_id="run_t"))
    again = m.apply(CompleteRun(now=T0 + 63, session_id="s", run_id="run_t"))
    assert isinstance(again.reply, Run)
    assert again.reply.already


def test_a_repeated_finish_and_claim_reports_the_lease_held_since() -> None:
    m = Machine()
    for task_id in ("a", "b"):
        m.apply(CreateTask(now=T0, task_id=task_id, title=task_id, start_run_id=f"run_{task_id}"))
    open_session(m, "s")
    claim(m, "s", T0)

    def complete_and_next(now: float) -> Any:
        return m.apply(
            FinishAndClaim(
                now=now,
                finish=CompleteRun(now=now, session_id="s", run_id="run_a"),
                claim=ClaimNext(
                    now=now,
                    session_id="s",
                    claim_token_hash=hash_token(new_secret_token(CLAIM_TOKEN_PREFIX)),
                ),
            )
        )

    first = complete_and_next(T0 + 1).reply
    assert isinstance(first, Finished)
    assert first.claim is not None
    before = state(m)
    retry = complete_and_next(T0 + 2)
    assert state(m) == before
    assert retry.events == []
    assert isinstance(retry.reply, Finished)
    assert retry.reply.run.already is True
    assert retry.reply.no_claim is not None
    assert retry.reply.no_claim.code == AUTONOMY_LEASE_ALREADY_HELD
    assert "run_b" in retry.reply.no_claim.message


def test_the_loss_survives_a_snapshot(m: Machine) -> None:
    m.apply(ExpireLease(now=T0 + 60, run_id="run_t"))
    restored = decode_snapshot(encode_snapshot(m))
    assert restored.runs["run_t"].lease_loss == m.runs["run_t"].lease_loss
    error = refusal(restored, CompleteRun(now=T0 + 61, session_id="s", run_id="run_t"))
    assert error.code == AUTONOMY_LEASE_EXPIRED


# ---------------------------------------------------------------- embedded, MockClock
async def test_embedded_codes_and_repeated_finish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        await rt.create_task("one", start=True)
        agent = await rt.open_session(agent="a")
        rival = await rt.open_session(agent="b")
        held = await agent.claim_next(lease_seconds=30)
        run_id = held.run.id

        with pytest.raises(RunleaseError) as info:
            await agent.heartbeat("run_nope")
        assert info.value.code == RUN_NOT_FOUND

        await trio.sleep(31)  # the lease clock requeues the run
        assert rt.get_run(run_id).status == "queued"
        with pytest.raises(RunleaseError) as info:
            await agent.complete(run_id)
        assert info.value.code == AUTONOMY_LEASE_EXPIRED
        assert "back in the queue" in info.value.message

        taken = await rival.claim_next(lease_seconds=30)
        assert taken.run.id == run_id
        with pytest.raises(RunleaseError) as info:
            await agent.heartbeat(run_id)
        assert info.value.code == AUTONOMY_LEASE_EXPIRED
        assert f"session {rival.id}" in info.value.message

        done = await rival.complete(run_id, result={"ok": 1})
        assert not done.already
        seq = rt.status().last_event_seq
        again = await rival.complete(run_id, result={"ok": 1})
        assert again.already
        assert again.result == {"ok": 1}
        assert rt.status().last_event_seq == seq, "a repeated finish records nothing"
        with pytest.raises(RunleaseError) as info:
            await rival.fail(run_id, error="no")
        assert info.value.code == RUN_ALREADY_FINISHED


# ------------------------------------------------------------------------ both clients
@pytest.fixture
async def skew_served(nursery: trio.Nursery, tmp_path: Any) -> AsyncIterator[Any]:
    skew = [0.0]

    def clock() -> float:
        return T0 + trio.current_time() + skew[0]

    path = tmp_path / "sock" / "s.sock"
    async with runlease.open_runtime(clock) as rt:
        server: SocketServer = await nursery.start(serve_socket, rt, path)
        yield rt, path, skew
        server.shutdown()
        await server.wait_stopped()


async def test_both_clients_hear_the_codes_and_the_repeated_finish(skew_served: Any) -> None:
    rt, path, skew = skew_served
    for title in ("one", "two"):
        await rt.create_task(title, start=True)
    async with open_client(path) as client:
        _, token = await client.open_session(agent="async")
        _, thief = await client.open_session(agent="thief")
        held = await client.claim_next(token=token, lease_seconds=60)
        with pytest.raises(RunleaseError) as info:
            await client.heartbeat("run_nope", token=token)
        assert info.value.code == RUN_NOT_FOUND
        # The wall clock jumps past the deadline (the lease clock, on trio's clock, has
        # not fired): another session takes the expired run.
        skew[0] = 3600.0
        await client.steal(held.task.id, token=thief)
        with pytest.raises(RunleaseError) as info:
            await client.complete(held.run.id, token=token)
        assert info.value.code == AUTONOMY_LEASE_EXPIRED
        assert "has held it" in info.value.message
        second = await client.claim_next(token=token, lease_seconds=60)
        done = await client.complete(second.run.id, result=[1], token=token)
        assert not done.already
        again = await client.complete(second.run.id, result=[1], token=token)
        assert again.already
        run_id = second.run.id

    def sync_side() -> None:
        with Client(path, session_token=token) as sync:
            repeated = sync.complete(run_id, result=[1])
            assert repeated.already
            assert repeated.status == "completed"
            with pytest.raises(RunleaseError) as error:
                sync.block(run_id, reason="late")
            assert error.value.code == RUN_ALREADY_FINISHED
            with pytest.raises(RunleaseError) as error:
                sync.complete(held.run.id)
            assert error.value.code == AUTONOMY_LEASE_EXPIRED
            with pytest.raises(RunleaseError) as error:
                sync.release("run_nope")
            assert error.value.code == RUN_NOT_FOUND

    await trio.to_thread.run_sync(sync_side)


# ----------------------------------------------------------------------------- durable
async def test_a_repeated_finish_journals_nothing_and_replays_the_same(tmp_path: Any) -> None:
    data = tmp_path / "data"
    async with runlease.open_runtime(data_dir=data, durability="relaxed") as rt:
        first = await rt.create_task("first", start=True)
        agent = await rt.open_session(agent="a")
        run_id = (await agent.claim_next()).run.id
        await agent.complete(run_id, result={"n": 1})
        committer = rt._committer
        before = committer.submitted_seq
        again = await agent.complete(run_id, result={"n": 1})
        assert again.already
        assert committer.submitted_seq == before, "a repeated finish writes no record"
        # A repeated finish with --next that claims: only the claim changes the state, and
        # the record of both parts replays to the same state.
        await rt.create_task("second", start=True)
        finished = await agent.complete_and_next(run_id, result={"n": 1})
        assert finished.run.already
        assert finished.claim is not None
        assert finished.claim.task.id != first.id
        assert committer.submitted_seq == before + 2  # the second task, then the claim
        expected = fingerprint(rt._machine)
    async with runlease.open_runtime(data_dir=data, durability="relaxed") as rt:
        assert fingerprint(rt._machine) == expected


def test_a_block_lifted_by_an_operator_is_not_the_sessions_own_finish(m: Machine) -> None:
    """After an operator requeues the run a session blocked, the session's retried block (or
    any other late call) hears who put the run back, instead of an `already` that would claim
    the block still stands."""
    m.apply(BlockRun(now=T0 + 1, session_id="s", run_id="run_t", reason="needs a key"))
    m.apply(UnblockTask(now=T0 + 2, task_id="t", actor=OPERATOR))
    error = refusal(m, BlockRun(now=T0 + 3, session_id="s", run_id="run_t", reason="needs a key"))
    assert error.code == AUTONOMY_FOREIGN_RUN
    assert "(`task unblock`) from session s by human:operator" in error.message
    assert "already" not in error.message
    # The same through `run recover`, after the session blocked the run again.
    claim(m, "s", T0 + 4)
    m.apply(BlockRun(now=T0 + 5, session_id="s", run_id="run_t", reason="again"))
    m.apply(RecoverRun(now=T0 + 6, run_id="run_t", actor=OPERATOR))
    for message in refused_all(m, "s", "run_t", T0 + 7, AUTONOMY_FOREIGN_RUN):
        assert "(`run recover`) from session s by human:operator" in message


def test_recovering_a_run_parked_by_expiry_keeps_the_expiry_on_record(m: Machine) -> None:
    m.apply(ExpireLease(now=T0 + 60, run_id="run_t"))
    for attempt in range(5):
        if m.runs["run_t"].status != "queued":
            break
        now = T0 + 100 * (attempt + 1)
        claim(m, "s", now)
        m.apply(ExpireLease(now=now + 60, run_id="run_t"))
    assert m.runs["run_t"].status == "needs_attention"
    m.apply(RecoverRun(now=T0 + 1_000, run_id="run_t", actor=OPERATOR))
    for message in refused_all(m, "s", "run_t", T0 + 1_001, AUTONOMY_LEASE_EXPIRED):
        assert "expired at" in message
