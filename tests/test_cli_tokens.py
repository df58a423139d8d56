"""``runlease token`` and ``--token`` / RUNLEASE_TOKEN against a real ``runlease serve``."""

from __future__ import annotations

from dataclasses import replace

from cli_helpers import Cli


def with_token(cli: Cli, secret: str) -> Cli:
    return replace(cli, env={**cli.env, "RUNLEASE_TOKEN": secret}, outputs=cli.outputs)


def test_create_list_revoke_and_refusals_exit_5(cli: Cli) -> None:
    made = cli.ok("token", "create", "--role", "reader", "--name", "cli-reader", "--ttl", "3600")
    secret = made["token"]
    assert secret.startswith("rl_token_")
    assert made["access_token"]["role"] == "reader"
    assert made["access_token"]["expires_at"] is not None
    # Listed without its secret (only its hash is kept).
    listed = cli.ok("token", "list")
    mine = [t for t in listed["tokens"] if t["name"] == "cli-reader"]
    assert len(mine) == 1
    assert secret not in str(listed)

    reader = with_token(cli, secret)
    assert "counts" in reader.ok("status")
    message = reader.fails("scheduler", "pause", code="PERMISSION_DENIED", exit=5)
    assert "operator" in message
    assert "reader" in message
    # --token wins over nothing in the environment, the same way.
    result = cli.run("--token", secret, "task", "create", "nope")
    assert result.code == 5, str(result)
    assert result.json["error"]["code"] == "PERMISSION_DENIED"

    revoked = cli.ok("token", "revoke", "cli-reader")
    assert revoked["access_token"]["revoked_at"] is not None
    reader.fails("status", code="AUTH_TOKEN_REFUSED", exit=5)
    with_token(cli, "rl_token_wrong").fails("status", code="AUTH_TOKEN_REFUSED", exit=5)
    cli.fails("token", "revoke", "cli-reader", code="TOKEN_NOT_FOUND", exit=4)


def test_an_agent_token_works_a_task_through_the_cli(cli: Cli, ws: str) -> None:
    secret = cli.ok("token", "create", "--role", "agent", "--name", f"agent-{ws}")["token"]
    agent = with_token(cli, secret)
    agent.ok("task", "create", "tokened work", "--workspace", ws, "--start")
    _, session_token = agent.session("tokened")
    claim = agent.ok("task", "next", "--workspace", ws, token=session_token)
    done = agent.ok("task", "complete", claim["run"]["id"], token=session_token)
    assert done["run"]["status"] == "completed"
    agent.fails("task", "delete", claim["task"]["id"], code="PERMISSION_DENIED", exit=5)
