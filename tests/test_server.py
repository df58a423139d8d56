"""The socket server in process: protocol errors, pipelining, security, shutdown."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import struct
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from runlease import open_runtime
from runlease import protocol as p
from runlease.client import Client
from runlease.errors import (
    AUTONOMY_SESSION_REQUIRED,
    BAD_FRAME,
    BAD_REQUEST,
    FRAME_TOO_LARGE,
    HANDSHAKE_REQUIRED,
    NO_CLAIMABLE_RUN,
    PEER_REFUSED,
    SERVER_UNAVAILABLE,
    SHUTTING_DOWN,
    SOCKET_IN_USE,
    SOCKET_PATH_UNSAFE,
    UNKNOWN_OP,
    UNSUPPORTED_VERSION,
    InvalidInput,
    LeaseRefused,
    NotFound,
    Unavailable,
)
from runlease.runtime.client import open_client
from runlease.runtime.server import SocketServer, serve_socket
from socket_helpers import STEP, Raw, Served


def error_of(reply: p.AnyReply | None) -> tuple[int, str]:
    assert isinstance(reply, p.ErrorReply), reply
    return reply.id, reply.code


# ------------------------------------------------------------------------ the socket file
async def test_socket_is_0600_in_a_0700_directory(served: Served) -> None:
    assert stat.S_IMODE(os.stat(served.path).st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(served.path).st_mode)
    assert stat.S_IMODE(os.stat(served.path.parent).st_mode) == 0o700


async def test_refuses_a_socket_directory_others_can_enter(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    async with open_runtime() as rt, trio.open_nursery() as nursery:
        with pytest.raises(InvalidInput) as info:
            await nursery.start(serve_socket, rt, shared / "s.sock")
    assert info.value.code == SOCKET_PATH_UNSAFE
    assert "chmod 700" in info.value.message


async def test_replaces_a_stale_socket_but_refuses_a_live_one(tmp_path: Path) -> None:
    path = tmp_path / "sock" / "s.sock"
    path.parent.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(os.fspath(path))
    stale.close()  # the file stays; nobody listens: a dead server's leftover
    async with open_runtime() as rt, trio.open_nursery() as nursery:
        server: SocketServer = await nursery.start(serve_socket, rt, path)
        with pytest.raises(Unavailable) as info:
            await nursery.start(serve_socket, rt, path)
        assert info.value.code == SOCKET_IN_USE
        server.shutdown()
    assert not path.exists()


async def test_refuses_to_replace_a_file_that_is_not_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "sock" / "s.sock"
    path.parent.mkdir(mode=0o700)
    path.write_text("precious")
    async with open_runtime() as rt, trio.open_nursery() as nursery:
        with pytest.raises(InvalidInput) as info:
            await nursery.start(serve_socket, rt, path)
    assert info.value.code == SOCKET_PATH_UNSAFE
    assert path.read_text() == "precious"


# -------------------------------------------------------------------------- other users
def _connect_as(uid: int, path: Path) -> dict[str, object]:
    """Fork a child that drops to ``uid``, connects and reports what happened."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: only plain syscalls, then _exit
        outcome: dict[str, object] = {}
        try:
            os.close(read_end)
            os.setgid(uid)
            os.setuid(uid)
            outcome["uid"] = os.getuid()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(STEP)
            try:
                sock.connect(os.fspath(path))
            except OSError as exc:
                outcome["connect_error"] = exc.errno
            else:
                # The server may already have refused and closed: a failed send is fine.
                with contextlib.suppress(OSError):
                    sock.sendall(p.encode_frame(p.Hello(id=1, versions=[1])))
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                outcome["received"] = data.hex()
        except BaseException as exc:
            outcome["crash"] = repr(exc)
        finally:
            os.write(write_end, msgspec.json.encode(outcome))
            os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    result: dict[str, object] = msgspec.json.decode(b"".join(chunks))
    return result


NOBODY = 65534
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="switching to another uid needs root (tests run unprivileged)"
)


@needs_root
async def test_another_uid_cannot_even_open_the_socket(served: Served) -> None:
    outcome = await trio.to_thread.run_sync(_connect_as, NOBODY, served.path)
    assert outcome.get("uid") == NOBODY, outcome
    assert outcome.get("connect_error") in (13, 1), outcome  # EACCES / EPERM


