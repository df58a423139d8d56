"""The wire protocol on its own: tags, framing, and decoding whatever bytes arrive."""

from __future__ import annotations

import itertools
import struct
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runlease import client_common as common
from runlease import protocol as p
from runlease.core.model import (
    Actor,
    BulkItem,
    BulkResult,
    Claim,
    Event,
    Finished,
    LeaseView,
    NoClaim,
    Origin,
    Ownership,
    RetryResult,
    Run,
    Task,
)
from runlease.core.views import (
    Backlog,
    BacklogRun,
    DrainResult,
    InspectView,
    PauseState,
    SchedulerStatus,
    StuckRun,
)
from runlease.errors import (
    BAD_FRAME,
    BAD_REQUEST,
    FRAME_TOO_LARGE,
    PAYLOAD_TOO_LARGE,
    UNKNOWN_OP,
    InvalidInput,
)

EXAMPLES: list[p.Request[Any]] = [
    p.Hello(id=1, versions=[1], client="test"),
    p.Cancel(id=2, target=1),
    p.GetStatus(id=3),
    p.CreateTask(
        id=4,
        title="t",
        description="d",
        priority="high",
        workspace="w",
        scope="workspace",
        max_attempts=2,
        metadata={"k": [1, "v", None]},
        capabilities=["gpu"],
        start=True,
    ),
    p.StartTask(id=5, task_id="tsk_1"),
    p.ShowTask(id=6, task_id="tsk_1"),
    p.GetRun(id=7, run_id="run_1"),
    p.ListTasks(id=8, status="ready", workspace="w", after="tsk_0", limit=5),
    p.ListEvents(id=9, task_id="tsk_1", after_seq=3, limit=10),
    p.FollowEvents(id=10, task_id=None, after_seq=0),
    p.OpenSession(id=11, agent="a", parent="ses_0", ttl=1.5, capabilities=["x"]),
    p.StopSession(id=12, session_id="ses_1", reason="done"),
    p.GetSession(id=13, session_id="ses_1"),
    p.ListSessions(id=14, live_only=True, after="ses_0", limit=3),
    p.WhoAmI(id=15, token="rl_session_x"),
    p.ClaimNext(id=16, token="rl_session_x", wait=True, timeout=2.5, lease_seconds=30),
    p.HeartbeatRun(id=17, token="rl_session_x", run_id="run_1", lease_seconds=60.0),
    p.CompleteRun(id=18, token="rl_session_x", run_id="run_1", result={"ok": True}),
    p.FailRun(id=19, token="rl_session_x", run_id="run_1", error="boom", metadata={"a": 1}),
    p.ReleaseRun(id=20, token="rl_session_x", run_id="run_1", reason="handoff"),
    p.BlockRun(id=21, token="rl_session_x", run_id="run_1", reason="needs a human"),
]
# Finishes that claim the next run in the same request (op names unchanged).
FINISH_AND_NEXT: list[p.Request[Any]] = [
    p.CompleteRun(id=22, token="rl_session_x", run_id="run_1", next=p.NextClaim()),
    p.FailRun(
        id=23,
        token="rl_session_x",
        run_id="run_1",
        error="boom",
        next=p.NextClaim(wait=True, timeout=1.5, lease_seconds=60, workspace="w"),
    ),
    p.ReleaseRun(id=24, token="rl_session_x", run_id="run_1", next=p.NextClaim(wait=True)),
]
# Task graph, operator controls and HZL verbs, and the new fields of older ops.
GRAPH_EXAMPLES: list[p.Request[Any]] = [
    p.CreateTask(
        id=30,
        title="child",
        parent="tsk_0",
        preferred_capabilities=["fast"],
        owner=Ownership(kind="pool", ref="builders"),
        draft=True,
        approval_policy="manual",
        required_artifacts=["out/report.md"],
    ),
    p.CreateTask(id=66, title="after", auto_enqueue_on_ready=True, stale_after=90.0),
    p.StartTask(id=31, task_id="tsk_1", idempotency_key="k-1"),
    p.ClaimNext(id=32, token="rl_session_x", scope="global", priority_min="high"),
    p.ClaimNext(id=33, token="rl_session_x", workspace="w", scope="workspace", priority_min=30),
    p.PublishTask(id=34, task_id="tsk_1", start=False),
    p.ApproveTask(id=35, task_id="tsk_1"),
    p.RejectTask(id=36, task_id="tsk_1", reason="not now"),
    p.UpdateTask(id=37, task_id="tsk_1", changes={"title": "new", "metadata": {"a": [1]}}),
    p.DeleteTask(id=38, task_id="tsk_1"),
    p.AddDependency(id=39, task_id="tsk_2", blocked_by="tsk_1"),
    p.RemoveDependency(id=40, task_id="tsk_2", blocked_by="tsk_1"),
    p.PauseTask(id=41, task_id="tsk_1", reason="hold"),
    p.ResumeTask(id=42, task_id="tsk_1"),
    p.CancelTask(id=43, task_id="tsk_1", reason="obsolete"),
    p.CancelRun(id=44, run_id="run_1", reason="stop"),
    p.RetryRun(id=45, run_id="run_1"),
    p.ForceReleaseRun(id=46, run_id="run_1", reason="stuck agent"),
    p.ForceFailRun(id=47, run_id="run_1", reason="broken"),
    p.BulkForceRuns(id=48, action="release", run_ids=["run_1", "run_2"], reason="maintenance"),
    p.BulkForceRuns(id=49, action="fail", run_ids=["run_3"], reason="maintenance"),
    p.PauseScheduler(id=50, reason="deploy"),
    p.ResumeScheduler(id=51),
    p.DrainScheduler(id=52, timeout=2.5, reason="deploy"),
    p.GetSchedulerStatus(id=53),
    p.GetBacklog(id=54, workspace="w", include_paused=False, after="run_1", limit=10),
    p.GetOverview(id=154, limit=5),
    p.CheckpointTask(id=55, token="rl_session_x", task_id="tsk_1", note="half way", author="me"),
    p.CheckpointTask(id=56, task_id="tsk_1", note="operator note"),
    p.ListStuck(id=57, threshold=120.0),
    p.StealRun(id=58, token="rl_session_x", task_id="tsk_1", force=True, lease_seconds=60),
    p.StealRun(id=59, token="rl_session_x", task_id="tsk_1", reason="took over"),
    p.GetTimeline(id=60, task_id="tsk_1", after_seq=4, limit=20),
    p.InspectTask(id=61, task_id="tsk_1"),
    p.InspectRun(id=62, run_id="run_1"),
    p.RecoverRun(id=63, run_id="run_1", reason="looked at it"),
    p.ReopenTask(id=64, task_id="tsk_1"),
    p.UnblockTask(id=65, task_id="tsk_1", reason="answered"),
    p.ClaimRun("run_1", id=67, token="rl_session_x", workspace="w", lease_seconds=60),
    p.ClaimTask("tsk_1", id=68, scope="global", priority_min="urgent"),
    p.GetEvent(id=69, seq=12),
    p.GetContext(id=69, token="rl_session_x", run_id="run_1"),
    p.ListHookDeliveries(id=45, status="failed", hook="hook_0123456789ab", limit=10),
    p.RetryHookDelivery(id=46, delivery_id="hook_0123456789ab.7"),
    p.CreateToken(id=47, name="ci", role="agent", ttl=3600.0),
    p.RevokeToken(id=48, token="ci"),
    p.ListTokens(id=49),
]


