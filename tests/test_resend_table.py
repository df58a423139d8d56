"""Which requests a client may send again after a lost connection: declared in the table."""

from __future__ import annotations

from runlease import operations as op
from runlease.operations import OPERATIONS

RESENT_WRITES = {
    "heartbeat",
    "complete",
    "fail",
    "release",
    "start_task",
    "publish_task",
    "approve_task",
}


def test_reads_and_the_writes_a_repeat_cannot_apply_twice_are_resendable() -> None:
    resendable = {tag for tag, entry in OPERATIONS.items() if entry.resend}
    reads = {tag for tag, entry in OPERATIONS.items() if entry.read}
    assert resendable == reads | RESENT_WRITES
    for tag in ("claim_next", "create_task", "open_session", "cancel_task", "steal"):
        assert tag not in resendable


def test_a_request_answers_from_its_row_or_decides_itself() -> None:
    assert op.ListTasks().may_resend()
    assert op.HeartbeatRun(run_id="r").may_resend()
    assert not op.ClaimNext().may_resend()
    assert not op.CancelTask(task_id="t").may_resend()
    # A create is safe to repeat only with an idempotency key.
    assert not op.CreateTask("t").may_resend()
    assert op.CreateTask("t", idempotency_key="k").may_resend()
    # A finish that also claims would claim a second run if repeated.
    assert op.CompleteRun(run_id="r").may_resend()
    assert not op.CompleteRun(run_id="r", next=op.ClaimNext()).may_resend()
