"""Hook delivery: one dispatcher per hook, reading the durable event log, at least once.

The outbox is the event history itself. Each hook keeps a cursor, the last event seq it is
done with (delivered, given up, or not of its kinds), and holds the history after it so
retention never drops an event it has not sent. Its dispatcher reads the events after the
cursor, in order, and sends each one, retrying with exponential backoff and jitter
(:class:`~runlease.hooks.RetryPolicy`); an event that fails every attempt is recorded as
failed, with its body, and the cursor moves on, so one poisoned event cannot stall the
hook (``hook retry`` sends it again later).

At least once: a delivery is recorded, and the cursor moved, only after the send
succeeded, and both reach the store after that. A crash between the send and the record
sends the event again after the restart, with the same delivery id, so a receiver can drop
the repeat.

The claim path never notices a hook: dispatchers run in their own trio tasks, share no
lock with the commit, read the history without blocking it, and the delivery log is
written by its own task, batched, on a worker thread, under the store's LMDB mutex only
(appends to the journal do not take it). Memory is bounded: a dispatcher holds one batch
of events, and the log keeps the newest deliveries of each hook.
"""

from __future__ import annotations

import logging
import os
import random
import struct
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, Protocol

import msgspec
import trio

from runlease.core.model import Event
from runlease.errors import HOOK_DELIVERY_NOT_FOUND, InvalidInput, NotFound
from runlease.hooks import (
    ALL_KINDS,
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    DeliveryStatus,
    Hook,
    HookDelivery,
    HookInfo,
    HookReport,
    RetryPolicy,
    delivery_id,
    event_body,
    sign,
)
from runlease.runtime.timings import Timings

log = logging.getLogger("runlease.hooks")

# Events a dispatcher reads from the history at a time.
READ_BATCH: Final = 256
# Seconds a dispatcher waits after an unexpected failure before it reads again.
DISPATCHER_PAUSE: Final = 5.0
# The delivery log's writer waits this long after a write before the next one, so a busy
# hook costs a few LMDB commits a second, not one per event.
WRITE_INTERVAL: Final = 0.25
# Deliveries kept per hook, newest first: delivered ones, and failed ones (with bodies).
KEEP_DELIVERED: Final = 1000
KEEP_FAILED: Final = 10_000
# What an error message may hold (a receiver's answer can be long).
ERROR_CHARS: Final = 500
DEFAULT_PAGE: Final = 100
MAX_PAGE: Final = 1000


# ------------------------------------------------------------------------ what we use
class EventSource(Protocol):
    """What a dispatcher needs from the event history (the runtime's ``history``)."""

    @property
    def last_seq(self) -> int: ...

    def read(
        self, *, after_seq: int = 0, limit: int = 100, kinds: frozenset[str] | None = None
    ) -> list[Event]: ...

    async def wait_beyond(self, seq: int) -> None: ...

    def hold(self, holder: str, seq: int | None) -> None: ...


class HookLogStore(Protocol):
    """Where the delivery log is kept (the runtime's Store)."""

    def read_hook_log(self) -> list[tuple[bytes, bytes]]: ...

    def write_hook_log(
        self, puts: Sequence[tuple[bytes, bytes]], deletes: Sequence[bytes] = ()
    ) -> None: ...


class DeliveryFailed(Exception):
    """A send that did not reach its target; the message says why."""


class Sender(Protocol):
    async def send(self, hook: Hook, delivery: HookDelivery, body: bytes) -> None:
        """Deliver ``body``; return once the target accepted it, else raise DeliveryFailed."""


