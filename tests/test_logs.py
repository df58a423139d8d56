"""The operator's log lines: what happens, with the ids to follow up, in JSON or text.

Each test drives a runtime (mock or injected clock) or a server and captures the records
of the ``runlease`` logger tree with a handler of its own, so the tests do not depend on
how another test left logging configured.
"""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme

import runlease
from cli_helpers import Cli, Server, poll_until
from runlease import protocol as p
from runlease.client_common import ServerAddress
from runlease.core.model import Event
from runlease.errors import (
    AUTH_TOKEN_REFUSED,
    BAD_FRAME,
    FRAME_TOO_LARGE,
    SERVER_BUSY,
    STORAGE_FAILED,
    RunleaseError,
    Unavailable,
)
from runlease.hooks import Hook, HookDelivery, RetryPolicy
from runlease.persistence.store import Store
from runlease.runtime import operator_log
from runlease.runtime.history import EventHistory
from runlease.runtime.hooks import DeliveryFailed, DeliveryLog, HookDispatcher
from runlease.runtime.listeners import server_tls_context
from runlease.runtime.logs import (
    JsonLogFormatter,
    TextLogFormatter,
    configure_logging,
    formatter_for,
    text_value,
)
from runlease.runtime.server import ServerLimits, SocketServer
from socket_helpers import Raw
from storage_faults import AppendGate
from trio_helpers import STEP

START = 1_800_000_000.0


