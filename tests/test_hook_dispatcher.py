"""The hook dispatcher under trio's mock clock, with a fake event history and a fake sender.

Ordering, retries and their backoff bounds, giving up, the cursor and the history hold
moving only after a send succeeded, the delivery log's persistence and ``retry``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import pytest
import trio
import trio.testing

from runlease.core.model import Event
from runlease.errors import HOOK_DELIVERY_NOT_FOUND, InvalidInput, NotFound
from runlease.hooks import DeliveryStatus, Hook, HookDelivery, RetryPolicy, delivery_id, event_body
from runlease.runtime.hooks import (
    WRITE_INTERVAL,
    DeliveryFailed,
    DeliveryLog,
    HookDispatcher,
    HookService,
)

POLICY = RetryPolicy(max_attempts=4, first_delay=10.0, factor=3.0, max_delay=60.0, jitter=0.5)
KINDS = frozenset({"run_completed", "run_failed"})


class FakeHistory:
    """The EventSource contract over a list: read, last_seq, wait_beyond, hold."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.holds: dict[str, int | None] = {}
        self._changed = trio.Event()

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else 0

    def publish(self, *kinds: str) -> list[Event]:
        out = []
        for kind in kinds:
            event = Event(seq=self.last_seq + 1, kind=kind, at=1000.0 + self.last_seq)
            self.events.append(event)
            out.append(event)
        self._changed.set()
        self._changed = trio.Event()
        return out

    def read(
        self, *, after_seq: int = 0, limit: int = 100, kinds: frozenset[str] | None = None
    ) -> list[Event]:
        found = [e for e in self.events if e.seq > after_seq and (kinds is None or e.kind in kinds)]
        return found[:limit]

    async def wait_beyond(self, seq: int) -> None:
        while self.last_seq <= seq:
            await self._changed.wait()

    def hold(self, holder: str, seq: int | None) -> None:
        self.holds[holder] = seq


class FakeSender:
    """Records every attempt; fails an event's first ``failures[seq]`` attempts (-1: all).

    At each attempt it also checks the at-least-once rule: the event is not yet behind the
    hook's cursor, nor released by its hold, nor recorded as delivered.
    """

    def __init__(self, deliveries: DeliveryLog, failures: dict[int, int] | None = None) -> None:
        self.deliveries = deliveries
        self.failures = dict(failures or {})
        self.attempts: list[tuple[int, float, str]] = []
        self.bodies: list[bytes] = []
        self.history: FakeHistory | None = None
        # Off for a delivery sent again by hand: its cursor has moved on by design.
        self.check_cursor = True
        self.sent = trio.Event()

    async def send(self, hook: Hook, delivery: HookDelivery, body: bytes) -> None:
        seq = delivery.seq
        cursor = self.deliveries.cursor(hook.name)
        assert cursor is not None
        assert cursor < seq or not self.check_cursor
        if self.history is not None:
            hold = self.history.holds[hook.name]
            assert hold is not None
            assert hold < seq
        recorded = self.deliveries.get(hook.name, seq)
        assert recorded is None or recorded[0].status != "delivered"
        assert delivery.id == delivery_id(hook.name, seq)
        self.attempts.append((seq, trio.current_time(), delivery.id))
        self.bodies.append(body)
        self.sent.set()
        self.sent = trio.Event()
        left = self.failures.get(seq, 0)
        if left:
            self.failures[seq] = left - 1 if left > 0 else left
            raise DeliveryFailed(f"refused {seq}")

    def seqs(self) -> list[int]:
        return [seq for seq, _, _ in self.attempts]


class FakeStore:
    """The HookLogStore contract in a dict, counting writes."""

    def __init__(self) -> None:
        self.entries: dict[bytes, bytes] = {}
        self.writes = 0

    def read_hook_log(self) -> list[tuple[bytes, bytes]]:
        return sorted(self.entries.items())

    def write_hook_log(
        self, puts: Sequence[tuple[bytes, bytes]], deletes: Sequence[bytes] = ()
    ) -> None:
        self.writes += 1
        for key in deletes:
            self.entries.pop(key, None)
        self.entries.update(puts)


def exec_hook(kinds: frozenset[str] | None = KINDS) -> Hook:
    return Hook(kinds=kinds, target="exec:true")


async def settle(history: FakeHistory, dispatcher: HookDispatcher) -> None:
    """Let the dispatcher work until it is done with everything published (mock time)."""
    with trio.fail_after(24 * 3600):
        while dispatcher.cursor < history.last_seq:  # noqa: ASYNC110 - mock time
            await trio.sleep(1)
    await trio.testing.wait_all_tasks_blocked()