# --------------------------------------------------------------------------- senders
class HttpSender:
    """POSTs the body with its signature, timestamp and delivery id; a 2xx is delivered."""

    def __init__(self) -> None:
        # Loaded only when a URL hook is configured: httpx is not cheap to import.
        import httpx

        self._httpx = httpx
        self._client = httpx.AsyncClient(follow_redirects=False)

    async def send(self, hook: Hook, delivery: HookDelivery, body: bytes) -> None:
        httpx = self._httpx
        assert hook.secret is not None  # Hook refuses a URL without one
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "runlease-hooks",
            SIGNATURE_HEADER: sign(hook.secret, body),
            TIMESTAMP_HEADER: str(int(time.time())),
            DELIVERY_HEADER: delivery.id,
            EVENT_HEADER: delivery.kind,
        }
        timeout = httpx.Timeout(hook.timeout, connect=hook.connect_timeout)
        try:
            with trio.fail_after(hook.timeout):
                response = await self._client.post(
                    hook.target, content=body, headers=headers, timeout=timeout
                )
        except trio.TooSlowError:
            raise DeliveryFailed(f"no answer within {hook.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from None
        if not 200 <= response.status_code < 300:
            text = response.text[:200]
            raise DeliveryFailed(f"HTTP {response.status_code}: {text}")

    async def aclose(self) -> None:
        await self._client.aclose()


class ExecSender:
    """Runs the command (no shell) with the body on stdin; exit status 0 is delivered."""

    async def send(self, hook: Hook, delivery: HookDelivery, body: bytes) -> None:
        env_extra = {
            "RUNLEASE_DELIVERY_ID": delivery.id,
            "RUNLEASE_EVENT_SEQ": str(delivery.seq),
            "RUNLEASE_EVENT_KIND": delivery.kind,
        }
        env = {**os.environ, **env_extra}
        env.pop("RUNLEASE_HOOK_SECRET", None)
        try:
            with trio.fail_after(hook.timeout):
                done = await trio.run_process(
                    hook.command,
                    stdin=body,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                    env=env,
                )
        except trio.TooSlowError:
            raise DeliveryFailed(f"the command ran longer than {hook.timeout:g} s") from None
        except OSError as exc:
            raise DeliveryFailed(f"cannot run {hook.command[0]!r}: {exc.strerror}") from None
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip()[-200:]
            raise DeliveryFailed(f"exit status {done.returncode}" + (f": {tail}" if tail else ""))


class TargetSender:
    """Sends each hook's deliveries the way its target says (URL or exec:)."""

    def __init__(self, hooks: Iterable[Hook]) -> None:
        self._http = HttpSender() if any(not hook.is_exec for hook in hooks) else None
        self._exec = ExecSender()

    async def send(self, hook: Hook, delivery: HookDelivery, body: bytes) -> None:
        if hook.is_exec:
            await self._exec.send(hook, delivery, body)
        else:
            assert self._http is not None
            await self._http.send(hook, delivery, body)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


# ---------------------------------------------------------------------- delivery log
class _Stored(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A delivery as stored: the record, and the body while it may be sent again."""

    delivery: HookDelivery
    body: bytes | None = None


_SEQ: Final = struct.Struct(">Q")
_CURSOR_PREFIX: Final = b"c/"
_DELIVERY_PREFIX: Final = b"d/"
_encode = msgspec.msgpack.Encoder().encode
_decode_stored = msgspec.msgpack.Decoder(_Stored).decode


def _cursor_key(hook: str) -> bytes:
    return _CURSOR_PREFIX + hook.encode()


def _delivery_key(hook: str, seq: int) -> bytes:
    return _DELIVERY_PREFIX + hook.encode() + b"/" + _SEQ.pack(seq)


class _HookEntries:
    """One hook's cursor and its newest deliveries: by event seq, and per status in the
    order they were last recorded (oldest first), so trimming one costs O(1)."""

    def __init__(self) -> None:
        self.cursor: int | None = None
        self.deliveries: dict[int, _Stored] = {}
        self.by_status: dict[str, OrderedDict[int, None]] = {
            status: OrderedDict() for status in ("pending", "delivered", "failed")
        }

    def put(self, stored: _Stored) -> None:
        seq = stored.delivery.seq
        old = self.deliveries.get(seq)
        if old is not None:
            del self.by_status[old.delivery.status][seq]
        self.deliveries[seq] = stored
        self.by_status[stored.delivery.status][seq] = None


class DeliveryLog:
    """The hooks' cursors and deliveries, in memory, written to the store in batches.

    Changes are marked dirty and written by :meth:`run_writer` (a trio task) on a worker
    thread: nothing here blocks or locks while the write runs. Without a store (an
    in-memory runtime) the log lives in memory only. Per hook it keeps the newest
    ``keep_delivered`` delivered records and ``keep_failed`` failed ones.
    """

    def __init__(
        self,
        store: HookLogStore | None = None,
        *,
        keep_delivered: int = KEEP_DELIVERED,
        keep_failed: int = KEEP_FAILED,
    ) -> None:
        self._store = store
        self._keep = {"delivered": keep_delivered, "failed": keep_failed}
        self._hooks: dict[str, _HookEntries] = {}
        self._dirty: dict[bytes, bytes | None] = {}
        self._changed = trio.Event()
        # One write at a time, so a newer batch never lands before an older one. Only
        # writers wait on it; recording goes on meanwhile.
        self._writing = trio.Lock()
        self.failure: str | None = None

    # ------------------------------------------------------------------- loading
    def load(self, entries: Iterable[tuple[bytes, bytes]]) -> None:
        loaded: list[_Stored] = []
        for key, value in entries:
            if key.startswith(_CURSOR_PREFIX):
                hook = key[len(_CURSOR_PREFIX) :].decode()
                self._entries(hook).cursor = _SEQ.unpack(value)[0]
            elif key.startswith(_DELIVERY_PREFIX):
                try:
                    stored = _decode_stored(value)
                except msgspec.DecodeError:
                    log.warning("hook_log_entry_unreadable", extra={"fields": {"key": repr(key)}})
                    continue
                loaded.append(stored)
        loaded.sort(key=lambda stored: stored.delivery.updated_at)
        for stored in loaded:
            self._entries(stored.delivery.hook).put(stored)

    def _entries(self, hook: str) -> _HookEntries:
        entries = self._hooks.get(hook)
        if entries is None:
            entries = self._hooks[hook] = _HookEntries()
        return entries

    # ----------------------------------------------------------------- reading
    def cursor(self, hook: str) -> int | None:
        entries = self._hooks.get(hook)
        return None if entries is None else entries.cursor

    def get(self, hook: str, seq: int) -> tuple[HookDelivery, bytes | None] | None:
        entries = self._hooks.get(hook)
        stored = None if entries is None else entries.deliveries.get(seq)
        return None if stored is None else (stored.delivery, stored.body)

    def deliveries(
        self, *, status: DeliveryStatus | None = None, hook: str | None = None
    ) -> list[HookDelivery]:
        """Matching deliveries, newest first (by update time, then seq)."""
        out = [
            stored.delivery
            for name, entries in self._hooks.items()
            if hook is None or name == hook
            for stored in entries.deliveries.values()
            if status is None or stored.delivery.status == status
        ]
        out.sort(key=lambda d: (d.updated_at, d.seq), reverse=True)
        return out

    def counts(self, hook: str) -> dict[str, int]:
        entries = self._hooks.get(hook) or _HookEntries()
        return {status: len(seqs) for status, seqs in entries.by_status.items()}

    # ----------------------------------------------------------------- changing
    def set_cursor(self, hook: str, seq: int) -> None:
        entries = self._entries(hook)
        if entries.cursor == seq:
            return
        entries.cursor = seq
        self._mark(_cursor_key(hook), _SEQ.pack(seq))

    def record(self, delivery: HookDelivery, body: bytes | None = None) -> None:
        """Store ``delivery`` (replacing the one for the same event); the body is kept
        only while it may be sent again (pending or failed)."""
        entries = self._entries(delivery.hook)
        stored = _Stored(delivery=delivery, body=None if delivery.status == "delivered" else body)
        entries.put(stored)
        self._mark(_delivery_key(delivery.hook, delivery.seq), _encode(stored))
        self._trim(delivery.hook, entries, delivery.status)

    def _trim(self, hook: str, entries: _HookEntries, status: DeliveryStatus) -> None:
        keep = self._keep.get(status)
        if keep is None:
            return
        same = entries.by_status[status]
        while len(same) > keep:
            seq, _ = same.popitem(last=False)
            del entries.deliveries[seq]
            self._mark(_delivery_key(hook, seq), None)

    def _mark(self, key: bytes, value: bytes | None) -> None:
        if self._store is None:
            return
        self._dirty[key] = value
        self._changed.set()

    # ----------------------------------------------------------------- writing
    async def run_writer(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Write what changed, a batch at a time, until cancelled."""
        task_status.started()
        while True:
            await self._changed.wait()
            await self.flush()
            await trio.sleep(WRITE_INTERVAL)

    async def flush(self) -> None:
        """Write every change made so far (the log stays usable while it runs)."""
        async with self._writing:
            await self._write_batch()

    async def _write_batch(self) -> None:
        if self._store is None or not self._dirty:
            self._changed = trio.Event()
            return
        batch, self._dirty = self._dirty, {}
        self._changed = trio.Event()
        puts = [(key, value) for key, value in batch.items() if value is not None]
        deletes = [key for key, value in batch.items() if value is None]
        store = self._store
        try:
            await trio.to_thread.run_sync(store.write_hook_log, puts, deletes)
        except Exception as exc:
            # Not written: keep the batch (newer changes to a key win) and try again later.
            # Delivery goes on; at worst a crash now re-sends what this batch recorded.
            for key, value in batch.items():
                self._dirty.setdefault(key, value)
            self._changed.set()
            if self.failure is None:
                log.warning("hook_log_write_failed", extra={"fields": {"error": str(exc)}})
            self.failure = str(exc)
        else:
            self.failure = None


# ---------------------------------------------------------------------- dispatching
class HookDispatcher:
    """Delivers one hook's events in seq order (see the module docstring)."""

    def __init__(
        self,
        hook: Hook,
        source: EventSource,
        sender: Sender,
        deliveries: DeliveryLog,
        *,
        policy: RetryPolicy | None = None,
        draw: Callable[[], float] = random.random,
        wall_clock: Callable[[], float] = time.time,
        delivery_lag: Timings | None = None,
    ) -> None:
        self.hook = hook
        self._lag = delivery_lag
        self.name = hook.name
        self._source = source
        self._sender = sender
        self._log = deliveries
        self._policy = policy or RetryPolicy()
        self._draw = draw
        self._wall = wall_clock
        self._retries: deque[int] = deque()
        self._woken = trio.Event()
        self.cursor = 0

    def retry(self, seq: int) -> None:
        """Queue the failed delivery of event ``seq`` to be sent again."""
        if seq not in self._retries:
            self._retries.append(seq)
        self._woken.set()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        source, name, kinds = self._source, self.name, self.hook.kinds
        cursor = self._log.cursor(name)
        if cursor is None:
            # A new hook hears about what happens from now on, not the whole history.
            cursor = source.last_seq
            self._log.set_cursor(name, cursor)
        self.cursor = cursor
        source.hold(name, cursor)
        task_status.started()
        while True:
            try:
                if not await self._round(kinds):
                    return
            except Exception:
                # A failed read of the history must not take the runtime down with the
                # hook: say so and try again from the same cursor a little later.
                log.exception("hook_dispatcher_failed", extra={"fields": {"hook": name}})
                await trio.sleep(DISPATCHER_PAUSE)

    async def _round(self, kinds: frozenset[str] | None) -> bool:
        """Send what is due, then wait for more; False once the history closed."""
        source = self._source
        await self._send_retries()
        newest = source.last_seq
        events = source.read(after_seq=self.cursor, limit=READ_BATCH, kinds=kinds)
        lag = self._lag
        for event in events:
            delivered = await self._deliver(self._first_record(event), event_body(event))
            if delivered and lag is not None:
                # From the event's time (the runtime's clock) to its delivery; a retry an
                # operator asks for later is not lag.
                lag.observe(max(0.0, lag.clock() - event.at))
            self._advance(event.seq)
        if len(events) == READ_BATCH:
            return True
        # Nothing else of our kinds up to ``newest``: the cursor may pass it.
        self._advance(max(newest, self.cursor))
        return await self._wait()

    def _advance(self, seq: int) -> None:
        if seq <= self.cursor:
            return
        self.cursor = seq
        self._log.set_cursor(self.name, seq)
        self._source.hold(self.name, seq)

    async def _wait(self) -> bool:
        """Wait for an event past the cursor or a retry; False once the history closed."""
        if self._retries:
            return True
        self._woken = trio.Event()
        woken = self._woken
        cursor = self.cursor
        async with trio.open_nursery() as nursery:

            async def beyond() -> None:
                await self._source.wait_beyond(cursor)
                nursery.cancel_scope.cancel()

            async def retry_asked() -> None:
                await woken.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(beyond)
            nursery.start_soon(retry_asked)
        return bool(self._retries) or self._source.last_seq > cursor

    async def _send_retries(self) -> None:
        while self._retries:
            seq = self._retries.popleft()
            found = self._log.get(self.name, seq)
            if found is None:
                continue
            delivery, body = found
            if body is not None:
                await self._deliver(delivery, body)

    def _first_record(self, event: Event) -> HookDelivery:
        now = self._wall()
        return HookDelivery(
            id=delivery_id(self.name, event.seq),
            hook=self.name,
            seq=event.seq,
            kind=event.kind,
            status="pending",
            task_id=event.task_id,
            run_id=event.run_id,
            created_at=now,
            updated_at=now,
        )

    async def _deliver(self, delivery: HookDelivery, body: bytes) -> bool:
        """Try ``delivery`` until it is accepted or the policy gives up; record each try.

        Returns whether it was delivered. The record of success is made only after the
        send returned, so a crash in between means the event goes out again.
        """
        policy = self._policy
        for attempt in range(1, policy.max_attempts + 1):
            error: str | None = None
            try:
                await self._sender.send(self.hook, delivery, body)
            except DeliveryFailed as exc:
                error = str(exc)[:ERROR_CHARS]
            except Exception as exc:  # a sender bug must not stop the hook
                log.exception("hook_send_crashed", extra={"fields": {"hook": self.name}})
                error = f"internal error: {type(exc).__name__}"
            now = self._wall()
            attempts = delivery.attempts + 1
            if error is None:
                delivery = msgspec.structs.replace(
                    delivery,
                    status="delivered",
                    attempts=attempts,
                    updated_at=now,
                    delivered_at=now,
                    next_attempt_at=None,
                )
                self._log.record(delivery)
                return True
            if attempt == policy.max_attempts:
                delivery = msgspec.structs.replace(
                    delivery,
                    status="failed",
                    attempts=attempts,
                    last_error=error,
                    updated_at=now,
                    next_attempt_at=None,
                )
                self._log.record(delivery, body)
                # Given up: the event stays undelivered until an operator retries it.
                log.error(
                    "hook_delivery_failed",
                    extra={"fields": _delivery_fields(delivery, attempts, error)},
                )
                return False
            wait = policy.delay(attempt, self._draw())
            delivery = msgspec.structs.replace(
                delivery,
                status="pending",
                attempts=attempts,
                last_error=error,
                updated_at=now,
                next_attempt_at=now + wait,
            )
            self._log.record(delivery, body)
            log.warning(
                "hook_attempt_failed",
                extra={"fields": _delivery_fields(delivery, attempts, error, retry_in=wait)},
            )
            await trio.sleep(wait)
        raise AssertionError("unreachable: the last attempt returns")  # pragma: no cover


def _delivery_fields(
    delivery: HookDelivery, attempts: int, error: str, **more: Any
) -> dict[str, Any]:
    """The fields of a failed delivery's log line: which hook, event and run, and why."""
    fields: dict[str, Any] = {
        "hook": delivery.hook,
        "delivery": delivery.id,
        "seq": delivery.seq,
        "kind": delivery.kind,
        "task_id": delivery.task_id,
        "run_id": delivery.run_id,
        "attempts": attempts,
        "error": error,
    }
    fields.update(more)
    return fields


# ------------------------------------------------------------------------ the service
class HookService:
    """The configured hooks, their dispatchers and the delivery log, for the operations."""

    def __init__(
        self,
        hooks: Sequence[Hook],
        source: EventSource,
        sender: Sender,
        deliveries: DeliveryLog,
        *,
        policy: RetryPolicy | None = None,
        draw: Callable[[], float] = random.random,
        wall_clock: Callable[[], float] = time.time,
        delivery_lag: Timings | None = None,
    ) -> None:
        names = [hook.name for hook in hooks]
        if len(set(names)) != len(names):
            raise InvalidInput("two hooks have the same event kinds and target")
        self.log = deliveries
        self.dispatchers = {
            hook.name: HookDispatcher(
                hook,
                source,
                sender,
                deliveries,
                policy=policy,
                draw=draw,
                wall_clock=wall_clock,
                delivery_lag=delivery_lag,
            )
            for hook in hooks
        }

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.log.run_writer)
            for dispatcher in self.dispatchers.values():
                await nursery.start(dispatcher.run)
            task_status.started()

    def report(
        self,
        *,
        status: DeliveryStatus | None = None,
        hook: str | None = None,
        limit: int | None = None,
    ) -> HookReport:
        count = DEFAULT_PAGE if limit is None else limit
        if count < 1:
            raise InvalidInput(f"limit must be at least 1, got {count}")
        infos = []
        for name, dispatcher in self.dispatchers.items():
            counts = self.log.counts(name)
            kinds = dispatcher.hook.kinds
            infos.append(
                HookInfo(
                    name=name,
                    kinds=[ALL_KINDS] if kinds is None else sorted(kinds),
                    target=dispatcher.hook.shown_target,
                    cursor=dispatcher.cursor,
                    pending=counts["pending"],
                    failed=counts["failed"],
                )
            )
        deliveries = self.log.deliveries(status=status, hook=hook)[: min(count, MAX_PAGE)]
        return HookReport(infos, deliveries)

    def retry(self, delivery_id_: str) -> HookDelivery:
        """Queue a failed delivery to be sent again; answers its record, now pending."""
        hook, _, seq_text = delivery_id_.rpartition(".")
        found = self.log.get(hook, int(seq_text)) if seq_text.isdigit() else None
        if found is None:
            raise NotFound(
                f"no delivery {delivery_id_!r} in the hook log; `runlease hook list "
                "--status failed` shows the failed ones",
                code=HOOK_DELIVERY_NOT_FOUND,
            )
        delivery, body = found
        if delivery.status != "failed":
            raise InvalidInput(
                f"delivery {delivery_id_} is {delivery.status}; only a failed one is retried"
            )
        dispatcher = self.dispatchers.get(hook)
        if dispatcher is None or body is None:
            raise InvalidInput(
                f"delivery {delivery_id_} belongs to hook {hook}, which is not configured now; "
                "start the server with that hook to retry it"
            )
        delivery = msgspec.structs.replace(delivery, status="pending", next_attempt_at=None)
        self.log.record(delivery, body)
        dispatcher.retry(delivery.seq)
        return delivery


def no_hooks() -> HookService:
    """The service of a runtime without hooks: it lists nothing and retries nothing."""
    return HookService((), _NoEvents(), ExecSender(), DeliveryLog())


class _NoEvents:
    last_seq = 0

    def read(
        self, *, after_seq: int = 0, limit: int = 100, kinds: frozenset[str] | None = None
    ) -> list[Event]:
        return []

    async def wait_beyond(self, seq: int) -> None:
        await trio.sleep_forever()

    def hold(self, holder: str, seq: int | None) -> None:
        pass


@asynccontextmanager
async def open_hooks(
    hooks: Sequence[Hook],
    source: EventSource,
    store: HookLogStore | None,
    *,
    sender: Sender | None = None,
    policy: RetryPolicy | None = None,
    delivery_lag: Timings | None = None,
) -> AsyncIterator[HookService]:
    """Run ``hooks`` for the duration of the block (nothing runs when there are none).

    The delivery log is loaded from ``store`` first; on exit the dispatchers stop and what
    they recorded is written. Each event's first delivery records its lag (from the
    event's time, read with ``delivery_lag.clock``) in ``delivery_lag``.
    """
    if not hooks:
        yield no_hooks()
        return
    deliveries = DeliveryLog(store)
    if store is not None:
        deliveries.load(await trio.to_thread.run_sync(store.read_hook_log))
    own_sender = TargetSender(hooks) if sender is None else None
    chosen = sender if sender is not None else own_sender
    assert chosen is not None
    service = HookService(
        hooks, source, chosen, deliveries, policy=policy, delivery_lag=delivery_lag
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            # A new hook's starting cursor is stored before any event can reach it, so a
            # crash before its first record resumes there instead of skipping the event.
            await deliveries.flush()
            try:
                yield service
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await deliveries.flush()
            if own_sender is not None:
                await own_sender.aclose()
