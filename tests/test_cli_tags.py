"""End to end: tags, ``task list`` filters and paging, and tag-filtered claims (``task next
--tag``, ``--next --tag``) against a real server."""

from __future__ import annotations

from typing import Any

from cli_helpers import Cli, claim, queued_task


def listed(cli: Cli, ws: str, *args: str, token: str | None = None) -> list[str]:
    out = cli.ok("task", "list", "--workspace", ws, *args, token=token)
    return [t["title"] for t in out["tasks"]]


def test_tags_are_set_at_create_and_changed_by_update(cli: Cli, ws: str) -> None:
    task: dict[str, Any] = cli.ok(
        "task", "create", "t", "--workspace", ws, "--tag", "ops", "--tag", "backend"
    )["task"]
    assert task["tags"] == ["backend", "ops"]
    out = cli.ok("task", "update", task["id"], "--add-tag", "urgent", "--remove-tag", "ops")
    assert out["task"]["tags"] == ["backend", "urgent"]
    out = cli.ok("task", "update", task["id"], "--tag", "only")
    assert out["task"]["tags"] == ["only"]
    cli.fails("task", "update", task["id"], "--tag", "a", "--add-tag", "b", code="USAGE", exit=2)
    cli.fails(
        "task", "create", "bad", "--tag", "two words", code="INVALID_INPUT", exit=3
    )  # fmt: skip
    assert cli.ok("task", "show", task["id"])["task"]["tags"] == ["only"]


def test_list_filters_each_narrow_the_answer(cli: Cli, ws: str) -> None:
    _, token = cli.session("finder", "--capability", "py")
    _, other_token = cli.session("other")
    root = cli.ok("task", "create", "Root of the tree", "--workspace", ws)["task"]
    child = cli.ok(
        "task", "create", "child", "--workspace", ws, "--parent", root["id"], "--tag", "red",
        "--description", "Touches the PARSER", "--start",
    )["task"]  # fmt: skip
    cli.ok("task", "create", "grandchild", "--workspace", ws, "--parent", child["id"])
    queued_task(cli, ws, "needs py", "--capability", "py", "--priority", "high", "--tag", "red")
    queued_task(cli, ws, "assigned", "--owner-agent", "other", "--tag", "blue")
    queued_task(cli, ws, "plain parser work", "--tag", "red", "--tag", "blue")

    everything = ["Root of the tree", "child", "grandchild", "needs py", "assigned"]
    assert listed(cli, ws) == [*everything, "plain parser work"]
    assert listed(cli, ws, "--tag", "red") == ["child", "needs py", "plain parser work"]
    assert listed(cli, ws, "--tag", "red", "--tag", "blue") == ["plain parser work"]
    assert listed(cli, ws, "--search", "parser") == ["child", "plain parser work"]
    assert listed(cli, ws, "--priority", "high") == ["needs py"]
    assert listed(cli, ws, "--owner", "other") == ["assigned"]
    assert listed(cli, ws, "--parent", root["id"]) == ["child"]
    assert listed(cli, ws, "--root", root["id"]) == ["Root of the tree", "child", "grandchild"]
    assert listed(cli, ws, "--status", "pending") == ["Root of the tree", "grandchild"]
    # What each session could claim right now: capabilities and assignees decide.
    assert listed(cli, ws, "--available", token=token) == [
        "child",
        "needs py",
        "plain parser work",
    ]
    assert listed(cli, ws, "--available", token=other_token) == [
        "child",
        "assigned",
        "plain parser work",
    ]
    cli.fails("task", "list", "--available", code="AUTONOMY_SESSION_REQUIRED", exit=5)
    cli.fails("task", "list", "--root", "tsk_missing", code="TASK_NOT_FOUND", exit=4)

    # Paging: --limit gives one page and next_after, --after continues it.
    seen: list[str] = []
    after: list[str] = []
    while True:
        out = cli.ok("task", "list", "--workspace", ws, "--limit", "4", *after)
        seen += [t["title"] for t in out["tasks"]]
        if out["next_after"] is None:
            break
        after = ["--after", out["next_after"]]
    assert seen == [*everything, "plain parser work"]


def test_task_next_and_next_claim_filter_by_tag(cli: Cli, ws: str) -> None:
    _, token = cli.session("tagged")
    queued_task(cli, ws, "urgent untagged", "--priority", "urgent")
    gpu = queued_task(cli, ws, "gpu job", "--tag", "gpu")
    gpu_two = queued_task(cli, ws, "second gpu job", "--tag", "gpu", "--tag", "big")
    claimed = claim(cli, token, ws, "--tag", "gpu", "--tag", "big")
    assert claimed["task"]["id"] == gpu_two["id"]
    cli.fails(
        "task", "complete", claimed["run"]["id"], "--tag", "gpu", code="USAGE", exit=2,
        token=token,
    )  # fmt: skip
    out = cli.ok(
        "task", "complete", claimed["run"]["id"], "--next", "--workspace", ws, "--tag", "gpu",
        token=token,
    )  # fmt: skip
    assert out["next"]["task"]["id"] == gpu["id"]
    out = cli.ok(
        "task", "release", out["next"]["run"]["id"], "--next", "--workspace", ws,
        "--tag", "none-such", token=token,
    )  # fmt: skip
    assert out["next"] is None
    assert out["no_claim"]["code"] == "NO_CLAIMABLE_RUN"
    assert "none-such" in out["no_claim"]["message"]
    assert claim(cli, token, ws)["task"]["title"] == "urgent untagged"
