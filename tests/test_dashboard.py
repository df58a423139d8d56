"""The web dashboard without a browser: a real hypercorn listener on a free loopback port,
over an in-memory runtime, driven with httpx. Login and logout, cookie flags, CSRF, revoked
tokens, roles on actions, the event stream's resume, the task page and /metrics."""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trustme

import runlease
from cli_helpers import RUNLEASE, Server, clean_env, log_event
from runlease.client_common import ServerAddress
from runlease.core.model import Actor, Origin
from runlease.dashboard import format as fmt
from runlease.dashboard.auth import WebSessions
from runlease.dashboard.stream import SHOWN_PER_FLUSH
from runlease.errors import Unavailable
from runlease.runtime.http import HttpServer, serve_http
from runlease.runtime.runtime import Runtime

LOOPBACK = ServerAddress("tcp", host="127.0.0.1", port=0, tls=False)
LONG_LEASE = 600.0


@asynccontextmanager
async def dashboard(
    metrics: Callable[[], tuple[bytes, str]] | None = None,
    certfile: Path | None = None,
    clock: Callable[[], float] | None = None,
) -> AsyncIterator[tuple[Runtime, HttpServer]]:
    async with runlease.open_runtime(clock) as rt, trio.open_nursery() as nursery:
        server: HttpServer = await nursery.start(
            partial(serve_http, rt, LOOPBACK, metrics=metrics, certfile=certfile)
        )
        try:
            yield rt, server
        finally:
            server.shutdown()
            await server.wait_stopped()


async def token(rt: Runtime, role: str, name: str | None = None) -> str:
    issued = await rt.create_token(name=name or role, role=role)  # type: ignore[arg-type]
    return issued.secret


async def log_in(client: httpx.AsyncClient, secret: str, next_path: str = "/") -> httpx.Response:
    form = await client.get("/login", params={"next": next_path})
    nonce = re.search(r'name="nonce" value="([^"]+)"', form.text)
    assert nonce is not None, form.text
    return await client.post(
        "/login", data={"nonce": nonce.group(1), "token": secret, "next": next_path}
    )


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, page
    return found.group(1)


def client_for(server: HttpServer, **kwargs: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, timeout=30, **kwargs)  # type: ignore[arg-type]


async def leased_run(rt: Runtime, title: str = "work") -> tuple[str, str]:
    """A task whose run a session holds under a long lease: (task id, run id)."""
    task = await rt.create_task(title, start=True)
    agent = await rt.open_session(agent="builder")
    claim = await agent.claim_next(lease_seconds=LONG_LEASE)
    assert claim.run.task_id == task.id
    return task.id, claim.run.id


async def test_login_sets_an_opaque_strict_cookie_and_logout_ends_it() -> None:
    async with dashboard() as (rt, server), client_for(server) as client:
        secret = await token(rt, "reader", "watcher")
        assert (await client.get("/")).headers["location"].startswith("/login")

        answer = await log_in(client, secret)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/"
        cookie = next(
            h for h in answer.headers.get_list("set-cookie") if h.startswith("runlease_dashboard=")
        )
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert "httponly" in flags
        assert "samesite=strict" in flags
        assert "secure" not in flags  # plain http on loopback
        value = cookie.split(";")[0].split("=", 1)[1]
        assert value
        assert secret not in value

        page = await client.get("/")
        assert page.status_code == 200
        figures = (await client.get("/api/overview")).json()
        assert figures["scheduler"]["paused"] is False
        assert figures["tasks"] == 0
        assert "watcher" in page.text
        assert "reader" in page.text
        assert secret not in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]

        out = await client.post("/logout", data={"csrf": csrf_of(page.text)})
        assert out.status_code == 303
        assert (await client.get("/")).status_code == 303
        assert (await client.get("/fragments/overview")).status_code == 401


async def test_login_goes_back_only_to_a_path_of_this_site() -> None:
    async with dashboard() as (rt, server), client_for(server) as client:
        secret = await token(rt, "reader")
        assert (await log_in(client, secret, "/tasks/tsk_1")).headers["location"] == "/tasks/tsk_1"
        for elsewhere in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
            answer = await log_in(client, secret, elsewhere)
            assert answer.headers["location"] == "/"


