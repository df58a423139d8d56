"""The embedded runtime inside an asyncio program: ``async with runlease.aio.open_runtime()``.

trio runs in guest mode on the host's own asyncio loop
(:func:`trio.lowlevel.start_guest_run`) rather than in a thread of its own, because:

- everything happens on one thread, so a call's hand-offs are plain callbacks on the loop:
  no second interpreter thread contends for the GIL with the host's agents, and a result
  is delivered, or found unwanted, in one step that nothing can interleave with;
- the runtime's sync reads (``rt.get_task``, ``rt.status()``...) stay sync: trio and the
  host never run at the same moment, so reading its memory from asyncio code is as safe as
  it is from trio code;
- the runtime lives exactly as long as the ``async with`` block on the host's loop: no
  thread can outlive ``asyncio.run``.

The price: a host that blocks its loop stalls the runtime too (as it stalls its own agents'
heartbeats), and one thread runs one trio run at a time, so one runtime per asyncio loop.

Each call runs as a trio task in the guest's nursery and answers an asyncio future. When
the asyncio caller is cancelled the trio side is told to stop waiting (a parked claim
leaves the queue of waiters) but nothing is cut short half-way: a call that has changed
state finishes, and a lease it granted to the caller who left (a claim made as the caller
was cancelled) is released at once with reason ``abandoned``, so no lease outlives a
cancelled claim.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Any, Generic, ParamSpec, TypeVar, cast

import outcome
import trio

from runlease.client_common import ABANDONED_CLAIM_REASON
from runlease.core.model import Actor, Claim, Event, Finished, Origin, Session, SessionReleased
from runlease.errors import RUNTIME_CLOSED, RunleaseError, Unavailable
from runlease.operation_methods import AsyncLeaseMethods, AsyncTaskMethods, method
from runlease.operations import (
    ClaimNext,
    FinishRequest,
    OpenSession,
    ReleaseRun,
    Request,
    claim_command,
)
from runlease.runtime import runtime as trio_runtime
from runlease.runtime.calls import EMBEDDED, Call
from runlease.runtime.reads import MemoryReads
from runlease.runtime.runtime import Runtime

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

# The reason recorded on a lease released because its claimer was cancelled.
ABANDONED_REASON = ABANDONED_CLAIM_REASON
# Events a follower's pump keeps ahead of the asyncio reader.
FOLLOW_BUFFER = 256

Abandon = Callable[[Any], Awaitable[None]]


def _closed() -> Unavailable:
    return Unavailable("the runtime closed before answering", code=RUNTIME_CLOSED)


class _Job(Generic[T]):
    """One call crossing from asyncio to trio."""

    __slots__ = ("abandon", "future", "run", "settled", "stop_waiting")

    def __init__(
        self,
        run: Callable[[trio.CancelScope], Awaitable[T]],
        future: asyncio.Future[T],
        abandon: Abandon | None,
    ) -> None:
        self.run = run
        self.future = future
        self.abandon = abandon
        # Cancelled (from trio's side) when the asyncio caller gives up; the call decides
        # what it covers: the wait of a claim, the whole of a read.
        self.stop_waiting = trio.CancelScope()
        # Set once the trio side is over, whatever became of the call.
        self.settled: asyncio.Future[None] = future.get_loop().create_future()

    def settle(self) -> None:
        if not self.settled.done():
            self.settled.set_result(None)


class TrioGuest:
    """The bridge between the host's asyncio loop and the trio guest running on it."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        nursery: trio.Nursery,
        ended: asyncio.Future[Any],
    ) -> None:
        self._loop = loop
        self._ended = ended
        self._nursery = nursery
        self._token = trio.lowlevel.current_trio_token()
        self.stopped = trio.Event()

    # ------------------------------------------------------------- asyncio side
    async def run(
        self,
        call: Callable[[trio.CancelScope], Awaitable[T]],
        abandon: Abandon | None = None,
    ) -> T:
        """``await call(stop_waiting)`` in trio and answer its result here.

        If this caller is cancelled, ``stop_waiting`` is cancelled on the trio side; a
        result that arrives for nobody is passed to ``abandon`` there (on the trio side).
        With ``abandon``, the cancelled caller leaves only once the trio side is over (it
        stops waiting at once and finishes what it started), so when a cancelled task is
        done, so is whatever its call changed, and no lease is left behind.
        """
        future: asyncio.Future[T] = self._loop.create_future()
        job = _Job(call, future, abandon)
        self._start(job)
        try:
            return await future
        except asyncio.CancelledError:
            if future.cancelled():
                self._soon(job.stop_waiting.cancel)
                over = job.settled
            elif abandon is not None and future.exception() is None:
                # The result came in the same turn as the cancellation: hand it back.
                over = self.run_detached(partial(_abandon_with, abandon, future.result()))
            else:
                raise
            if abandon is not None:
                await self._wait_out(over)
            raise

    def run_detached(
        self, call: Callable[[trio.CancelScope], Awaitable[object]]
    ) -> asyncio.Future[None]:
        """Start ``call`` in trio without waiting for it (its errors are dropped); the
        future answered is set once it is over."""
        future: asyncio.Future[object] = self._loop.create_future()
        future.add_done_callback(_consume)
        job = _Job(call, future, None)
        self._start(job)
        return job.settled

    async def _wait_out(self, over: asyncio.Future[None]) -> None:
        """Wait for ``over`` (or the guest's end), through any further cancellation."""
        either: list[asyncio.Future[Any]] = [over, self._ended]
        while not (over.done() or self._ended.done()):
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED))

    def stop(self) -> None:
        """Ask the guest to close the runtime (callable any number of times)."""
        self._soon(self.stopped.set)

    def _start(self, job: _Job[Any]) -> None:
        try:
            self._token.run_sync_soon(self._spawn, job)
        except trio.RunFinishedError:
            raise _closed() from None

    def _soon(self, fn: Callable[[], object]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn)

    # ---------------------------------------------------------------- trio side
    def _spawn(self, job: _Job[Any]) -> None:
        if job.future.cancelled():
            job.settle()  # the caller left before the call began: nothing to do
            return
        if self.stopped.is_set():
            job.future.set_exception(_closed())
            job.settle()
            return
        self._nursery.start_soon(self._carry, job)

    async def _carry(self, job: _Job[T]) -> None:
        try:
            try:
                value = await job.run(job.stop_waiting)
            except Exception as exc:
                if not job.future.done():
                    job.future.set_exception(exc)
                return
            except BaseException:  # cancelled: the runtime is closing
                if not job.future.done():
                    job.future.set_exception(_closed())
                raise
            if not job.future.done():
                job.future.set_result(value)
            elif job.abandon is not None:
                await _abandon_with(job.abandon, value, job.stop_waiting)
        finally:
            job.settle()


