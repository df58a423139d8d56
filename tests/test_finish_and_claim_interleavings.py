"""Finish-and-claim under random interleavings, with trio's mock clock driving time.

Agents loop on "finish my run and wait for the next one" while new work arrives at random
moments. Whatever the interleaving: every finish is recorded exactly once, no run is held by
two agents at once, a wait that gets nothing ends exactly at its timeout with
NO_CLAIMABLE_RUN, and no waiter gives up while a run it could take sits in the queue.

Agents hold runs and wait for whole quarters of a second, and the j-th arrival comes at an
odd multiple of 0.125 s plus j/1024 s. So every moment an agent acts is a quarter-second
step from the start or from one arrival, an arrival never lands on the very instant a wait
ends, and the check "nobody gave up while work was queued" is exact.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import runlease
from runlease.core.model import Claim, Finished
from runlease.errors import NO_CLAIMABLE_RUN, RunleaseError

LEASE_SECONDS = 3600  # far beyond any script: no lease expires here
QUARTERS = st.integers(0, 12).map(lambda n: n / 4)


@dataclass
class Agent:
    first_wait: float
    waits: list[float]  # the timeout of each finish-and-claim, used in turn
    work: list[float]  # how long each run is held before it is finished, used in turn
    fail_every: int  # every n-th finish is a failure (0: never)


@dataclass
class Script:
    agents: list[Agent]
    initial_tasks: int
    arrivals: list[tuple[float, int]]  # (time, how many tasks) after the start


@dataclass
class Record:
    held: dict[str, str] = field(default_factory=dict)  # run id -> agent holding it now
    claimed: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    timeouts: int = 0


agents = st.builds(
    Agent,
    first_wait=st.integers(1, 40).map(lambda n: n / 4),
    waits=st.lists(st.integers(1, 40).map(lambda n: n / 4), min_size=1, max_size=4),
    work=st.lists(QUARTERS, min_size=1, max_size=4),
    fail_every=st.integers(0, 3),
)
scripts = st.builds(
    Script,
    agents=st.lists(agents, min_size=1, max_size=4),
    initial_tasks=st.integers(0, 4),
    arrivals=st.lists(
        st.tuples(st.integers(0, 60).map(lambda n: n / 4 + 0.125), st.integers(1, 3)),
        max_size=5,
    ),
)


def _take(record: Record, name: str, claim: Claim) -> str:
    run_id = claim.run.id
    assert run_id not in record.held, f"{run_id} leased to {name} while {record.held[run_id]}"
    assert run_id not in record.finished, f"{run_id} claimed again after its finish"
    record.held[run_id] = name
    record.claimed.append(run_id)
    return run_id


def _gave_up(rt: runlease.Runtime, record: Record, waited: float, timeout: float) -> None:
    assert waited == pytest.approx(timeout, abs=1e-9), "a wait ended before its timeout"
    assert rt.status().queued_runs == 0, "a waiter gave up while a run was queued"
    record.timeouts += 1


async def _run_agent(rt: runlease.Runtime, record: Record, name: str, agent: Agent) -> None:
    session = await rt.open_session(agent=name)
    began = trio.current_time()
    refusal: RunleaseError | None = None
    try:
        claim = await session.claim_next(
            wait=True, timeout=agent.first_wait, lease_seconds=LEASE_SECONDS
        )
    except RunleaseError as exc:
        refusal = exc
    if refusal is not None:
        assert refusal.code == NO_CLAIMABLE_RUN
        _gave_up(rt, record, trio.current_time() - began, agent.first_wait)
        return
    run_id = _take(record, name, claim)
    for turn in range(1_000):
        await trio.sleep(agent.work[turn % len(agent.work)])
        timeout = agent.waits[turn % len(agent.waits)]
        fail = agent.fail_every > 0 and turn % agent.fail_every == agent.fail_every - 1
        del record.held[run_id]
        began = trio.current_time()
        finished: Finished
        if fail:
            finished = await session.fail_and_next(
                run_id, error="broke", wait=True, timeout=timeout, lease_seconds=LEASE_SECONDS
            )
        else:
            finished = await session.complete_and_next(
                run_id, wait=True, timeout=timeout, lease_seconds=LEASE_SECONDS
            )
        assert finished.run.id == run_id
        assert finished.run.status == ("failed" if fail else "completed")
        record.finished.append(run_id)
        if finished.claim is None:
            assert finished.no_claim is not None
            assert finished.no_claim.code == NO_CLAIMABLE_RUN
            _gave_up(rt, record, trio.current_time() - began, timeout)
            return
        run_id = _take(record, name, finished.claim)
    raise AssertionError("an agent looped far longer than any script allows")


async def _play(script: Script) -> None:
    async with runlease.open_runtime() as rt:
        created = [await rt.create_task(f"t{i}", start=True) for i in range(script.initial_tasks)]
        record = Record()
        async with trio.open_nursery() as nursery:
            for i, agent in enumerate(script.agents):
                nursery.start_soon(_run_agent, rt, record, f"agent-{i}", agent)
            start = trio.current_time()
            for j, (at, count) in enumerate(sorted(script.arrivals)):
                await trio.sleep_until(start + at + j / 1024)
                for _ in range(count):
                    created.append(await rt.create_task("later", start=True))

        assert record.held == {}
        assert len(record.claimed) == len(set(record.claimed)), "a run was claimed twice"
        assert sorted(record.finished) == sorted(record.claimed), "a claimed run went unfinished"
        assert record.timeouts == len(script.agents)  # every agent ends by a timeout
        runs = [rt.get_task(task.id).current_run_id for task in created]
        claimed = set(record.claimed)
        for run_id in runs:
            assert run_id is not None
            status = rt.get_run(run_id).status
            assert status in (("completed", "failed") if run_id in claimed else ("queued",))
        finishes = Counter(
            event.run_id for event in rt.events() if event.kind in ("run_completed", "run_failed")
        )
        claims = Counter(event.run_id for event in rt.events() if event.kind == "run_claimed")
        assert finishes == Counter(record.finished), "a finish was not recorded exactly once"
        assert claims == Counter(record.claimed)


@settings(max_examples=min(settings().max_examples, 300), deadline=None)
@given(script=scripts)
def test_finishers_and_waiters_in_any_interleaving(script: Script) -> None:
    trio.run(_play, script, clock=trio.testing.MockClock(autojump_threshold=0))