async def test_a_token_that_expires_ends_the_login() -> None:
    now = [1_000_000.0]
    async with dashboard(clock=lambda: now[0]) as (rt, server), client_for(server) as client:
        issued = await rt.create_token(name="shift", role="operator", ttl=60)
        await log_in(client, issued.secret)
        assert (await client.get("/")).status_code == 200
        now[0] += 61
        assert (await client.get("/")).headers["location"] == "/login?next=/"
        again = await log_in(client, issued.secret)
        assert again.status_code == 401
        assert "expired" in again.text


async def test_login_refuses_a_wrong_token_and_a_form_without_its_nonce() -> None:
    async with dashboard() as (rt, server), client_for(server) as client:
        secret = await token(rt, "operator")
        wrong = await log_in(client, "rl_token_not-a-real-one")
        assert wrong.status_code == 401
        assert "not recognised" in wrong.text
        assert "runlease_dashboard" not in wrong.headers.get("set-cookie", "")

        forged = await client.post("/login", data={"nonce": "guess", "token": secret})
        assert forged.status_code == 403
        assert (await client.get("/")).status_code == 303  # still logged out


async def test_a_revoked_token_sends_the_browser_back_to_the_login() -> None:
    async with dashboard() as (rt, server), client_for(server) as client:
        secret = await token(rt, "reader", "temp")
        await log_in(client, secret)
        assert (await client.get("/")).status_code == 200
        await rt.revoke_token("temp")
        page = await client.get("/tasks/tsk_x")
        assert page.status_code == 303
        assert page.headers["location"] == "/login?next=/tasks/tsk_x"
        assert (await client.get("/api/overview")).status_code == 401
        again = await log_in(client, secret)
        assert again.status_code == 401
        assert "revoked" in again.text


async def test_an_action_without_the_logins_csrf_token_is_refused() -> None:
    async with dashboard() as (rt, server), client_for(server) as client:
        await log_in(client, await token(rt, "operator"))
        for form in ({}, {"csrf": "forged"}):
            answer = await client.post(
                "/actions/scheduler/pause", data=form, headers={"Accept": "application/json"}
            )
            assert answer.status_code == 403
            assert answer.json()["error"]["code"] == "CSRF_REFUSED"
        assert not rt.scheduler_status().paused


async def test_a_readers_force_release_is_refused_with_403_and_an_operators_works() -> None:
    async with dashboard() as (rt, server):
        _, run_id = await leased_run(rt)
        action = f"/actions/runs/{run_id}/force-release"
        async with client_for(server) as reader:
            await log_in(reader, await token(rt, "reader"))
            page = await reader.get("/")
            assert action in page.text  # the button is there; the server refuses it
            refused = await reader.post(
                action,
                data={"csrf": csrf_of(page.text), "reason": "stuck"},
                headers={"Accept": "application/json"},
            )
            assert refused.status_code == 403
            error = refused.json()["error"]
            assert error["code"] == "PERMISSION_DENIED"
            assert "operator role" in error["message"]
            # Without script: the same refusal as a page.
            plain = await reader.post(action, data={"csrf": csrf_of(page.text), "reason": "x"})
            assert plain.status_code == 403
            assert "PERMISSION_DENIED" in plain.text
            assert rt.get_run(run_id).status == "claimed"

        async with client_for(server) as operator:
            await log_in(operator, await token(rt, "operator", "ops"))
            page = await operator.get("/")
            done = await operator.post(
                action,
                data={"csrf": csrf_of(page.text), "reason": "agent hung"},
                headers={"Accept": "application/json"},
            )
            assert done.status_code == 200, done.text
            assert done.json()["ok"] is True
            run = rt.get_run(run_id)
            assert run.status == "queued"
            event = rt.events(run_id=run_id, kinds=["run_force_released"])[-1]
            assert event.actor == Actor(kind="token", ref="ops")
            assert event.origin == Origin(kind="dashboard", ref="token:ops")

            missing_reason = await operator.post(
                "/actions/scheduler/pause", data={"csrf": csrf_of(page.text)}
            )
            assert missing_reason.status_code == 303  # reason optional there
            assert rt.scheduler_status().paused