def test_the_wire_names_are_stable() -> None:
    # Renaming a tag breaks every client in the field: this list only ever grows.
    expected_ops = {
        "hello",
        "cancel",
        "status",
        "create_task",
        "start_task",
        "show_task",
        "get_run",
        "list_tasks",
        "events",
        "follow_events",
        "open_session",
        "stop_session",
        "get_session",
        "list_sessions",
        "whoami",
        "claim_next",
        "heartbeat",
        "complete",
        "fail",
        "release",
        "block",
        # task graph and operator controls
        "publish_task",
        "approve_task",
        "reject_task",
        "update_task",
        "delete_task",
        "add_dependency",
        "remove_dependency",
        "pause_task",
        "resume_task",
        "cancel_task",
        "cancel_run",
        "retry_run",
        "force_release",
        "force_fail",
        "bulk_force",
        "pause_scheduler",
        "resume_scheduler",
        "drain_scheduler",
        "scheduler_status",
        "backlog",
        "overview",
        "checkpoint",
        "stuck",
        "steal",
        "timeline",
        "inspect_task",
        "inspect_run",
        # operator verbs: recover a parked run, reopen a finished task, clear a block
        "recover_run",
        "reopen_task",
        "unblock_task",
        # claim a chosen run, by its id or its task's
        "claim_run",
        "claim_task",
        # one event of the history by its sequence
        "get_event",
        # the context bundle of a leased run
        "get_context",
        # the hooks' delivery log
        "hook_list",
        "hook_retry",
        # access tokens
        "create_token",
        "revoke_token",
        "list_tokens",
    }
    assert expected_ops == p.OPS
    reply_types: tuple[type[p.Reply], ...] = p.AnyReply.__args__
    expected_replies = {
        "welcome",
        "error",
        "ok",
        "status",
        "task",
        "task_detail",
        "run",
        "tasks",
        "events",
        "event",
        "end",
        "session_opened",
        "session",
        "sessions",
        "session_released",
        "claim",
        "heartbeat",
        "finished",
        # task graph and operator controls
        "retry",
        "bulk",
        "scheduler",
        "drain",
        "backlog",
        "overview",
        "stuck",
        "inspect",
        "event_record",
        "context",
        "hooks",
        "hook_delivery",
        "token_issued",
        "access_token",
        "tokens",
    }
    assert expected_replies == {t.__struct_config__.tag for t in reply_types}
    assert {type(r) for r in EXAMPLES + GRAPH_EXAMPLES} == set(p.REQUEST_TYPES)


