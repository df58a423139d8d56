"""Hooks end to end: configuration, signatures, real HTTP and exec deliveries through
``runlease serve``, the delivery log on the command line, and a kill -9 between a send
and its record."""

from __future__ import annotations

import http.server
import json
import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from cli_helpers import RUNLEASE, Cli, Server, clean_env, poll_until
from runlease import Runtime, open_runtime
from runlease.errors import InvalidInput, NotFound
from runlease.hooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Hook,
    HookDelivery,
    delivery_id,
    parse_hook,
    sign,
    signature_matches,
)
from runlease.runtime.hooks import DeliveryFailed, HttpSender

SECRET = "s3cret-for-tests"
WAIT = 30.0


# -------------------------------------------------------------------- configuration
def test_a_hook_is_named_by_its_kinds_and_target_never_by_its_secret() -> None:
    one = parse_hook("run_completed,run_failed=https://example.test/h?key=1", SECRET)
    same = parse_hook("run_failed, run_completed=https://example.test/h?key=1", "other")
    assert one.name == same.name
    assert one.kinds == frozenset({"run_completed", "run_failed"})
    assert parse_hook("*=exec:true").kinds is None
    assert parse_hook("*=exec:true").name != parse_hook("task_created=exec:true").name
    assert SECRET not in repr(one)
    assert one.shown_target == "https://example.test/h"
    assert parse_hook("*=https://user:pw@example.test:8443/x", SECRET).shown_target == (
        "https://example.test:8443/x"
    )
    assert parse_hook("*=exec:notify --to 'a b'").command == ["notify", "--to", "a b"]


@pytest.mark.parametrize(
    ("spec", "secret", "says"),
    [
        ("run_complete=exec:true", None, "unknown event kind run_complete"),
        ("exec:true", None, "KINDS=URL"),
        ("*=exec:", None, "needs a command"),
        ("*=ftp://example.test/", SECRET, "http:// or https://"),
        ("*=https://example.test/", None, "needs a secret"),
    ],
)
def test_a_bad_hook_is_refused_with_a_reason(spec: str, secret: str | None, says: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_hook(spec, secret)
    assert says in refused.value.message


def test_the_signature_is_an_hmac_sha256_of_the_body() -> None:
    body = b'{"type":"event","seq":7,"kind":"run_completed","at":1.0}'
    header = sign(SECRET, body)
    assert header.startswith("sha256=")
    assert len(header) == len("sha256=") + 64
    assert signature_matches(SECRET, body, header)
    assert not signature_matches(SECRET, body + b" ", header)
    assert not signature_matches("another", body, header)
    # The README's receiver example, as written there.
    import hashlib
    import hmac

    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, header)


