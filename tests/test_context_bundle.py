"""The context bundle: what the session holding a run's lease is told about it.

The pure builder is driven by hypothesis (any bundle encodes within its bound and says
what it cut); the embedded runtime and the socket check who may read it. Time moves only
through trio's MockClock.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import runlease
from runlease.core.context import (
    CONTEXT_MAX_BYTES,
    CONTEXT_MIN_BYTES,
    MAX_CONTEXT_CHECKPOINTS,
    MAX_CONTEXT_EVENTS,
    MAX_PRIOR_ATTEMPTS,
    ContextBundle,
    build_bundle,
)
from runlease.core.machine import Machine
from runlease.core.model import Checkpoint, Event, Run, RunStatus, Task
from runlease.errors import (
    AUTONOMY_FOREIGN_RUN,
    AUTONOMY_LEASE_EXPIRED,
    AUTONOMY_NO_ACTIVE_LEASE,
    RUN_NOT_FOUND,
    InvalidInput,
    LeaseRefused,
    NotFound,
)
from runlease.runtime.client import open_client
from socket_helpers import Served

T0 = 1_000_000.0
MARK = "…[shortened:"


def encoded_size(bundle: ContextBundle) -> int:
    return len(msgspec.json.encode(bundle))


# --------------------------------------------------------------------- the pure builder
# Long strings are one character repeated: cheap to generate, and a control character
# makes the JSON six times longer than the text, the worst case for the bound.
def long_text(max_size: int) -> st.SearchStrategy[str]:
    return st.builds(
        lambda char, count: char * count,
        st.sampled_from(["a", "é", "\x01", '"', "漢", "\U0001f600"]),
        st.integers(0, max_size),
    )


NOTES = long_text(4096)
REASONS = st.none() | long_text(2048)
RESULTS = st.none() | st.builds(lambda s: {"out": s}, long_text(64 * 1024))
TITLES = long_text(512)
DESCRIPTIONS = long_text(16 * 1024)
METADATA = st.none() | st.builds(lambda s: {"note": s}, long_text(16 * 1024))
STATUSES: st.SearchStrategy[RunStatus] = st.sampled_from(
    ["failed", "completed", "canceled", "needs_attention"]
)


@st.composite
def leased_states(draw: st.DrawFn) -> tuple[Machine, Run, list[Event]]:
    """A machine holding a task, a chain of earlier runs and a leased current run, and the
    task's events: sizes up to the limits the validators allow."""
    m = Machine()
    earlier_count = draw(st.integers(0, 25))
    checkpoints = tuple(
        Checkpoint(at=T0 + i, note=draw(NOTES), author="a", run_id=None)
        for i in range(draw(st.integers(0, 50)))
    )
    task = Task(
        id="tsk_1",
        title=draw(TITLES),
        description=draw(DESCRIPTIONS),
        metadata=draw(METADATA),
        created_at=T0,
        updated_at=T0,
        checkpoints=checkpoints,
        max_attempts=10,
        current_run_id="run_current",
    )
    m.tasks[task.id] = task
    previous: str | None = None
    for i in range(earlier_count):
        run = Run(
            id=f"run_{i:03}",
            task_id=task.id,
            status=draw(STATUSES),
            attempt=1 + i % 10,
            queued_at=T0 + i,
            ended_at=T0 + i + 0.5,
            session_id=f"ses_{i}",
            claimed_by="agent",
            error=draw(REASONS),
            reason=draw(REASONS),
            result=draw(RESULTS),
            previous_run_id=previous,
        )
        m.runs[run.id] = run
        previous = run.id
    current = Run(
        id="run_current",
        task_id=task.id,
        status="running",
        attempt=2,
        queued_at=T0 + 100,
        claimed_at=T0 + 100,
        heartbeat_at=T0 + 110,
        lease_until=T0 + 410,
        session_id="ses_holder",
        claimed_by="agent",
        claim_token_hash="sha256:" + "ab" * 32,
        previous_run_id=previous,
    )
    m.runs[current.id] = current
    events = [
        Event(
            seq=i + 1,
            kind="checkpoint",
            at=T0 + i,
            task_id=task.id,
            data={"note": draw(NOTES)} if i % 7 == 0 else {"n": i},
        )
        for i in range(draw(st.integers(0, 120)))
    ]
    return m, current, events