async def test_every_operator_button_runs_its_operation() -> None:
    async with dashboard() as (rt, server), client_for(server) as client:
        await log_in(client, await token(rt, "operator", "ops"))
        csrf = csrf_of((await client.get("/")).text)

        async def press(action: str, **form: str) -> dict[str, object]:
            answer = await client.post(
                action, data={"csrf": csrf, **form}, headers={"Accept": "application/json"}
            )
            assert answer.status_code == 200, answer.text
            reply: dict[str, object] = answer.json()
            return reply

        await press("/actions/scheduler/pause", reason="maintenance")
        assert rt.scheduler_status().paused
        assert rt.scheduler_status().paused_reason == "maintenance"
        await press("/actions/scheduler/resume")
        assert not rt.scheduler_status().paused

        task = await rt.create_task("parks itself", start=True)
        agent = await rt.open_session(agent="builder")
        claim = await agent.claim_next(lease_seconds=LONG_LEASE)
        await agent.block(claim.run.id, reason="needs a human")
        assert rt.get_run(claim.run.id).status == "needs_attention"
        task_page = (await client.get(f"/tasks/{task.id}")).text
        assert f"/actions/runs/{claim.run.id}/recover" in task_page
        await press(f"/actions/runs/{claim.run.id}/recover", reason="looked at it")
        assert rt.get_run(claim.run.id).status == "queued"

        reply = await press(f"/actions/tasks/{task.id}/cancel", reason="not needed")
        assert "canceled" in str(reply["message"])
        assert rt.get_task(task.id).status == "canceled"

        refused = await client.post(
            "/actions/runs/run_missing/force-release",
            data={"csrf": csrf, "reason": "x"},
            headers={"Accept": "application/json"},
        )
        assert refused.status_code == 404
        assert refused.json()["error"]["code"] == "RUN_NOT_FOUND"
        no_reason = await client.post(
            f"/actions/runs/{claim.run.id}/force-release",
            data={"csrf": csrf},
            headers={"Accept": "application/json"},
        )
        assert no_reason.status_code == 400


async def read_sse(lines: AsyncIterator[str], count: int) -> list[dict[str, object]]:
    """The next ``count`` events of an open stream's lines (id and data of each)."""
    events: list[dict[str, object]] = []
    current: dict[str, object] = {}
    async for line in lines:
        if line.startswith("id: "):
            current["id"] = int(line[4:])
        elif line.startswith("data: "):
            current["data"] = json.loads(line[6:])
        elif line == "" and current:
            events.append(current)
            current = {}
            if len(events) == count:
                break
    return events


async def test_the_event_stream_resumes_after_the_last_event_seen_and_goes_on_live() -> None:
    async with dashboard() as (rt, server), client_for(server) as client:
        await log_in(client, await token(rt, "reader"))
        for n in range(3):
            await rt.create_task(f"task {n}")
        last = rt.status().last_event_seq
        assert last >= 3
        with trio.fail_after(30):
            async with client.stream(
                "GET", "/events", headers={"Last-Event-ID": str(last - 1)}
            ) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                lines = stream.aiter_lines()
                (resumed,) = await read_sse(lines, 1)
                assert resumed["id"] == last
                created = await rt.create_task("made <while> watching")
                (live,) = await read_sse(lines, 1)
                assert live["id"] == last + 1
                data = live["data"]
                assert isinstance(data, dict)
                assert data["task_id"] == created.id
                assert data["kind"] == "task_created"
            async with client.stream("GET", "/events", params={"after": "-1"}) as bad:
                assert bad.status_code == 400