def serve_usage_error(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [*RUNLEASE, "serve", "--data-dir", str(tmp_path / "data"), *args],
        capture_output=True,
        text=True,
        env=clean_env(env),
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    return done.stdout + done.stderr


def test_serve_refuses_a_bad_hook_as_a_usage_error(tmp_path: Path) -> None:
    said = serve_usage_error(tmp_path, "--hook", "run_done=exec:true")
    assert "unknown event kind run_done" in said
    said = serve_usage_error(tmp_path, "--hook", "*=http://127.0.0.1:9/h")
    assert "RUNLEASE_HOOK_SECRET" in said
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    said = serve_usage_error(
        tmp_path,
        *("--hook", "*=http://127.0.0.1:9/h", "--hook", "*=http://127.0.0.1:9/h"),
        *("--hook-secret-file", str(secret_file)),
    )
    assert "same event kinds and target" in said
    assert SECRET not in said
    assert not (tmp_path / "data").exists()


# ------------------------------------------------------------------------ receivers
class Receiver:
    """A local HTTP server that queues each POST (headers, body) and answers 204.

    ``before_answer`` runs on the request's thread before the answer; if it returns False
    the connection is dropped without one.
    """

    def __init__(
        self,
        before_answer: Callable[[dict[str, str], bytes], bool] | None = None,
        status: int = 204,
    ):
        self.posts: queue.Queue[tuple[dict[str, str], bytes]] = queue.Queue()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {key.lower(): value for key, value in self.headers.items()}
                receiver.posts.put((headers, body))
                if before_answer is not None and not before_answer(headers, body):
                    self.close_connection = True
                    return
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/hook"

    def next_post(self) -> tuple[dict[str, str], bytes]:
        return self.posts.get(timeout=WAIT)

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    recv = Receiver()
    yield recv
    recv.close()


def exec_target(out: Path) -> str:
    """An exec: hook appending each event it reads on stdin to ``out``, one per line."""
    code = "import sys; open(sys.argv[1], 'ab').write(sys.stdin.buffer.read() + b'\\n')"
    return "exec:" + shlex.join([sys.executable, "-c", code, str(out)])


def check_signed(headers: dict[str, str], body: bytes) -> dict[str, Any]:
    assert signature_matches(SECRET, body, headers[SIGNATURE_HEADER.lower()])
    assert headers[TIMESTAMP_HEADER.lower()].isdigit()
    assert headers["content-type"] == "application/json"
    event: dict[str, Any] = json.loads(body)
    assert headers[EVENT_HEADER.lower()] == event["kind"]
    return event


def test_http_and_exec_hooks_deliver_through_serve(tmp_path: Path, receiver: Receiver) -> None:
    out = tmp_path / "exec-out"
    url_spec = f"task_created,run_completed={receiver.url}"
    exec_spec = f"task_created={exec_target(out)}"
    sock = tmp_path / "s.sock"
    server = Server.serve(
        *("--data-dir", str(tmp_path / "data"), "--socket", str(sock)),
        *("--durability", "relaxed", "--hook", url_spec, "--hook", exec_spec),
        env={"RUNLEASE_HOOK_SECRET": SECRET},
    )
    try:
        server.wait_listening()
        cli = Cli(socket=sock)
        task = cli.ok("task", "create", "hooked", "--start")["task"]
        _, token = cli.session()
        run = cli.ok("task", "next", token=token)["run"]
        cli.ok("task", "complete", run["id"], token=token)

        created_headers, created_body = receiver.next_post()
        created = check_signed(created_headers, created_body)
        assert (created["type"], created["kind"], created["task_id"]) == (
            "event",
            "task_created",
            task["id"],
        )
        url_hook = parse_hook(url_spec, SECRET)
        assert created_headers[DELIVERY_HEADER.lower()] == delivery_id(
            url_hook.name, created["seq"]
        )
        completed = check_signed(*receiver.next_post())
        assert (completed["kind"], completed["run_id"]) == ("run_completed", run["id"])
        assert completed["seq"] > created["seq"]

        lines = poll_until(
            lambda: out.exists() and out.read_text().splitlines(), timeout=WAIT, what="exec hook"
        )
        assert [json.loads(line)["kind"] for line in lines] == ["task_created"]

        def all_delivered() -> dict[str, Any] | None:
            report: dict[str, Any] = cli.ok("hook", "list")
            statuses = [d["status"] for d in report["deliveries"]]
            return report if statuses == ["delivered"] * 3 else None

        report = poll_until(all_delivered, timeout=WAIT, what="three deliveries")
        assert {h["name"] for h in report["hooks"]} == {
            url_hook.name,
            Hook(kinds=frozenset({"task_created"}), target=exec_target(out)).name,
        }
        assert {h["target"] for h in report["hooks"]} >= {receiver.url}
        only_url = cli.ok("hook", "list", "--hook", url_hook.name, "--status", "delivered")
        assert sorted(d["seq"] for d in only_url["deliveries"]) == [
            created["seq"],
            completed["seq"],
        ]
        assert cli.ok("hook", "list", "--status", "failed")["deliveries"] == []
        cli.fails("hook", "retry", f"{url_hook.name}.999", code="HOOK_DELIVERY_NOT_FOUND", exit=4)
        message = cli.fails(
            "hook", "retry", only_url["deliveries"][0]["id"], code="INVALID_INPUT", exit=3
        )
        assert "only a failed one" in message
        assert server.stop() == 0
    finally:
        server.kill()
    assert not any(SECRET in line for line in server.log.lines + cli.outputs)


def test_a_kill_between_send_and_record_sends_the_same_delivery_again(tmp_path: Path) -> None:
    # Needs the durable event history: after the restart the event comes from the log.
    pytest.importorskip("runlease.runtime.history", reason="needs the durable event history")
    sock = tmp_path / "s.sock"
    server_pid: list[int] = []

    def kill_on_first(headers: dict[str, str], body: bytes) -> bool:
        if len(server_pid) == 1:
            os.kill(server_pid.pop(), signal.SIGKILL)  # before answering: nothing recorded
            return False
        return True

    recv = Receiver(kill_on_first)
    spec = f"task_created={recv.url}"
    args = ("--data-dir", str(tmp_path / "data"), "--socket", str(sock), "--hook", spec)
    env = {"RUNLEASE_HOOK_SECRET": SECRET}
    first = Server.serve(*args, env=env)
    try:
        server_pid.append(first.process.pid)
        first.wait_listening()
        task = Cli(socket=sock).ok("task", "create", "delivered twice")["task"]
        headers, body = recv.next_post()
        assert first.process.wait(timeout=WAIT) == -signal.SIGKILL
    finally:
        first.kill()
    again = Server.serve(*args, env=env)
    try:
        again.wait_listening()
        headers_again, body_again = recv.next_post()
        assert body_again == body
        event = check_signed(headers_again, body_again)
        assert (event["kind"], event["task_id"]) == ("task_created", task["id"])
        assert headers_again[DELIVERY_HEADER.lower()] == headers[DELIVERY_HEADER.lower()]
        cli = Cli(socket=sock)
        poll_until(
            lambda: [d["status"] for d in cli.ok("hook", "list")["deliveries"]] == ["delivered"],
            timeout=WAIT,
            what="the delivery recorded",
        )
        assert again.stop() == 0
    finally:
        again.kill()
        recv.close()


# ------------------------------------------------------------------------- embedded
async def wait_for_deliveries(rt: Runtime, count: int) -> list[HookDelivery]:
    """The delivered records once ``count`` exist (the exec hook runs in real time)."""
    with trio.fail_after(WAIT):
        # The log offers nothing to wait on from outside: poll it, bounded by the deadline.
        while len(done := (await rt.hook_deliveries(status="delivered")).deliveries) < count:  # noqa: ASYNC110
            await trio.sleep(0.01)
    return done


async def test_an_embedded_runtime_delivers_and_its_store_keeps_the_log(tmp_path: Path) -> None:
    out = tmp_path / "exec-out"
    hook = Hook(kinds=frozenset({"task_created"}), target=exec_target(out))
    async with open_runtime() as memory:
        assert (await memory.hook_deliveries()).hooks == []
        with pytest.raises(NotFound) as missing:
            await memory.retry_hook_delivery(f"{hook.name}.1")
        assert missing.value.code == "HOOK_DELIVERY_NOT_FOUND"
    async with open_runtime(data_dir=tmp_path / "data", hooks=[hook]) as rt:
        first = await rt.create_task("one")
        await rt.create_task("two", start=True)
        delivered = await wait_for_deliveries(rt, 2)
        seqs = sorted(d.seq for d in delivered)
    lines = out.read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == seqs
    assert json.loads(lines[0])["task_id"] == first.id
    async with open_runtime(data_dir=tmp_path / "data", hooks=[hook]) as again:
        report = await again.hook_deliveries()
        (info,) = report.hooks
        assert info.name == hook.name
        assert info.cursor >= seqs[-1]
        assert sorted(d.seq for d in report.deliveries) == seqs
        await again.create_task("three")
        assert len(await wait_for_deliveries(again, 3)) == 3
    assert len(out.read_text().splitlines()) == 3


async def test_the_http_sender_signs_and_reports_refusals(tmp_path: Path) -> None:
    ok, refusing = Receiver(), Receiver(status=503)
    sender = HttpSender()
    delivery = HookDelivery(
        id="hook_x.3", hook="hook_x", seq=3, kind="task_created", status="pending"
    )
    body = b'{"type":"event","seq":3,"kind":"task_created","at":1.0}'
    try:
        await sender.send(parse_hook(f"*={ok.url}", SECRET), delivery, body)
        headers, received = ok.next_post()
        assert received == body
        check_signed(headers, received)
        assert headers[DELIVERY_HEADER.lower()] == "hook_x.3"
        with pytest.raises(DeliveryFailed, match="HTTP 503"):
            await sender.send(parse_hook(f"*={refusing.url}", SECRET), delivery, body)
        with socket.socket() as probe:  # a loopback port nobody listens on once closed
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with pytest.raises(DeliveryFailed, match="Connect"):
            await sender.send(parse_hook(f"*=http://127.0.0.1:{port}/h", SECRET), delivery, body)
    finally:
        await sender.aclose()
        ok.close()
        refusing.close()