async def _abandon_with(abandon: Abandon, value: object, _: trio.CancelScope) -> None:
    with trio.CancelScope(shield=True):
        await abandon(value)


def _consume(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it as lost


class AsyncioRuntime(MemoryReads, AsyncTaskMethods):
    """The embedded runtime as seen from asyncio: the operation methods of
    :class:`runlease.Runtime` as asyncio coroutines, its sync reads as they are, and
    :meth:`open_session` / :meth:`session` handles for the lease operations."""

    def __init__(self, runtime: Runtime, guest: TrioGuest) -> None:
        self._runtime = runtime
        self._guest = guest
        # What the sync reads (MemoryReads) look at: the runtime's own memory.
        self._machine = runtime._machine
        self._clock = runtime._clock
        self._system = runtime._system
        self.history = runtime.history
        self.durability = runtime.durability
        self.boot_report = runtime.boot_report

    async def call(self, request: Request[R]) -> R:
        """Carry out ``request`` in the runtime (see :mod:`runlease.operations`)."""
        return await self._guest.run(lambda _: self._runtime.call(request))

    def acting_as(self, actor: Actor, *, origin: Origin = EMBEDDED) -> AsyncioActing:
        """The same operations, stamped with ``actor`` (and ``origin``)."""
        return AsyncioActing(self, actor, origin)

    async def open_session(
        self,
        *,
        agent: str = "agent",
        parent: str | None = None,
        ttl: float | None = None,
        capabilities: Iterable[str] = (),
        auto_stop_on_parent: bool = True,
    ) -> AsyncioSession:
        """Open a session for an agent in this process (no bearer token needed)."""
        handle = await self._guest.run(
            lambda _: self._runtime.open_session(
                agent=agent,
                parent=parent,
                ttl=ttl,
                capabilities=capabilities,
                auto_stop_on_parent=auto_stop_on_parent,
            )
        )
        return AsyncioSession(self, handle.id)

    # For an out-of-process agent: the session and its bearer token, shown this once.
    open_session_with_token = method(OpenSession)

    def session(self, session_id: str) -> AsyncioSession:
        """A handle for an existing session (raises SESSION_NOT_FOUND if there is none)."""
        self._runtime.session(session_id)
        return AsyncioSession(self, session_id)

    async def release_session_leases(self, session_id: str, *, reason: str) -> SessionReleased:
        """Put a session's leased run back in the queue without stopping the session."""
        return await self._guest.run(
            lambda _: self._runtime.release_session_leases(session_id, reason=reason)
        )

    async def settled(self) -> None:
        """Return once every change applied so far is durable (see Runtime.settled)."""
        await self._guest.run(lambda _: self._runtime.settled())

    async def read(self, compute: Callable[[], T]) -> T:
        """``compute()`` against memory, once all it may show is durable (see Runtime.read)."""
        return await self._guest.run(lambda _: self._runtime.read(compute))

    async def follow_events(
        self,
        *,
        after_seq: int = 0,
        task_id: str | None = None,
        run_id: str | None = None,
        session_id: str | None = None,
        kinds: Iterable[str] | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Matching events after ``after_seq``, then new ones as they are acknowledged,
        until the runtime closes; leave the loop (or ``aclose()``) to stop following."""
        send, receive = trio.open_memory_channel[Event](FOLLOW_BUFFER)
        events = self._runtime.follow_events(
            after_seq=after_seq,
            task_id=task_id,
            run_id=run_id,
            session_id=session_id,
            kinds=kinds,
        )

        async def pump(stop: trio.CancelScope) -> None:
            with stop, send:
                async with contextlib.aclosing(events):
                    async for event in events:
                        await send.send(event)

        async def next_event(_: trio.CancelScope) -> Event | None:
            try:
                return await receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return None

        follower = _Job(pump, self._guest._loop.create_future(), None)
        follower.future.add_done_callback(_consume)
        self._guest._start(follower)
        try:
            while (event := await self._guest.run(next_event)) is not None:
                yield event
        finally:
            self._guest._soon(follower.stop_waiting.cancel)
            self._guest._soon(receive.close)


class AsyncioActing(AsyncTaskMethods):
    """The runtime's operations stamped with a given actor: ``rt.acting_as(actor)``."""

    def __init__(self, runtime: AsyncioRuntime, actor: Actor, origin: Origin) -> None:
        self._acting = runtime._runtime.acting_as(actor, origin=origin)
        self._guest = runtime._guest
        self.actor = actor
        self.origin = origin

    async def call(self, request: Request[R]) -> R:
        return await self._guest.run(lambda _: self._acting.call(request))


class AsyncioSession(AsyncLeaseMethods):
    """An agent's session, from asyncio: ``claim_next``, ``heartbeat``, ``complete`` and
    the other lease operations of :class:`runlease.SessionHandle`.

    Cancelling a call that claims (``claim_next``, ``claim_run``, ``steal``, the
    ``*_and_next`` finishes) never leaves the session holding a lease nobody knows of: a
    claim still waiting is withdrawn, and one made as the caller left is released.
    """

    def __init__(
        self,
        runtime: AsyncioRuntime,
        session_id: str,
        *,
        actor: Actor | None = None,
        origin: Origin = EMBEDDED,
    ) -> None:
        self._asyncio_runtime = runtime
        self._runtime = runtime._runtime
        self._guest = runtime._guest
        self.id = session_id
        self._actor = actor
        self._origin = origin

    def __repr__(self) -> str:
        return f"AsyncioSession(id={self.id!r})"

    def _call(self, stop_waiting: trio.CancelScope | None = None) -> Call:
        return Call(
            self._runtime,
            actor=self._actor,
            origin=self._origin,
            session_id=self.id,
            stop_waiting=stop_waiting,
        )

    async def call(self, request: Request[R]) -> R:
        return await self._guest.run(partial(self._carry, request), abandon=self._hand_back)

    async def _carry(self, request: Request[R], stop_waiting: trio.CancelScope) -> R:
        call = self._call(stop_waiting)
        if isinstance(request, ClaimNext):
            command = claim_command(request, call.session_id(), call)
            claim = await self._runtime.claim(command, request, stop_waiting)
            return cast(R, claim)
        return await request.execute(call)

    async def finish_and_claim(self, finish: FinishRequest, then: ClaimNext) -> Finished:
        return await self._guest.run(
            lambda stop: finish.then_claim(self._call(stop), then), abandon=self._hand_back
        )

    async def _hand_back(self, value: object) -> None:
        """Release the lease of a claim its caller never received (trio side)."""
        claim = value.claim if isinstance(value, Finished) else value
        if not isinstance(claim, Claim):
            return
        with contextlib.suppress(RunleaseError):
            await ReleaseRun(claim.run.id, reason=ABANDONED_REASON).execute(self._call())

    def acting_as(self, actor: Actor, *, origin: Origin = EMBEDDED) -> AsyncioSession:
        """The same session's operations, stamped with ``actor`` (and ``origin``)."""
        return AsyncioSession(self._asyncio_runtime, self.id, actor=actor, origin=origin)

    def info(self) -> Session:
        return self._runtime.get_session(self.id)

    async def stop(self, *, reason: str | None = None) -> SessionReleased:
        return await self._asyncio_runtime.stop_session(self.id, reason=reason)


def _same_arguments_as(
    _: Callable[P, object],
) -> Callable[[Callable[..., T]], Callable[P, T]]:
    """Give the decorated function ``_``'s parameters (for type checkers and readers)."""

    def give(fn: Callable[..., T]) -> Callable[P, T]:
        return cast(Callable[P, T], fn)

    return give


@_same_arguments_as(trio_runtime.open_runtime)
def open_runtime(*args: Any, **kwargs: Any) -> AbstractAsyncContextManager[AsyncioRuntime]:
    """Run a lease runtime on the running asyncio loop for the duration of the block.

    It takes the arguments of :func:`runlease.open_runtime` and offers the same API, as
    asyncio coroutines::

        async with runlease.aio.open_runtime(data_dir="./state") as rt:
            agent = await rt.open_session(agent="indexer")
            claim = await agent.claim_next(wait=True, timeout=30)
    """
    return _open_runtime(args, kwargs)


@asynccontextmanager
async def _open_runtime(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> AsyncIterator[AsyncioRuntime]:
    loop = asyncio.get_running_loop()
    booted: asyncio.Future[AsyncioRuntime] = loop.create_future()
    ended: asyncio.Future[outcome.Outcome[None]] = loop.create_future()

    async def guest() -> None:
        async with (
            trio_runtime.open_runtime(*args, **kwargs) as runtime,
            trio.open_nursery() as nursery,
        ):
            bridge = TrioGuest(loop, nursery, ended)
            if booted.done():  # the host stopped waiting while the runtime booted
                nursery.cancel_scope.cancel()
                return
            booted.set_result(AsyncioRuntime(runtime, bridge))
            await bridge.stopped.wait()
            # Calls still running see the runtime close (RUNTIME_CLOSED).
            nursery.cancel_scope.cancel()

    def done(result: outcome.Outcome[None]) -> None:
        if not ended.done():
            ended.set_result(result)

    try:
        trio.lowlevel.start_guest_run(
            guest,
            run_sync_soon_threadsafe=loop.call_soon_threadsafe,
            run_sync_soon_not_threadsafe=loop.call_soon,
            done_callback=done,
            # asyncio.run owns the signal wakeup fd (for Ctrl-C); trio must leave it be.
            host_uses_signal_set_wakeup_fd=True,
        )
    except RuntimeError as exc:
        raise RuntimeError(
            f"cannot start the runtime on this thread: {exc}; one thread runs one "
            "runtime at a time (open it once and share it)"
        ) from None
    try:
        either: list[asyncio.Future[Any]] = [booted, ended]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        booted.cancel()  # a runtime that boots after this closes at once
        if booted.done() and not booted.cancelled():
            booted.result()._guest.stop()
        await _until_done(ended)
        raise
    if not booted.done():
        booted.cancel()
        await _until_done(ended)
        _raise_unwrapped(ended.result())
        raise _closed()  # the guest ended without an error and without booting
    rt = booted.result()
    try:
        yield rt
    finally:
        rt._guest.stop()
        await _until_done(ended)
        _raise_unwrapped(ended.result())


async def _until_done(future: asyncio.Future[Any]) -> None:
    """Wait for the guest to end, even through cancellations (its shutdown is bounded);
    a cancellation that arrived meanwhile is raised after."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


def _raise_unwrapped(result: outcome.Outcome[None]) -> None:
    """Raise what the guest raised, a lone error out of its exception group."""
    try:
        result.unwrap()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


__all__ = [
    "ABANDONED_REASON",
    "AsyncioActing",
    "AsyncioRuntime",
    "AsyncioSession",
    "TrioGuest",
    "open_runtime",
]
