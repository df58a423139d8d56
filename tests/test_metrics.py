"""The Prometheus metrics: every figure is read back from a scrape (``render()`` parsed by
prometheus_client's own text parser), after the runtime did something under trio's mock
clock: a claim, an expiry, a steal, a force-release, a boot that found an orphaned lease,
durable commits, a hook delivery that needed a retry."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
import trio.testing
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

import runlease
from runlease.core.event_kinds import EVENT_KINDS
from runlease.core.model import PRIORITY_RANK
from runlease.errors import NotFound
from runlease.hooks import Hook, HookDelivery, RetryPolicy
from runlease.runtime.hooks import DeliveryFailed, open_hooks
from runlease.runtime.metrics import RuntimeMetrics
from runlease.runtime.runtime import OPERATOR, Runtime
from runlease.runtime.timings import Timings

Labels = frozenset[tuple[str, str]]
README = Path(__file__).resolve().parent.parent / "README.md"


class Scrape:
    """One parsed scrape: sample values by name and labels."""

    def __init__(self, metrics: RuntimeMetrics) -> None:
        body, content_type = metrics.render()
        assert content_type == CONTENT_TYPE_LATEST
        self.samples: dict[tuple[str, Labels], float] = {}
        self.families = list(text_string_to_metric_families(body.decode()))
        for family in self.families:
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def count(self, histogram: str, **labels: str) -> float:
        return self.value(f"{histogram}_count", **labels)

    def bucket(self, histogram: str, le: str, **labels: str) -> float:
        return self.value(f"{histogram}_bucket", le=le, **labels)


def bound(rt: Runtime, *, mock_clock: bool = False) -> RuntimeMetrics:
    """Metrics of ``rt``; with ``mock_clock`` its claims are timed on trio's clock."""
    if mock_clock:
        rt.timings.clock = trio.current_time
    return RuntimeMetrics(rt, process=False)


async def test_a_claim_moves_the_claims_counter_and_the_latency_histogram_by_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        metrics = bound(rt)
        await rt.create_task("one", start=True)
        agent = await rt.open_session(agent="a")
        before = Scrape(metrics)
        assert before.value("runlease_claims_total") == 0
        assert before.count("runlease_claim_latency_seconds", waited="false") == 0
        await agent.claim_next()
        after = Scrape(metrics)
        assert after.value("runlease_claims_total") == 1
        assert after.count("runlease_claim_latency_seconds", waited="false") == 1
        assert after.count("runlease_claim_latency_seconds", waited="true") == 0
        # No work left: a claim answered "nothing to claim" is timed too, not counted.
        with pytest.raises(NotFound):
            await (await rt.open_session(agent="b")).claim_next()
        third = Scrape(metrics)
        assert third.value("runlease_claims_total") == 1
        assert third.count("runlease_claim_latency_seconds", waited="false") == 2