@needs_root
async def test_another_uid_is_refused_even_if_the_permissions_are_loosened() -> None:
    # Someone opens the directory and the socket to everybody: the peer-uid check still
    # refuses. (pytest's own temp dirs are private all the way up, so use a fresh one.)
    base = Path(tempfile.mkdtemp(prefix="runlease-uid-"))
    path = base / "sock" / "s.sock"
    try:
        async with open_runtime() as rt, trio.open_nursery() as nursery:
            server: SocketServer = await nursery.start(serve_socket, rt, path)
            for directory in (base, path.parent):
                os.chmod(directory, 0o755)
            os.chmod(path, 0o666)
            outcome = await trio.to_thread.run_sync(_connect_as, NOBODY, path)
            assert outcome.get("uid") == NOBODY, outcome
            assert "connect_error" not in outcome, outcome
            assert "received" in outcome, outcome
            buffer = p.FrameBuffer()
            buffer.feed(bytes.fromhex(str(outcome["received"])))
            frames = buffer.frames()
            assert len(frames) == 1, "exactly one refusal, then the connection is closed"
            assert error_of(p.decode_reply(frames[0])) == (0, PEER_REFUSED)
            # ...and the server goes on serving its own user.
            async with open_client(path) as client:
                assert (await client.status()).tasks == 0
            server.shutdown()
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ----------------------------------------------------------------------- protocol errors
async def test_requests_before_hello_are_refused_until_it_comes(served: Served) -> None:
    raw = await Raw.open(served.path, hello=False)
    await raw.send(p.GetStatus(id=5))
    assert error_of(await raw.reply()) == (5, HANDSHAKE_REQUIRED)
    await raw.send(p.Hello(id=6, versions=[99]))
    assert error_of(await raw.reply()) == (6, UNSUPPORTED_VERSION)
    await raw.send(p.Hello(id=7, versions=[99, 1]))
    welcome = await raw.reply()
    assert isinstance(welcome, p.Welcome)
    assert welcome.version == 1
    await raw.send(p.GetStatus(id=8))
    assert isinstance(await raw.reply(), p.StatusReply)
    await raw.close()


async def test_bad_frames_get_error_replies_and_the_connection_carries_on(
    served: Served,
) -> None:
    raw = await Raw.open(served.path)
    await raw.send(p.frame_bytes(b"\xc1\xc1"))
    assert error_of(await raw.reply()) == (0, BAD_FRAME)
    await raw.send(p.frame_bytes(b""))
    assert error_of(await raw.reply()) == (0, BAD_FRAME)
    await raw.send(p.frame_bytes(msgspec.msgpack.encode({"op": "explode", "id": 3})))
    assert error_of(await raw.reply()) == (3, UNKNOWN_OP)
    await raw.send(p.frame_bytes(msgspec.msgpack.encode({"op": "create_task", "id": 4})))
    assert error_of(await raw.reply()) == (4, BAD_REQUEST)
    bad_types = {"op": "claim_next", "id": 5, "wait": "yes", "token": 7}
    await raw.send(p.frame_bytes(msgspec.msgpack.encode(bad_types)))
    reply = await raw.reply()
    assert error_of(reply) == (5, BAD_REQUEST)
    await raw.send(p.frame_bytes(msgspec.msgpack.encode({"op": "status", "id": 0})))
    assert error_of(await raw.reply()) == (0, BAD_REQUEST)
    await raw.send(p.GetStatus(id=6))
    assert isinstance(await raw.reply(), p.StatusReply)
    await raw.close()


async def test_an_oversized_length_prefix_closes_only_that_connection(served: Served) -> None:
    bystander = await Raw.open(served.path)
    raw = await Raw.open(served.path)
    await raw.send(struct.pack(">I", p.MAX_FRAME_BYTES + 1) + b"x" * 100)
    assert error_of(await raw.reply()) == (0, FRAME_TOO_LARGE)
    assert await raw.reply() is None  # closed
    await bystander.send(p.GetStatus(id=2))
    assert isinstance(await bystander.reply(), p.StatusReply)
    await bystander.close()


async def test_runtime_errors_keep_their_codes(served: Served) -> None:
    raw = await Raw.open(served.path)
    await raw.send(p.ShowTask(id=2, task_id="tsk_missing"))
    await raw.send(p.ClaimNext(id=3))
    await raw.send(p.CreateTask(id=4, title="  "))
    got = {r.id: r for r in await raw.replies(3)}
    assert error_of(got[2])[1] == "TASK_NOT_FOUND"
    assert error_of(got[3])[1] == AUTONOMY_SESSION_REQUIRED
    assert error_of(got[4])[1] == "INVALID_INPUT"
    await raw.close()