async def test_delivers_only_its_kinds_in_seq_order_and_moves_cursor_and_hold(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    history = FakeHistory()
    history.publish("task_created")  # before the hook started: not sent
    deliveries = DeliveryLog()
    sender = FakeSender(deliveries)
    sender.history = history
    hook = exec_hook()
    dispatcher = HookDispatcher(hook, history, sender, deliveries, policy=POLICY)
    await nursery.start(dispatcher.run)
    assert dispatcher.cursor == 1
    history.publish("run_claimed", "run_completed", "lease_renewed", "run_failed", "run_completed")
    await settle(history, dispatcher)
    assert sender.seqs() == [3, 5, 6]
    assert dispatcher.cursor == deliveries.cursor(hook.name) == history.holds[hook.name] == 6
    delivered = deliveries.deliveries(status="delivered")
    assert sorted(d.seq for d in delivered) == [3, 5, 6]
    assert all(d.attempts == 1 and d.delivered_at is not None for d in delivered)
    # Events of other kinds only move the cursor on.
    history.publish("lease_renewed", "lease_renewed")
    await settle(history, dispatcher)
    assert sender.seqs() == [3, 5, 6]
    assert history.holds[hook.name] == 8


async def test_retries_back_off_within_the_policy_bounds_then_deliver(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    history = FakeHistory()
    deliveries = DeliveryLog()
    sender = FakeSender(deliveries, failures={1: 3})
    sender.history = history
    hook = exec_hook()
    dispatcher = HookDispatcher(
        hook, history, sender, deliveries, policy=POLICY, draw=random.Random(7).random
    )
    await nursery.start(dispatcher.run)
    history.publish("run_completed", "run_failed")
    await settle(history, dispatcher)
    times = [at for seq, at, _ in sender.attempts if seq == 1]
    assert len(times) == 4
    for failed, (before, after) in enumerate(itertools.pairwise(times), start=1):
        nominal = POLICY.nominal(failed)
        assert nominal * (1 - POLICY.jitter) <= after - before <= nominal
    # The second event waited for the first: order is kept across retries.
    assert sender.seqs() == [1, 1, 1, 1, 2]
    (first,) = [d for d in deliveries.deliveries() if d.seq == 1]
    assert first.status == "delivered"
    assert first.attempts == 4
    assert first.last_error == "refused 1"


async def test_a_pending_delivery_is_recorded_with_its_next_attempt(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    history = FakeHistory()
    deliveries = DeliveryLog()
    sender = FakeSender(deliveries, failures={1: -1})
    hook = exec_hook()
    dispatcher = HookDispatcher(
        hook, history, sender, deliveries, policy=POLICY, wall_clock=trio.current_time
    )
    await nursery.start(dispatcher.run)
    history.publish("run_completed")
    with trio.fail_after(60):
        await sender.sent.wait()
    await trio.testing.wait_all_tasks_blocked()
    (pending,) = deliveries.deliveries(status="pending")
    assert pending.attempts == 1
    assert pending.last_error == "refused 1"
    assert pending.next_attempt_at is not None
    assert pending.next_attempt_at - trio.current_time() <= POLICY.nominal(1)
    assert deliveries.cursor(hook.name) == 0
    assert history.holds[hook.name] == 0


async def test_gives_up_after_max_attempts_and_moves_on(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    history = FakeHistory()
    deliveries = DeliveryLog()
    sender = FakeSender(deliveries, failures={1: -1})
    hook = exec_hook()
    dispatcher = HookDispatcher(hook, history, sender, deliveries, policy=POLICY)
    await nursery.start(dispatcher.run)
    start = trio.current_time()
    history.publish("run_completed", "run_completed")
    await settle(history, dispatcher)
    assert sender.seqs() == [1, 1, 1, 1, 2]
    longest = sum(POLICY.nominal(n) for n in range(1, POLICY.max_attempts))
    assert sender.attempts[3][1] - start <= longest
    (failed,) = deliveries.deliveries(status="failed")
    assert (failed.seq, failed.attempts, failed.last_error) == (1, 4, "refused 1")
    assert failed.next_attempt_at is None
    assert deliveries.cursor(hook.name) == 2
    assert history.holds[hook.name] == 2


async def test_retry_sends_a_failed_delivery_again(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    history = FakeHistory()
    deliveries = DeliveryLog()
    sender = FakeSender(deliveries, failures={1: 4})
    hook = exec_hook()
    service = HookService([hook], history, sender, deliveries, policy=POLICY)
    await nursery.start(service.run)
    dispatcher = service.dispatchers[hook.name]
    (event,) = history.publish("run_completed")
    await settle(history, dispatcher)
    (failed,) = service.report(status="failed").deliveries
    with pytest.raises(NotFound) as missing:
        service.retry(failed.id + "0")
    assert missing.value.code == HOOK_DELIVERY_NOT_FOUND
    sender.check_cursor = False
    again = service.retry(failed.id)
    assert again.status == "pending"
    with trio.fail_after(3600):
        while sender.seqs().count(1) < 5:
            await sender.sent.wait()
    await trio.testing.wait_all_tasks_blocked()
    (done,) = service.report(hook=hook.name).deliveries
    assert (done.id, done.status, done.attempts) == (failed.id, "delivered", 5)
    # The body sent again is the event's, byte for byte, with the same delivery id.
    assert {delivery for seq, _, delivery in sender.attempts} == {failed.id}
    assert set(sender.bodies) == {event_body(event)}
    with pytest.raises(InvalidInput):
        service.retry(failed.id)  # delivered: nothing to retry
    (info,) = service.report().hooks
    assert (info.name, info.cursor, info.failed, info.pending) == (hook.name, 1, 0, 0)


async def test_the_log_reaches_the_store_after_the_send_and_a_new_log_resumes_there(
    autojump_clock: trio.testing.MockClock,
) -> None:
    history = FakeHistory()
    store = FakeStore()
    hook = exec_hook(None)
    stored_at_send: list[dict[bytes, bytes]] = []

    class Watching(FakeSender):
        async def send(self, hook: Hook, delivery: HookDelivery, body: bytes) -> None:
            stored_at_send.append(dict(store.entries))
            await super().send(hook, delivery, body)

    async with trio.open_nursery() as nursery:
        deliveries = DeliveryLog(store)
        sender = Watching(deliveries)
        service = HookService([hook], history, sender, deliveries, policy=POLICY)
        await nursery.start(service.run)
        history.publish("task_created", "task_updated")
        await settle(history, service.dispatchers[hook.name])
        await deliveries.flush()
        nursery.cancel_scope.cancel()
    # When event 2 was sent, the store did not yet say it was delivered, nor had its cursor
    # passed it: a crash there sends it again.
    reloaded = DeliveryLog()
    reloaded.load(stored_at_send[1].items())
    assert (reloaded.cursor(hook.name) or 0) < 2
    assert reloaded.get(hook.name, 2) is None
    # Everything is written by now; a restarted dispatcher resumes after event 2.
    resumed = DeliveryLog(store)
    resumed.load(store.read_hook_log())
    assert resumed.cursor(hook.name) == 2
    assert [d.seq for d in resumed.deliveries(status="delivered")] == [2, 1]
    async with trio.open_nursery() as nursery:
        fresh = FakeSender(resumed)
        dispatcher = HookDispatcher(hook, history, fresh, resumed, policy=POLICY)
        await nursery.start(dispatcher.run)
        history.publish("task_deleted")
        await settle(history, dispatcher)
        assert fresh.seqs() == [3]
        nursery.cancel_scope.cancel()


async def test_log_writes_are_batched(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    history = FakeHistory()
    store = FakeStore()
    deliveries = DeliveryLog(store)
    hook = exec_hook(None)
    service = HookService([hook], history, FakeSender(deliveries), deliveries, policy=POLICY)
    await nursery.start(service.run)
    history.publish(*["task_updated"] * 200)
    await settle(history, service.dispatchers[hook.name])
    resumed = DeliveryLog()
    with trio.fail_after(3600):
        # The writer runs on a worker thread, which mock time does not wait for.
        while resumed.cursor(hook.name) != 200:
            await trio.sleep(WRITE_INTERVAL)
            resumed = DeliveryLog()
            resumed.load(store.read_hook_log())
    assert 1 <= store.writes < 20
    assert len(resumed.deliveries(status="delivered")) == 200


def test_the_log_keeps_the_newest_deliveries_per_hook() -> None:
    store = FakeStore()
    deliveries = DeliveryLog(store, keep_delivered=3, keep_failed=2)
    for seq in range(1, 8):
        status: DeliveryStatus = "failed" if seq % 2 else "delivered"
        deliveries.record(
            HookDelivery(id=f"h.{seq}", hook="h", seq=seq, kind="k", status=status, updated_at=seq),
            b"{}",
        )
    assert [d.seq for d in deliveries.deliveries()] == [7, 6, 5, 4, 2]
    # A delivered record drops its body; a failed one keeps it for a retry.
    kept_delivered, kept_failed = deliveries.get("h", 6), deliveries.get("h", 7)
    assert kept_delivered is not None
    assert kept_delivered[1] is None
    assert kept_failed is not None
    assert kept_failed[1] == b"{}"


def test_retry_policy_defaults_spread_eight_attempts_over_about_an_hour() -> None:
    policy = RetryPolicy()
    waits = [policy.nominal(n) for n in range(1, policy.max_attempts)]
    assert policy.max_attempts == 8
    assert waits == sorted(waits)
    assert 45 * 60 <= sum(waits) <= 75 * 60
    assert policy.delay(3, 0.0) == policy.nominal(3)
    assert policy.delay(3, 0.999) >= policy.nominal(3) * (1 - policy.jitter)


async def test_a_failing_history_read_pauses_the_hook_instead_of_ending_it(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    class Flaky(FakeHistory):
        failures = 1

        def read(
            self, *, after_seq: int = 0, limit: int = 100, kinds: frozenset[str] | None = None
        ) -> list[Event]:
            if self.failures and self.events:
                self.failures -= 1
                raise OSError("the disk hiccuped")
            return super().read(after_seq=after_seq, limit=limit, kinds=kinds)

    history = Flaky()
    deliveries = DeliveryLog()
    sender = FakeSender(deliveries)
    dispatcher = HookDispatcher(exec_hook(), history, sender, deliveries, policy=POLICY)
    await nursery.start(dispatcher.run)
    history.publish("run_completed")
    await settle(history, dispatcher)
    assert sender.seqs() == [1]
    assert history.failures == 0