async def test_a_burst_shows_its_newest_events_and_counts_the_rest() -> None:
    async with dashboard() as (rt, server), client_for(server) as client:
        await log_in(client, await token(rt, "reader"))
        for n in range(SHOWN_PER_FLUSH + 30):
            await rt.create_task(f"task {n}")
        last = rt.status().last_event_seq
        with trio.fail_after(30):
            async with client.stream("GET", "/events", params={"after": "0"}) as stream:
                lines = stream.aiter_lines()
                # The whole backlog arrives in one window: one "skipped" message, then the
                # newest events, in order, each with its own id.
                head: list[str] = []
                async for line in lines:
                    if line.startswith("retry:"):
                        continue  # the stream's opening advice, before any message
                    if line == "":
                        if head:
                            break
                        continue
                    head.append(line)
                left_out = last - SHOWN_PER_FLUSH
                assert head[0] == "event: skipped"
                assert head[1] == f"id: {left_out}"
                gap = json.loads(head[2].removeprefix("data: "))
                assert gap == {"count": left_out, "first_seq": 1, "last_seq": left_out}
                shown = await read_sse(lines, SHOWN_PER_FLUSH)
                assert [e["id"] for e in shown] == list(range(left_out + 1, last + 1))


async def test_a_port_in_use_is_a_clear_error() -> None:
    with trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with runlease.open_runtime() as rt, trio.open_nursery() as nursery:
            with pytest.raises(Unavailable, match=f"cannot listen on 127.0.0.1:{port}"):
                await nursery.start(partial(serve_http, rt, LOOPBACK._replace(port=port)))


async def test_a_shutdown_ends_open_event_streams() -> None:
    async with runlease.open_runtime() as rt, trio.open_nursery() as nursery:
        server: HttpServer = await nursery.start(partial(serve_http, rt, LOOPBACK))
        async with client_for(server) as client:
            await log_in(client, await token(rt, "reader"))
            with trio.fail_after(30):
                async with client.stream("GET", "/events") as stream:
                    server.shutdown()
                    async for _ in stream.aiter_lines():
                        pass  # ends instead of waiting for events forever
                await server.wait_stopped()


async def test_the_task_page_shows_runs_checkpoints_timeline_and_the_dependency_tree() -> None:
    async with dashboard() as (rt, server), client_for(server) as client:
        await log_in(client, await token(rt, "reader"))
        parent = await rt.create_task("the <parent>")
        task = await rt.create_task("write <script>alert(1)</script>", parent=parent.id)
        child = await rt.create_task("a child", parent=task.id)
        grandchild = await rt.create_task("a grandchild", parent=child.id)
        upstream = await rt.create_task("must finish first")
        downstream = await rt.create_task("waits for it")
        await rt.add_dependency(task.id, blocked_by=upstream.id)
        await rt.add_dependency(downstream.id, blocked_by=task.id)
        await rt.checkpoint(task.id, "half way there")

        page = await client.get(f"/tasks/{task.id}")
        assert page.status_code == 200
        html = page.text
        assert "<script>alert(1)</script>" not in html
        assert "write &lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert "half way there" in html
        assert "task_created" in html
        assert "dependency_added" in html
        for other in (parent, child, grandchild, upstream, downstream):
            assert f'href="/tasks/{other.id}"' in html
        graph = html[html.index('id="graph"') :]
        children = graph[graph.index('id="children"') : graph.index('id="blocked-by"')]
        # The grandchild nests inside the child's list item.
        assert children.index(child.id) < children.index(grandchild.id)
        assert children.count("<ul") >= 2
        assert upstream.id in graph[graph.index('id="blocked-by"') : graph.index('id="dependents"')]
        assert downstream.id in graph[graph.index('id="dependents"') :]
        for secret_prefix in ("rl_claim_", "rl_session_", "rl_token_"):
            assert secret_prefix not in html

        missing = await client.get("/tasks/tsk_nope")
        assert missing.status_code == 404
        assert "TASK_NOT_FOUND" in missing.text