async def test_a_duplicate_id_in_flight_is_refused(served: Served) -> None:
    raw = await Raw.open(served.path)
    opened = await served.rt.open_session_with_token(agent="a")
    token = opened[1]
    await raw.send(p.ClaimNext(id=2, token=token, wait=True))
    await raw.send(p.ClaimNext(id=2, token=token, wait=True))
    assert error_of(await raw.reply()) == (2, BAD_REQUEST)
    await raw.send(p.Cancel(id=3, target=2))
    replies = {type(r) for r in await raw.replies(2)}
    assert replies == {p.Ok, p.ErrorReply}
    await raw.close()


# ---------------------------------------------------------------------- pipelining & co
async def test_replies_follow_completion_not_request_order(served: Served) -> None:
    raw = await Raw.open(served.path)
    await raw.send(p.OpenSession(id=2, agent="worker"))
    opened = await raw.reply()
    assert isinstance(opened, p.SessionOpened)
    # A waiting claim first: later requests on the same connection are not stuck behind it.
    await raw.send(p.ClaimNext(id=3, token=opened.token, wait=True, timeout=STEP))
    await raw.send(p.GetStatus(id=4))
    status = await raw.reply()
    assert isinstance(status, p.StatusReply)
    assert status.id == 4
    # Then the request that gives it work; both replies come, matched by id.
    await raw.send(p.CreateTask(id=5, title="pipelined", start=True))
    got = {reply.id: reply for reply in await raw.replies(2)}
    created, claimed = got[5], got[3]
    assert isinstance(created, p.TaskReply)
    assert isinstance(claimed, p.ClaimReply)
    assert claimed.claim.task.id == created.task.id
    await raw.close()


async def test_raw_claim_tokens_never_cross_the_socket(served: Served) -> None:
    raw = await Raw.open(served.path)
    await raw.send(p.OpenSession(id=2, agent="worker"))
    opened = await raw.reply()
    assert isinstance(opened, p.SessionOpened)
    assert opened.token.startswith("rl_session_")
    await raw.send(p.CreateTask(id=3, title="secret", start=True))
    await raw.reply()
    await raw.send(p.ClaimNext(id=4, token=opened.token))
    claim = await raw.reply()
    assert isinstance(claim, p.ClaimReply)
    run_id = claim.claim.run.id
    # The runtime keeps only the hash of the lease's token, so no raw token exists to leak.
    assert served.rt._machine.runs[run_id].claim_token_hash == claim.claim.lease.claim_token_hash
    requests: list[p.Request[Any]] = [
        p.HeartbeatRun(id=5, token=opened.token, run_id=run_id),
        p.ShowTask(id=6, task_id=claim.claim.task.id),
        p.GetRun(id=7, run_id=run_id),
        p.ListEvents(id=8),
        p.ListSessions(id=9),
        p.GetStatus(id=10),
        p.CompleteRun(id=11, token=opened.token, run_id=run_id, result={"ok": 1}),
    ]
    for request in requests:
        await raw.send(request)
        assert not isinstance(await raw.reply(), p.ErrorReply)
    assert claim.claim.lease.claim_token_hash.startswith("sha256:")
    assert b"rl_claim_" not in raw.received
    await raw.close()


async def test_trio_client_pipelines_concurrent_calls(served: Served) -> None:
    async with open_client(served.path) as admin:
        session, token = await admin.open_session(agent="worker")
        claims = []

        async def claimer() -> None:
            claims.append(await admin.claim_next(token=token, wait=True, timeout=STEP))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(claimer)
            await trio.testing.wait_all_tasks_blocked()
            task = await admin.create_task("shared connection", start=True)
        assert claims[0].task.id == task.id
        assert claims[0].lease.session_id == session.id
        with pytest.raises(LeaseRefused) as info:
            await admin.claim_next(token=token)
        assert info.value.code == "AUTONOMY_LEASE_ALREADY_HELD"
        with pytest.raises(NotFound) as missing:
            await admin.get_task("tsk_nope")
        assert missing.value.code == "TASK_NOT_FOUND"


