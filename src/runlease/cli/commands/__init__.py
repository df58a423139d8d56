"""Every ``runlease`` command, by the words that name it, and where its function lives.

This table is the one list of commands, in the order they are offered. The fast path
(:mod:`runlease.cli.fast`) looks a command up here and imports only the module that
defines it; the cyclopts application (:mod:`runlease.cli.app`, for help and unusual
command lines) registers them all. A new command is a function in one of these modules,
annotated with ``Param`` (see :mod:`runlease.cli.params`), plus one line here. A group's
own name may be a command too (``events``): it runs when no other word of the group follows.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Final

from runlease.paths import ENV_SESSION_TOKEN

APP_HELP: Final = (
    "Hand task runs to agent sessions under leases.\n\n"
    "Start a server with runlease serve, open a session with runlease session open, "
    "then claim work with runlease task next."
)

# Command groups and their help, in the order they are registered.
GROUPS: Final[dict[str, str]] = {
    "session": "Open, stop and list agent sessions.",
    "task": (
        "Create and inspect tasks; claim and finish runs. The commands next, claim, "
        "heartbeat, complete, fail, release and block act for the session whose token is given in "
        f"{ENV_SESSION_TOKEN} (or --session-token, which other users can see in the process "
        "list)."
    ),
    "run": (
        "Operator controls on runs: cancel, retry, recover, force release or fail, inspect; "
        "claim takes one chosen run for the session."
    ),
    "scheduler": (
        "Pause, resume or drain the scheduler; see its status and the backlog of queued runs."
    ),
    "events": (
        "The event history: events filtered by task, run, session or type, one event by its "
        "sequence (get), or --follow to stream them live."
    ),
    "hook": "The delivery log of the hooks given to serve: list deliveries, retry a failed one.",
    "token": (
        "Access tokens: make one for a role (reader, agent, operator), list them, revoke one."
    ),
}

_SERVER = "runlease.cli.commands.server"
_SESSIONS = "runlease.cli.commands.sessions"
_TASKS = "runlease.cli.commands.tasks"
_GRAPH = "runlease.cli.commands.graph"
_CLAIMS = "runlease.cli.commands.claims"
_RUNS = "runlease.cli.commands.runs"
_SCHEDULER = "runlease.cli.commands.scheduler"
_EVENTS = "runlease.cli.commands.events"
_HOOKS = "runlease.cli.commands.hooks"
_TOKENS = "runlease.cli.commands.tokens"
_COMPLETION = "runlease.cli.commands.completion"

# The words of a command -> "module:function".
COMMANDS: Final[dict[tuple[str, ...], str]] = {
    ("serve",): f"{_SERVER}:serve",
    ("status",): f"{_SERVER}:status",
    ("session", "open"): f"{_SESSIONS}:session_open",
    ("session", "stop"): f"{_SESSIONS}:session_stop",
    ("session", "list"): f"{_SESSIONS}:session_list",
    ("task", "create"): f"{_TASKS}:task_create",
    ("task", "start"): f"{_TASKS}:task_start",
    ("task", "reopen"): f"{_TASKS}:task_reopen",
    ("task", "show"): f"{_TASKS}:task_show",
    ("task", "list"): f"{_TASKS}:task_list",
    ("task", "events"): f"{_TASKS}:task_events",
    ("task", "next"): f"{_CLAIMS}:task_next",
    ("task", "claim"): f"{_CLAIMS}:task_claim",
    ("task", "heartbeat"): f"{_CLAIMS}:task_heartbeat",
    ("task", "complete"): f"{_CLAIMS}:task_complete",
    ("task", "fail"): f"{_CLAIMS}:task_fail",
    ("task", "release"): f"{_CLAIMS}:task_release",
    ("task", "block"): f"{_CLAIMS}:task_block",
    ("task", "publish"): f"{_GRAPH}:task_publish",
    ("task", "approve"): f"{_GRAPH}:task_approve",
    ("task", "reject"): f"{_GRAPH}:task_reject",
    ("task", "update"): f"{_GRAPH}:task_update",
    ("task", "delete"): f"{_GRAPH}:task_delete",
    ("task", "depend"): f"{_GRAPH}:task_depend",
    ("task", "undepend"): f"{_GRAPH}:task_undepend",
    ("task", "pause"): f"{_GRAPH}:task_pause",
    ("task", "resume"): f"{_GRAPH}:task_resume",
    ("task", "cancel"): f"{_GRAPH}:task_cancel",
    ("task", "unblock"): f"{_GRAPH}:task_unblock",
    ("task", "checkpoint"): f"{_TASKS}:task_checkpoint",
    ("task", "stuck"): f"{_TASKS}:task_stuck",
    ("task", "steal"): f"{_CLAIMS}:task_steal",
    ("task", "timeline"): f"{_TASKS}:task_timeline",
    ("task", "inspect"): f"{_TASKS}:task_inspect",
    ("task", "context"): f"{_CLAIMS}:task_context",
    ("run", "inspect"): f"{_RUNS}:run_inspect",
    ("run", "claim"): f"{_CLAIMS}:run_claim",
    ("run", "cancel"): f"{_RUNS}:run_cancel",
    ("run", "retry"): f"{_RUNS}:run_retry",
    ("run", "recover"): f"{_RUNS}:run_recover",
    ("run", "force-release"): f"{_RUNS}:run_force_release",
    ("run", "force-fail"): f"{_RUNS}:run_force_fail",
    ("run", "bulk-force-release"): f"{_RUNS}:run_bulk_force_release",
    ("run", "bulk-force-fail"): f"{_RUNS}:run_bulk_force_fail",
    ("scheduler", "pause"): f"{_SCHEDULER}:scheduler_pause",
    ("scheduler", "resume"): f"{_SCHEDULER}:scheduler_resume",
    ("scheduler", "drain"): f"{_SCHEDULER}:scheduler_drain",
    ("scheduler", "status"): f"{_SCHEDULER}:scheduler_status",
    ("scheduler", "backlog"): f"{_SCHEDULER}:scheduler_backlog",
    ("events",): f"{_EVENTS}:events",
    ("events", "get"): f"{_EVENTS}:events_get",
    ("hook", "list"): f"{_HOOKS}:hook_list",
    ("hook", "retry"): f"{_HOOKS}:hook_retry",
    ("token", "create"): f"{_TOKENS}:token_create",
    ("token", "list"): f"{_TOKENS}:token_list",
    ("token", "revoke"): f"{_TOKENS}:token_revoke",
    ("completion",): f"{_COMPLETION}:completion",
    ("top",): "runlease.cli.commands.top:top",
}

Command = Callable[..., int]

# Commands whose options may also come from a TOML file (--config or $RUNLEASE_CONFIG): the
# cyclopts application reads their command lines, the file's values beneath the flags.
CONFIGURABLE: Final[frozenset[tuple[str, ...]]] = frozenset({("serve",)})


def load(words: tuple[str, ...]) -> Command:
    """Import the function of a command (``KeyError`` for an unknown one)."""
    module, _, name = COMMANDS[words].partition(":")
    function: Command = getattr(importlib.import_module(module), name)
    return function
