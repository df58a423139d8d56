"""Write-ahead journaling with group commit, snapshots, and boot recovery.

The actors apply a command to the in-memory machine and hand it here. One writer task
collects every command submitted while the previous commit was running and appends them
all to the store in one group commit (one write to the write-ahead log and one flush, on a
worker thread when durable); only after that commit returns are their replies released
(and their events published). So a reply always describes durable state, the number of
commits adapts to load with no timer, and the event loop never waits on disk. Two helper
tasks keep the store tidy off that path: a checkpointer copies what only the log holds
into LMDB every few seconds (or sooner when it piles up) and then compacts the history to
its retention, and in relaxed mode a flusher makes the log durable shortly after each write.

Each commit hands the store the events of its records too (they are only kept in memory
there until the checkpoint writes them beside their records), so every acknowledged event
is on disk with the change that caused it; boot regenerates the events of records the log
held beyond the last checkpoint (``load_machine``).

Snapshots go through the same writer, in order with the records, so a snapshot taken after
the k-th submitted command is stored only once the first k records are committed, and is
tagged with exactly that journal sequence.

Replies that change nothing (refusals, "no claimable run") and reads are computed from
memory, which may hold changes still waiting for their commit; they are released only once
those changes are durable (``hold`` and ``settle``), so no reply shows what a crash could
take back.

If a commit fails (disk full, IO error) the runtime turns read-only: the callers of that
batch and of every later write get STORAGE_FAILED, memory is rolled back to the journal,
reads keep working, and nothing that was acknowledged is lost. A restart re-reads the
journal once the disk is healthy. A transient shortage (RESOURCE_EXHAUSTED: file
descriptors, memory) is different: the store stays usable, so that batch and everything
applied after it are refused, memory is rolled back, and writes are taken again.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

from runlease.actors.commit import Acknowledge
from runlease.actors.requests import Request
from runlease.core.commands import AnyCommand, ExpireLease, ExpireSession
from runlease.core.machine import Machine, Outcome
from runlease.core.model import LEASED_RUN_STATUSES, REASON_ORPHANED_ON_BOOT, Event
from runlease.core.snapshot import UnsupportedFormat, decode_snapshot, encode_snapshot
from runlease.errors import (
    RESOURCE_EXHAUSTED,
    STORAGE_CORRUPT,
    STORAGE_FAILED,
    InternalError,
    RunleaseError,
    Unavailable,
)
from runlease.persistence.events import HistoryRetention, check_retention
from runlease.persistence.records import decode_command, encode_record
from runlease.persistence.store import Store
from runlease.runtime.timings import COMMIT_SECONDS_BUCKETS, Timings

log = logging.getLogger("runlease.journal")

DEFAULT_SNAPSHOT_EVERY_RECORDS = 200_000
DEFAULT_SNAPSHOT_EVERY_SECONDS = 600.0
# The store's log holds each record until a checkpoint copies it into LMDB: at least this
# often, and sooner when the store says enough piled up.
CHECKPOINT_EVERY_SECONDS = 2.0
# Relaxed mode flushes the log at most this long after a write (a power cut loses at most
# about that much; a killed process loses nothing).
RELAXED_FLUSH_DELAY = 0.05
# Thirty days of events, however many (see HistoryRetention).
DEFAULT_HISTORY_RETENTION = HistoryRetention()
# The history is compacted after every checkpoint that stored something, and at least this
# often while idle (only time moves events past an age limit then).
COMPACT_IDLE_EVERY_SECONDS = 60.0


_T = TypeVar("_T")
_Job = tuple[Callable[[], Any], trio.lowlevel.Task]


class CommitThread:
    """One long-lived thread that runs the durable group commits, one at a time.

    Each commit ends in an ``fdatasync`` that must not block the event loop. A call to
    ``trio.to_thread.run_sync`` pays a capacity limiter, a cancel scope and a hand-off to
    its thread cache every time (a round trip took 105-170 us on the 2-vCPU VM of
    bench/RESULTS.md); this thread waits on a queue and hands the result back with
    ``run_sync_soon`` (60-80 us there). A commit cannot be abandoned halfway, so a cancelled
    caller still waits for it, as with ``to_thread``.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._started = False

    async def run(self, fn: Callable[[], _T]) -> _T:
        if not self._started:
            token = trio.lowlevel.current_trio_token()
            threading.Thread(
                target=self._serve, args=(token,), name="runlease-commit", daemon=True
            ).start()
            self._started = True
        self._jobs.put((fn, trio.lowlevel.current_task()))
        result: _T = await trio.lowlevel.wait_task_rescheduled(_commit_cannot_abort)
        return result

    def stop(self) -> None:
        if self._started:
            self._jobs.put(None)
            self._started = False

    def _serve(self, token: trio.lowlevel.TrioToken) -> None:
        while (job := self._jobs.get()) is not None:
            fn, task = job
            result = outcome.capture(fn)
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:
                return