@given(
    state=leased_states(),
    max_bytes=st.sampled_from([CONTEXT_MIN_BYTES, 32 * 1024, CONTEXT_MAX_BYTES]),
)
def test_any_bundle_fits_its_bound_and_marks_every_cut(
    state: tuple[Machine, Run, list[Event]], max_bytes: int
) -> None:
    m, run, events = state
    task = m.tasks[run.task_id]
    bundle = build_bundle(m, run, T0 + 200, events, max_bytes=max_bytes)

    assert encoded_size(bundle) <= max_bytes
    assert bundle.max_bytes == max_bytes

    # Lists keep their newest items; whatever is missing is in ``cuts``.
    earlier = [r for r in m.runs.values() if r.id != run.id]
    totals: dict[str, list[Any]] = {
        "prior_attempts": [r.id for r in earlier],
        "checkpoints": [c.at for c in task.checkpoints],
        "recent_events": [e.seq for e in events],
    }
    kept: dict[str, list[Any]] = {
        "prior_attempts": [a.run_id for a in bundle.prior_attempts],
        "checkpoints": [c.at for c in bundle.checkpoints],
        "recent_events": [e.seq for e in bundle.recent_events],
    }
    cuts = {cut.field: cut for cut in bundle.cuts}
    for name, everything in totals.items():
        shown = kept[name]
        assert shown == everything[len(everything) - len(shown) :], name  # newest, in order
        if name in cuts:
            assert (cuts[name].kept, cuts[name].dropped) == (
                len(shown),
                len(everything) - len(shown),
            )
            assert cuts[name].dropped > 0
        else:
            assert len(shown) == len(everything), name
    assert len(bundle.prior_attempts) <= MAX_PRIOR_ATTEMPTS
    assert len(bundle.checkpoints) <= MAX_CONTEXT_CHECKPOINTS
    assert len(bundle.recent_events) <= MAX_CONTEXT_EVENTS

    # A shortened string carries the marker, and every shortening is listed.
    text = msgspec.json.encode(bundle).decode()
    assert (MARK in text) == bool(bundle.shortened)
    if len(bundle.task.description) < len(task.description):
        assert "task.description" in bundle.shortened
        assert MARK in bundle.task.description
    for attempt in bundle.prior_attempts:
        original = m.runs[attempt.run_id]
        if original.error is not None and attempt.error != original.error:
            assert f"prior_attempts[{attempt.run_id}].error" in bundle.shortened
    assert bundle.truncated == bool(bundle.cuts or bundle.shortened)

    # The claim-token hash never appears in full.
    assert "sha256:" not in text
    assert bundle.run.claim_token_hash == "abababab"


def test_a_small_bundle_is_whole() -> None:
    m = Machine()
    m.tasks["tsk_1"] = Task(
        id="tsk_1",
        title="t",
        created_at=T0,
        updated_at=T0,
        checkpoints=(Checkpoint(at=T0, note="half way"),),
    )
    m.runs["run_1"] = Run(
        id="run_1",
        task_id="tsk_1",
        status="failed",
        queued_at=T0,
        error="disk full",
        result=None,
        failure_metadata={"free": 0},
    )
    m.runs["run_2"] = Run(
        id="run_2",
        task_id="tsk_1",
        status="claimed",
        attempt=2,
        queued_at=T0 + 1,
        claimed_at=T0 + 10,
        lease_until=T0 + 130,
        previous_run_id="run_1",
    )
    bundle = build_bundle(m, m.runs["run_2"], T0 + 40, [])
    assert not bundle.truncated
    assert (bundle.cuts, bundle.shortened) == ([], [])
    (prior,) = bundle.prior_attempts
    assert (prior.run_id, prior.status, prior.error) == ("run_1", "failed", "disk full")
    assert prior.result_summary == '{"free":0}'
    assert [c.note for c in bundle.checkpoints] == ["half way"]
    limits = bundle.limits
    assert (limits.lease_seconds, limits.seconds_left) == (120.0, 90.0)
    assert (limits.attempt, limits.max_attempts, limits.attempts_left) == (2, 3, 1)
    assert limits.max_result_bytes == 64 * 1024


def test_a_bound_below_the_floor_is_refused() -> None:
    m = Machine()
    m.tasks["tsk_1"] = Task(id="tsk_1", title="t", created_at=T0, updated_at=T0)
    run = Run(id="run_1", task_id="tsk_1", status="claimed", queued_at=T0, lease_until=T0 + 9)
    m.runs[run.id] = run
    with pytest.raises(InvalidInput):
        build_bundle(m, run, T0, [], max_bytes=CONTEXT_MIN_BYTES - 1)


