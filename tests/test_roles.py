"""Access tokens and roles over the socket.

Every operation declares the least role that may run it; a connection that authenticated
with a token acts with the token's role and is refused PERMISSION_DENIED past it. A wrong,
revoked or expired token is refused at the handshake (AUTH_TOKEN_REFUSED), a revoke or an
expiry also ends a connection's rights from its next request on, an agent token acts only
with the sessions it opened, and writes are stamped with the token's name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from runlease import open_runtime
from runlease import protocol as p
from runlease.client_common import ServerAddress
from runlease.core.model import ROLE_RANK, ROLES, Actor, Role
from runlease.errors import (
    AUTH_TOKEN_REFUSED,
    PERMISSION_DENIED,
    LeaseRefused,
    RunleaseError,
)
from runlease.operations import OPERATIONS
from runlease.runtime import Runtime
from runlease.runtime.client import open_client
from runlease.runtime.server import SocketServer, serve_socket
from socket_helpers import Raw
from test_protocol import EXAMPLES, GRAPH_EXAMPLES

# One example request of every operation, by its tag (the protocol tests' examples).
EXAMPLE_BY_TAG: dict[str, p.Request[Any]] = {
    str(type(r).__struct_config__.tag): r
    for r in EXAMPLES + GRAPH_EXAMPLES
    if not isinstance(r, p.Hello | p.Cancel)
}


class WallClock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def served(path: Path, clock: WallClock | None = None) -> AsyncIterator[Runtime]:
    async with (
        open_runtime(clock=clock) as rt,
        trio.open_nursery() as nursery,
    ):
        server: SocketServer = await nursery.start(serve_socket, rt, path)
        try:
            yield rt
        finally:
            server.shutdown()
            await server.wait_stopped()


async def token_for(rt: Runtime, role: Role, name: str | None = None, **more: Any) -> str:
    _, secret = await rt.create_token(name=name or f"{role}-token", role=role, **more)
    return secret


async def hello(path: Path, token: str | None) -> tuple[Raw, p.AnyReply | None]:
    raw = await Raw.open(path, hello=False)
    await raw.send(p.Hello(id=1, versions=[1], auth_token=token))
    return raw, await raw.reply()


async def runs_what_it_may(raw: Raw, role: Role) -> None:
    """Send every operation's example on ``raw`` (authenticated with a ``role`` token): what
    the role may run is not refused for lack of rights, the rest is PERMISSION_DENIED."""
    for number, (tag, example) in enumerate(sorted(EXAMPLE_BY_TAG.items()), start=100):
        needed = OPERATIONS[tag].role
        allowed = ROLE_RANK[role] >= ROLE_RANK[needed]
        if allowed and example.long():
            continue  # a wait, a stream or a drain: the unit test below covers them
        await raw.send(msgspec.structs.replace(example, id=number))
        reply = await raw.reply()
        assert reply is not None, tag
        assert reply.id == number, (tag, reply)
        if allowed:
            assert not (
                isinstance(reply, p.ErrorReply)
                and reply.code in (PERMISSION_DENIED, AUTH_TOKEN_REFUSED)
            ), (tag, reply)
        else:
            assert isinstance(reply, p.ErrorReply), (tag, reply)
            assert reply.code == PERMISSION_DENIED, (tag, reply)
            assert f"needs the {needed} role" in reply.message
            assert f"has the {role} role" in reply.message


async def refused(call: Any) -> RunleaseError:
    with pytest.raises(RunleaseError) as info:
        await call
    return info.value


# ------------------------------------------------------------------ the table itself
def test_every_operation_declares_its_role() -> None:
    # A new operation must take its place here: the role is part of its contract.
    expected = {
        "reader": {
            "status", "show_task", "get_run", "list_tasks", "events", "get_event",
            "follow_events", "get_session", "list_sessions", "whoami", "scheduler_status",
            "backlog", "stuck", "timeline", "inspect_task", "inspect_run", "get_context",
            "overview",
        },
        "agent": {
            "create_task", "start_task", "open_session", "stop_session", "claim_next",
            "claim_run", "claim_task", "heartbeat", "complete", "fail", "release", "block",
            "publish_task", "update_task", "add_dependency", "remove_dependency",
            "checkpoint", "steal",
        },
        "operator": {
            "approve_task", "reject_task", "delete_task", "pause_task", "resume_task",
            "cancel_task", "reopen_task", "unblock_task", "cancel_run", "retry_run",
            "recover_run", "force_release", "force_fail", "bulk_force", "pause_scheduler",
            "resume_scheduler", "drain_scheduler", "hook_list", "hook_retry",
            "create_token", "revoke_token", "list_tokens",
        },
    }  # fmt: skip
    actual: dict[str, set[str]] = {role: set() for role in ROLES}
    for tag, entry in OPERATIONS.items():
        actual[entry.role].add(tag)
    assert actual == expected
    # Every read is open to readers, except the ones about secrets and the host's hooks.
    assert {t for t, e in OPERATIONS.items() if e.read and e.role != "reader"} == {
        "hook_list",
        "list_tokens",
    }


def test_every_operation_has_an_example_to_send() -> None:
    assert set(EXAMPLE_BY_TAG) == set(OPERATIONS)


# ----------------------------------------------------- each role, every operation
@pytest.mark.parametrize("role", ROLES)
async def test_each_role_runs_what_it_may_and_is_refused_the_rest(
    tmp_path: Path, role: Role
) -> None:
    path = tmp_path / "sock" / "s.sock"
    async with served(path) as rt:
        raw, welcome = await hello(path, await token_for(rt, role))
        assert isinstance(welcome, p.Welcome)
        await runs_what_it_may(raw, role)
        await raw.close()


@pytest.mark.parametrize("role", ROLES)
def test_authorize_follows_the_table_for_long_operations_too(role: Role) -> None:
    from runlease.core.model import AccessToken
    from runlease.runtime.calls import Call

    token = AccessToken(
        id="tok_1", name="t", role=role, token_hash="sha256:" + "0" * 64, created_at=0
    )
    call = Call(None, principal=token)  # type: ignore[arg-type]  # authorize needs no runtime
    for tag, example in EXAMPLE_BY_TAG.items():
        if ROLE_RANK[role] >= ROLE_RANK[OPERATIONS[tag].role]:
            call.authorize(example)
        else:
            with pytest.raises(LeaseRefused) as info:
                call.authorize(example)
            assert info.value.code == PERMISSION_DENIED
    # No principal: embedded, or the local socket without a token, may do everything.
    for example in EXAMPLE_BY_TAG.values():
        Call(None).authorize(example)  # type: ignore[arg-type]


# -------------------------------------------------------------- refused handshakes
async def test_a_wrong_revoked_or_expired_token_is_refused_at_the_handshake(
    tmp_path: Path,
) -> None:
    path = tmp_path / "sock" / "s.sock"
    clock = WallClock()
    async with served(path, clock) as rt:
        revoked = await token_for(rt, "agent", "gone")
        await rt.revoke_token("gone")
        expiring = await token_for(rt, "agent", "brief", ttl=60)
        raw, reply = await hello(path, expiring)
        assert isinstance(reply, p.Welcome)
        await raw.close()
        clock.now += 60
        for token in ("rl_token_not-a-real-one", "some garbage", revoked, expiring):
            raw, reply = await hello(path, token)
            assert isinstance(reply, p.ErrorReply), token
            assert reply.code == AUTH_TOKEN_REFUSED
            assert token not in reply.message  # a secret is never echoed
            assert await raw.reply() is None  # and the connection is closed
            await raw.close()


async def test_a_revoke_or_an_expiry_ends_an_open_connections_rights(tmp_path: Path) -> None:
    path = tmp_path / "sock" / "s.sock"
    clock = WallClock()
    async with served(path, clock) as rt:
        revoked = await token_for(rt, "reader", "soon-revoked")
        expiring = await token_for(rt, "reader", "soon-expired", ttl=30)
        async with (
            open_client(path, auth_token=revoked) as first,
            open_client(path, auth_token=expiring) as second,
        ):
            await first.status()
            await second.status()
            await rt.revoke_token("soon-revoked")
            clock.now += 30
            for client, why in ((first, "revoked"), (second, "expired")):
                error = await refused(client.status())
                assert error.code == AUTH_TOKEN_REFUSED
                assert why in error.message


async def test_a_connection_that_is_not_local_must_authenticate() -> None:
    async with open_runtime() as rt, trio.open_nursery() as nursery:
        agent = await token_for(rt, "agent")
        # A plaintext loopback TCP listener: a connection over it is not the local operator.
        server: SocketServer = await nursery.start(
            lambda task_status=trio.TASK_STATUS_IGNORED: serve_socket(
                rt,
                None,
                listen=[ServerAddress.parse("tcp+plaintext://127.0.0.1:0")],
                task_status=task_status,
            )
        )
        address = ServerAddress.parse(server.urls[0])
        raw = Raw(await trio.open_tcp_stream(address.host, address.port))
        await raw.send(p.Hello(id=1, versions=[1], auth_token=None))
        reply = await raw.reply()
        assert isinstance(reply, p.ErrorReply)
        assert reply.code == AUTH_TOKEN_REFUSED
        await raw.close()
        async with open_client(address, auth_token=agent) as client:
            task = await client.create_task("from afar")
            error = await refused(client.pause_scheduler())
            assert error.code == PERMISSION_DENIED
        assert task.title == "from afar"
        server.shutdown()
        await server.wait_stopped()
        nursery.cancel_scope.cancel()


async def test_the_local_socket_without_a_token_is_still_the_operator(tmp_path: Path) -> None:
    path = tmp_path / "sock" / "s.sock"
    async with served(path) as rt, open_client(path, auth_token="") as client:
        await client.pause_scheduler()
        issued, secret = await client.create_token(name="ci", role="agent")
        assert secret.startswith("rl_token_")
        assert issued.role == "agent"
        listed = await client.list_tokens()
        assert [t.name for t in listed] == ["ci"]
        assert secret not in repr(listed)
        assert rt.status().last_event_seq > 0


# ---------------------------------------------------------- tokens and sessions
async def test_an_agent_token_acts_only_with_the_sessions_it_opened(tmp_path: Path) -> None:
    path = tmp_path / "sock" / "s.sock"
    async with served(path) as rt:
        alice, bob = await token_for(rt, "agent", "alice"), await token_for(rt, "agent", "bob")
        operator = await token_for(rt, "operator", "ops")
        await rt.create_task("work", start=True)
        async with (
            open_client(path, auth_token=alice) as as_alice,
            open_client(path, auth_token=bob) as as_bob,
            open_client(path, auth_token=operator) as as_operator,
            open_client(path, auth_token="") as local,
        ):
            session, alice_session = await as_alice.open_session(agent="alice")
            assert session.token_id is not None
            assert rt.get_session(session.id).token_id == session.token_id
            claim = await as_alice.claim_next(token=alice_session)
            # Bob presents Alice's session token: refused, and nothing changed.
            for attempt in (
                as_bob.heartbeat(claim.run.id, token=alice_session),
                as_bob.complete(claim.run.id, token=alice_session),
                as_bob.stop_session(session.id),
                as_bob.open_session(agent="child", parent=session.id),
            ):
                error = await refused(attempt)
                assert error.code == PERMISSION_DENIED
                assert "bob" in error.message
            assert rt.get_run(claim.run.id).status == "claimed"
            # A session the local operator opened carries no token: no agent token may use it.
            _, local_session = await local.open_session(agent="local")
            error = await refused(as_alice.whoami(token=local_session))
            assert error.code == PERMISSION_DENIED
            # An operator token, like the local socket, acts with any session.
            await as_operator.heartbeat(claim.run.id, token=alice_session)
            await local.heartbeat(claim.run.id, token=alice_session)
            done = await as_alice.complete(claim.run.id, token=alice_session)
            assert done.status == "completed"


# --------------------------------------------------------------------- the audit
async def test_writes_are_stamped_with_the_tokens_name(tmp_path: Path) -> None:
    path = tmp_path / "sock" / "s.sock"
    async with served(path) as rt:
        agent = await token_for(rt, "agent", "builder")
        operator = await token_for(rt, "operator", "oncall")
        async with (
            open_client(path, auth_token=agent) as as_agent,
            open_client(path, auth_token=operator) as as_operator,
        ):
            task = await as_agent.create_task("audited", start=True)
            session, secret = await as_agent.open_session(agent="builder-1")
            claim = await as_agent.claim_next(token=secret)
            await as_operator.force_release(claim.run.id, reason="rebalance")
        await rt.settled()
        events = {e.kind: e for e in rt.history.recent(100)}
        assert events["task_created"].actor == Actor(kind="token", ref="builder")
        assert events["task_created"].task_id == task.id
        # A session's own writes keep the session as actor; the origin names the token.
        assert events["run_claimed"].actor == Actor(kind="agent_session", ref=session.id)
        origin = events["run_claimed"].origin
        assert origin is not None
        assert origin.ref == "token:builder"
        assert events["run_force_released"].actor == Actor(kind="token", ref="oncall")


def test_clients_present_runlease_token_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from runlease.client import Client
    from runlease.client_common import resolve_auth_token

    monkeypatch.setenv("RUNLEASE_TOKEN", "rl_token_from-env")
    assert resolve_auth_token(None) == "rl_token_from-env"
    assert resolve_auth_token("rl_token_given") == "rl_token_given"
    assert resolve_auth_token("") is None
    assert Client("/nowhere.sock").auth_token == "rl_token_from-env"
    monkeypatch.delenv("RUNLEASE_TOKEN")
    assert Client("/nowhere.sock").auth_token is None