async def test_a_claim_that_waited_for_work_is_timed_apart_with_its_wait(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with runlease.open_runtime() as rt:
        metrics = bound(rt, mock_clock=True)
        agent = await rt.open_session(agent="a")
        claimed = trio.Event()

        async def wait_for_work() -> None:
            await agent.claim_next(wait=True, timeout=60)
            claimed.set()

        nursery.start_soon(wait_for_work)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(4)
        await rt.create_task("late", start=True)
        await claimed.wait()
        scrape = Scrape(metrics)
        histogram = "runlease_claim_latency_seconds"
        assert scrape.count(histogram, waited="true") == 1
        assert scrape.count(histogram, waited="false") == 0
        assert scrape.value(f"{histogram}_sum", waited="true") == pytest.approx(4.0)
        assert scrape.bucket(histogram, "2.5", waited="true") == 0
        assert scrape.bucket(histogram, "5.0", waited="true") == 1


async def test_a_finish_that_claims_next_counts_as_a_claim(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        metrics = bound(rt)
        await rt.create_task("first", start=True)
        await rt.create_task("second", start=True)
        agent = await rt.open_session(agent="a")
        claim = await agent.claim_next()
        finished = await agent.complete_and_next(claim.run.id)
        assert finished.claim is not None
        scrape = Scrape(metrics)
        assert scrape.value("runlease_claims_total") == 2
        assert scrape.value("runlease_completions_total") == 1
        assert scrape.count("runlease_claim_latency_seconds", waited="false") == 2


async def test_an_expiry_then_a_steal_move_their_counters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        metrics = bound(rt)
        task = await rt.create_task("slow", start=True)
        holder = await rt.open_session(agent="holder")
        thief = await rt.open_session(agent="thief")
        await holder.claim_next(lease_seconds=30)
        await trio.sleep(31)
        scrape = Scrape(metrics)
        assert scrape.value("runlease_lease_expiries_total", reason="lease_expired") == 1
        assert scrape.value("runlease_lease_expiries_total", reason="orphaned_on_boot") == 0
        assert scrape.value("runlease_steals_total") == 0
        await thief.steal(task.id)
        scrape = Scrape(metrics)
        assert scrape.value("runlease_steals_total") == 1
        # Stealing an expired lease is an agent's own action, not a force operation.
        assert scrape.value("runlease_force_operations_total", action="steal") == 0
        # Taking a live lease is: the operator forces it on the holder's behalf.
        await holder.acting_as(OPERATOR).steal(task.id, force=True, reason="rebalance")
        scrape = Scrape(metrics)
        assert scrape.value("runlease_steals_total") == 2
        assert scrape.value("runlease_force_operations_total", action="steal") == 1


async def test_force_operations_are_counted_by_action(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        metrics = bound(rt)
        runs = []
        for i in range(4):
            await rt.create_task(f"t{i}", start=True)
            agent = await rt.open_session(agent=f"a{i}")
            runs.append((await agent.claim_next()).run.id)
        await rt.force_release(runs[0], reason="stuck agent")
        scrape = Scrape(metrics)
        assert scrape.value("runlease_force_operations_total", action="release") == 1
        assert scrape.value("runlease_force_operations_total", action="fail") == 0
        await rt.force_fail(runs[1], reason="bad input")
        # Each run of a bulk force counts once under its action.
        await rt.bulk_force_release(runs[2:], reason="host lost")
        scrape = Scrape(metrics)
        assert scrape.value("runlease_force_operations_total", action="release") == 3
        assert scrape.value("runlease_force_operations_total", action="fail") == 1
        assert scrape.value("runlease_events_total", kind="run_force_released") == 3


async def test_gauges_match_the_overview(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async with runlease.open_runtime() as rt:
        metrics = bound(rt)
        for priority in ("urgent", "urgent", "low"):
            await rt.create_task(f"{priority} job", priority=priority, start=True)
        await rt.create_task("in a workspace", priority="urgent", workspace="ws1", start=True)
        held = await rt.create_task("held", start=True)
        await rt.pause_task(held.id, reason="not yet")
        agents = [await rt.open_session(agent=f"a{i}") for i in range(3)]
        await agents[0].claim_next()
        await rt.pause_scheduler(reason="maintenance")

        async def park() -> None:
            await agents[1].claim_next(wait=True, timeout=600)

        nursery.start_soon(park)
        await trio.testing.wait_all_tasks_blocked()
        view = rt.overview()
        scrape = Scrape(metrics)
        queued = {p: 0 for p in PRIORITY_RANK}
        for depth in view.queue:
            queued[depth.priority] += depth.claimable
        assert queued == {"urgent": 2, "low": 1, "medium": 0, "high": 0}
        for priority, count in queued.items():
            assert scrape.value("runlease_queued_runs", priority=priority) == count
        assert scrape.value("runlease_held_runs") == view.held_runs == 1
        assert scrape.value("runlease_leased_runs") == view.leased_runs == 1
        assert scrape.value("runlease_live_sessions") == view.live_sessions == 3
        assert scrape.value("runlease_waiting_claimers") == view.waiting_claimers == 1
        assert scrape.value("runlease_scheduler_paused") == 1
        assert scrape.value("runlease_last_event_seq") == view.last_event_seq == rt.history.last_seq
        assert scrape.value("runlease_tasks") == view.tasks == 5
        await rt.resume_scheduler()
        await trio.testing.wait_all_tasks_blocked()
        scrape = Scrape(metrics)
        assert scrape.value("runlease_scheduler_paused") == 0
        assert scrape.value("runlease_waiting_claimers") == 0
        assert scrape.value("runlease_leased_runs") == 2


# Label names a scrape may carry, and the values each may take: fixed sets, never an id.
ALLOWED_LABELS: dict[str, frozenset[str] | None] = {
    "priority": frozenset(PRIORITY_RANK),
    "waited": frozenset({"true", "false"}),
    "reason": frozenset({"lease_expired", "orphaned_on_boot", "other"}),
    "action": frozenset({"release", "fail", "steal"}),
    "kind": EVENT_KINDS | {"other"},
    "version": None,  # checked below: a version string
    "le": None,  # checked below: a number or +Inf
}
# An id's random part, or a workspace, tag or agent name of the test below.
ID_LIKE = re.compile(r"[0-9A-Z]{16}|[0-9a-f]{16}|ws\d|tag\d|agent-\d")


async def test_no_label_names_an_id_a_workspace_or_a_tag(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime(allow_agent_force=True) as rt:
        metrics = RuntimeMetrics(rt)  # with the process collector as served
        for i in range(3):
            await rt.create_task(f"task {i}", tags=[f"tag{i}"], priority="high", start=True)
            await rt.create_task(f"elsewhere {i}", workspace=f"ws{i}", start=True)
        agents = [await rt.open_session(agent=f"agent-{i}") for i in range(3)]
        first = await agents[0].claim_next(lease_seconds=10)
        second = await agents[1].claim_next()
        await agents[1].complete(second.run.id)
        await trio.sleep(11)
        await agents[2].steal(first.task.id)
        await rt.force_release(first.run.id, reason="why not")
        await agents[1].stop()
        scrape = Scrape(metrics)
    assert scrape.samples
    for (name, labels), _ in scrape.samples.items():
        for key, value in labels:
            assert key in ALLOWED_LABELS, f"{name} has label {key}={value}"
            allowed = ALLOWED_LABELS[key]
            if allowed is not None:
                assert value in allowed, f"{name} has {key}={value}"
            elif key == "le":
                assert value == "+Inf" or math.isfinite(float(value))
            else:
                assert re.fullmatch(r"[0-9A-Za-z.+-]+", value), f"{name} has {key}={value}"
            assert not ID_LIKE.search(value), f"{name} has {key}={value}"


async def test_a_durable_runtime_times_its_group_commits(tmp_path: Path) -> None:
    async with runlease.open_runtime(data_dir=tmp_path / "data") as rt:
        metrics = bound(rt)
        before = Scrape(metrics).count("runlease_journal_commit_seconds")
        await rt.create_task("one", start=True)
        await rt.create_task("two", start=True)
        after = Scrape(metrics)
        # Awaited one after the other: each create is a commit of its own.
        assert after.count("runlease_journal_commit_seconds") == before + 2
        assert after.value("runlease_journal_commit_seconds_sum") > 0


async def test_an_in_memory_runtime_has_no_commits_to_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as rt:
        metrics = bound(rt)
        await rt.create_task("one", start=True)
        assert Scrape(metrics).count("runlease_journal_commit_seconds") == 0


async def test_an_observer_from_the_start_counts_the_leases_orphaned_while_down(
    tmp_path: Path,
) -> None:
    now = [1_000_000.0]
    data = tmp_path / "data"
    async with runlease.open_runtime(lambda: now[0], data_dir=data) as rt:
        await rt.create_task("left behind", start=True)
        agent = await rt.open_session(agent="gone", ttl=86_400)
        await agent.claim_next(lease_seconds=60)
    now[0] += 3600  # the lease ran out while nothing was running
    metrics = RuntimeMetrics(process=False)
    async with runlease.open_runtime(lambda: now[0], data_dir=data, observers=[metrics]) as rt:
        metrics.bind(rt)  # the observer is already there: events are counted once
        scrape = Scrape(metrics)
        assert scrape.value("runlease_lease_expiries_total", reason="orphaned_on_boot") == 1
        assert scrape.value("runlease_lease_expiries_total", reason="lease_expired") == 0
        assert scrape.value("runlease_events_total", kind="lease_expired") == 1
        assert scrape.value("runlease_queued_runs", priority="medium") == 1


class RefuseFirst:
    """A hook target that refuses each event's first attempt."""

    def __init__(self) -> None:
        self.tried: set[int] = set()

    async def send(self, hook: Hook, delivery: HookDelivery, body: bytes) -> None:
        if delivery.seq not in self.tried:
            self.tried.add(delivery.seq)
            raise DeliveryFailed("not now")


async def test_hook_delivery_lag_runs_from_the_event_to_its_delivery(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = RetryPolicy(max_attempts=3, first_delay=20.0, factor=2.0, max_delay=60.0, jitter=0.0)
    hook = Hook(kinds=frozenset({"task_created"}), target="exec:true")
    async with runlease.open_runtime() as rt:
        metrics = bound(rt)
        async with open_hooks(
            [hook],
            rt.history,
            None,
            sender=RefuseFirst(),
            policy=policy,
            delivery_lag=rt.timings.hook_lag,
        ):
            await rt.create_task("announce me")
            await trio.sleep(policy.nominal(1) + 1)
        scrape = Scrape(metrics)
    lag = "runlease_hook_delivery_lag_seconds"
    assert scrape.count(lag) == 1
    assert scrape.value(f"{lag}_sum") == pytest.approx(policy.nominal(1))
    assert scrape.bucket(lag, "10.0") == 0
    assert scrape.bucket(lag, "30.0") == 1


async def test_two_metrics_objects_keep_their_own_registries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with runlease.open_runtime() as first, runlease.open_runtime() as second:
        one, two = bound(first), bound(second)
        await first.create_task("only here", start=True)
        assert Scrape(one).value("runlease_events_total", kind="task_created") == 1
        assert Scrape(two).value("runlease_events_total", kind="task_created") == 0


async def test_every_metric_is_described_in_the_readme(
    autojump_clock: trio.testing.MockClock,
) -> None:
    readme = README.read_text()
    async with runlease.open_runtime() as rt:
        names = {family.name for family in Scrape(bound(rt)).families}
    assert len(names) > 20
    section = readme.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    for name in sorted(names):
        assert f"`{name}" in section, f"{name} is not described in the README's Metrics"


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0.0, [1, 0, 0]), (1.0, [1, 0, 0]), (1.5, [0, 1, 0]), (2.0, [0, 1, 0]), (9.0, [0, 0, 1])],
)
def test_timings_put_a_value_in_the_first_bucket_at_or_above_it(
    seconds: float, expected: Sequence[int]
) -> None:
    timings = Timings((1.0, 2.0))
    timings.observe(seconds)
    assert timings.counts == expected
    assert timings.count == 1
    assert timings.total == seconds
    cumulative = timings.cumulative()
    assert [b for b, _ in cumulative] == [1.0, 2.0, math.inf]
    assert cumulative[-1][1] == 1


def test_timings_refuse_unordered_bounds() -> None:
    with pytest.raises(ValueError, match="ascending"):
        Timings((2.0, 1.0))