# ---------------------------------------------------------------- the embedded runtime
async def test_the_holder_reads_its_runs_history(autojump_clock: trio.testing.MockClock) -> None:
    async with runlease.open_runtime() as rt:
        task = await rt.create_task("index", start=True, max_attempts=3)
        first = await rt.open_session(agent="first")
        claim = await first.claim_next(lease_seconds=60)
        await rt.checkpoint(task.id, "parsed half the files")
        await first.fail(claim.run.id, error="out of memory", metadata={"rss": 9})
        await rt.retry_run(claim.run.id)
        second = await rt.open_session(agent="second")
        again = await second.claim_next(lease_seconds=120)
        await trio.sleep(20)

        bundle = await second.context(again.run.id)
        assert bundle.task.id == task.id
        assert bundle.run.id == again.run.id
        (prior,) = bundle.prior_attempts
        assert (prior.run_id, prior.status, prior.error) == (
            claim.run.id,
            "failed",
            "out of memory",
        )
        assert (prior.session_id, prior.claimed_by) == (first.id, "first")
        assert prior.result_summary == '{"rss":9}'
        assert [c.note for c in bundle.checkpoints] == ["parsed half the files"]
        kinds = [e.kind for e in bundle.recent_events]
        assert kinds[0] == "task_created"
        assert "run_failed" in kinds
        assert all(e.task_id == task.id for e in bundle.recent_events)
        limits = bundle.limits
        assert limits.lease_seconds == 120.0
        assert limits.seconds_left == pytest.approx(100.0)
        assert (limits.attempt, limits.attempts_left) == (2, 1)
        assert not bundle.truncated


async def test_only_the_holder_may_read_it(autojump_clock: trio.testing.MockClock) -> None:
    async with runlease.open_runtime() as rt:
        await rt.create_task("t", start=True)
        holder = await rt.open_session(agent="holder")
        other = await rt.open_session(agent="other")
        claim = await holder.claim_next(lease_seconds=60)
        run_id = claim.run.id

        with pytest.raises(LeaseRefused) as foreign:
            await other.context(run_id)
        assert foreign.value.code == AUTONOMY_FOREIGN_RUN
        with pytest.raises(NotFound) as missing:
            await holder.context("run_nope")
        assert missing.value.code == RUN_NOT_FOUND
        with pytest.raises(LeaseRefused) as no_session:
            await rt.call(runlease.operations.GetContext(run_id=run_id))
        assert no_session.value.code == "AUTONOMY_SESSION_REQUIRED"

        await trio.sleep(61)  # the lease runs out and the clock requeues the run
        with pytest.raises(LeaseRefused) as expired:
            await holder.context(run_id)
        assert expired.value.code == AUTONOMY_LEASE_EXPIRED

        again = await holder.claim_next(lease_seconds=60)
        await holder.release(again.run.id)
        with pytest.raises(LeaseRefused) as released:
            await holder.context(run_id)
        assert released.value.code == AUTONOMY_NO_ACTIVE_LEASE
        assert "read the context of" in released.value.message


# ------------------------------------------------------------------------ the socket
async def test_over_the_socket_the_bundle_is_bounded_and_says_what_it_cut(
    served: Served,
) -> None:
    rt = served.rt
    task = await rt.create_task("big", description="\x01" * 16_000, start=True)
    for i in range(50):
        await rt.checkpoint(task.id, f"step {i} " + "x" * 4000)
    async with open_client(served.path) as operator:
        opened = await operator.open_session(agent="a")
        other = await operator.open_session(agent="b")
    async with open_client(served.path, session_token=opened.token) as agent:
        claim = await agent.claim_next(lease_seconds=300)
        bundle = await agent.context(claim.run.id)
    assert encoded_size(bundle) <= CONTEXT_MAX_BYTES
    assert bundle.truncated
    assert "task.description" in bundle.shortened
    cuts = {cut.field: (cut.kept, cut.dropped) for cut in bundle.cuts}
    kept, dropped = cuts["checkpoints"]
    assert kept + dropped == 50
    assert dropped > 0
    assert [c.note.split()[1] for c in bundle.checkpoints] == [str(i) for i in range(50 - kept, 50)]
    async with open_client(served.path, session_token=other.token) as intruder:
        with pytest.raises(LeaseRefused) as refused:
            await intruder.context(claim.run.id)
    assert refused.value.code == AUTONOMY_FOREIGN_RUN