@pytest.mark.parametrize(
    "request_", EXAMPLES + FINISH_AND_NEXT + GRAPH_EXAMPLES, ids=lambda r: type(r).__name__
)
def test_every_request_round_trips(request_: p.Request[Any]) -> None:
    frame = p.encode_frame(request_)
    (size,) = struct.unpack(">I", frame[:4])
    assert size == len(frame) - 4
    assert p.decode_request(frame[4:]) == request_


def test_replies_round_trip_with_float_times() -> None:
    task = Task(id="tsk_1", title="t", created_at=1700000000.25, updated_at=1700000001.5)
    run = Run(id="run_1", task_id="tsk_1", queued_at=1700000000.0, lease_until=1700000300.125)
    lease = LeaseView(
        run_id="run_1",
        session_id="ses_1",
        lease_until=1700000300.125,
        claim_token_hash="sha256:" + "0" * 64,
        lease_seconds=300.0,
    )
    reply = p.ClaimReply(id=7, claim=Claim(task=task, run=run, lease=lease))
    body = p.encode_message(reply)
    assert p.decode_reply(body) == reply
    raw = msgspec.msgpack.decode(body)
    assert raw["reply"] == "claim"
    assert isinstance(raw["claim"]["lease"]["lease_until"], float)
    assert isinstance(raw["claim"]["task"]["created_at"], float)


def test_finished_reply_round_trips_with_and_without_a_claim() -> None:
    task = Task(id="tsk_2", title="t", created_at=1700000000.0, updated_at=1700000000.0)
    done = Run(id="run_1", task_id="tsk_1", status="completed", queued_at=1700000000.0)
    run = Run(id="run_2", task_id="tsk_2", queued_at=1700000000.0, lease_until=1700000300.5)
    lease = LeaseView(
        run_id="run_2",
        session_id="ses_1",
        lease_until=1700000300.5,
        claim_token_hash="sha256:" + "0" * 64,
        lease_seconds=300.0,
    )
    claimed = p.FinishedReply(
        id=8, finished=Finished(run=done, claim=Claim(task=task, run=run, lease=lease))
    )
    nothing = p.FinishedReply(
        id=9,
        finished=Finished(run=done, no_claim=NoClaim(code="NO_CLAIMABLE_RUN", message="none")),
    )
    for reply in (claimed, nothing):
        assert p.decode_reply(p.encode_message(reply)) == reply
    raw = msgspec.msgpack.decode(p.encode_message(nothing))
    assert raw["reply"] == "finished"
    assert "claim" not in raw["finished"]
    assert raw["finished"]["no_claim"]["code"] == "NO_CLAIMABLE_RUN"


