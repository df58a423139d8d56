"""The spine of the suite: Machine driven by hypothesis and checked against a reference model.

The model below is written from the rules of the "Runtime core" issue, independently of the
machine: plain records in dicts, the claim winner found by sorting the queued runs, and the
expected error code of every command worked out by hand. After every command the test checks
the reply (or the exact error code) against the model, that a refused command changed
nothing, that no raw claim token escapes, and then compares the whole state.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from runlease.core.commands import (
    AnyCommand,
    BlockRun,
    ClaimNext,
    ClaimRun,
    CompleteRun,
    CreateTask,
    ExpireLease,
    ExpireSession,
    FailRun,
    FinishAndClaim,
    HeartbeatRun,
    OpenSession,
    ReleaseRun,
    ReleaseSessionLeases,
    StartTask,
    StopSession,
)
from runlease.core.ids import new_secret_token
from runlease.core.machine import Machine, Outcome
from runlease.core.model import Claim, Finished, Heartbeat, Run, Session, SessionReleased, Task
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
    RUN_ALREADY_FINISHED,
    RUN_NOT_FOUND,
    SESSION_NOT_FOUND,
    SESSION_STOPPED,
    TASK_NOT_FOUND,
    RunleaseError,
)

# ------------------------------------------------------------------ the model's own rules
RANK = {"low": 10, "medium": 20, "high": 30, "urgent": 40}
DEFAULT_LEASE = 300.0
MAX_LEASE = 86_400.0
START_TIME = 1_700_000_000.0
CAP_POOL = ("py", "gpu", "net")
TOKEN_PREFIX = "rl_claim_"
# A token is the prefix followed by base64url characters; a bare mention of the prefix in an
# error message ("rl_claim_...") is not a token.
TOKEN_RE = re.compile(r"rl_claim_[A-Za-z0-9_-]")

LEASED = ("claimed", "running")
SETTLED = ("completed", "failed", "needs_attention")


@dataclass
class MTask:
    id: str
    priority: str
    workspace_id: str | None
    caps: frozenset[str]
    max_attempts: int
    current_run: str | None = None


@dataclass
class MRun:
    id: str
    task_id: str
    attempt: int
    queued_at: float
    queue_place: int  # the n-th enqueue; claims go by this, never by wall time
    status: str = "queued"
    recovery_count: int = 0
    holder: str | None = None  # the session holding the lease right now
    last_session: str | None = None  # the last session that held it (kept as history)
    lease_until: float | None = None
    error: str | None = None
    reason: str | None = None
    result: Any = None
    failure_metadata: Any = None
    # (session, cause): the last session that lost this run without finishing it itself.
    loss: tuple[str, str] | None = None


@dataclass
class MSession:
    id: str
    caps: frozenset[str]
    parent: str | None
    ttl_deadline: float | None
    auto_stop: bool
    state: str = "live"
    lease_run: str | None = None
    stop_reason: str | None = None
    children: list[str] = field(default_factory=list)


class Model:
    def __init__(self) -> None:
        self.now = START_TIME
        self.tasks: dict[str, MTask] = {}
        self.runs: dict[str, MRun] = {}
        self.sessions: dict[str, MSession] = {}
        self.seq = 0

    # ------------------------------------------------------------------- derived views
    def task_status(self, task: MTask) -> str:
        if task.current_run is None:
            return "pending"
        run = self.runs[task.current_run]
        if run.status == "failed":
            return "failed" if run.attempt >= task.max_attempts else "ready"
        return {
            "queued": "ready",
            "claimed": "in_progress",
            "running": "in_progress",
            "completed": "completed",
            "needs_attention": "needs_attention",
        }[run.status]

    def winner(self, session: MSession, workspace_id: str | None) -> str | None:
        candidates = []
        for run in self.runs.values():
            if run.status != "queued":
                continue
            task = self.tasks[run.task_id]
            if self.scope_refusal(task, workspace_id):
                continue
            if not task.caps <= session.caps:
                continue
            candidates.append((-RANK[task.priority], run.queue_place, run.id))
        candidates.sort()
        return candidates[0][2] if candidates else None

    def own_finish(self, run: MRun, session_id: str) -> str | None:
        """The finish this session made on the run, if its last lease ended that way and
        nothing has happened to the run since."""
        if run.last_session != session_id or run.holder is not None:
            return None
        if run.loss is not None and run.loss[0] == session_id:
            return None
        if run.status == "needs_attention":
            return "block" if run.error is None else None
        return {"completed": "complete", "failed": "fail", "queued": "release"}.get(run.status)

    def repeats(self, session_id: str | None, run_id: str, kind: str, payload: Any) -> bool:
        """Whether this finish repeats the one the session already made (a retry)."""
        session = self.sessions.get(session_id or "")
        run = self.runs.get(run_id)
        if session is None or session.state != "live" or run is None:
            return False
        if session.lease_run == run_id or self.own_finish(run, session.id) != kind:
            return False
        recorded = {
            "complete": run.result,
            "fail": (run.error, run.failure_metadata),
            "release": run.reason,
            "block": run.reason,
        }[kind]
        return bool(recorded == payload)

    @staticmethod
    def scope_refusal(task: MTask, workspace_id: str | None) -> bool:
        """A claim sees a workspace's tasks only when it names that workspace, and only
        tasks with no workspace when it names none."""
        return task.workspace_id != workspace_id

    def lease_refusal(self, session_id: str | None, run_id: str) -> str | None:
        """Why a run-scoped command from this session on this run must be refused."""
        if not session_id:
            return AUTONOMY_SESSION_REQUIRED
        session = self.sessions.get(session_id)
        if session is None:
            return SESSION_NOT_FOUND
        if session.state != "live":
            return SESSION_STOPPED
        run = self.runs.get(run_id)
        if run is None:
            return RUN_NOT_FOUND
        if session.lease_run == run_id:
            assert run.lease_until is not None
            return AUTONOMY_LEASE_EXPIRED if run.lease_until <= self.now else None
        if run.loss is not None and run.loss[0] == session_id:
            # Every loss the model makes is the lease running out: its deadline or its
            # session's TTL, parent or stop.
            return AUTONOMY_LEASE_EXPIRED
        own = self.own_finish(run, session_id)
        if own == "release":
            return AUTONOMY_NO_ACTIVE_LEASE
        if own is not None:
            return RUN_ALREADY_FINISHED
        if run.holder is not None:
            return AUTONOMY_FOREIGN_RUN  # another session holds it
        if run.last_session is not None and run.status != "queued":
            return AUTONOMY_FOREIGN_RUN  # another session ended it
        return AUTONOMY_NO_ACTIVE_LEASE  # queued: anyone may claim it

    # ----------------------------------------------------------------------- changes
    def enqueue(self, task: MTask, run_id: str) -> MRun:
        previous = self.runs[task.current_run] if task.current_run else None
        run = MRun(
            id=run_id,
            task_id=task.id,
            attempt=1 if previous is None else previous.attempt + 1,
            queued_at=self.now,
            queue_place=len(self.runs) + 1,
        )
        self.runs[run_id] = run
        task.current_run = run_id
        return run

    def claim(self, session: MSession, run: MRun, seconds: float) -> None:
        run.status = "claimed"
        run.holder = run.last_session = session.id
        run.lease_until = self.now + seconds
        run.reason = None
        if run.loss is not None and run.loss[0] == session.id:
            run.loss = None
        session.lease_run = run.id

    def end_lease(self, run: MRun) -> None:
        assert run.holder is not None
        self.sessions[run.holder].lease_run = None
        run.holder = None
        run.lease_until = None

    def requeue(self, run: MRun, reason: str) -> None:
        self.end_lease(run)
        run.status = "queued"
        run.reason = reason

    def lose(self, run: MRun, cause: str) -> None:
        assert run.holder is not None
        run.loss = (run.holder, cause)

    def expire(self, run: MRun, reason: str) -> bool:
        """A lease ran out: back to the queue, or parked once recovery is exhausted."""
        self.lose(run, reason)
        self.end_lease(run)
        run.recovery_count += 1
        if run.attempt + run.recovery_count >= self.tasks[run.task_id].max_attempts:
            run.status = "needs_attention"
            run.error = "lease_recovery_exhausted"
            run.reason = reason
            return False
        run.status = "queued"
        run.reason = reason
        return True

    def stop_tree(
        self,
        session: MSession,
        stop_reason: str,
        lease_reason: str,
        released: list[str],
        stopped: list[str],
    ) -> None:
        if session.state != "live":
            return
        if session.lease_run is not None:
            released.append(session.lease_run)
            self.lose(self.runs[session.lease_run], lease_reason)
            self.requeue(self.runs[session.lease_run], lease_reason)
        session.state = "stopped"
        session.stop_reason = stop_reason
        stopped.append(session.id)
        for child_id in session.children:
            child = self.sessions[child_id]
            if child.state == "live" and child.auto_stop:
                self.stop_tree(child, "parent_stopped", "parent_stopped", released, stopped)


def expected_seconds(requested: float | None) -> tuple[float, bool]:
    if requested is None or requested == 0:
        return DEFAULT_LEASE, False
    if requested > MAX_LEASE:
        return MAX_LEASE, True
    return float(requested), False


def sha256_of(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def fingerprint(machine: Machine) -> bytes:
    """Everything a command could change, cheaply encoded."""
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
        ]
    )


# ------------------------------------------------------------------------ strategies
Pick = tuple[str, int]
session_picks = st.tuples(
    st.sampled_from(["live"] * 4 + ["holder"] * 4 + ["any"] * 2 + ["none", "empty", "unknown"]),
    st.integers(0, 63),
)
# Who sends a run-scoped command: mostly a lease holder, so the success paths are exercised.
actor_picks = st.tuples(
    st.sampled_from(["holder"] * 8 + ["live"] * 2 + ["any", "none", "empty", "unknown"]),
    st.integers(0, 63),
)
# "last": a run the session held before (a retry after a lost reply, or a late call).
run_picks = st.tuples(
    st.sampled_from(["own"] * 5 + ["last"] * 3 + ["any", "leased", "leased", "unknown"]),
    st.integers(0, 63),
)
task_picks = st.tuples(st.sampled_from(["any", "any", "any", "unknown"]), st.integers(0, 63))
lease_lengths = st.sampled_from(
    [None, None, None, 0, -1, 0.5, 1, 30, 300, 300, 3600, 86_400, 86_400.5, 1e9]
)
# Medium most often: claim order within one priority (enqueue order) matters as much.
priorities = st.sampled_from(["low", "medium", "medium", "medium", "high", "urgent"])
task_caps = st.sampled_from(
    [frozenset(), frozenset(), frozenset({"py"}), frozenset({"gpu"}), frozenset({"py", "net"})]
)
session_caps = st.sampled_from(
    [
        frozenset(CAP_POOL),
        frozenset(CAP_POOL),
        frozenset({"py"}),
        frozenset({"py", "gpu"}),
        frozenset(),
    ]
)
time_steps = st.sampled_from(
    [0, 0.25, 1, 10, 29.75, 30, 30.25, 299, 300, 301, 3600, 86_400, 90_000]
)

# The claim part of a finish-and-claim: mostly valid, so the finish usually goes through.
finish_kinds = st.sampled_from(["complete", "fail", "release"])
next_workspaces = st.sampled_from([None] * 8 + ["ws_a", "ws_b", "bad ws"])
next_leases = st.sampled_from([None] * 4 + [30, 300, 86_400.5, -1])

create_flaws = st.sampled_from(
    ["none"] * 14
    + ["dup_task", "token_title", "token_metadata", "empty_title", "attempts_0", "attempts_11"]
)


class MachineVersusModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.machine = Machine()
        self.model = Model()
        self.counter = 0
        self.issued_tokens: list[str] = []
        self.tokens_by_hash: dict[str, str] = {}

    # ------------------------------------------------------------------------ helpers
    def _next(self) -> int:
        self.counter += 1
        return self.counter

    def _new_run_id(self) -> str:
        # A permutation of the counter: run id order must not follow creation order.
        return f"run_{(self._next() * 7919) % 10007:05d}"

    def _new_token(self) -> str:
        seed = hashlib.sha256(f"token {self._next()}".encode()).digest()
        token = new_secret_token(TOKEN_PREFIX, random_bytes=lambda n: seed[:n])
        self.issued_tokens.append(token)
        self.tokens_by_hash[sha256_of(token)] = token
        return token

    def _session_id(self, pick: Pick) -> str | None:
        kind, i = pick
        if kind == "none":
            return None
        if kind == "empty":
            return ""
        if kind == "unknown" or not self.model.sessions:
            return "ses_unknown"
        sessions = self.model.sessions.values()
        if kind == "holder":
            holders = sorted(s.id for s in sessions if s.lease_run)
            if holders:
                return holders[i % len(holders)]
        if kind in ("holder", "live"):
            live = sorted(s.id for s in sessions if s.state == "live")
            if live:
                return live[i % len(live)]
        ids = sorted(self.model.sessions)
        return ids[i % len(ids)]

    def _named_session(self, pick: Pick) -> str:
        session_id = self._session_id(pick)
        return "ses_unknown" if session_id is None else session_id

    def _run_id(self, pick: Pick, session_id: str | None) -> str:
        kind, i = pick
        session = self.model.sessions.get(session_id or "")
        if kind == "own" and session is not None and session.lease_run is not None:
            return session.lease_run
        if kind == "last":
            before = sorted(r.id for r in self.model.runs.values() if r.last_session == session_id)
            if before:
                return before[i % len(before)]
        if kind == "leased":
            leased = sorted(r.id for r in self.model.runs.values() if r.holder)
            if leased:
                return leased[i % len(leased)]
        if kind == "unknown" or not self.model.runs:
            return "run_unknown"
        ids = sorted(self.model.runs)
        return ids[i % len(ids)]

    def _assert_no_token_in_error(self, exc: RunleaseError) -> None:
        for text in (str(exc), repr(exc), exc.message):
            assert not TOKEN_RE.search(text), f"a claim token in an error: {text[:200]}"
            for token in self.issued_tokens:
                assert token[len(TOKEN_PREFIX) :][:12] not in text

    def _check_outcome(self, outcome: Outcome[Any]) -> None:
        encoded = msgspec.json.encode([outcome.reply, outcome.events]) + repr(outcome).encode()
        assert TOKEN_PREFIX.encode() not in encoded, "a raw claim token left the machine"
        for token in self.issued_tokens:
            assert token[len(TOKEN_PREFIX) :].encode() not in encoded
        if outcome.error is not None:
            self._assert_no_token_in_error(outcome.error)
        for ev in outcome.events:
            self.model.seq += 1
            assert ev.seq == self.model.seq, "event sequence numbers must be contiguous"
            assert ev.at == self.model.now

    def _refused(self, command: AnyCommand, code: str) -> None:
        """The command must raise exactly ``code`` and leave every bit of state alone."""
        before = fingerprint(self.machine)
        with pytest.raises(RunleaseError) as info:
            self.machine.apply(command)
        assert info.value.code == code, f"{command!r}: expected {code}, got {info.value!r}"
        self._assert_no_token_in_error(info.value)
        assert fingerprint(self.machine) == before, f"refused {command!r} changed the state"
        event(f"{type(command).__name__}: {code}")

    def _apply(self, command: AnyCommand, label: str = "ok") -> Outcome[Any]:
        try:
            outcome = self.machine.apply(command)
        except RunleaseError as exc:
            raise AssertionError(f"{command!r} unexpectedly refused: {exc!r}") from exc
        self._check_outcome(outcome)
        event(f"{type(command).__name__}: {label}")
        return outcome

    def _already(self, command: CompleteRun | FailRun | ReleaseRun | BlockRun) -> Run:
        """A finish the session already made: answered again, flagged, nothing changed."""
        before = fingerprint(self.machine)
        outcome = self._apply(command, "already")
        assert isinstance(outcome.reply, Run)
        assert outcome.reply.already is True
        assert outcome.reply.id == command.run_id
        assert (outcome.events, outcome.deadlines, outcome.queued) == ([], [], False)
        assert fingerprint(self.machine) == before
        return outcome.reply

    def _no_op(self, command: AnyCommand) -> None:
        before = fingerprint(self.machine)
        outcome = self._apply(command, "no-op")
        assert outcome.reply is None
        assert outcome.events == []
        assert outcome.deadlines == []
        assert outcome.queued is False
        assert outcome.error is None
        assert fingerprint(self.machine) == before

    def _check_released(
        self,
        outcome: Outcome[Any],
        session_id: str,
        reason: str,
        released: list[str],
        stopped: list[str],
    ) -> None:
        reply = outcome.reply
        assert isinstance(reply, SessionReleased)
        assert reply.session_id == session_id
        assert reply.reason == reason
        assert sorted(reply.released_run_ids) == sorted(released)
        assert sorted(reply.stopped_session_ids) == sorted(stopped)
        kinds = sorted(ev.kind for ev in outcome.events)
        assert kinds == sorted(
            ["lease_released"] * len(released) + ["session_stopped"] * len(stopped)
        )
        assert outcome.queued == bool(released)

    # ------------------------------------------------------------------- setup rules
    @initialize(
        caps=session_caps,
        seed_priorities=st.lists(priorities, min_size=3, max_size=3),
        tcaps=task_caps,
        max_attempts=st.integers(1, 3),
    )
    def seed(
        self,
        caps: frozenset[str],
        seed_priorities: list[str],
        tcaps: frozenset[str],
        max_attempts: int,
    ) -> None:
        """Start every example with two sessions and three queued runs, so runs go deep."""
        self.open_session(caps, None, None, True)
        self.open_session(frozenset(CAP_POOL), None, None, True)
        for i, priority in enumerate(seed_priorities):
            caps_i = tcaps if i == 0 else frozenset()
            self.create_task(priority, None if i else "ws_a", caps_i, max_attempts, True, "none")

    # ---------------------------------------------------------------- tasks and runs
    @rule(
        priority=priorities,
        workspace_id=st.sampled_from([None, "ws_a", "ws_b"]),
        caps=task_caps,
        max_attempts=st.integers(1, 4),
        start=st.sampled_from([True, True, False]),
        flaw=create_flaws,
    )
    def create_task(
        self,
        priority: str,
        workspace_id: str | None,
        caps: frozenset[str],
        max_attempts: int,
        start: bool,
        flaw: str,
    ) -> None:
        model = self.model
        n = self._next()
        task_id = f"task_{n:03d}"
        if flaw == "dup_task" and model.tasks:
            task_id = sorted(model.tasks)[n % len(model.tasks)]
        title = f"task number {n}"
        metadata: dict[str, Any] | None = {"owner": "ops", "n": n} if n % 3 else None
        if flaw == "token_title":
            title = f"see {self._new_token()}"
        elif flaw == "empty_title":
            title = "   "
        elif flaw == "token_metadata":
            metadata = {"nested": [{"x": self._new_token()}]} if n % 2 else {"claim_token": "x"}
        attempts = {"attempts_0": 0, "attempts_11": 11}.get(flaw, max_attempts)
        run_id = self._new_run_id() if start else None
        command = CreateTask(
            now=model.now,
            task_id=task_id,
            title=title,
            priority=priority,  # type: ignore[arg-type]
            workspace_id=workspace_id,
            max_attempts=attempts,
            metadata=metadata,
            required_capabilities=sorted(caps),
            start_run_id=run_id,
        )
        if task_id in model.tasks or flaw not in ("none", "dup_task"):
            self._refused(command, INVALID_INPUT)
            return
        outcome = self._apply(command)
        task = MTask(task_id, priority, workspace_id, caps, max_attempts)
        model.tasks[task_id] = task
        if run_id is not None:
            model.enqueue(task, run_id)
        reply = outcome.reply
        assert isinstance(reply, Task)
        assert reply.id == task_id
        assert reply.status == ("ready" if start else "pending")
        assert reply.scope == ("global" if workspace_id is None else "workspace")
        assert reply.current_run_id == run_id
        assert [ev.kind for ev in outcome.events] == ["task_created"] + (
            ["run_queued"] if start else []
        )
        assert outcome.queued == start

    @rule(pick=task_picks, reuse_run_id=st.sampled_from([False] * 5 + [True]))
    def start_task(self, pick: Pick, reuse_run_id: bool) -> None:
        model = self.model
        kind, i = pick
        task_ids = sorted(model.tasks)
        task_id = (
            "task_unknown" if kind == "unknown" or not task_ids else task_ids[i % len(task_ids)]
        )
        run_id = self._new_run_id()
        if reuse_run_id and model.runs:
            run_id = sorted(model.runs)[i % len(model.runs)]
        command = StartTask(now=model.now, task_id=task_id, run_id=run_id)
        task = model.tasks.get(task_id)
        if task is None:
            self._refused(command, TASK_NOT_FOUND)
            return
        current = model.runs[task.current_run] if task.current_run else None
        if current is not None and current.status in ("queued", "claimed", "running"):
            # The task already has its run: that run is the answer, and nothing changes.
            before = fingerprint(self.machine)
            outcome = self._apply(command, "existing run")
            assert fingerprint(self.machine) == before
            assert isinstance(outcome.reply, Run)
            assert (outcome.reply.id, outcome.reply.already) == (current.id, True)
            assert outcome.events == []
            assert not outcome.queued
            return
        if run_id in model.runs:
            self._refused(command, INVALID_INPUT)
            return
        if current is not None and (
            current.status == "completed" or current.attempt >= task.max_attempts
        ):
            self._refused(command, INVALID_TRANSITION)
            return
        outcome = self._apply(command)
        run = model.enqueue(task, run_id)
        reply = outcome.reply
        assert isinstance(reply, Run)
        assert (reply.id, reply.status, reply.attempt) == (run_id, "queued", run.attempt)
        assert reply.previous_run_id == (None if current is None else current.id)
        assert [ev.kind for ev in outcome.events] == ["run_queued"]
        assert outcome.queued

    # ---------------------------------------------------------------------- sessions
    @rule(
        caps=session_caps,
        parent=st.one_of(st.none(), st.tuples(st.just("any"), st.integers(0, 63))),
        ttl=st.sampled_from([None, None, None, 1, 60, 300, 3600, 0, -5]),
        auto_stop=st.sampled_from([True, True, False]),
    )
    def open_session(
        self, caps: frozenset[str], parent: Pick | None, ttl: float | None, auto_stop: bool
    ) -> None:
        model = self.model
        session_id = f"ses_{self._next():03d}"
        parent_id = None if parent is None else self._named_session(parent)
        if parent_id == "ses_unknown" and parent is not None and parent[1] % 7 != 0:
            parent_id = None  # an unknown parent only now and then
        command = OpenSession(
            now=model.now,
            session_id=session_id,
            agent="agent-x",
            parent_id=parent_id,
            ttl_seconds=ttl,
            auto_stop_on_parent=auto_stop,
            capabilities=sorted(caps),
        )
        if ttl is not None and ttl <= 0:
            self._refused(command, INVALID_INPUT)
            return
        if parent_id is not None:
            parent_session = model.sessions.get(parent_id)
            if parent_session is None:
                self._refused(command, SESSION_NOT_FOUND)
                return
            if parent_session.state != "live":
                self._refused(command, SESSION_STOPPED)
                return
        outcome = self._apply(command)
        deadline = None if ttl is None else model.now + float(ttl)
        model.sessions[session_id] = MSession(session_id, caps, parent_id, deadline, auto_stop)
        if parent_id is not None:
            model.sessions[parent_id].children.append(session_id)
        reply = outcome.reply
        assert isinstance(reply, Session)
        assert (reply.id, reply.state, reply.ttl_deadline) == (session_id, "live", deadline)
        assert outcome.deadlines == (
            [] if deadline is None else [(deadline, "session", session_id)]
        )

    @rule(
        pick=session_picks,
        stop=st.booleans(),
        reason=st.sampled_from(
            [None, None, "done", "", "ttl_expired", "parent_stopped", "session_stopped", "bogus"]
        ),
    )
    def end_session(self, pick: Pick, stop: bool, reason: str | None) -> None:
        """StopSession (stops the tree) or ReleaseSessionLeases (keeps the session live)."""
        model = self.model
        session_id = self._named_session(pick)
        session = model.sessions.get(session_id)
        if stop:
            command: AnyCommand = StopSession(now=model.now, session_id=session_id, reason=reason)
            if session is None:
                self._refused(command, SESSION_NOT_FOUND)
            elif reason == "":
                self._refused(command, INVALID_INPUT)
            else:
                outcome = self._apply(command)
                released: list[str] = []
                stopped: list[str] = []
                stop_reason = reason or "session_stopped"
                model.stop_tree(session, stop_reason, "session_stopped", released, stopped)
                self._check_released(outcome, session_id, "session_stopped", released, stopped)
            return
        reason = reason or "ttl_expired"
        command = ReleaseSessionLeases(now=model.now, session_id=session_id, reason=reason)
        if session is None:
            self._refused(command, SESSION_NOT_FOUND)
        elif reason not in ("ttl_expired", "parent_stopped", "session_stopped"):
            self._refused(command, INVALID_INPUT)
        else:
            outcome = self._apply(command)
            released = []
            if session.lease_run is not None:
                released.append(session.lease_run)
                model.lose(model.runs[session.lease_run], reason)
                model.requeue(model.runs[session.lease_run], reason)
            self._check_released(outcome, session_id, reason, released, [])

    @rule()
    def expire_session_ttls(self) -> None:
        """The lease clock fires every session deadline that has passed, in deadline order."""
        model = self.model
        due = sorted(
            (s.ttl_deadline, s.id)
            for s in model.sessions.values()
            if s.state == "live" and s.ttl_deadline is not None and s.ttl_deadline <= model.now
        )
        for _, session_id in due:
            session = model.sessions[session_id]
            command = ExpireSession(now=model.now, session_id=session_id)
            if session.state != "live":  # a parent's expiry stopped it a moment ago
                self._no_op(command)
                continue
            outcome = self._apply(command)
            released: list[str] = []
            stopped: list[str] = []
            model.stop_tree(session, "ttl_expired", "ttl_expired", released, stopped)
            self._check_released(outcome, session_id, "ttl_expired", released, stopped)

    # ------------------------------------------------------------------------ claims
    @rule(
        pick=session_picks,
        workspace_id=st.sampled_from([None] * 6 + ["ws_a", "ws_b", "ws_c", "bad ws"]),
        lease_seconds=lease_lengths,
    )
    def claim_next(self, pick: Pick, workspace_id: str | None, lease_seconds: float | None) -> None:
        self._claim(self._session_id(pick), workspace_id, lease_seconds)

    def _claim(
        self, session_id: str | None, workspace_id: str | None, lease_seconds: float | None
    ) -> None:
        model = self.model
        token = self._new_token()
        command = ClaimNext(
            now=model.now,
            session_id=session_id,
            claim_token=token,
            lease_seconds=lease_seconds,
            workspace_id=workspace_id,
        )
        if not session_id:
            self._refused(command, AUTONOMY_SESSION_REQUIRED)
            return
        session = model.sessions.get(session_id)
        if session is None:
            self._refused(command, SESSION_NOT_FOUND)
            return
        if session.state != "live":
            self._refused(command, SESSION_STOPPED)
            return
        if (lease_seconds is not None and lease_seconds < 0) or workspace_id == "bad ws":
            self._refused(command, INVALID_INPUT)
            return
        held = model.runs[session.lease_run] if session.lease_run else None
        if held is not None:
            assert held.lease_until is not None
            if held.lease_until > model.now:
                self._refused(command, AUTONOMY_LEASE_ALREADY_HELD)
                return
        winner_if_nothing_expires = model.winner(session, workspace_id)
        if held is None and winner_if_nothing_expires is None:
            self._refused(command, NO_CLAIMABLE_RUN)
            return

        outcome = self._apply(command)
        kinds = []
        requeued = False
        if held is not None:
            # The held lease is past its deadline: the claim expires it first.
            requeued = model.expire(held, "lease_expired")
            kinds.append("lease_expired")
            event("claim expired the held lease first")
        winner = model.winner(session, workspace_id)
        if winner is None:
            assert outcome.error is not None
            assert outcome.error.code == NO_CLAIMABLE_RUN
            assert outcome.reply is None
            assert [ev.kind for ev in outcome.events] == kinds
            assert outcome.queued == requeued
            return
        seconds, clamped = expected_seconds(lease_seconds)
        run = model.runs[winner]
        model.claim(session, run, seconds)
        reply = outcome.reply
        assert outcome.error is None
        assert isinstance(reply, Claim)
        assert reply.run.id == winner, f"claimed {reply.run.id}, the model expected {winner}"
        assert reply.run.status == "claimed"
        assert reply.run.attempt == run.attempt
        assert reply.task.id == run.task_id
        assert reply.task.status == "in_progress"
        lease = reply.lease
        assert (lease.run_id, lease.session_id) == (winner, session_id)
        assert lease.lease_until == run.lease_until
        assert (lease.lease_seconds, lease.lease_seconds_clamped) == (seconds, clamped)
        assert lease.claim_token_hash == sha256_of(token)
        assert reply.run.claim_token_hash == sha256_of(token)
        assert [ev.kind for ev in outcome.events] == [*kinds, "run_claimed"]
        assert outcome.deadlines == [(run.lease_until, "lease", winner)]
        assert outcome.queued == requeued

    @rule(i=st.integers(0, 63), lease_seconds=st.sampled_from([None, 30, 300, 3600]))
    def claim_by_an_idle_live_session(self, i: int, lease_seconds: float | None) -> None:
        idle = sorted(
            s.id for s in self.model.sessions.values() if s.state == "live" and s.lease_run is None
        )
        if idle:
            self._claim(idle[i % len(idle)], None, lease_seconds)

    @rule(
        pick=session_picks,
        what=st.sampled_from(
            ["queued_run"] * 4 + ["queued_task"] * 2 + ["any_run", "any_task", "no_run", "no_task"]
        ),
        i=st.integers(0, 63),
        workspace_id=st.sampled_from([None] * 6 + ["ws_a", "ws_b", "bad ws"]),
        lease_seconds=lease_lengths,
    )
    def claim_by_id(
        self,
        pick: Pick,
        what: str,
        i: int,
        workspace_id: str | None,
        lease_seconds: float | None,
    ) -> None:
        """Claim a chosen run (or a task's current run) under the rules of claim_next."""
        model = self.model
        session_id = self._session_id(pick)
        queued = sorted(r.id for r in model.runs.values() if r.status == "queued")
        run_id: str | None = None
        task_id: str | None = None
        if what == "queued_run" and queued:
            run_id = queued[i % len(queued)]
        elif what == "queued_task" and queued:
            task_id = model.runs[queued[i % len(queued)]].task_id
        elif what.endswith("_task"):
            ids = sorted(model.tasks)
            task_id = ids[i % len(ids)] if ids and what != "no_task" else "task_unknown"
        else:
            ids = sorted(model.runs)
            run_id = ids[i % len(ids)] if ids and what != "no_run" else "run_unknown"
        token = self._new_token()
        command = ClaimRun(
            now=model.now,
            session_id=session_id,
            run_id=run_id,
            task_id=task_id,
            claim_token=token,
            lease_seconds=lease_seconds,
            workspace_id=workspace_id,
        )
        if not session_id:
            self._refused(command, AUTONOMY_SESSION_REQUIRED)
            return
        session = model.sessions.get(session_id)
        if session is None:
            self._refused(command, SESSION_NOT_FOUND)
            return
        if session.state != "live":
            self._refused(command, SESSION_STOPPED)
            return
        if (lease_seconds is not None and lease_seconds < 0) or workspace_id == "bad ws":
            self._refused(command, INVALID_INPUT)
            return
        if run_id is not None and run_id not in model.runs:
            self._refused(command, RUN_NOT_FOUND)
            return
        if task_id is not None and task_id not in model.tasks:
            self._refused(command, TASK_NOT_FOUND)
            return
        chosen = run_id if run_id is not None else model.tasks[task_id or ""].current_run
        if chosen is None:
            self._refused(command, NO_CLAIMABLE_RUN)
            return
        run = model.runs[chosen]
        task = model.tasks[run.task_id]
        held = model.runs[session.lease_run] if session.lease_run else None
        if held is not None:
            assert held.lease_until is not None
            if held.lease_until > model.now:
                self._refused(command, AUTONOMY_LEASE_ALREADY_HELD)
                return

        def claimable() -> bool:
            return (
                task.current_run == chosen
                and run.status == "queued"
                and not model.scope_refusal(task, workspace_id)
                and task.caps <= session.caps
            )

        if held is None and not claimable():
            self._refused(command, NO_CLAIMABLE_RUN)
            return
        outcome = self._apply(command, "claimed" if claimable() else "expired, then refused")
        kinds = []
        requeued = False
        if held is not None:
            requeued = model.expire(held, "lease_expired")
            kinds.append("lease_expired")
        if not claimable():
            assert outcome.error is not None
            assert outcome.error.code == NO_CLAIMABLE_RUN
            assert [ev.kind for ev in outcome.events] == kinds
            assert outcome.queued == requeued
            return
        seconds, clamped = expected_seconds(lease_seconds)
        model.claim(session, run, seconds)
        reply = outcome.reply
        assert outcome.error is None
        assert isinstance(reply, Claim)
        assert (reply.run.id, reply.run.status, reply.task.id) == (chosen, "claimed", task.id)
        lease = reply.lease
        assert (lease.run_id, lease.session_id) == (chosen, session_id)
        assert lease.lease_until == run.lease_until
        assert (lease.lease_seconds, lease.lease_seconds_clamped) == (seconds, clamped)
        assert lease.claim_token_hash == sha256_of(token)
        assert [ev.kind for ev in outcome.events] == [*kinds, "run_claimed"]
        assert outcome.deadlines == [(run.lease_until, "lease", chosen)]
        assert outcome.queued == requeued

    @rule(pick=actor_picks, run_pick=run_picks, lease_seconds=lease_lengths)
    def heartbeat(self, pick: Pick, run_pick: Pick, lease_seconds: float | None) -> None:
        model = self.model
        session_id = self._session_id(pick)
        run_id = self._run_id(run_pick, session_id)
        command = HeartbeatRun(
            now=model.now, session_id=session_id, run_id=run_id, lease_seconds=lease_seconds
        )
        if lease_seconds is not None and lease_seconds < 0:
            self._refused(command, INVALID_INPUT)
            return
        refusal = model.lease_refusal(session_id, run_id)
        if refusal is not None:
            self._refused(command, refusal)
            return
        outcome = self._apply(command)
        seconds, clamped = expected_seconds(lease_seconds)
        run = model.runs[run_id]
        run.lease_until = model.now + seconds
        run.status = "running"
        reply = outcome.reply
        assert isinstance(reply, Heartbeat)
        assert (reply.run.id, reply.run.status) == (run_id, "running")
        assert reply.lease.lease_until == run.lease_until
        assert (reply.lease.lease_seconds, reply.lease.lease_seconds_clamped) == (seconds, clamped)
        assert [ev.kind for ev in outcome.events] == ["lease_renewed"]
        assert outcome.deadlines == [(run.lease_until, "lease", run_id)]

    @rule(
        pick=actor_picks,
        run_pick=run_picks,
        result=st.sampled_from(
            ["none", "object", "object", "object", "scalar", "token_key", "token", "keyed", "big"]
        ),
    )
    def complete(self, pick: Pick, run_pick: Pick, result: str) -> None:
        model = self.model
        session_id = self._session_id(pick)
        run_id = self._run_id(run_pick, session_id)
        payload: Any = {
            "none": None,
            "object": {"summary": "tests passed", "files": ["a.py", "b.py"]},
            "scalar": 42,
            "token_key": {"ok": True, "claim_token": "hidden"},
            "token": {"log": [f"using {self._live_or_new_token(run_id)}"]},
            "keyed": {"by_token": {self._live_or_new_token(run_id): "mine"}},
            "big": "x" * (64 * 1024),
        }[result]
        command = CompleteRun(now=model.now, session_id=session_id, run_id=run_id, result=payload)
        if result in ("token_key", "token", "keyed"):
            self._refused(command, INVALID_INPUT)
            return
        if result == "big":
            self._refused(command, PAYLOAD_TOO_LARGE)
            return
        if model.repeats(session_id, run_id, "complete", payload):
            assert self._already(command).result == payload
            return
        refusal = model.lease_refusal(session_id, run_id)
        if refusal is not None:
            self._refused(command, refusal)
            return
        outcome = self._apply(command)
        run = model.runs[run_id]
        model.end_lease(run)
        run.status = "completed"
        run.result = payload
        reply = outcome.reply
        assert isinstance(reply, Run)
        assert reply.already is False
        assert (reply.id, reply.status, reply.result) == (run_id, "completed", payload)
        assert reply.claim_token_hash is None
        assert [ev.kind for ev in outcome.events] == ["run_completed"]

    def _live_or_new_token(self, run_id: str) -> str:
        """The real token of the lease (what a careless agent would echo), else a fresh one."""
        run = self.machine.runs.get(run_id)
        token_hash = run.claim_token_hash if run is not None else None
        return self.tokens_by_hash.get(token_hash or "") or self._new_token()

    @rule(
        pick=actor_picks,
        run_pick=run_picks,
        error=st.sampled_from(["tests failed"] * 8 + ["", "token"]),
        metadata=st.sampled_from(["none"] * 4 + ["object"] * 4 + ["token", "list"]),
    )
    def fail(self, pick: Pick, run_pick: Pick, error: str, metadata: str) -> None:
        model = self.model
        session_id = self._session_id(pick)
        run_id = self._run_id(run_pick, session_id)
        if error == "token":
            error = f"leaked {self._live_or_new_token(run_id)}"
        meta: Any = {
            "none": None,
            "object": {"command": "make test"},
            "token": {"env": {"TOKEN": self._live_or_new_token(run_id)}},
            "list": ["not", "an", "object"],
        }[metadata]
        command = FailRun(
            now=model.now, session_id=session_id, run_id=run_id, error=error, metadata=meta
        )
        if not error or TOKEN_PREFIX in error or metadata in ("token", "list"):
            self._refused(command, INVALID_INPUT)
            return
        if model.repeats(session_id, run_id, "fail", (error, meta)):
            self._already(command)
            return
        refusal = model.lease_refusal(session_id, run_id)
        if refusal is not None:
            self._refused(command, refusal)
            return
        outcome = self._apply(command)
        run = model.runs[run_id]
        model.end_lease(run)
        run.status = "failed"
        run.error = error
        run.failure_metadata = meta
        reply = outcome.reply
        assert isinstance(reply, Run)
        assert (reply.id, reply.status, reply.error) == (run_id, "failed", error)
        assert reply.failure_metadata == meta
        task = model.tasks[run.task_id]
        assert [ev.kind for ev in outcome.events] == ["run_failed"]
        assert outcome.events[0].data["attempts_left"] == max(task.max_attempts - run.attempt, 0)

    @rule(
        pick=actor_picks,
        run_pick=run_picks,
        reason=st.sampled_from([None, None, "handoff", "handoff", ""]),
    )
    def release(self, pick: Pick, run_pick: Pick, reason: str | None) -> None:
        model = self.model
        session_id = self._session_id(pick)
        run_id = self._run_id(run_pick, session_id)
        command = ReleaseRun(now=model.now, session_id=session_id, run_id=run_id, reason=reason)
        if reason == "":
            self._refused(command, INVALID_INPUT)
            return
        if model.repeats(session_id, run_id, "release", reason or "released"):
            self._already(command)
            return
        refusal = model.lease_refusal(session_id, run_id)
        if refusal is not None:
            self._refused(command, refusal)
            return
        outcome = self._apply(command)
        run = model.runs[run_id]
        model.requeue(run, reason or "released")
        reply = outcome.reply
        assert isinstance(reply, Run)
        assert (reply.id, reply.status, reply.attempt) == (run_id, "queued", run.attempt)
        assert [ev.kind for ev in outcome.events] == ["lease_released"]
        assert outcome.queued

    @rule(
        pick=actor_picks,
        run_pick=run_picks,
        reason=st.sampled_from(["needs a human"] * 4 + [""]),
    )
    def block(self, pick: Pick, run_pick: Pick, reason: str) -> None:
        model = self.model
        session_id = self._session_id(pick)
        run_id = self._run_id(run_pick, session_id)
        command = BlockRun(now=model.now, session_id=session_id, run_id=run_id, reason=reason)
        if not reason:
            self._refused(command, INVALID_INPUT)
            return
        if model.repeats(session_id, run_id, "block", reason):
            self._already(command)
            return
        refusal = model.lease_refusal(session_id, run_id)
        if refusal is not None:
            self._refused(command, refusal)
            return
        outcome = self._apply(command)
        run = model.runs[run_id]
        model.end_lease(run)
        run.status = "needs_attention"
        run.reason = reason
        reply = outcome.reply
        assert isinstance(reply, Run)
        assert (reply.id, reply.status, reply.reason) == (run_id, "needs_attention", reason)
        assert reply.claim_token_hash is None
        assert [ev.kind for ev in outcome.events] == ["run_blocked"]

    @rule(
        pick=actor_picks,
        run_pick=run_picks,
        kind=finish_kinds,
        workspace_id=next_workspaces,
        lease_seconds=next_leases,
    )
    def finish_and_claim(
        self,
        pick: Pick,
        run_pick: Pick,
        kind: str,
        workspace_id: str | None,
        lease_seconds: float | None,
    ) -> None:
        session_id = self._session_id(pick)
        self._finish_and_claim(
            session_id, self._run_id(run_pick, session_id), kind, workspace_id, lease_seconds
        )

    @rule(
        i=st.integers(0, 63),
        kind=finish_kinds,
        workspace_id=next_workspaces,
        lease_seconds=next_leases,
    )
    def finish_and_claim_by_a_holder(
        self, i: int, kind: str, workspace_id: str | None, lease_seconds: float | None
    ) -> None:
        """The agent loop itself: the holder finishes its own run and asks for the next."""
        holders = sorted(s.id for s in self.model.sessions.values() if s.lease_run)
        if holders:
            session = self.model.sessions[holders[i % len(holders)]]
            assert session.lease_run is not None
            self._finish_and_claim(session.id, session.lease_run, kind, workspace_id, lease_seconds)

    def _finish_and_claim(
        self,
        session_id: str | None,
        run_id: str,
        kind: str,
        workspace_id: str | None,
        lease_seconds: float | None,
    ) -> None:
        """Finish, then claim, as one command.

        A bad claim part or a refused finish must raise and change nothing (so nothing is
        claimed); otherwise the finish happens exactly as on its own and then the claim
        follows the claim rules, with NO_CLAIMABLE_RUN reported in the reply, not raised.
        """
        model = self.model
        finish: CompleteRun | FailRun | ReleaseRun
        if kind == "complete":
            finish = CompleteRun(now=0.0, session_id=session_id, run_id=run_id, result={"n": 1})
        elif kind == "fail":
            finish = FailRun(now=0.0, session_id=session_id, run_id=run_id, error="broke")
        else:
            finish = ReleaseRun(now=0.0, session_id=session_id, run_id=run_id, reason="handoff")
        token = self._new_token()
        command = FinishAndClaim(
            now=model.now,
            finish=finish,
            claim=ClaimNext(
                now=0.0,
                session_id=session_id,
                claim_token=token,
                lease_seconds=lease_seconds,
                workspace_id=workspace_id,
            ),
        )
        if (lease_seconds is not None and lease_seconds < 0) or workspace_id == "bad ws":
            self._refused(command, INVALID_INPUT)
            return
        payload: Any = {"complete": {"n": 1}, "fail": ("broke", None), "release": "handoff"}[kind]
        already = model.repeats(session_id, run_id, kind, payload)
        refusal = None if already else model.lease_refusal(session_id, run_id)
        if refusal is not None:
            self._refused(command, refusal)
            return
        assert session_id is not None
        session = model.sessions[session_id]
        run = model.runs[run_id]
        kinds: list[str] = []
        requeued = False
        if already:
            # The finish is answered again and changes nothing; the claim part is a claim
            # like any other, and the session may hold a lease again by now.
            held = model.runs[session.lease_run] if session.lease_run else None
            if held is not None:
                assert held.lease_until is not None
                if held.lease_until > model.now:
                    outcome = self._apply(command, "already, lease held")
                    reply = outcome.reply
                    assert isinstance(reply, Finished)
                    assert reply.run.already is True
                    assert reply.claim is None
                    assert reply.no_claim is not None
                    assert reply.no_claim.code == AUTONOMY_LEASE_ALREADY_HELD
                    assert (outcome.events, outcome.deadlines, outcome.queued) == ([], [], False)
                    return
                requeued = model.expire(held, "lease_expired")
                kinds.append("lease_expired")
        elif kind == "release":
            model.requeue(run, "handoff")
            kinds.append("lease_released")
            requeued = True
        else:
            model.end_lease(run)
            run.status = "completed" if kind == "complete" else "failed"
            run.error = "broke" if kind == "fail" else None
            run.result = {"n": 1} if kind == "complete" else None
            kinds.append("run_completed" if kind == "complete" else "run_failed")
        # Worked out after the finish: a released run is a candidate for its own session.
        winner = model.winner(session, workspace_id)
        label = f"{'already ' if already else ''}{kind} then {'claim' if winner else 'nothing'}"
        outcome = self._apply(command, label)
        reply = outcome.reply
        assert isinstance(reply, Finished)
        assert outcome.error is None
        assert reply.run.already is already
        assert (reply.run.id, reply.run.status) == (run_id, run.status)
        assert reply.run.claim_token_hash is None
        assert outcome.queued == requeued
        if winner is None:
            assert reply.claim is None
            assert reply.no_claim is not None
            assert reply.no_claim.code == NO_CLAIMABLE_RUN
            assert [ev.kind for ev in outcome.events] == kinds
            assert outcome.deadlines == []
            assert session.lease_run is None
            return
        seconds, clamped = expected_seconds(lease_seconds)
        claimed = model.runs[winner]
        model.claim(session, claimed, seconds)
        assert reply.no_claim is None
        assert isinstance(reply.claim, Claim)
        assert reply.claim.run.id == winner, f"claimed {reply.claim.run.id}, expected {winner}"
        assert reply.claim.run.status == "claimed"
        assert reply.claim.task.status == "in_progress"
        lease = reply.claim.lease
        assert (lease.run_id, lease.session_id) == (winner, session_id)
        assert lease.lease_until == claimed.lease_until == model.now + seconds
        assert (lease.lease_seconds, lease.lease_seconds_clamped) == (seconds, clamped)
        assert lease.claim_token_hash == sha256_of(token)
        assert [ev.kind for ev in outcome.events] == [*kinds, "run_claimed"]
        assert outcome.deadlines == [(claimed.lease_until, "lease", winner)]
        assert session.lease_run == winner

    # ------------------------------------------------------------------ time, clocks
    @rule(step=time_steps)
    def advance_time(self, step: float) -> None:
        self.model.now += step

    @rule()
    def fire_lease_clock(self) -> None:
        """The clock applies ExpireLease to every lease whose deadline passed, in order."""
        model = self.model
        due = sorted(
            (r.lease_until, r.id)
            for r in model.runs.values()
            if r.lease_until is not None and r.lease_until <= model.now
        )
        for _, run_id in due:
            outcome = self._apply(ExpireLease(now=model.now, run_id=run_id))
            run = model.runs[run_id]
            requeued = model.expire(run, "lease_expired")
            reply = outcome.reply
            assert isinstance(reply, Run)
            assert (reply.id, reply.status) == (run_id, run.status)
            assert reply.recovery_count == run.recovery_count
            assert reply.error == run.error
            assert [ev.kind for ev in outcome.events] == ["lease_expired"]
            assert outcome.events[0].data["outcome"] == (
                "requeued" if requeued else "needs_attention"
            )
            assert outcome.queued == requeued
            event("lease expired: " + ("requeued" if requeued else "recovery exhausted"))

    @rule(which=st.booleans(), pick=session_picks, run_pick=run_picks)
    def clock_fires_early_or_late(self, which: bool, pick: Pick, run_pick: Pick) -> None:
        """An ExpireLease or ExpireSession before its deadline, or for something already
        released or stopped, must change nothing."""
        model = self.model
        if which:
            run_id = self._run_id(run_pick, None)
            command: AnyCommand = ExpireLease(now=model.now, run_id=run_id)
            run = model.runs.get(run_id)
            if run is None:
                self._refused(command, RUN_NOT_FOUND)
            elif run.lease_until is None or run.lease_until > model.now:
                self._no_op(command)
            return  # else due: fire_lease_clock covers it
        session_id = self._named_session(pick)
        command = ExpireSession(now=model.now, session_id=session_id)
        session = model.sessions.get(session_id)
        if session is None:
            self._refused(command, SESSION_NOT_FOUND)
        elif (
            session.state != "live"
            or session.ttl_deadline is None
            or session.ttl_deadline > model.now
        ):
            self._no_op(command)
        # else due: expire_session_ttls covers it

    # -------------------------------------------------------------------- invariants
    @invariant()
    def machine_matches_model(self) -> None:
        machine, model = self.machine, self.model
        machine.check_invariants()
        assert machine.last_seq == model.seq
        assert machine.tasks.keys() == model.tasks.keys()
        assert machine.runs.keys() == model.runs.keys()
        assert machine.sessions.keys() == model.sessions.keys()
        for task_id, mt in model.tasks.items():
            task = machine.tasks[task_id]
            assert task.current_run_id == mt.current_run
            assert task.status == model.task_status(mt), f"status of {task_id}"
        for run_id, mr in model.runs.items():
            run = machine.runs[run_id]
            assert run.status == mr.status, f"{run_id}: {run.status} != model {mr.status}"
            assert run.attempt == mr.attempt
            assert run.recovery_count == mr.recovery_count
            assert run.queued_at == mr.queued_at
            assert run.queue_seq == mr.queue_place
            assert run.session_id == mr.last_session
            assert run.lease_until == mr.lease_until
            assert run.error == mr.error
            assert run.reason == mr.reason
            loss = run.lease_loss
            assert (None if loss is None else (loss.session_id, loss.cause)) == mr.loss
            assert run.already is False, "only replies carry already"
        for session_id, ms in model.sessions.items():
            session = machine.sessions[session_id]
            assert session.state == ms.state
            assert session.lease_run_id == ms.lease_run
            assert session.stop_reason == ms.stop_reason
            assert session.ttl_deadline == ms.ttl_deadline
        queued = {r.id for r in model.runs.values() if r.status == "queued"}
        assert set(machine.index.run_ids()) == queued, "the index holds exactly the queued runs"

    @invariant()
    def lease_rules_hold(self) -> None:
        machine = self.machine
        leases_per_run: dict[str, int] = {}
        for session in machine.sessions.values():
            if session.lease_run_id is not None:
                assert session.state == "live"
                leases_per_run[session.lease_run_id] = (
                    leases_per_run.get(session.lease_run_id, 0) + 1
                )
        assert all(count == 1 for count in leases_per_run.values()), "two holders of one run"
        leases_per_session: dict[str, int] = {}
        for run in machine.runs.values():
            is_queued = run.status == "queued"
            is_leased = run.status in LEASED
            is_settled = run.status in SETTLED
            assert is_queued + is_leased + is_settled == 1, f"{run.id} is {run.status}"
            assert (run.claim_token_hash is not None) == is_leased
            assert (run.lease_until is not None) == is_leased
            assert (run.id in machine.leased_run_ids()) == is_leased
            if is_leased:
                assert run.session_id is not None
                assert leases_per_run.get(run.id) == 1
                assert machine.sessions[run.session_id].lease_run_id == run.id
                leases_per_session[run.session_id] = leases_per_session.get(run.session_id, 0) + 1
            else:
                assert run.id not in leases_per_run
        assert all(count == 1 for count in leases_per_session.values())
        for run_id in machine.index.run_ids():
            assert machine.runs[run_id].status == "queued"
        # A task owns at most one non-settled run: its current one.
        for task in machine.tasks.values():
            open_runs = [
                r.id
                for r in machine.runs.values()
                if r.task_id == task.id and r.status not in SETTLED
            ]
            assert open_runs in ([], [task.current_run_id])


MachineVersusModel.TestCase.settings = settings(stateful_step_count=40)
TestMachineVersusModel = MachineVersusModel.TestCase