async def test_metrics_need_a_bearer_token_of_any_role() -> None:
    scrapes: list[int] = []

    def fake_metrics() -> tuple[bytes, str]:
        scrapes.append(1)
        return b"runlease_up 1\n", "text/plain; version=0.0.4; charset=utf-8"

    async with dashboard(metrics=fake_metrics) as (rt, server), client_for(server) as client:
        reader = await token(rt, "reader")
        assert (await client.get("/metrics")).status_code == 401
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer rl_token_no"})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"].startswith("Bearer")
        assert scrapes == []
        ok = await client.get("/metrics", headers={"Authorization": f"Bearer {reader}"})
        assert ok.status_code == 200
        assert ok.text == "runlease_up 1\n"
        assert ok.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        await rt.revoke_token("reader")
        revoked = await client.get("/metrics", headers={"Authorization": f"Bearer {reader}"})
        assert revoked.status_code == 401
        assert scrapes == [1]

    async with dashboard() as (rt, server), client_for(server) as client:
        reader = await token(rt, "reader")
        absent = await client.get("/metrics", headers={"Authorization": f"Bearer {reader}"})
        assert absent.status_code == 404


async def test_over_https_the_cookies_are_secure(tmp_path: Path) -> None:
    ca = trustme.CA()
    pem = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    async with dashboard(certfile=pem) as (rt, server):
        assert server.url.startswith("https://")
        async with client_for(server, verify=trust) as client:
            answer = await log_in(client, await token(rt, "reader"))
            cookies = answer.headers.get_list("set-cookie")
            session = next(c for c in cookies if c.startswith("runlease_dashboard="))
            assert "secure" in session.lower()
            assert (await client.get("/")).status_code == 200


@pytest.mark.parametrize(
    ("args", "needs"),
    [
        (["--http", "0.0.0.0:0"], "--insecure-plaintext"),
        (["--http", "http://127.0.0.1:0"], "HOST:PORT"),
    ],
)
def test_serve_refuses_plain_http_off_loopback_at_start(
    tmp_path: Path, args: list[str], needs: str
) -> None:
    import subprocess

    done = subprocess.run(
        [*RUNLEASE, "serve", "--data-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, done
    assert needs in done.stdout + done.stderr


def test_serve_http_with_tls_cert_serves_https_and_stops_on_sigterm(tmp_path: Path) -> None:
    ca = trustme.CA()
    pem = tmp_path / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    server = Server.serve(
        "--data-dir",
        str(tmp_path / "data"),
        "--socket",
        str(tmp_path / "s.sock"),
        "--http",
        "127.0.0.1:0",
        "--tls-cert",
        str(pem),
    )
    try:
        line = server.log.wait_for(lambda line: log_event(line) == "http_listening", 60)
        record = json.loads(line)
        assert record["https"] is True
        assert record["url"].startswith("https://127.0.0.1:")
        server.wait_listening()
        trust = ssl.create_default_context()
        ca.configure_trust(trust)
        page = httpx.get(f"{record['url']}/login", verify=trust, timeout=30)
        assert page.status_code == 200
        assert "secure" in page.headers["set-cookie"].lower()
        assert server.stop() == 0, server.log.lines
    finally:
        server.kill()


def test_browser_sessions_expire_and_the_oldest_go_first_past_capacity() -> None:
    now = [0.0]
    sessions = WebSessions(clock=lambda: now[0], lifetime=100, capacity=2)
    first, _ = sessions.open("tok_a")
    second, web = sessions.open("tok_b")
    assert sessions.get(second) == web
    assert sessions.get("a guess") is None
    third, _ = sessions.open("tok_c")
    assert sessions.get(first) is None  # evicted: capacity 2
    assert len(sessions) == 2
    now[0] = 100.0
    assert sessions.get(second) is None  # expired
    assert sessions.get(third) is None
    assert len(sessions) == 0
    assert web.csrf != second  # the CSRF token is not the cookie


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.4, "0s"), (59.9, "59s"), (60, "1m 00s"), (605, "10m 05s"), (7380, "2h 03m")],
)
def test_spans_read_the_same_as_the_pages_script_writes_them(seconds: float, shown: str) -> None:
    assert fmt.span(seconds) == shown


def test_time_left_says_expired_once_the_lease_ran_out() -> None:
    assert fmt.time_left(100.0, 40.0) == "1m 00s"
    assert fmt.time_left(100.0, 99.5) == "expired"
    assert fmt.time_left(None, 0.0) == "—"