def _graph_replies() -> list[p.Reply]:
    # Built by conversion so collections get whatever types the model declares.
    task = msgspec.convert(
        {
            "id": "tsk_1",
            "title": "t",
            "created_at": 1700000000.25,
            "updated_at": 1700000001.5,
            "paused": True,
            "paused_at": 1700000001.5,
            "checkpoints": [{"at": 1700000001.0, "note": "n", "author": "a", "run_id": "run_1"}],
            "owner": {"kind": "agent_session", "ref": "ses_1"},
            "blocked_by": ["tsk_0"],
        },
        Task,
    )
    failed = Run(id="run_1", task_id="tsk_1", status="failed", queued_at=1700000000.0)
    run = Run(id="run_2", task_id="tsk_1", queued_at=1700000002.0, previous_run_id="run_1")
    scheduler = SchedulerStatus(
        paused=True,
        paused_by="human:operator",
        paused_at=1700000003.0,
        paused_reason="deploy",
        active_claim_count=0,
        queued_run_count=1,
        claimable_run_count=0,
        paused_task_count=1,
        as_of=1700000004.0,
    )
    pause = PauseState(task_id="tsk_1", paused=True, effective_paused=True)
    event = Event(
        seq=3,
        kind="task.paused",
        at=1700000001.5,
        task_id="tsk_1",
        actor=Actor(kind="human", ref="operator"),
        origin=Origin(kind="cli", ref="pid:1"),
    )
    return [
        p.RetryReply(id=1, result=RetryResult(previous_run=failed, run=run)),
        p.BulkReply(
            id=2,
            result=BulkResult(
                items=[
                    BulkItem(run_id="run_2", ok=True, run=run),
                    BulkItem(run_id="run_9", ok=False, code="RUN_NOT_FOUND", message="none"),
                ]
            ),
        ),
        p.SchedulerReply(id=3, scheduler=scheduler),
        p.DrainReply(
            id=4,
            drain=DrainResult(
                status=scheduler,
                completed=True,
                timed_out=False,
                remaining_claims=0,
                started_at=1700000003.0,
                completed_at=1700000003.5,
            ),
        ),
        p.BacklogReply(
            id=5,
            backlog=Backlog(
                runs=[BacklogRun(task=task, run=run, effective_paused=True, gate="paused")],
                total=3,
                next_after="run_2",
            ),
        ),
        p.StuckReply(
            id=6,
            runs=[
                StuckRun(
                    task_id="tsk_1",
                    run_id="run_2",
                    session_id="ses_1",
                    kind="lease_expired",
                    since=1700000005.0,
                    seconds=12.5,
                    lease_until=1700000005.0,
                )
            ],
            threshold=600.0,
        ),
        p.InspectReply(
            id=7,
            view=InspectView(
                target="task",
                task=task,
                scheduler=scheduler,
                pause=pause,
                recent_events=[event],
                next_action="terminal",
                as_of=1700000006.0,
            ),
        ),
        p.TaskDetail(
            id=8,
            task=task,
            runs=[failed, run],
            checkpoints=list(task.checkpoints),
            events=[event],
            children=["tsk_3"],
            blocked_by=["tsk_0"],
            open_dependencies=["tsk_0"],
            dependents=["tsk_4"],
            pause=pause,
        ),
    ]


@pytest.mark.parametrize("reply", _graph_replies(), ids=lambda r: type(r).__name__)
def test_issue_6_replies_round_trip(reply: p.Reply) -> None:
    body = p.encode_message(reply)
    decoded = p.decode_reply(body)
    assert decoded == reply
    assert p.encode_message(decoded) == body


def test_an_older_task_detail_without_the_history_fields_still_decodes() -> None:
    task = Task(id="tsk_1", title="t", created_at=1.0, updated_at=1.0)
    old = {"reply": "task_detail", "id": 3, "task": msgspec.to_builtins(task), "runs": []}
    reply = p.decode_reply(msgspec.msgpack.encode(old))
    assert isinstance(reply, p.TaskDetail)
    assert reply.events == []
    assert reply.pause is None


def test_bad_reply_bytes_are_an_invalid_input_error() -> None:
    with pytest.raises(InvalidInput) as info:
        p.decode_reply(b"\xc1")
    assert info.value.code == BAD_FRAME