class Records(logging.Handler):
    """Every record the ``runlease`` logger tree emits while installed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def named(self, event: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.getMessage() == event]

    def one(self, event: str) -> tuple[logging.LogRecord, dict[str, Any]]:
        found = self.named(event)
        assert len(found) == 1, (event, [r.getMessage() for r in self.records])
        return found[0], found[0].fields  # type: ignore[attr-defined]


@pytest.fixture
def logged() -> Iterator[Records]:
    root = logging.getLogger("runlease")
    saved = root.level, root.propagate, list(root.handlers)
    handler = Records()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        root.propagate = saved[1]
        for old in list(root.handlers):
            root.removeHandler(old)
        for old in saved[2]:
            root.addHandler(old)


class ManualClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------- the leases
async def test_an_expired_lease_is_one_warning_with_the_holder_and_run(
    autojump_clock: trio.testing.MockClock, logged: Records
) -> None:
    async with runlease.open_runtime() as rt:
        task = await rt.create_task("slow", start=True)
        agent = await rt.open_session(agent="sleepy")
        claim = await agent.claim_next(lease_seconds=10)
        assert not logged.named("lease_expired")
        await trio.sleep(11)
        await rt.settled()
    record, fields = logged.one("lease_expired")
    assert record.levelno == logging.WARNING
    assert record.name == "runlease.operator"
    assert fields["run_id"] == claim.run.id
    assert fields["task_id"] == task.id
    assert fields["session_id"] == agent.id
    assert fields["agent"] == "sleepy"
    assert fields["attempt"] == 1
    assert fields["reason"] == "lease_expired"
    assert fields["outcome"] == "requeued"
    assert fields["recovery_count"] == 1
    assert fields["lease_until"] == claim.lease.lease_until
    assert rt.get_event(fields["seq"]).kind == "lease_expired"


async def test_steals_log_the_new_and_previous_holder(
    autojump_clock: trio.testing.MockClock, logged: Records
) -> None:
    async with runlease.open_runtime(allow_agent_force=True) as rt:
        task = await rt.create_task("contested", start=True)
        first = await rt.open_session(agent="first")
        second = await rt.open_session(agent="second")
        third = await rt.open_session(agent="third")
        claim = await first.claim_next(lease_seconds=10)
        await trio.sleep(11)
        await second.steal(task.id, reason="took over")
        # A forced steal takes a live lease from its holder: a warning.
        await third.steal(task.id, force=True, reason="reassigning")
    quiet, forced = logged.named("run_stolen")
    assert quiet.levelno == logging.INFO
    fields = quiet.fields  # type: ignore[attr-defined]
    assert fields["run_id"] == claim.run.id
    assert fields["task_id"] == task.id
    assert fields["session_id"] == second.id
    assert fields["agent"] == "second"
    assert fields["mode"] == "if_expired"
    assert fields["reason"] == "took over"
    assert fields["attempt"] == 1
    assert forced.levelno == logging.WARNING
    assert forced.fields["mode"] == "force"  # type: ignore[attr-defined]
    assert forced.fields["session_id"] == third.id  # type: ignore[attr-defined]
    assert forced.fields["previous_session_id"] == second.id  # type: ignore[attr-defined]
    assert forced.fields["actor"] == f"agent_session:{third.id}"  # type: ignore[attr-defined]


async def test_each_force_operation_is_a_warning_with_its_actor_and_reason(
    autojump_clock: trio.testing.MockClock, logged: Records
) -> None:
    async with runlease.open_runtime() as rt:
        runs = []
        for index in range(4):
            await rt.create_task(f"t{index}", start=True)
            agent = await rt.open_session(agent=f"a{index}")
            runs.append((await agent.claim_next(lease_seconds=600)).run)
        await rt.force_release(runs[0].id, reason="stuck agent")
        await rt.force_fail(runs[1].id, reason="bad input")
        await rt.bulk_force_release([runs[2].id, runs[3].id], reason="host lost")
    (released_one, released_two, released_three) = logged.named("run_force_released")
    record, failed = logged.one("run_force_failed")
    assert record.levelno == released_one.levelno == logging.WARNING
    first = released_one.fields  # type: ignore[attr-defined]
    assert first["run_id"] == runs[0].id
    assert first["task_id"] == runs[0].task_id
    assert first["session_id"] == runs[0].session_id
    assert first["reason"] == "stuck agent"
    assert first["attempt"] == 1
    assert first["actor"] == "human:operator"
    assert first["origin"] == "embedded"
    assert failed["run_id"] == runs[1].id
    assert failed["reason"] == "bad input"
    bulk = [r.fields["run_id"] for r in (released_two, released_three)]  # type: ignore[attr-defined]
    assert bulk == [runs[2].id, runs[3].id]


async def test_other_events_write_no_line(
    autojump_clock: trio.testing.MockClock, logged: Records
) -> None:
    async with runlease.open_runtime() as rt:
        await rt.create_task("quiet", start=True)
        agent = await rt.open_session(agent="a")
        claim = await agent.claim_next()
        await agent.heartbeat(claim.run.id)
        await agent.complete(claim.run.id, result=1)
        await agent.stop()
    assert [r.getMessage() for r in logged.records if r.name == "runlease.operator"] == []


def test_an_observer_of_some_kinds_sees_only_those_in_order() -> None:
    history = EventHistory()
    everything: list[int] = []
    some: list[int] = []
    history.add_observer(lambda event: everything.append(event.seq))
    history.add_observer(lambda event: some.append(event.seq), kinds={"lease_expired"})
    kinds = ["run_claimed", "lease_expired", "lease_renewed", "lease_expired"]
    history.publish(Event(seq=seq, kind=kind, at=START) for seq, kind in enumerate(kinds, 1))
    assert everything == [1, 2, 3, 4]
    assert some == [2, 4]


# --------------------------------------------------------------------- boot
async def _hold_leases(
    data_dir: Path, clock: ManualClock, leases: int, ttl_sessions: int
) -> list[str]:
    """Leave ``leases`` leases and ``ttl_sessions`` sessions for a restart to find;
    the ids of the runs leased."""
    run_ids = []
    async with runlease.open_runtime(clock, data_dir=data_dir) as rt:
        for index in range(leases):
            await rt.create_task(f"held {index}", start=True)
            agent = await rt.open_session(agent=f"holder{index}")
            run_ids.append((await agent.claim_next(lease_seconds=60)).run.id)
        for index in range(ttl_sessions):
            await rt.open_session(agent=f"short{index}", ttl=60)
    return run_ids


async def test_boot_logs_each_orphaned_lease_and_expired_session_then_the_summary(
    tmp_path: Path, logged: Records
) -> None:
    clock = ManualClock()
    (run_id,) = await _hold_leases(tmp_path / "data", clock, leases=1, ttl_sessions=1)
    clock.now += 3600
    logged.records.clear()
    async with runlease.open_runtime(clock, data_dir=tmp_path / "data") as rt:
        run = rt.get_run(run_id)
        assert run.status == "queued"
    record, orphan = logged.one("orphaned_lease")
    assert record.levelno == logging.WARNING
    assert orphan["run_id"] == run.id
    assert orphan["task_id"] == run.task_id
    assert orphan["session_id"] is not None
    assert orphan["reason"] == "orphaned_on_boot"
    assert orphan["attempt"] == 1
    _, session = logged.one("expired_session")
    assert session["reason"] == "ttl_expired"
    _, summary = logged.one("recovered")
    assert summary["orphaned_leases"] == 1
    assert summary["expired_sessions"] >= 1
    assert summary["orphaned_leases_not_listed"] == 0
    # Boot's expiries are not logged a second time as ordinary ones.
    assert not logged.named("lease_expired")
    names = [r.getMessage() for r in logged.records]
    assert names.index("orphaned_lease") < names.index("recovered")


async def test_boot_lines_are_capped_and_the_summary_counts_the_rest(
    tmp_path: Path, logged: Records, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(operator_log, "BOOT_LINES_PER_KIND", 2)
    clock = ManualClock()
    await _hold_leases(tmp_path / "data", clock, leases=5, ttl_sessions=0)
    clock.now += 3600
    logged.records.clear()
    async with runlease.open_runtime(clock, data_dir=tmp_path / "data"):
        pass
    assert len(logged.named("orphaned_lease")) == 2
    _, summary = logged.one("recovered")
    assert summary["orphaned_leases"] == 5
    assert summary["orphaned_leases_not_listed"] == 3


# ------------------------------------------------------------------ storage
async def test_a_failed_checkpoint_is_a_warning_and_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logged: Records
) -> None:
    token = trio.lowlevel.current_trio_token()
    tries: list[trio.Event] = [trio.Event(), trio.Event()]

    def broken(store: Store) -> None:
        # Runs on a worker thread; the test hears of each try.
        if tries:
            trio.from_thread.run_sync(tries.pop(0).set, trio_token=token)
        raise Unavailable("input/output error (test)", code=STORAGE_FAILED)

    async with runlease.open_runtime(data_dir=tmp_path / "data", durability="relaxed") as rt:
        first, second = tries
        monkeypatch.setattr(Store, "checkpoint", broken)
        # Every commit asks for a checkpoint at once, instead of within seconds.
        monkeypatch.setattr(Store, "checkpoint_due", lambda store: True)
        await rt.create_task("only in the log")
        with trio.fail_after(STEP):
            await first.wait()
        # The next try comes after the first failure was handled (and logged).
        await rt.create_task("also only in the log")
        with trio.fail_after(STEP):
            await second.wait()
        monkeypatch.undo()
    record = logged.named("checkpoint_failed")[0]
    assert record.levelno == logging.WARNING
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["code"] == STORAGE_FAILED
    assert fields["error"] == "input/output error (test)"
    assert fields["effect"] == "retried_later"
    assert not logged.named("storage_failed")


async def test_a_failed_commit_is_one_critical_storage_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logged: Records
) -> None:
    gate = AppendGate(monkeypatch)
    async with runlease.open_runtime(ManualClock(), data_dir=tmp_path / "data") as rt:
        gate.fail_next = Unavailable("no space left on device (test)", code=STORAGE_FAILED)
        with pytest.raises(RunleaseError):
            await rt.create_task("lost")
        with pytest.raises(RunleaseError):
            await rt.create_task("refused too")
    record, fields = logged.one("storage_failed")
    assert record.levelno == logging.CRITICAL
    assert fields["code"] == STORAGE_FAILED
    assert "no space left" in fields["error"]
    assert fields["data_dir"] == str(tmp_path / "data")
    assert fields["effect"] == "read_only_until_restart"


# -------------------------------------------------------------------- hooks
class FailingSender:
    async def send(self, hook: Hook, delivery: HookDelivery, body: bytes) -> None:
        raise DeliveryFailed("connection refused (test)")


async def test_hook_attempts_that_fail_are_warnings_and_giving_up_an_error(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, logged: Records
) -> None:
    class History:
        def __init__(self, events: Sequence[Event]) -> None:
            self.events = list(events)
            self.last_seq = 0

        def read(
            self, *, after_seq: int = 0, limit: int = 100, kinds: frozenset[str] | None = None
        ) -> list[Event]:
            return [e for e in self.events if e.seq > after_seq][:limit]

        async def wait_beyond(self, seq: int) -> None:
            await trio.sleep_forever()

        def hold(self, holder: str, seq: int | None) -> None:
            pass

    event = Event(seq=1, kind="run_failed", at=START, task_id="tsk_1", run_id="run_1")
    history = History([event])
    hook = Hook(kinds=frozenset({"run_failed"}), target="exec:true")
    policy = RetryPolicy(max_attempts=3, first_delay=1.0, factor=2.0, max_delay=10.0, jitter=0.0)
    dispatcher = HookDispatcher(hook, history, FailingSender(), DeliveryLog(), policy=policy)
    await nursery.start(dispatcher.run)
    with trio.fail_after(3600):
        while not logged.named("hook_delivery_failed"):  # noqa: ASYNC110 - mock time
            await trio.sleep(1)
    attempts = logged.named("hook_attempt_failed")
    assert [r.levelno for r in attempts] == [logging.WARNING, logging.WARNING]
    assert [r.fields["attempts"] for r in attempts] == [1, 2]  # type: ignore[attr-defined]
    record, fields = logged.one("hook_delivery_failed")
    assert record.levelno == logging.ERROR
    assert fields["hook"] == hook.name
    assert (fields["seq"], fields["kind"]) == (1, "run_failed")
    assert (fields["task_id"], fields["run_id"]) == ("tsk_1", "run_1")
    assert fields["attempts"] == 3
    assert "connection refused" in fields["error"]


# --------------------------------------------------------------- connections
@asynccontextmanager
async def serving(tmp_path: Path, **limits: Any) -> AsyncIterator[tuple[SocketServer, Path]]:
    path = tmp_path / "sock" / "s.sock"
    async with runlease.open_runtime() as rt, trio.open_nursery() as nursery:
        server = SocketServer(rt, path, limits=ServerLimits(**limits))
        await nursery.start(server.run)
        yield server, path
        server.shutdown()
        await server.wait_stopped()


async def test_a_wrong_token_is_logged_with_its_code_and_listener(
    tmp_path: Path, logged: Records
) -> None:
    async with serving(tmp_path) as (_, path):
        raw = await Raw.open(path, hello=False)
        await raw.send(p.Hello(id=1, versions=[1], auth_token="rl_token_not-a-real-one"))
        reply = await raw.reply()
        assert isinstance(reply, p.ErrorReply)
        assert reply.code == AUTH_TOKEN_REFUSED
        await raw.close()
    record, fields = logged.one("handshake_refused")
    assert record.levelno == logging.WARNING
    assert fields["code"] == AUTH_TOKEN_REFUSED
    assert fields["listener"] == f"unix:{path}"
    assert "rl_token_not-a-real-one" not in json.dumps(fields)


async def test_a_busy_server_logs_the_refusal_with_its_code_and_listener(
    tmp_path: Path, logged: Records
) -> None:
    async with serving(tmp_path, max_connections=1) as (_, path):
        first = await Raw.open(path)
        extra = await Raw.open(path, hello=False)
        reply = await extra.reply()
        assert isinstance(reply, p.ErrorReply)
        assert reply.code == SERVER_BUSY
        await extra.close()
        await first.close()
    record, fields = logged.one("connection_refused")
    assert record.levelno == logging.WARNING
    assert fields["code"] == SERVER_BUSY
    assert fields["reason"] == "max_connections"
    assert fields["listener"] == f"unix:{path}"


async def test_a_late_hello_is_a_warning_an_idle_close_only_info(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, logged: Records
) -> None:
    async with serving(tmp_path, handshake_timeout=5, idle_timeout=50) as (_, path):
        silent = await Raw.open(path, hello=False)
        idle = await Raw.open(path)
        assert await silent.reply(timeout=STEP) is not None
        assert await idle.reply(timeout=100) is not None
        await silent.close()
        await idle.close()
    late, sat = logged.named("connection_timed_out")
    assert (late.levelno, late.fields["phase"]) == (logging.WARNING, "handshake")  # type: ignore[attr-defined]
    assert (sat.levelno, sat.fields["phase"]) == (logging.INFO, "idle")  # type: ignore[attr-defined]
    assert late.fields["code"] == "CONNECTION_TIMEOUT"  # type: ignore[attr-defined]


async def test_bad_frames_are_logged_with_their_code(tmp_path: Path, logged: Records) -> None:
    async with serving(tmp_path) as (_, path):
        garbled = await Raw.open(path)
        await garbled.send(p.frame_bytes(b"\xc1\xc1"))
        reply = await garbled.reply()
        assert isinstance(reply, p.ErrorReply)
        assert reply.code == BAD_FRAME
        await garbled.close()
        early = await Raw.open(path, hello=False)
        await early.send(p.HEADER.pack(8192) + b"\x00" * 100)
        reply = await early.reply()
        assert isinstance(reply, p.ErrorReply)
        assert reply.code == FRAME_TOO_LARGE
        await early.close()
    record, fields = logged.one("request_rejected")
    assert record.levelno == logging.WARNING
    assert fields["code"] == BAD_FRAME
    record, fields = logged.one("framing_lost")
    assert record.levelno == logging.WARNING
    assert fields["code"] == FRAME_TOO_LARGE
    assert fields["listener"] == f"unix:{path}"


async def test_a_failed_tls_handshake_names_the_peer_and_listener(
    tmp_path: Path, logged: Records
) -> None:
    ca = trustme.CA()
    pem = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    async with runlease.open_runtime() as rt, trio.open_nursery() as nursery:
        server = SocketServer(
            rt,
            None,
            listen=[ServerAddress.parse("tcp://127.0.0.1:0")],
            tls=server_tls_context(pem),
        )
        await nursery.start(server.run)
        port = ServerAddress.parse(server.urls[0]).port
        plain = await trio.open_tcp_stream("127.0.0.1", port)
        await plain.send_all(b"this is not a TLS client hello\r\n" * 4)
        with trio.fail_after(STEP):
            while await plain.receive_some(4096):
                pass
        local_port = plain.socket.getsockname()[1]
        await plain.aclose()
        server.shutdown()
        await server.wait_stopped()
    record, fields = logged.one("tls_handshake_failed")
    assert record.levelno == logging.WARNING
    assert fields["listener"] == server.urls[0]
    assert fields["remote"] == f"127.0.0.1:{local_port}"
    assert fields["error"]


# ------------------------------------------------------------------ formats
def _record(level: int = logging.WARNING, **fields: Any) -> logging.LogRecord:
    record = logging.LogRecord("runlease.operator", level, __file__, 1, "lease_expired", (), None)
    record.fields = fields
    record.created = START
    return record


FIELDS: dict[str, Any] = {
    "run_id": "run_01JABC",
    "task_id": "tsk_01JDEF",
    "session_id": None,
    "attempt": 2,
    "reason": "holder went quiet",
    "lease_until": 1800000010.5,
    "forced": False,
    "listeners": ["unix:/tmp/a b.sock"],
}


def test_json_and_text_carry_the_same_fields() -> None:
    as_json = json.loads(JsonLogFormatter().format(_record(**FIELDS)))
    assert as_json["event"] == "lease_expired"
    assert as_json["level"] == "warning"
    assert as_json["ts"] == "2027-01-15T08:00:00.000Z"
    assert {key: as_json[key] for key in FIELDS} == FIELDS

    line = TextLogFormatter().format(_record(**FIELDS))
    assert "\n" not in line
    time, level, event, rest = line.split(" ", 3)
    assert (time, level, event) == ("2027-01-15T08:00:00.000Z", "warning", "lease_expired")
    pairs = dict(re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\[[^\]]*\]|\S+)', rest))
    assert pairs == {
        "run_id": "run_01JABC",
        "task_id": "tsk_01JDEF",
        "session_id": "null",
        "attempt": "2",
        "reason": '"holder went quiet"',
        "lease_until": "1800000010.5",
        "forced": "false",
        "listeners": '["unix:/tmp/a b.sock"]',
    }
    # Parsing each value back as JSON (bare ids as they are) gives the JSON line's fields.
    parsed = {
        key: json.loads(value) if not re.fullmatch(r"[a-z]+_\w+", value) else value
        for key, value in pairs.items()
    }
    assert parsed == FIELDS


def test_text_values_quote_only_what_would_split_the_line() -> None:
    assert text_value("ses_01J") == "ses_01J"
    assert text_value("tcp://10.0.0.5:7070") == "tcp://10.0.0.5:7070"
    assert text_value("") == '""'
    assert text_value("a=b") == '"a=b"'
    assert text_value('say "hi"') == '"say \\"hi\\""'
    assert text_value(3) == "3"
    assert text_value(True) == "true"
    assert text_value({"a": 1}) == '{"a":1}'


def _boom() -> None:
    raise ValueError("boom")


def test_a_traceback_follows_a_text_line_indented() -> None:
    record = _record(logging.ERROR)
    try:
        _boom()
    except ValueError:
        record.exc_info = sys.exc_info()
    lines = TextLogFormatter().format(record).splitlines()
    assert lines[0].endswith(" error lease_expired")
    assert all(line.startswith("    ") for line in lines[1:])
    assert "ValueError: boom" in lines[-1]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_text_on_a_terminal_and_json_elsewhere() -> None:
    assert isinstance(formatter_for("auto", Terminal()), TextLogFormatter)
    assert isinstance(formatter_for("auto", io.StringIO()), JsonLogFormatter)
    assert isinstance(formatter_for("json", Terminal()), JsonLogFormatter)
    assert isinstance(formatter_for("text", io.StringIO()), TextLogFormatter)
    with pytest.raises(ValueError, match="log format"):
        formatter_for("xml", io.StringIO())  # type: ignore[arg-type]


def test_level_warning_silences_info_lines(logged: Records) -> None:
    out = io.StringIO()
    configure_logging(out, level="warning", log_format="json")
    logging.getLogger("runlease.server").info("listening", extra={"fields": {"pid": 1}})
    logging.getLogger("runlease.operator").warning("lease_expired", extra={"fields": {"a": 1}})
    logging.getLogger("runlease.server").debug("connection_opened")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["lease_expired"]

    out = io.StringIO()
    configure_logging(out, level="debug", log_format="text")
    logging.getLogger("runlease.server").debug("connection_opened", extra={"fields": {"conn": 3}})
    assert out.getvalue().split(" ", 2)[2] == "connection_opened conn=3\n"
    with pytest.raises(ValueError, match="log level"):
        configure_logging(out, level="loud")


# ---------------------------------------------------------------------- CLI
def test_serve_log_format_text_prints_readable_lines(tmp_path: Path) -> None:
    server = Server.serve(
        "--data-dir",
        str(tmp_path / "data"),
        "--socket",
        str(tmp_path / "s.sock"),
        "--log-format",
        "text",
        "--log-level",
        "info",
    )
    try:
        listening = server.log.wait_for(lambda line: " listening " in line, timeout=60)
        assert server.stop(signal.SIGTERM) == 0
    finally:
        server.kill()
    time, level, event, rest = listening.split(" ", 3)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", time)
    assert (level, event) == ("info", "listening")
    assert f"socket={tmp_path / 's.sock'}" in rest.split()
    assert any(line.split()[2] == "recovered" for line in server.log.lines)
    for line in server.log.lines:
        assert not line.startswith("{"), line


def test_serve_log_level_warning_keeps_only_warnings(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    server = Server.serve(
        "--data-dir", str(tmp_path / "data"), "--socket", str(sock), "--log-level", "warning"
    )
    try:
        cli = Cli(socket=sock)
        poll_until(lambda: cli.run("status").code == 0, timeout=60, what="the server to serve")
        # A refused hello is a warning: it is logged while the start-up lines are not.
        cli.fails("status", "--token", "rl_token_wrong", code=AUTH_TOKEN_REFUSED, exit=5)
        assert server.stop(signal.SIGTERM) == 0
    finally:
        server.kill()
    lines = [json.loads(line) for line in server.log.lines]
    assert "handshake_refused" in [line["event"] for line in lines]
    assert {line["level"] for line in lines} <= {"warning", "error", "critical"}


def test_serve_refuses_an_unknown_log_level(tmp_path: Path) -> None:
    server = Server.serve("--data-dir", str(tmp_path / "data"), "--log-level", "loud")
    assert server.wait_exit() == 2


EMBEDDED_EXPIRY = """
import trio, trio.testing, runlease

async def main():
    async with runlease.open_runtime() as rt:
        await rt.create_task("t", start=True)
        session = await rt.open_session(agent="a")
        claim = await session.claim_next(lease_seconds=30)
        await trio.sleep(31)
        print(rt.get_run(claim.run.id).status)

trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
"""


def test_an_embedding_host_that_configured_no_logging_gets_nothing_on_stderr() -> None:
    # Python prints a library's warnings to stderr when no handler exists anywhere; the
    # runtime brings its own (a NullHandler), so the host's stderr stays its own.
    done = subprocess.run(
        [sys.executable, "-c", EMBEDDED_EXPIRY],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "queued"  # the lease did expire
    assert done.stderr == ""