def _commit_cannot_abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


class _Snapshot:
    __slots__ = ("data", "done", "seq")

    def __init__(self, seq: int, data: bytes) -> None:
        self.seq = seq
        self.data = data
        self.done = trio.Event()


_Item = tuple[bytes, Request | None, Outcome[Any]]


class _Hold:
    """A reply that changed nothing, released after the commits queued before it."""

    __slots__ = ("error", "reply", "request")

    def __init__(self, request: Request, reply: Any, error: RunleaseError | None) -> None:
        self.request = request
        self.reply = reply
        self.error = error


_Pending = _Item | _Hold | _Snapshot


class JournalCommitter:
    """Group commit in front of a :class:`~runlease.persistence.store.Store`.

    ``on_rollback`` runs after memory was rolled back to the journal, so the actors can
    watch the deadlines of the restored state and let waiting claimers look again.

    After each checkpoint round the history is compacted to ``history_retention`` at the
    time ``clock()`` (the runtime's clock, the one events are stamped with), never past
    ``keep_events_after()`` (the lowest hold on the history, None for none).

    Each group commit that writes records is timed into ``commit_timings`` (the write, and
    the flush when durable).
    """

    def __init__(
        self,
        store: Store,
        machine: Machine,
        acknowledge: Acknowledge,
        *,
        on_rollback: Callable[[], None] | None = None,
        history_retention: HistoryRetention = DEFAULT_HISTORY_RETENTION,
        keep_events_after: Callable[[], int | None] = lambda: None,
        clock: Callable[[], float] = time.time,
        commit_timings: Timings | None = None,
    ) -> None:
        check_retention(history_retention)
        self.commit_timings = commit_timings or Timings(COMMIT_SECONDS_BUCKETS)
        self._history_retention = history_retention
        self._keep_events_after = keep_events_after
        self._clock = clock
        self._store = store
        self._machine = machine
        self._acknowledge = acknowledge
        self._on_rollback = on_rollback
        self._pending: list[_Pending] = []
        self._wake = trio.Event()
        self._progress = trio.Event()
        self._checkpoint_wanted = trio.Event()
        self._log_written = trio.Event()
        self._commit_thread = CommitThread()
        # Journal sequence of the newest submitted record, and of the newest written one.
        self.submitted_seq = store.last_seq()
        self.written_seq = self.submitted_seq
        # Bumped after every roll back of memory to the journal: what a reader computed
        # before may show changes that are gone now.
        self.generation = 0
        self.records_since_snapshot = 0
        self.failure: RunleaseError | None = None
        # Set while memory is rolled back after a transient shortage: writes are refused
        # then, because they would be applied to a machine about to be replaced.
        self._shortage: RunleaseError | None = None

    # The actors call this right after applying; it must never block.
    def submit(self, request: Request | None, command: AnyCommand, outcome: Outcome[Any]) -> None:
        refusal = self.refusal
        if refusal is not None:
            # The machine moved ahead of a journal that can no longer follow: refuse to
            # acknowledge anything more until a restart re-reads the journal.
            if request is not None:
                request.resolve(None, refusal)
            return
        try:
            record = encode_record(command)
        except RunleaseError as exc:  # validated earlier, so this is a bug
            self._fail(
                InternalError(f"could not encode {type(command).__name__} for the journal: {exc}")
            )
            if request is not None:
                request.resolve(None, self.failure)
            return
        self._pending.append((record, request, outcome))
        self.submitted_seq += 1
        self.records_since_snapshot += 1
        self._wake.set()

    def hold(self, request: Request, reply: Any, error: RunleaseError | None) -> None:
        """Resolve a reply that changed nothing once the changes it may have seen are durable.

        A refusal or a "nothing changed" reply is computed from memory, which may already
        hold changes still waiting for their commit; a crash could take those back. So the
        reply waits behind the newest pending record and is released right after that
        record's commit, in order, without a commit of its own.
        """
        if self.written_seq >= self.submitted_seq and self._shortage is None:
            request.resolve(reply, error)
            return
        self._pending.append(_Hold(request, reply, error))
        self._wake.set()

    def submit_snapshot(self, data: bytes) -> _Snapshot:
        """Queue a snapshot of the state after every record submitted so far."""
        snapshot = _Snapshot(self.submitted_seq, data)
        if self._shortage is not None:
            # Taken from a machine that is being rolled back: it must never be stored.
            snapshot.done.set()
            return snapshot
        self._pending.append(snapshot)
        self.records_since_snapshot = 0
        self._wake.set()
        return snapshot

    @property
    def refusal(self) -> RunleaseError | None:
        return self.failure or self._shortage

    async def settle(self, seq: int, generation: int) -> None:
        """Return once records up to ``seq`` are written (or failed), or memory was rolled
        back since ``generation``."""
        while self.written_seq < seq and self.generation == generation:
            await self._progress.wait()

    async def flush(self) -> None:
        await self.settle(self.submitted_seq, self.generation)

    def _fail(self, error: RunleaseError, *, unexpected: bool = False) -> None:
        """Turn read-only for good (until a restart): the journal cannot follow memory.

        Logged once, as ``storage_failed``; ``unexpected`` adds the traceback of the
        exception being handled (a failure that is not a known storage error).
        """
        if self.failure is None:
            log.critical(
                "storage_failed",
                exc_info=unexpected,
                extra={"fields": self._storage_fields(error, effect="read_only_until_restart")},
            )
            self.failure = Unavailable(
                f"the journal cannot be written ({error.message}); the runtime is read-only "
                "until it is restarted with a healthy disk. Nothing acknowledged was lost.",
                code=STORAGE_FAILED,
            )

    def _storage_fields(self, error: BaseException, **more: Any) -> dict[str, Any]:
        """The fields of a storage failure's log line: where, the code and the error."""
        fields: dict[str, Any] = {"data_dir": str(self._store.data_dir)}
        if isinstance(error, RunleaseError):
            fields.update(code=error.code, error=error.message)
        else:
            fields.update(code=None, error=f"{type(error).__name__}: {error}")
        fields.update(more)
        return fields

    def _note_progress(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._checkpoint_loop)
                if self._store.durability == "relaxed":
                    nursery.start_soon(self._flush_loop)
                task_status.started()
                while True:
                    await self._wake.wait()
                    self._wake = trio.Event()
                    while self._pending:
                        batch, self._pending = self._pending, []
                        await self._write(batch)
        finally:
            self._commit_thread.stop()

    async def _checkpoint_loop(self) -> None:
        """Copy what only the log holds into LMDB, off the commit path, now and then, and
        compact the history after it."""
        compacted_at = trio.current_time()
        while True:
            with trio.move_on_after(CHECKPOINT_EVERY_SECONDS):
                await self._checkpoint_wanted.wait()
            self._checkpoint_wanted = trio.Event()
            if self.failure is not None:
                continue
            stored = bool(self._store.records_only_in_log)
            if stored:
                try:
                    await trio.to_thread.run_sync(self._store.checkpoint)
                except RunleaseError as exc:
                    # Nothing is lost: the log keeps the records, and the next round retries.
                    log.warning(
                        "checkpoint_failed",
                        extra={"fields": self._storage_fields(exc, effect="retried_later")},
                    )
                    continue
            if stored or trio.current_time() - compacted_at >= COMPACT_IDLE_EVERY_SECONDS:
                await self._compact_history()
                compacted_at = trio.current_time()

    async def _compact_history(self) -> None:
        """Drop the events past the retention (off the commit path, like the checkpoint)."""
        now = self._clock()
        keep_after = self._keep_events_after()
        try:
            deleted = await trio.to_thread.run_sync(
                lambda: self._store.compact_events(
                    now=now, retention=self._history_retention, keep_after=keep_after
                )
            )
        except RunleaseError as exc:
            # History only: the state is untouched, and the next round tries again.
            log.warning(
                "history_compaction_failed",
                extra={"fields": self._storage_fields(exc, effect="retried_later")},
            )
            return
        if deleted:
            log.info("history_compacted", extra={"fields": {"deleted_events": deleted}})

    async def _flush_loop(self) -> None:
        """Relaxed mode: flush the log shortly after writes, off the commit path."""
        while True:
            await self._log_written.wait()
            await trio.sleep(RELAXED_FLUSH_DELAY)
            self._log_written = trio.Event()
            try:
                await trio.to_thread.run_sync(self._store.sync_log)
            except RunleaseError as exc:
                # The store refuses appends from now on; the next commit reports it.
                log.error(
                    "log_flush_failed",
                    extra={"fields": self._storage_fields(exc, effect="next_commit_fails")},
                )

    async def _write(self, batch: list[_Pending]) -> None:
        # Runs of records are committed together; a snapshot splits the batch so it is
        # written only after the records it covers.
        chunk: list[_Item | _Hold] = []
        for index, item in enumerate(batch):
            if isinstance(item, _Snapshot):
                shortage = await self._commit(chunk)
                if shortage is not None:
                    await self._recover_from_shortage(shortage, [*chunk, *batch[index:]])
                    return
                chunk = []
                await self._write_snapshot(item)
            else:
                chunk.append(item)
        shortage = await self._commit(chunk)
        if shortage is not None:
            await self._recover_from_shortage(shortage, [*chunk])

    async def _commit(self, items: list[_Item | _Hold]) -> RunleaseError | None:
        """Commit the records among ``items`` and release them and the holds, in order.

        Returns the error of a transient shortage (the store is usable and the batch was
        not written) without releasing anything: the caller takes the state back.
        """
        if not items:
            return None
        records: list[bytes] = []
        events: list[Event] = []
        for item in items:
            if not isinstance(item, _Hold):
                records.append(item[0])
                events += item[2].events
        if records and self.failure is None:
            timings = self.commit_timings
            started = timings.clock()
            try:
                if self._store.durability == "relaxed":
                    # A log write without a flush takes ~10 us; a trip to a worker thread
                    # ~120 us. The flush follows within RELAXED_FLUSH_DELAY.
                    self._store.append(records, events)
                    self._log_written.set()
                else:
                    await self._commit_thread.run(lambda: self._store.append(records, events))
                timings.observe_since(started)
                if self._store.checkpoint_due():
                    self._checkpoint_wanted.set()
            except Exception as exc:
                if isinstance(exc, RunleaseError) and exc.code == RESOURCE_EXHAUSTED:
                    return exc
                if isinstance(exc, RunleaseError):
                    self._fail(exc)
                else:
                    self._fail(InternalError(f"{type(exc).__name__}: {exc}"), unexpected=True)
                await self._roll_back_to_journal()
                if self._on_rollback is not None:
                    self._on_rollback()
        self.written_seq += len(records)
        self._note_progress()
        failure = self.failure
        if failure is not None:
            for item in items:
                request = item.request if isinstance(item, _Hold) else item[1]
                if request is not None:
                    request.resolve(None, failure)
            return None
        for item in items:
            if isinstance(item, _Hold):
                item.request.resolve(item.reply, item.error)
            else:
                self._acknowledge(item[1], item[2])
        return None

    async def _recover_from_shortage(self, cause: RunleaseError, refused: list[_Pending]) -> None:
        """A commit failed for want of a resource that may come back (file descriptors,
        memory): refuse that batch and everything applied after it, take memory back to
        the journal, then take writes again.

        Everything still pending was applied on top of the refused changes, so none of it
        may be acknowledged. Until the rolled-back machine is adopted new writes are
        refused too; the callers hear only after it, so a retry meets the restored state.
        """
        log.warning(
            "journal_commit_refused",
            extra={"fields": self._storage_fields(cause, effect="batch_refused_writes_go_on")},
        )
        error = Unavailable(
            f"the journal could not be written for a transient shortage of system resources "
            f"({cause.message}); nothing was changed: retry the request",
            code=RESOURCE_EXHAUSTED,
        )
        self._shortage = Unavailable(
            "the runtime is recovering from a transient shortage of system resources; "
            "nothing was changed: retry the request",
            code=RESOURCE_EXHAUSTED,
        )
        if not await self._roll_back_to_journal():
            # Memory still holds the refused changes and cannot be trusted to write on.
            self._fail(InternalError("memory could not be rolled back to the journal"))
        refused.extend(self._pending)
        self._pending = []
        dropped = sum(1 for item in refused if isinstance(item, tuple))
        self.records_since_snapshot = max(0, self.records_since_snapshot - dropped)
        # The refused records never reached the journal: number from what it holds.
        self.submitted_seq = self.written_seq = self._store.last_seq()
        self._shortage = None
        reply_error = self.failure or error
        for item in refused:
            if isinstance(item, _Snapshot):
                item.done.set()
                continue
            request = item.request if isinstance(item, _Hold) else item[1]
            if request is not None:
                request.resolve(None, reply_error)
        self._note_progress()
        if self._on_rollback is not None:
            self._on_rollback()

    async def _roll_back_to_journal(self) -> bool:
        """Make memory match the journal again, so reads show only acknowledged state.

        The failed batch (and anything applied after it) changed the machine but will never
        be acknowledged; rebuilding from disk drops those changes. Readers that computed
        an answer from the old memory see ``generation`` change and look again. False if
        the journal could not be re-read (memory is then left as it was).
        """
        try:
            durable = await trio.to_thread.run_sync(load_machine, self._store, BootReport())
        except Exception as exc:
            log.error(
                "journal_reread_failed",
                exc_info=True,
                extra={"fields": self._storage_fields(exc, effect="memory_not_rolled_back")},
            )
            durable = None
        if durable is not None:
            self._machine.adopt(durable)
        self.generation += 1
        self._note_progress()
        return durable is not None

    async def _write_snapshot(self, snapshot: _Snapshot) -> None:
        try:
            if self.failure is None:
                await trio.to_thread.run_sync(
                    self._store.write_snapshot, snapshot.seq, snapshot.data
                )
        except Exception as exc:
            # A failed snapshot loses nothing: the journal still holds every record.
            log.error(
                "snapshot_failed",
                exc_info=not isinstance(exc, RunleaseError),
                extra={
                    "fields": self._storage_fields(exc, seq=snapshot.seq, effect="journal_kept")
                },
            )
        finally:
            snapshot.done.set()