# ------------------------------------------------------------------------------ framing
@given(
    bodies=st.lists(st.binary(max_size=300), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=20),
)
def test_frame_buffer_reassembles_frames_however_the_bytes_are_split(
    bodies: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(p.frame_bytes(body) for body in bodies)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    buffer = p.FrameBuffer()
    out: list[bytes] = []
    for start, end in itertools.pairwise(points):
        buffer.feed(stream[start:end])
        out.extend(buffer.frames())
    assert out == bodies
    assert len(buffer) == 0


def test_a_frame_of_exactly_the_limit_is_accepted() -> None:
    buffer = p.FrameBuffer()
    body = b"\x00" * p.MAX_FRAME_BYTES
    buffer.feed(p.frame_bytes(body))
    assert buffer.next_frame() == body


@pytest.mark.parametrize("declared", [p.MAX_FRAME_BYTES + 1, 2**32 - 1, 0x47455420])
def test_an_oversized_length_prefix_loses_framing_for_good(declared: int) -> None:
    buffer = p.FrameBuffer()
    buffer.feed(p.frame_bytes(b"ok") + struct.pack(">I", declared) + b"rest")
    assert buffer.next_frame() == b"ok"
    with pytest.raises(p.FramingLost) as info:
        buffer.next_frame()
    assert info.value.code == FRAME_TOO_LARGE
    assert info.value.declared == declared
    buffer.feed(p.frame_bytes(b"later"))
    assert buffer.lost
    with pytest.raises(p.FramingLost):
        buffer.next_frame()


def test_encoding_refuses_a_message_over_the_limit() -> None:
    big = p.CompleteRun(id=1, run_id="r", result="x" * (p.MAX_FRAME_BYTES + 1))
    with pytest.raises(InvalidInput) as info:
        p.encode_frame(big)
    assert info.value.code == PAYLOAD_TOO_LARGE


# ----------------------------------------------------------------------------- decoding
def _decode(body: bytes) -> p.AnyRequest | p.RequestRejected:
    try:
        return p.decode_request(body)
    except p.RequestRejected as exc:
        return exc


@given(st.binary(max_size=200))
def test_decoding_any_bytes_gives_a_request_or_a_stable_rejection(body: bytes) -> None:
    outcome = _decode(body)
    if isinstance(outcome, p.RequestRejected):
        assert outcome.code in {BAD_FRAME, BAD_REQUEST, UNKNOWN_OP}
        assert outcome.request_id >= 0
    else:
        assert isinstance(outcome, p.REQUEST_TYPES)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
field_names = st.sampled_from(
    [
        "title",
        "task_id",
        "run_id",
        "session_id",
        "token",
        "versions",
        "wait",
        "timeout",
        "lease_seconds",
        "limit",
        "after_seq",
        "priority",
        "metadata",
        "result",
        "error",
        "reason",
        "capabilities",
        "target",
    ]
)


@given(
    op=st.sampled_from(sorted(p.OPS)) | st.text(max_size=12) | json_values,
    rid=st.integers(min_value=-5, max_value=2**64 - 1) | json_values,
    fields=st.dictionaries(field_names, json_values, max_size=5),
)
def test_decoding_request_shaped_maps_reports_the_id_and_why(
    op: Any, rid: Any, fields: dict[str, Any]
) -> None:
    body = msgspec.msgpack.encode({"op": op, "id": rid, **fields})
    outcome = _decode(body)
    if isinstance(outcome, p.RequestRejected):
        valid_id = isinstance(rid, int) and not isinstance(rid, bool) and 1 <= rid < 2**63
        assert outcome.request_id == (rid if valid_id else 0)
        if not isinstance(op, str) or op not in p.OPS:
            assert outcome.code == UNKNOWN_OP
        else:
            assert outcome.code == BAD_REQUEST
            assert op in outcome.message
    else:
        assert outcome.id == rid
        assert outcome.__struct_config__.tag == op


def test_unknown_op_and_wrong_types_carry_the_request_id() -> None:
    with pytest.raises(p.RequestRejected) as unknown:
        p.decode_request(msgspec.msgpack.encode({"op": "explode", "id": 9}))
    assert (unknown.value.code, unknown.value.request_id) == (UNKNOWN_OP, 9)
    with pytest.raises(p.RequestRejected) as wrong:
        p.decode_request(msgspec.msgpack.encode({"op": "create_task", "id": 4, "title": 5}))
    assert (wrong.value.code, wrong.value.request_id) == (BAD_REQUEST, 4)
    assert "$.title" in wrong.value.message
    with pytest.raises(p.RequestRejected) as not_a_map:
        p.decode_request(msgspec.msgpack.encode([1, 2, 3]))
    assert (not_a_map.value.code, not_a_map.value.request_id) == (BAD_FRAME, 0)


def test_version_choice() -> None:
    assert p.choose_version([1]) == 1
    assert p.choose_version([0, 1, 7]) == 1
    assert p.choose_version([2, 3]) is None
    assert p.choose_version([]) is None


@pytest.mark.parametrize(
    "request_", EXAMPLES + FINISH_AND_NEXT + GRAPH_EXAMPLES, ids=lambda r: type(r).__name__
)
def test_clients_expect_the_reply_that_carries_the_answer(request_: p.Request[Any]) -> None:
    if isinstance(request_, p.Hello | p.Cancel | p.FollowEvents):
        return  # answered by Welcome, Ok or a stream: no value reply
    expected = p.reply_class(request_.answers_with())
    assert common.expected_reply(request_) is expected
    assert common.expected_reply(request_) is expected  # and again, once remembered


def test_the_expected_reply_follows_the_instance_where_it_matters() -> None:
    # Asked in this order, a per-class cache would hand the second the first's answer.
    with_next = p.CompleteRun(run_id="r", next=p.ClaimNext())
    assert common.expected_reply(with_next) is p.FinishedReply
    assert common.expected_reply(p.CompleteRun(run_id="r")) is p.RunReply
    assert common.expected_reply(with_next) is p.FinishedReply