async def test_waiting_claim_times_out_with_no_claimable_run(served: Served) -> None:
    async with open_client(served.path) as client:
        _, token = await client.open_session(agent="idle")
        with pytest.raises(NotFound) as info:
            await client.claim_next(token=token, wait=True, timeout=0.05)
        assert info.value.code == NO_CLAIMABLE_RUN


async def test_follow_streams_events_until_cancelled(served: Served) -> None:
    async with open_client(served.path) as client:
        task = await client.create_task("watched")
        async with client.follow_events(task_id=task.id) as events:
            first = await events.__anext__()
            assert first.kind == "task_created"
            await client.start_task(task.id)
            second = await events.__anext__()
            assert second.kind == "run_queued"
        # The stream was cancelled on the server; the connection still works.
        assert (await client.status()).tasks == 1


async def test_lists_page_through_everything(served: Served) -> None:
    for i in range(7):
        await served.rt.create_task(f"t{i}")
    async with open_client(served.path) as client:
        assert [t.title for t in await client.list_tasks(limit=3)] == ["t0", "t1", "t2"]
        assert len(await client.list_tasks()) == 7
        raw = await Raw.open(served.path)
        await raw.send(p.ListTasks(id=2, limit=3))
        page = await raw.reply()
        assert isinstance(page, p.TaskList)
        assert page.next_after == page.tasks[-1].id
        await raw.send(p.ListEvents(id=3, limit=5))
        events = await raw.reply()
        assert isinstance(events, p.EventList)
        assert events.next_after_seq == 5
        await raw.close()
    sync_tasks = await trio.to_thread.run_sync(lambda: Client(served.path).connect().list_tasks())
    assert len(sync_tasks) == 7


# ---------------------------------------------------------------------------- shutdown
async def test_shutdown_ends_waits_and_streams_then_removes_the_socket(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sock" / "s.sock"
    async with open_runtime() as rt, trio.open_nursery() as nursery:
        server: SocketServer = await nursery.start(serve_socket, rt, path)
        raw = await Raw.open(path)
        await raw.send(p.OpenSession(id=2))
        opened = await raw.reply()
        assert isinstance(opened, p.SessionOpened)
        await raw.send(p.ClaimNext(id=3, token=opened.token, wait=True))
        await raw.send(p.FollowEvents(id=4))
        await trio.testing.wait_all_tasks_blocked()
        server.shutdown()
        got: dict[int, p.AnyReply] = {}
        while (reply := await raw.reply()) is not None:
            if not isinstance(reply, p.EventItem):
                got[reply.id] = reply
        assert error_of(got[3]) == (3, SHUTTING_DOWN)
        assert isinstance(got[4], p.StreamEnd)
        assert got[4].reason == "shutdown"
        await server.wait_stopped()
        assert not path.exists()
    with pytest.raises(Unavailable) as info:
        await trio.to_thread.run_sync(lambda: Client(path).connect())
    assert info.value.code == SERVER_UNAVAILABLE
    assert str(path) in info.value.message


def test_sync_client_gives_up_on_a_server_that_never_answers(tmp_path: Path) -> None:
    path = tmp_path / "silent.sock"
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(os.fspath(path))
    silent.listen()  # accepts connections in the kernel, never answers
    try:
        with pytest.raises(Unavailable) as info:
            Client(path, reply_timeout=0.2).connect()
    finally:
        silent.close()
    assert info.value.code == SERVER_UNAVAILABLE
    assert "no reply within 0.2 seconds" in info.value.message


async def test_many_pipelined_requests_on_one_connection_all_get_answers(
    served: Served,
) -> None:
    # More requests than a connection may have in flight: the reader waits for free slots
    # instead of refusing or dropping any.
    raw = await Raw.open(served.path)
    count = 3 * 64
    await raw.send(b"".join(p.encode_frame(p.GetStatus(id=i)) for i in range(2, 2 + count)))
    replies = await raw.replies(count)
    assert sorted(r.id for r in replies) == list(range(2, 2 + count))
    assert all(isinstance(r, p.StatusReply) for r in replies)
    await raw.close()


def test_the_trio_client_is_reachable_from_runlease_client() -> None:
    import runlease.client
    from runlease.runtime import client as trio_client

    assert runlease.client.open_client is trio_client.open_client
    assert runlease.client.AsyncClient is trio_client.AsyncClient
