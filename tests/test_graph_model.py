"""Stateful test of the task graph: Machine against a small independent model.

The model knows the hierarchy, the dependency edges, pause flags, drafts and approvals, the
scheduler switch, each task's run phase and its holder, and from those alone decides which
tasks are claimable, which commands must be refused (and with which code), what a cancel
must reach and what a force, a steal or a delete leaves behind. It also knows the operator
verbs: a blocked or starved run is parked until recovered (or unblocked, for a block), a
finished task can be reopened with a fresh attempt budget, and a task created to start on
its own gets its run the moment its last open dependency stops blocking it. After every
step the machine's claim index must hold exactly the runs the model calls claimable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from runlease.core.commands import (
    AddDependency,
    ApproveTask,
    BlockRun,
    BulkForceRuns,
    CancelRun,
    CancelTask,
    CheckpointTask,
    ClaimNext,
    ClaimRun,
    CompleteRun,
    CreateTask,
    DeleteTask,
    FailRun,
    FinishDrain,
    ForceFailRun,
    ForceReleaseRun,
    OpenSession,
    PauseScheduler,
    PauseTask,
    PublishTask,
    RecoverRun,
    RejectTask,
    RemoveDependency,
    ReopenTask,
    ResumeScheduler,
    ResumeTask,
    RetryRun,
    StartDrain,
    StartTask,
    StarveRun,
    StealRun,
    UnblockTask,
    UpdateTask,
)
from runlease.core.ids import CLAIM_TOKEN_PREFIX, new_secret_token
from runlease.core.machine import Machine
from runlease.core.model import (
    FORCE_RATE_LIMIT,
    FORCE_RATE_WINDOW_SECONDS,
    MAX_DEPENDENCIES,
    MAX_HIERARCHY_DEPTH,
    MAX_RETRY_CHAIN,
    Actor,
)
from runlease.errors import (
    APPROVAL_REQUIRED,
    ATTEMPTS_EXHAUSTED,
    AUTONOMY_LEASE_ALREADY_HELD,
    DEPENDENCY_CYCLE,
    DEPENDENCY_NOT_FOUND,
    FORCE_RATE_LIMITED,
    GRAPH_LIMIT_EXCEEDED,
    IMMUTABLE_FIELD,
    INVALID_INPUT,
    INVALID_TRANSITION,
    LEASE_NOT_EXPIRED,
    NO_CLAIMABLE_RUN,
    RETRY_CHAIN_TOO_DEEP,
    RUN_NOT_FOUND,
    TASK_HAS_ACTIVE_RUNS,
    TASK_HAS_CHILDREN,
    TASK_IS_DRAFT,
    RunleaseError,
)

SESSIONS = ("s0", "s1", "s2")
OPERATOR = Actor(kind="human", ref="op")


@dataclass
class ModelTask:
    parent: str | None
    max_attempts: int
    deps: list[str] = field(default_factory=list)
    paused: bool = False
    canceled: bool = False
    # none, queued, leased, parked, completed, failed, canceled
    phase: str = "none"
    # Why a parked run is parked: blocked (by its session) or starved.
    parked_by: str | None = None
    # Starts a run by itself once its last open dependency stops blocking it.
    auto: bool = False
    # Requires a capability no session of the model offers: claimable by nobody.
    needs_gpu: bool = False
    attempt: int = 0
    runs: int = 0
    holder: str | None = None
    force_times: list[float] = field(default_factory=list)
    draft: bool = False
    # Manual approval: not_required, pending, approved or rejected.
    approval: str = "not_required"
    priority: str = "medium"
    # It gained a dependency at some point (removing it later does not undo that).
    had_deps: bool = False


class GraphModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.machine = Machine()
        self.now = 1000.0
        self.tasks: dict[str, ModelTask] = {}
        self.order: list[str] = []
        self.scheduler_paused = False
        self.lease_of: dict[str, str | None] = dict.fromkeys(SESSIONS)
        self.counter = 0
        for sid in SESSIONS:
            self.machine.apply(OpenSession(now=self.now, session_id=sid, agent="a"))

    # ------------------------------------------------------------------ helpers
    def tick(self) -> float:
        self.now += 1.0
        return self.now

    def new_id(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def apply(self, command: object) -> RunleaseError | None:
        return self.answer(command)[1]

    def answer(self, command: object) -> tuple[Any, RunleaseError | None]:
        """The machine's reply to ``command``, or the error it refused it with."""
        try:
            return self.machine.apply(command).reply, None  # type: ignore[arg-type]
        except RunleaseError as exc:
            return None, exc

    def pick(self, data: st.DataObject) -> str | None:
        if not self.order:
            return None
        return data.draw(st.sampled_from(self.order))

    def pick_mostly(self, data: st.DataObject, *phases: str) -> str | None:
        """A task in one of ``phases`` most of the time (when there is one), else any task:
        the verbs that act on a phase few tasks are in still reach it often."""
        fitting = [t for t in self.order if self.tasks[t].phase in phases]
        if fitting and data.draw(st.integers(0, 3)) > 0:
            return data.draw(st.sampled_from(fitting))
        return self.pick(data)

    def depth(self, task_id: str) -> int:
        depth = 1
        parent = self.tasks[task_id].parent
        while parent is not None:
            depth += 1
            parent = self.tasks[parent].parent
        return depth

    def ancestors(self, task_id: str) -> list[str]:
        out: list[str] = []
        parent = self.tasks[task_id].parent
        while parent is not None:
            out.append(parent)
            parent = self.tasks[parent].parent
        return out

    def children(self, task_id: str) -> list[str]:
        return [t for t in self.order if self.tasks[t].parent == task_id]

    def below(self, task_id: str) -> list[str]:
        out: list[str] = []
        stack = self.children(task_id)
        while stack:
            child = stack.pop()
            out.append(child)
            stack.extend(self.children(child))
        return out

    def closed(self, task_id: str) -> bool:
        t = self.tasks[task_id]
        if t.canceled or t.phase in ("completed", "canceled"):
            return True
        return t.phase == "failed" and t.attempt >= t.max_attempts

    def effectively_paused(self, task_id: str) -> bool:
        current: str | None = task_id
        while current is not None:
            if self.tasks[current].paused:
                return True
            current = self.tasks[current].parent
        return False

    def gated(self, task_id: str) -> bool:
        deps_open = any(self.tasks[d].phase != "completed" for d in self.tasks[task_id].deps)
        return self.effectively_paused(task_id) or deps_open

    def claimable(self) -> set[str]:
        return {t for t in self.order if self.tasks[t].phase == "queued" and not self.gated(t)}

    def reaches(self, start: str, target: str) -> bool:
        seen, stack = {start}, [start]
        while stack:
            for nxt in self.tasks[stack.pop()].deps:
                if nxt == target:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return False

    def run_id(self, task_id: str) -> str:
        run_id = self.machine.tasks[task_id].current_run_id
        assert run_id is not None
        return run_id

    # -------------------------------------------------------------------- rules
    @rule(
        data=st.data(),
        with_parent=st.booleans(),
        start=st.booleans(),
        max_attempts=st.sampled_from([1, 3, 10]),
        kind=st.sampled_from(["plain"] * 4 + ["draft", "manual", "auto", "gpu"]),
    )
    def create(
        self, data: st.DataObject, with_parent: bool, start: bool, max_attempts: int, kind: str
    ) -> None:
        parent = self.pick(data) if with_parent else None
        # Drafts and manual tasks are started otherwise, auto ones by their dependencies.
        start = start and kind in ("plain", "gpu")
        task_id = self.new_id("t")
        expected = None
        if parent is not None:
            if any(self.tasks[t].canceled for t in (parent, *self.ancestors(parent))):
                expected = INVALID_TRANSITION
            elif self.depth(parent) >= MAX_HIERARCHY_DEPTH:
                expected = GRAPH_LIMIT_EXCEEDED
        error = self.apply(
            CreateTask(
                now=self.tick(),
                task_id=task_id,
                title="t",
                parent_task_id=parent,
                max_attempts=max_attempts,
                start_run_id=self.new_id("r") if start else None,
                draft=kind == "draft",
                approval_policy="manual" if kind == "manual" else "none",
                auto_enqueue_on_ready=kind == "auto",
                required_capabilities=["gpu"] if kind == "gpu" else [],
            )
        )
        assert (error and error.code) == expected, error
        if error is None:
            self.tasks[task_id] = ModelTask(
                parent=parent,
                max_attempts=max_attempts,
                draft=kind == "draft",
                approval="pending" if kind == "manual" else "not_required",
                auto=kind == "auto",
                needs_gpu=kind == "gpu",
            )
            self.order.append(task_id)
            if start:
                self.tasks[task_id].phase = "queued"
                self.tasks[task_id].attempt = 1
                self.tasks[task_id].runs = 1

    @rule(data=st.data())
    def add_dependency(self, data: st.DataObject) -> None:
        a, b = self.pick(data), self.pick(data)
        if a is None or b is None:
            return
        waiting = [t for t in self.order if self.tasks[t].auto and self.tasks[t].runs == 0]
        if len(waiting) > 0 and data.draw(st.booleans()):
            a = data.draw(st.sampled_from(waiting))  # often a task that starts on its own
        ta = self.tasks[a]
        if a == b:
            expected: str | None = DEPENDENCY_CYCLE
        elif b in ta.deps or self.closed(a):
            expected = INVALID_TRANSITION
        elif len(ta.deps) >= MAX_DEPENDENCIES:
            expected = GRAPH_LIMIT_EXCEEDED
        elif self.reaches(b, a):
            expected = DEPENDENCY_CYCLE
        else:
            expected = None
        error = self.apply(AddDependency(now=self.tick(), task_id=a, blocked_by=b))
        assert (error and error.code) == expected, error
        if error is None:
            ta.deps.append(b)
            ta.had_deps = True

    @rule(data=st.data())
    def create_waiter(self, data: st.DataObject) -> None:
        """A task that starts on its own, created waiting for an existing task."""
        blocker = self.pick(data)
        if blocker is None:
            return
        task_id = self.new_id("t")
        now = self.tick()
        self.machine.apply(
            CreateTask(now=now, task_id=task_id, title="w", auto_enqueue_on_ready=True)
        )
        self.tasks[task_id] = ModelTask(parent=None, max_attempts=3, auto=True)
        self.order.append(task_id)
        self.machine.apply(AddDependency(now=now, task_id=task_id, blocked_by=blocker))
        self.tasks[task_id].deps.append(blocker)
        self.tasks[task_id].had_deps = True
        # Waiting on a task that already completed: nothing will start it any more.
        assert self.machine.tasks[task_id].current_run_id is None

    @rule(data=st.data())
    def pause(self, data: st.DataObject) -> None:
        t = self.pick(data)
        if t is None:
            return
        ok = not self.tasks[t].paused and not self.closed(t)
        error = self.apply(PauseTask(now=self.tick(), task_id=t, reason="hold"))
        assert (error is None) == ok, error
        if ok:
            self.tasks[t].paused = True

    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        t = self.pick(data)
        if t is None:
            return
        ok = self.tasks[t].paused
        error = self.apply(ResumeTask(now=self.tick(), task_id=t))
        assert (error is None) == ok, error
        self.tasks[t].paused = False

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        t = self.pick(data)
        if t is None:
            return
        ok = not self.closed(t)
        error = self.apply(CancelTask(now=self.tick(), task_id=t, reason="stop"))
        assert (error is None) == ok, error
        if ok:
            self.cancel_tree(t)

    def cancel_tree(self, t: str) -> None:
        """A task and every descendant not yet closed are canceled, with their live runs."""
        if self.tasks[t].canceled:
            return
        for task_id in (t, *self.below(t)):
            if task_id != t and self.closed(task_id):
                continue
            mt = self.tasks[task_id]
            if mt.phase in ("queued", "leased", "parked"):
                mt.phase = "canceled"
            if mt.holder is not None:
                self.lease_of[mt.holder] = None
                mt.holder = None
            mt.canceled = True

    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        t = self.pick(data)
        if t is None:
            return
        mt = self.tasks[t]
        # Queued or leased: the task already has its run, and the answer is that run.
        already = mt.phase in ("queued", "leased")
        if already:
            expected: str | None = None
        elif mt.canceled:
            expected = INVALID_TRANSITION
        elif mt.draft:
            expected = TASK_IS_DRAFT
        elif mt.approval in ("pending", "rejected"):
            expected = APPROVAL_REQUIRED
        elif mt.phase not in ("none", "failed", "parked") or (
            mt.phase in ("failed", "parked") and mt.attempt >= mt.max_attempts
        ):
            expected = INVALID_TRANSITION
        elif mt.runs + 1 > MAX_RETRY_CHAIN:  # only after a reopen restarted the attempts
            expected = RETRY_CHAIN_TOO_DEEP
        else:
            expected = None
        reply, error = self.answer(StartTask(now=self.tick(), task_id=t, run_id=self.new_id("r")))
        assert (error and error.code) == expected, error
        if already:
            assert reply.already
            assert reply.id == self.run_id(t)
        elif error is None:
            assert not reply.already
            mt.phase, mt.attempt, mt.runs = "queued", mt.attempt + 1, mt.runs + 1

    @rule(session=st.sampled_from(SESSIONS))
    def claim(self, session: str) -> None:
        if self.lease_of[session] is not None:
            return
        claimable = set() if self.scheduler_paused else self.claimable()
        claimable = {t for t in claimable if not self.tasks[t].needs_gpu}
        before = set(self.machine.index.run_ids())
        command = ClaimNext(
            now=self.tick(),
            session_id=session,
            claim_token=new_secret_token(CLAIM_TOKEN_PREFIX),
            lease_seconds=100_000,
        )
        if not claimable:
            with pytest.raises(RunleaseError) as info:
                self.machine.apply(command)
            assert info.value.code == NO_CLAIMABLE_RUN
            return
        outcome = self.machine.apply(command)
        task_id = outcome.reply.task.id
        assert task_id in claimable, f"claimed {task_id}, not claimable (blocked/paused)"
        assert outcome.reply.run.id in before
        self.tasks[task_id].phase = "leased"
        self.tasks[task_id].holder = session
        self.lease_of[session] = task_id

    @rule(session=st.sampled_from(SESSIONS), succeed=st.booleans())
    def finish(self, session: str, succeed: bool) -> None:
        task_id = self.lease_of[session]
        if task_id is None:
            return
        run_id = self.run_id(task_id)
        if succeed:
            error = self.apply(CompleteRun(now=self.tick(), session_id=session, run_id=run_id))
        else:
            error = self.apply(
                FailRun(now=self.tick(), session_id=session, run_id=run_id, error="x")
            )
        assert error is None, error
        mt = self.tasks[task_id]
        mt.phase = "completed" if succeed else "failed"
        mt.holder = None
        self.lease_of[session] = None
        if succeed:
            self.auto_start([t for t in self.order if task_id in self.tasks[t].deps])

    def auto_start(self, task_ids: list[str]) -> None:
        """The tasks that just lost an open dependency: those created to start on their
        own, never run and blocked by nothing now get their first run."""
        for t in task_ids:
            mt = self.tasks[t]
            deps_open = any(self.tasks[d].phase != "completed" for d in mt.deps)
            if mt.auto and mt.runs == 0 and not (mt.canceled or mt.draft or deps_open):
                mt.phase, mt.attempt, mt.runs = "queued", 1, 1

    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        t = self.pick(data)
        if t is None or self.tasks[t].phase != "failed":
            return
        mt = self.tasks[t]
        if mt.runs + 1 > MAX_RETRY_CHAIN:
            expected: str | None = RETRY_CHAIN_TOO_DEEP
        elif mt.attempt + 1 > mt.max_attempts:
            expected = ATTEMPTS_EXHAUSTED
        elif mt.canceled:
            expected = INVALID_TRANSITION
        else:
            expected = None
        now = self.tick()
        if expected is None and self.rate_limited(t, now):
            expected = FORCE_RATE_LIMITED  # a retry counts toward the force rate limit
        error = self.apply(
            RetryRun(now=now, run_id=self.run_id(t), new_run_id=self.new_id("r"), actor=OPERATOR)
        )
        assert (error and error.code) == expected, error
        if error is None:
            mt.phase, mt.attempt, mt.runs = "queued", mt.attempt + 1, mt.runs + 1
            self.count_force(mt, now)

    @rule(data=st.data(), release=st.booleans())
    def force(self, data: st.DataObject, release: bool) -> None:
        t = self.pick(data)
        if t is None or self.tasks[t].runs == 0:
            return
        now = self.tick()
        expected = self.force_refusal(t, release, now)
        kind = ForceReleaseRun if release else ForceFailRun
        error = self.apply(kind(now=now, run_id=self.run_id(t), reason="ops", actor=OPERATOR))
        assert (error and error.code) == expected, error
        if error is None:
            self.forced(t, release, now)

    def rate_limited(self, t: str, now: float) -> bool:
        recent = [x for x in self.tasks[t].force_times if x > now - FORCE_RATE_WINDOW_SECONDS]
        return len(recent) >= FORCE_RATE_LIMIT

    def count_force(self, mt: ModelTask, now: float) -> None:
        window_start = now - FORCE_RATE_WINDOW_SECONDS
        mt.force_times = [*(x for x in mt.force_times if x > window_start), now]

    def force_refusal(self, t: str, release: bool, now: float) -> str | None:
        mt = self.tasks[t]
        if self.rate_limited(t, now):
            return FORCE_RATE_LIMITED
        if release:
            return None if mt.phase == "leased" else INVALID_TRANSITION
        return None if mt.phase in ("queued", "leased", "parked") else INVALID_TRANSITION

    def forced(self, t: str, release: bool, now: float) -> None:
        mt = self.tasks[t]
        self.count_force(mt, now)
        self.drop_holder(mt)
        mt.phase = "queued" if release else "failed"

    def drop_holder(self, mt: ModelTask) -> None:
        if mt.holder is not None:
            self.lease_of[mt.holder] = None
            mt.holder = None

    @rule(
        data=st.data(),
        release=st.booleans(),
        count=st.integers(1, 4),
        with_missing=st.booleans(),
    )
    def bulk_force(
        self, data: st.DataObject, release: bool, count: int, with_missing: bool
    ) -> None:
        """One bulk request: each run gets the outcome it would get on its own, in order."""
        started = [t for t in self.order if self.tasks[t].runs > 0]
        if not started:
            return
        picked = [data.draw(st.sampled_from(started)) for _ in range(count)]
        run_ids = [self.run_id(t) for t in picked]
        if with_missing:
            run_ids.insert(data.draw(st.integers(0, len(run_ids))), "r_missing")
        now = self.tick()
        outcome = self.machine.apply(
            BulkForceRuns(
                now=now,
                action="release" if release else "fail",
                run_ids=run_ids,
                reason="ops",
                actor=OPERATOR,
            )
        )
        items = outcome.reply.items
        assert [item.run_id for item in items] == run_ids
        by_run = {self.run_id(t): t for t in picked}
        for item in items:
            if item.run_id == "r_missing":
                expected: str | None = RUN_NOT_FOUND
            else:
                expected = self.force_refusal(by_run[item.run_id], release, now)
            assert item.ok == (expected is None), item
            assert item.code == expected, item
            if item.ok:
                self.forced(by_run[item.run_id], release, now)

    @rule(data=st.data())
    def remove_dependency(self, data: st.DataObject) -> None:
        a, b = self.pick(data), self.pick(data)
        if a is None or b is None:
            return
        if len(self.tasks[a].deps) > 0 and data.draw(st.booleans()):
            b = data.draw(st.sampled_from(self.tasks[a].deps))  # mostly an edge that exists
        ta = self.tasks[a]
        expected = None if b in ta.deps else DEPENDENCY_NOT_FOUND
        error = self.apply(RemoveDependency(now=self.tick(), task_id=a, blocked_by=b))
        assert (error and error.code) == expected, error
        if error is None:
            ta.deps.remove(b)
            if self.tasks[b].phase != "completed":
                self.auto_start([a])

    @rule(data=st.data())
    def cancel_run(self, data: st.DataObject) -> None:
        t = self.pick(data)
        if t is None or self.tasks[t].runs == 0:
            return
        mt = self.tasks[t]
        ok = mt.phase in ("queued", "leased", "parked")
        error = self.apply(CancelRun(now=self.tick(), run_id=self.run_id(t), reason="no"))
        assert (error and error.code) == (None if ok else INVALID_TRANSITION), error
        if ok:
            self.drop_holder(mt)
            mt.phase = "canceled"

    @rule(data=st.data(), with_run=st.booleans())
    def publish(self, data: st.DataObject, with_run: bool) -> None:
        t = self.pick(data)
        if t is None:
            return
        mt = self.tasks[t]
        # Publishing a published task again answers it unchanged; a canceled task is final.
        already = not mt.draft and not mt.canceled
        if already:
            expected: str | None = None
        elif mt.canceled:
            expected = INVALID_TRANSITION
        elif with_run and mt.approval != "not_required":
            expected = APPROVAL_REQUIRED  # only approving it enqueues its run
        else:
            expected = None
        before = self.machine.tasks[t].current_run_id
        command = PublishTask(
            now=self.tick(), task_id=t, run_id=self.new_id("r") if with_run else None
        )
        reply, error = self.answer(command)
        assert (error and error.code) == expected, error
        if already:
            assert reply.already
            assert reply.current_run_id == before
        elif error is None:
            assert not reply.already
            mt.draft = False
            if with_run:
                mt.phase, mt.attempt, mt.runs = "queued", 1, 1

    @rule(data=st.data())
    def approve(self, data: st.DataObject) -> None:
        t = self.pick(data)
        if t is None:
            return
        mt = self.tasks[t]
        # Approved already: the answer is the run the task has, and nothing changes.
        already = mt.approval == "approved" and mt.runs > 0
        if already:
            expected: str | None = None
        elif mt.approval not in ("pending", "rejected"):
            expected = INVALID_TRANSITION
        elif mt.draft:
            expected = TASK_IS_DRAFT
        elif mt.canceled:
            expected = INVALID_TRANSITION
        else:
            expected = None  # pending, or rejected earlier: a rejection can be revisited
        runs_before = len(self.machine.runs)
        reply, error = self.answer(ApproveTask(now=self.tick(), task_id=t, run_id=self.new_id("r")))
        assert (error and error.code) == expected, error
        if already:
            assert reply.already
            assert reply.id == self.run_id(t)
            assert len(self.machine.runs) == runs_before
        elif error is None:
            assert not reply.already
            mt.approval = "approved"
            mt.phase, mt.attempt, mt.runs = "queued", 1, 1

    @rule(data=st.data())
    def reject(self, data: st.DataObject) -> None:
        t = self.pick(data)
        if t is None:
            return
        mt = self.tasks[t]
        # Pending or rejected before: the refusal is recorded and nothing else moves (no
        # cancel, here or below); the task waits for a later decision.
        ok = mt.approval in ("pending", "rejected") and not mt.canceled
        error = self.apply(RejectTask(now=self.tick(), task_id=t, reason="no"))
        assert (error and error.code) == (None if ok else INVALID_TRANSITION), error
        if ok:
            mt.approval = "rejected"

    @rule(data=st.data(), policy=st.sampled_from(["none", "manual"]))
    def set_approval_policy(self, data: st.DataObject, policy: str) -> None:
        t = self.pick(data)
        if t is None:
            return
        mt = self.tasks[t]
        current = "none" if mt.approval == "not_required" else "manual"
        changing = policy != current
        # A task that starts by itself cannot also wait for a person.
        expected = APPROVAL_REQUIRED if changing and policy == "manual" and mt.auto else None
        error = self.apply(
            UpdateTask(now=self.tick(), task_id=t, changes={"approval_policy": policy})
        )
        assert (error and error.code) == expected, error
        if error is None and changing:
            if policy == "none":
                mt.approval = "not_required"
            else:  # gates a first run only: a task that has one counts as approved
                mt.approval = "approved" if mt.runs > 0 else "pending"

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        t = self.pick(data)
        if t is None:
            return
        if self.children(t):
            expected: str | None = TASK_HAS_CHILDREN
        elif self.tasks[t].phase in ("queued", "leased", "parked"):
            expected = TASK_HAS_ACTIVE_RUNS
        else:
            expected = None
        error = self.apply(DeleteTask(now=self.tick(), task_id=t))
        assert (error and error.code) == expected, error
        if error is None:
            was_open = self.tasks[t].phase != "completed"
            del self.tasks[t]
            self.order.remove(t)
            freed = [d for d in self.order if t in self.tasks[d].deps]
            for d in freed:
                self.tasks[d].deps.remove(t)
            if was_open:
                self.auto_start(freed)
            assert t not in self.machine.tasks

    @rule(
        data=st.data(),
        change=st.sampled_from(
            ["priority", "priority", "max_attempts", "title", "workspace_id", "unknown"]
        ),
        value=st.sampled_from([1, 2, 5]),
    )
    def update(self, data: st.DataObject, change: str, value: int) -> None:
        t = self.pick(data)
        if t is None:
            return
        mt = self.tasks[t]
        changes: dict[str, object]
        if change == "priority":
            changes = {"priority": ["low", "high", "urgent"][value % 3]}
        elif change == "max_attempts":
            changes = {"max_attempts": value}
        elif change == "title":
            changes = {"title": f"renamed {value}"}
        else:
            changes = {change: "x"}
        if change == "workspace_id":
            expected: str | None = IMMUTABLE_FIELD
        elif change == "unknown":
            expected = INVALID_INPUT
        elif change == "max_attempts" and self.closed(t):
            expected = INVALID_TRANSITION
        else:
            expected = None
        error = self.apply(UpdateTask(now=self.tick(), task_id=t, changes=changes))
        assert (error and error.code) == expected, error
        if error is None and change == "max_attempts":
            mt.max_attempts = value
        if error is None and change == "priority":
            mt.priority = str(changes["priority"])
        assert self.machine.tasks[t].priority == mt.priority

    @rule(data=st.data(), author=st.sampled_from([None, "ann"]))
    def checkpoint(self, data: st.DataObject, author: str | None) -> None:
        t = self.pick(data)
        if t is None:
            return
        now = self.tick()
        outcome = self.machine.apply(
            CheckpointTask(now=now, task_id=t, note=f"note {now}", author=author, actor=OPERATOR)
        )
        last = outcome.reply.checkpoints[-1]
        assert (last.at, last.note) == (now, f"note {now}")
        assert last.author == (author or OPERATOR.ref)
        leased = self.tasks[t].phase == "leased"
        assert last.run_id == (self.run_id(t) if leased else None)
        if leased:
            assert self.machine.runs[self.run_id(t)].checkpoint_at == now

    @rule(data=st.data(), session=st.sampled_from(SESSIONS), force=st.booleans())
    def steal(self, data: st.DataObject, session: str, force: bool) -> None:
        t = self.pick(data)
        if t is None:
            return
        mt = self.tasks[t]
        if mt.phase not in ("queued", "leased"):
            expected: str | None = INVALID_TRANSITION
        elif self.lease_of[session] is not None:
            expected = AUTONOMY_LEASE_ALREADY_HELD
        elif mt.needs_gpu:
            expected = INVALID_TRANSITION  # no session offers the capability
        elif mt.phase == "queued" and self.gated(t):
            expected = INVALID_TRANSITION
        elif not force:
            # Nothing here expires, so no run lost its lease to expiry and none is stale.
            expected = LEASE_NOT_EXPIRED
        else:
            expected = None
        command = StealRun(
            now=self.tick(),
            task_id=t,
            session_id=session,
            claim_token=new_secret_token(CLAIM_TOKEN_PREFIX),
            force=force,
            lease_seconds=100_000,
            reason="takeover",
        )
        error = self.apply(command)
        assert (error and error.code) == expected, error
        if error is None:
            self.drop_holder(mt)
            mt.phase, mt.holder = "leased", session
            self.lease_of[session] = t
            run = self.machine.runs[self.run_id(t)]
            assert (run.status, run.session_id, run.checkpoint_at) == ("claimed", session, None)

    @rule(data=st.data(), session=st.sampled_from(SESSIONS), by_run=st.booleans())
    def claim_by_id(self, data: st.DataObject, session: str, by_run: bool) -> None:
        """Claim a chosen task's run (by task or by run id): allowed exactly when
        ``claim`` could hand that run to this session."""
        t = self.pick_mostly(data, "queued")
        if t is None:
            return
        mt = self.tasks[t]
        if mt.phase == "none":
            if by_run:
                return  # no run id to name
            expected: str | None = NO_CLAIMABLE_RUN
        elif self.lease_of[session] is not None:
            expected = AUTONOMY_LEASE_ALREADY_HELD
        elif mt.phase != "queued" or self.gated(t) or self.scheduler_paused or mt.needs_gpu:
            expected = NO_CLAIMABLE_RUN
        else:
            expected = None
        command = ClaimRun(
            now=self.tick(),
            session_id=session,
            run_id=self.run_id(t) if by_run else None,
            task_id=None if by_run else t,
            claim_token=new_secret_token(CLAIM_TOKEN_PREFIX),
            lease_seconds=100_000,
        )
        before = set(self.machine.index.run_ids())
        error = self.apply(command)
        assert (error and error.code) == expected, error
        if error is None:
            assert self.run_id(t) in before
            assert self.run_id(t) not in self.machine.index
            mt.phase, mt.holder = "leased", session
            self.lease_of[session] = t

    @rule(session=st.sampled_from(SESSIONS))
    def claim_and_block(self, session: str) -> None:
        """A session claims and at once parks its run for a person (a frequent pair, so
        recover and unblock find blocked runs)."""
        self.claim(session)
        self.block(session)

    @rule(session=st.sampled_from(SESSIONS), succeed=st.booleans())
    def claim_and_finish(self, session: str, succeed: bool) -> None:
        """Claim and finish in one rule, so completed and failed tasks (what reopen and the
        tasks that start on their own wait for) are reached often."""
        self.claim(session)
        self.finish(session, succeed)

    @rule(session=st.sampled_from(SESSIONS))
    def block(self, session: str) -> None:
        task_id = self.lease_of[session]
        if task_id is None:
            return
        command = BlockRun(
            now=self.tick(), session_id=session, run_id=self.run_id(task_id), reason="ask"
        )
        assert self.apply(command) is None
        mt = self.tasks[task_id]
        mt.phase, mt.parked_by, mt.holder = "parked", "blocked", None
        self.lease_of[session] = None

    @rule(data=st.data())
    def starve(self, data: st.DataObject) -> None:
        """The watch's command: it parks the run only if nobody could take it right now."""
        t = self.pick_mostly(data, "queued")
        if t is None or self.tasks[t].runs == 0:
            return
        mt = self.tasks[t]
        starving = (
            mt.phase == "queued" and not self.gated(t) and not self.scheduler_paused
        ) and mt.needs_gpu
        outcome = self.machine.apply(
            StarveRun(now=self.tick(), run_id=self.run_id(t), waited_seconds=100.0)
        )
        assert (outcome.reply is not None) == starving
        assert bool(outcome.events) == starving
        if starving:
            mt.phase, mt.parked_by = "parked", "starved"
            run = self.machine.runs[self.run_id(t)]
            assert (run.error, run.reason) == ("starved", "starved")

    @rule(data=st.data())
    def recover(self, data: st.DataObject) -> None:
        t = self.pick_mostly(data, "parked")
        if t is None or self.tasks[t].runs == 0:
            return
        mt = self.tasks[t]
        ok = mt.phase == "parked"
        error = self.apply(RecoverRun(now=self.tick(), run_id=self.run_id(t), actor=OPERATOR))
        assert (error and error.code) == (None if ok else INVALID_TRANSITION), error
        if ok:
            mt.phase, mt.parked_by = "queued", None
            assert self.machine.runs[self.run_id(t)].attempt == mt.attempt

    @rule(data=st.data())
    def unblock(self, data: st.DataObject) -> None:
        t = self.pick_mostly(data, "parked")
        if t is None:
            return
        mt = self.tasks[t]
        ok = mt.phase == "parked" and mt.parked_by == "blocked"
        error = self.apply(UnblockTask(now=self.tick(), task_id=t, actor=OPERATOR))
        assert (error and error.code) == (None if ok else INVALID_TRANSITION), error
        if ok:
            mt.phase, mt.parked_by = "queued", None

    @rule(data=st.data())
    def reopen(self, data: st.DataObject) -> None:
        t = self.pick_mostly(data, "completed", "failed")
        if t is None:
            return
        mt = self.tasks[t]
        finished = mt.phase == "completed" or (
            mt.phase == "failed" and mt.attempt >= mt.max_attempts
        )
        under_cancel = any(self.tasks[a].canceled for a in self.ancestors(t))
        if mt.canceled or not finished or under_cancel:
            expected: str | None = INVALID_TRANSITION
        elif mt.runs + 1 > MAX_RETRY_CHAIN:
            expected = RETRY_CHAIN_TOO_DEEP
        else:
            expected = None
        run_id = self.new_id("r")
        error = self.apply(ReopenTask(now=self.tick(), task_id=t, run_id=run_id))
        assert (error and error.code) == expected, error
        if error is None:
            mt.phase, mt.attempt, mt.runs = "queued", 1, mt.runs + 1
            assert self.machine.runs[run_id].attempt == 1

    # Pausing is drawn less often than resuming, so the scheduler runs most of the time and
    # claims, finishes and the verbs that follow them are reached.
    @rule(on=st.sampled_from([True, False, False]))
    def scheduler(self, on: bool) -> None:
        if on:
            error = self.apply(PauseScheduler(now=self.tick()))
            assert (error is None) == (not self.scheduler_paused)
            self.scheduler_paused = True
        else:
            error = self.apply(ResumeScheduler(now=self.tick()))
            assert (error is None) == self.scheduler_paused
            self.scheduler_paused = False

    @rule(finish=st.booleans())
    def drain(self, finish: bool) -> None:
        """A drain's two records: the start pauses the scheduler if it runs (never refused),
        the end changes nothing but says how many leases remain."""
        now = self.tick()
        if finish:
            outcome = self.machine.apply(FinishDrain(now=now, started_at=now - 1))
            [event] = outcome.events
            remaining = sum(1 for holder in self.lease_of.values() if holder is not None)
            assert event.kind == "scheduler_drain_completed"
            assert event.data["remaining_claims"] == remaining
            assert event.data["completed"] == (remaining == 0)
        else:
            outcome = self.machine.apply(StartDrain(now=now, reason="drain"))
            kinds = [e.kind for e in outcome.events]
            paused_now = [] if self.scheduler_paused else ["scheduler_paused"]
            assert kinds == [*paused_now, "scheduler_drain_started"]
            self.scheduler_paused = True
        assert outcome.reply.paused == self.scheduler_paused

    # --------------------------------------------------------------- invariants
    @invariant()
    def machine_invariants(self) -> None:
        self.machine.check_invariants()

    @invariant()
    def index_holds_exactly_the_claimable_runs(self) -> None:
        want = {self.run_id(t) for t in self.claimable()}
        assert set(self.machine.index.run_ids()) == want

    @invariant()
    def cancel_reached_every_descendant(self) -> None:
        for task_id, mt in self.tasks.items():
            if mt.canceled:
                for below in self.below(task_id):
                    assert self.machine.tasks[below].status in ("completed", "failed", "canceled")

    @invariant()
    def statuses_agree(self) -> None:
        for task_id, mt in self.tasks.items():
            status = self.machine.tasks[task_id].status
            if mt.canceled:
                assert status == "canceled"
            elif mt.phase == "leased":
                assert status == "in_progress"
            elif mt.phase == "parked":
                assert status == "needs_attention"
            elif mt.phase in ("completed", "canceled"):
                assert status == mt.phase
            elif mt.draft:
                assert status == "draft"
            elif mt.phase == "none" and mt.approval in ("pending", "rejected"):
                assert status == "blocked"  # awaiting a decision
            elif mt.phase in ("queued", "none") or (
                mt.phase == "failed" and mt.attempt < mt.max_attempts
            ):
                deps_open = any(self.tasks[d].phase != "completed" for d in mt.deps)
                if deps_open:
                    assert status == "blocked"
                elif mt.phase == "none" and not mt.had_deps:
                    assert status == "pending"  # never started, nothing said it may run
                else:
                    assert status == "ready"  # queued, retryable, or its dependencies met

    @invariant()
    def approvals_agree(self) -> None:
        for task_id, mt in self.tasks.items():
            task = self.machine.tasks[task_id]
            assert task.approval_state == mt.approval
            assert task.approval_policy == ("none" if mt.approval == "not_required" else "manual")
            if mt.approval in ("pending", "rejected"):
                # Waiting for a decision: nothing was ever enqueued.
                assert mt.runs == 0
                assert task.current_run_id is None

    @invariant()
    def reply_marks_stay_out_of_the_state(self) -> None:
        # "already" only marks a reply; a record in the state never carries it.
        assert not any(task.already for task in self.machine.tasks.values())
        assert not any(run.already for run in self.machine.runs.values())

    @invariant()
    def retry_chains_are_bounded(self) -> None:
        for mt in self.tasks.values():
            assert mt.runs <= MAX_RETRY_CHAIN


TestGraphModel = GraphModel.TestCase
TestGraphModel.settings = settings(
    max_examples=max(settings().max_examples, 600), stateful_step_count=60, deadline=None
)