class SnapshotPolicy:
    def __init__(
        self,
        every_records: int = DEFAULT_SNAPSHOT_EVERY_RECORDS,
        every_seconds: float = DEFAULT_SNAPSHOT_EVERY_SECONDS,
    ) -> None:
        if every_records < 1 or not every_seconds > 0:
            raise ValueError("snapshot intervals must be positive")
        self.every_records = every_records
        self.every_seconds = every_seconds


async def run_snapshotter(
    machine: Machine,
    committer: JournalCommitter,
    policy: SnapshotPolicy,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Take a snapshot every N records or T seconds, whichever comes first."""
    task_status.started()
    check_every = min(policy.every_seconds, 1.0)
    last = trio.current_time()
    while True:
        await trio.sleep(check_every)
        due_by_count = committer.records_since_snapshot >= policy.every_records
        due_by_time = (
            trio.current_time() - last >= policy.every_seconds
            and committer.records_since_snapshot > 0
        )
        if due_by_count or due_by_time:
            take_snapshot(machine, committer)
            last = trio.current_time()


def take_snapshot(machine: Machine, committer: JournalCommitter) -> _Snapshot:
    # Encoding is the only pause: the state is consistent between two awaits.
    return committer.submit_snapshot(encode_snapshot(machine))


# ------------------------------------------------------------------------------ boot
class BootReport:
    def __init__(self) -> None:
        self.snapshot_seq = 0
        self.replayed = 0
        self.skipped_snapshots = 0
        self.orphaned_leases: list[str] = []
        self.expired_sessions: list[str] = []
        # Events boot regenerated for records the store held without their events.
        self.regenerated_events = 0


def load_machine(store: Store, report: BootReport) -> Machine:
    """The newest valid snapshot plus the journal after it; fail closed on any gap.

    Anything boot cannot trust (a record that fails its checksum or does not decode or
    replay, a gap, a database LMDB cannot read) raises ``Unavailable(code=STORAGE_CORRUPT)``
    naming the data file; a newer format raises :class:`UnsupportedFormat`. A snapshot that
    fails its checks is skipped for an older one, as the journal still covers the gap.

    The events of every replayed record the store has no events for yet (the records the
    log held beyond the last checkpoint, which the store replays without them) are
    regenerated by the replay itself, identical to the ones published before, and stored
    before this returns. Records folded into the snapshot are not replayed, so their events
    cannot be regenerated: a checkpoint always stores a record's events with it and a
    snapshot is written only with a checkpoint, so that happens only to a store written
    before events were kept (its history starts here) or by a runlease that ignored them
    (a gap in the history, logged). The state is unaffected either way.
    """
    where = store.data_path
    machine: Machine | None = None
    decode_failures = 0
    for seq, data in store.iter_snapshots():
        try:
            machine = decode_snapshot(data)
        except UnsupportedFormat:
            raise  # a newer format must stop boot, not fall back to older data
        except Exception as exc:  # any decode failure means "damaged"
            log.error("snapshot at seq %d does not decode (%s); trying an older one", seq, exc)
            decode_failures += 1
            continue
        report.snapshot_seq = seq
        break
    # Torn or corrupt images the store itself rejected count as skipped too.
    report.skipped_snapshots = decode_failures + len(store.snapshot_problems)
    if machine is None:
        machine = Machine()
    events_through = store.events_through()
    regenerated: list[Event] = []
    expected = report.snapshot_seq + 1
    records = store.iter_journal(report.snapshot_seq)
    while True:
        try:
            item = next(records, None)
        except UnsupportedFormat:
            raise
        except InternalError as exc:  # a gap: records the snapshot needed are missing
            raise _corrupt(f"the journal in {where} is incomplete: {exc.message}") from None
        if item is None:
            break
        seq, data = item
        if seq != expected:
            raise _corrupt(
                f"journal gap in {where}: expected record {expected} after snapshot "
                f"{report.snapshot_seq}, found {seq}"
            )
        try:
            command = decode_command(data)
        except UnsupportedFormat:
            raise
        except Exception as exc:  # any decode failure means "damaged"
            raise _corrupt(f"journal record {seq} in {where} does not decode: {exc}") from None
        try:
            applied = machine.apply(command)
        except Exception as exc:  # a stored command that cannot replay
            raise _corrupt(
                f"journal record {seq} ({type(command).__name__}) in {where} does not replay: {exc}"
            ) from None
        if seq > events_through:
            regenerated += applied.events
        expected += 1
        report.replayed += 1
    last = expected - 1
    if last > events_through:
        if report.snapshot_seq > events_through:
            _note_history_gap(store, events_through, report.snapshot_seq)
        store.store_replayed_events(last, regenerated)
        report.regenerated_events = len(regenerated)
    return machine


def _note_history_gap(store: Store, events_through: int, snapshot_seq: int) -> None:
    if events_through == 0:
        log.info(
            "the store in %s kept no events before; its history starts after journal record %d",
            store.data_dir,
            snapshot_seq,
        )
    else:
        log.warning(
            "the store in %s has no events for journal records %d to %d (written by a "
            "runlease that did not keep them); the history skips them",
            store.data_dir,
            events_through + 1,
            snapshot_seq,
        )


def _corrupt(message: str) -> Unavailable:
    return Unavailable(
        f"{message}. runlease will not serve from damaged storage: restore the data "
        "directory from a backup",
        code=STORAGE_CORRUPT,
    )


def recovery_commands(machine: Machine, now: float, report: BootReport) -> list[AnyCommand]:
    """What boot must do before serving: expire dead leases, then dead sessions."""
    commands: list[AnyCommand] = []
    for run in sorted(machine.leased_runs(), key=lambda r: (r.lease_until or 0.0, r.id)):
        if run.status in LEASED_RUN_STATUSES and (run.lease_until or math.inf) <= now:
            commands.append(ExpireLease(now=now, run_id=run.id, reason=REASON_ORPHANED_ON_BOOT))
            report.orphaned_leases.append(run.id)
    for session in machine.sessions.values():
        ttl = session.ttl_deadline
        if session.state == "live" and ttl is not None and ttl <= now:
            commands.append(ExpireSession(now=now, session_id=session.id))
            report.expired_sessions.append(session.id)
    return commands
