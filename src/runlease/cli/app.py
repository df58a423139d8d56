"""The ``runlease`` command: a cyclopts app over the synchronous socket client.

Every command returns an exit code: 0 when it worked, else the code of the error's class
(see :mod:`runlease.errors`): 2 usage, 3 invalid input, 4 not found or nothing to claim,
5 lease or session refusal, 6 server unavailable, 1 anything unexpected.

``task complete|fail|release RUN_ID --next`` finishes the run and claims the session's next
one in a single request. Its exit code is the finish's: 0 once the finish is recorded, even
when nothing could be claimed, because the finish cannot be taken back and a script must
not retry it. The JSON then says what the claim part did: ``{"run": <finished run>, "next":
<same shape as task next> | null, "no_claim": {"code", "message"} | null}``, where
``no_claim.code`` is NO_CLAIMABLE_RUN when the queue had nothing for the session (also after
``--timeout``). A refused finish exits with its own code (5 for AUTONOMY_*) and claims
nothing.

Operator commands (``task publish|approve|reject|update|delete|depend|undepend|pause|
resume|cancel``, the ``run`` and ``scheduler`` groups) act as the operator; ``task steal``
acts for the session of the token and ``task checkpoint`` does when a token is given. The
server stamps every write with origin ``cli``. ``run bulk-force-release|bulk-force-fail``
exit 0 once the request is accepted: ``items`` holds one outcome per run (``ok``, and
``code``/``message`` for a refused one), with ``ok`` and ``failed`` counts.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from cyclopts import App, CycloptsError, Parameter

from runlease.cli.output import Output, default_output, emit, emit_error, emit_event, plain
from runlease.client import Client
from runlease.core.model import Finished, Ownership, Priority, TaskStatus
from runlease.errors import USAGE, InvalidInput, RunleaseError, UsageError
from runlease.paths import ENV_SESSION_TOKEN, ENV_SOCKET, default_data_dir, default_socket_path
from runlease.protocol import CLI_CLIENT_NAME


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("runlease")
    except Exception:
        return "0+unknown"


app = App(
    name="runlease",
    help=(
        "Hand task runs to agent sessions under leases.\n\n"
        "Start a server with `runlease serve`, open a session with `runlease session open`, "
        "then claim work with `runlease task next`."
    ),
    version=_version,
    default_parameter=Parameter(negative_iterable=()),
)
session_app = App(name="session", help="Open, stop and list agent sessions.")
task_app = App(
    name="task",
    help=(
        "Create and inspect tasks; claim and finish runs. The commands next, heartbeat, "
        "complete, fail, release and block act for the session whose token is given in "
        f"{ENV_SESSION_TOKEN} (or --session-token, which other users can see in the process "
        "list)."
    ),
)
run_app = App(
    name="run",
    help="Operator controls on runs: cancel, retry, force release or fail, inspect.",
)
scheduler_app = App(
    name="scheduler",
    help="Pause, resume or drain the scheduler; see its status and the backlog of queued runs.",
)
app.command(session_app)
app.command(task_app)
app.command(run_app)
app.command(scheduler_app)


# How long a command waits for the server's answer before calling it unavailable (a waiting
# `task next` adds its own --timeout; without one it waits as long as it takes).
REPLY_TIMEOUT = 60.0


@dataclass
class Globals:
    socket: Path | None = None
    output: Output = "json"
    session_token: str | None = None

    def client(self) -> Client:
        return Client(
            self.socket,
            session_token=self.session_token,
            reply_timeout=REPLY_TIMEOUT,
            client_name=CLI_CLIENT_NAME,
        ).connect()


GLOBALS = Globals()


@app.meta.default
def _launcher(
    *tokens: Annotated[str, Parameter(show=False, allow_leading_hyphen=True)],
    socket: Annotated[
        Path | None,
        Parameter(env_var=ENV_SOCKET, help="The server's Unix socket.", group="Global options"),
    ] = None,
    output: Annotated[
        Literal["json", "table"] | None,
        Parameter(
            name=["--output", "-o"],
            help="json, or table for people (default: table on a terminal, else json).",
            group="Global options",
        ),
    ] = None,
    session_token: Annotated[
        str | None,
        Parameter(
            env_var=ENV_SESSION_TOKEN,
            help=(
                "The session's bearer token (rl_session_...), for session-scoped commands. "
                f"Prefer the {ENV_SESSION_TOKEN} environment variable: a token given on the "
                "command line can be read by other users of this machine (ps, /proc/PID/cmdline)."
            ),
            group="Global options",
        ),
    ] = None,
) -> int:
    GLOBALS.socket = socket
    GLOBALS.output = output or default_output()
    GLOBALS.session_token = session_token or None
    command, bound, _ = app.parse_args(tokens)
    try:
        result = command(*bound.args, **bound.kwargs)
    except RunleaseError as exc:
        emit_error(exc.code, exc.message, GLOBALS.output)
        return exc.exit_code
    return int(result or 0)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: run the command line and exit with its code."""
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    tokens = list(sys.argv[1:] if argv is None else argv)
    try:
        result = app.meta(
            tokens, exit_on_error=False, print_error=False, result_action="return_value"
        )
    except CycloptsError as exc:
        output = _output_from_argv(tokens) or default_output()
        message = " ".join(str(exc).split()) or type(exc).__name__
        emit_error(USAGE, f"{message} (see runlease --help)", output)
        return UsageError.exit_code
    except KeyboardInterrupt:
        return 130
    return result if isinstance(result, int) else 0


def _output_from_argv(tokens: list[str]) -> Output | None:
    """The -o/--output value, read by hand when the command line did not parse."""
    for index, token in enumerate(tokens):
        value: str | None = None
        if token in ("-o", "--output") and index + 1 < len(tokens):
            value = tokens[index + 1]
        elif token.startswith("--output="):
            value = token.split("=", 1)[1]
        elif token.startswith("-o") and len(token) > 2:
            value = token[2:]
        if value == "json":
            return "json"
        if value == "table":
            return "table"
    return None


def _json_arg(text: str | None, flag: str, *, object_only: bool = False) -> Any:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"{flag} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    if object_only and not isinstance(value, dict):
        raise InvalidInput(f'{flag} must be a JSON object, like \'{{"key": "value"}}\'')
    return value


@contextlib.contextmanager
def _client() -> Iterator[Client]:
    client = GLOBALS.client()
    try:
        yield client
    finally:
        client.close()


# --------------------------------------------------------------------------- serve & status
@app.command
def serve(
    *,
    data_dir: Annotated[Path | None, Parameter(help="Where state is kept.")] = None,
    durability: Annotated[
        Literal["durable", "relaxed"],
        Parameter(help="durable: sync every commit to disk; relaxed: survive process crashes."),
    ] = "durable",
    workspace_root: Annotated[
        list[str] | None,
        Parameter(
            help="WORKSPACE=DIR: where completion-contract artifacts of that workspace's tasks "
            "are checked; =DIR (empty workspace) for global tasks. Repeatable.",
            negative=(),
        ),
    ] = None,
    allow_agent_force: Annotated[
        bool,
        Parameter(
            help="Let sessions (agents) use the operator's force operations: steal --force, "
            "run force-release / force-fail and their bulk forms. Off by default: those are "
            "refused to a session with FORBIDDEN_OPERATOR_ACTION.",
            negative=(),
        ),
    ] = False,
    fresh_store: Annotated[
        bool,
        Parameter(
            help="Start a new, empty store where the data dir's database is missing or "
            "empty, discarding the old store's identity. Refused if the database holds data.",
            negative=(),
        ),
    ] = False,
    max_connections: Annotated[
        int,
        Parameter(
            help="Serve at most this many clients at once; more are refused with "
            "SERVER_BUSY. Also kept 64 below the open-file limit (ulimit -n)."
        ),
    ] = 1024,
    handshake_timeout: Annotated[
        float,
        Parameter(
            help="Close, with CONNECTION_TIMEOUT, a connection that has not said hello "
            "within SECONDS."
        ),
    ] = 10.0,
    idle_timeout: Annotated[
        float,
        Parameter(
            help="Close, with CONNECTION_TIMEOUT, a connection with nothing in flight for "
            "SECONDS (a waiting claim, an event stream or a drain is never idle); 0: never."
        ),
    ] = 300.0,
    max_buffered_bytes: Annotated[
        int,
        Parameter(
            help="BYTES that frames still being received may declare across all clients; "
            "a frame that would exceed it is refused with SERVER_BUSY."
        ),
    ] = 64 * 1024 * 1024,
) -> int:
    """Run the server in the foreground until SIGINT or SIGTERM.

    The data directory defaults to $RUNLEASE_HOME, else $XDG_DATA_HOME/runlease, else
    ~/.local/share/runlease; the socket to --socket, else $RUNLEASE_SOCKET, else
    <data dir>/runlease.sock. Log lines go to stderr as JSON.
    """
    from runlease.runtime.serve import configure_logging, run_server
    from runlease.runtime.server import ServerLimits

    try:
        limits = ServerLimits(
            handshake_timeout=handshake_timeout,
            idle_timeout=idle_timeout,
            max_connections=max_connections,
            max_buffered_bytes=max_buffered_bytes,
        )
    except InvalidInput as exc:
        raise UsageError(exc.message.replace("_", "-")) from None

    directory = data_dir.expanduser() if data_dir is not None else default_data_dir()
    socket_path = GLOBALS.socket or default_socket_path(directory)
    roots: dict[str, str] = {}
    for item in workspace_root or ():
        workspace, sep, root = item.partition("=")
        if not sep or not root:
            raise UsageError(f"--workspace-root takes WORKSPACE=DIR, got {item!r}")
        roots[workspace] = str(Path(root).expanduser().resolve())
    configure_logging()
    run_server(
        socket_path,
        data_dir=directory,
        durability=durability,
        workspace_roots=roots,
        allow_agent_force=allow_agent_force,
        fresh_store=fresh_store,
        limits=limits,
    )
    return 0


@app.command
def status() -> int:
    """Is the server up, has recovery finished, and how much is in it."""
    with _client() as client:
        info = client.status()
    document = plain(info)
    emit(
        {
            "server": {
                "up": True,
                "version": document["version"],
                "protocol": document["protocol"],
                "pid": document["pid"],
                "socket": document["socket"],
                "started_at": document["started_at"],
                "uptime_seconds": round(info.uptime_seconds, 3),
                "connections": document["connections"],
            },
            "recovered": info.recovered,
            "durability": info.durability,
            "counts": {
                "tasks": info.tasks,
                "queued_runs": info.queued_runs,
                "leased_runs": info.leased_runs,
                "live_sessions": info.live_sessions,
                "waiting_claimers": info.waiting_claimers,
                "last_event_seq": info.last_event_seq,
            },
        },
        GLOBALS.output,
    )
    return 0


# --------------------------------------------------------------------------------- sessions
@session_app.command(name="open")
def session_open(
    *,
    agent: Annotated[str, Parameter(help="Who the session works for.")] = "agent",
    parent: Annotated[str | None, Parameter(help="A parent SESSION_ID.")] = None,
    ttl: Annotated[float | None, Parameter(help="Stop the session after SECONDS.")] = None,
    capability: Annotated[
        list[str] | None, Parameter(help="A capability the session offers (repeatable).")
    ] = None,
) -> int:
    """Open a session and print its id and its token (shown only this once)."""
    with _client() as client:
        session, token = client.open_session(
            agent=agent, parent=parent, ttl=ttl, capabilities=capability or []
        )
    emit(
        {"session_id": session.id, "session_token": token, "session": plain(session)},
        GLOBALS.output,
    )
    if GLOBALS.output == "table":
        sys.stderr.write(
            f"Keep the token: it is shown only once.\n  export {ENV_SESSION_TOKEN}={token}\n"
        )
    return 0


@session_app.command(name="stop")
def session_stop(
    session_id: str,
    /,
    *,
    reason: Annotated[str | None, Parameter(help="Why it stops.")] = None,
) -> int:
    """Stop a session: its lease goes back to the queue, its children stop too.

    Parameters
    ----------
    session_id
        The session to stop.
    """
    with _client() as client:
        released = client.stop_session(session_id, reason=reason)
    emit(plain(released), GLOBALS.output)
    return 0


@session_app.command(name="list")
def session_list(
    *, live: Annotated[bool, Parameter(help="Only sessions that are still live.")] = False
) -> int:
    """List sessions, oldest first."""
    with _client() as client:
        sessions = client.list_sessions(live_only=live)
    emit({"sessions": plain(sessions)}, GLOBALS.output)
    return 0


# ------------------------------------------------------------------------------------ tasks
@task_app.command(name="create")
def task_create(
    title: str,
    /,
    *,
    description: str = "",
    priority: Priority = "medium",
    workspace: Annotated[str | None, Parameter(help="Scope the task to a workspace.")] = None,
    max_attempts: Annotated[int | None, Parameter(help="Runs allowed, 1 to 10.")] = None,
    capability: Annotated[
        list[str] | None, Parameter(help="A capability a session needs (repeatable).")
    ] = None,
    metadata: Annotated[str | None, Parameter(help="A JSON object kept with the task.")] = None,
    start: Annotated[bool, Parameter(help="Also enqueue its first run.")] = False,
    parent: Annotated[str | None, Parameter(help="Make it a child of this TASK_ID.")] = None,
    preferred_capability: Annotated[
        list[str] | None,
        Parameter(help="A capability to prefer among equal priorities (repeatable)."),
    ] = None,
    owner_session: Annotated[
        str | None, Parameter(help="Only this SESSION_ID may claim it.")
    ] = None,
    owner_agent: Annotated[
        str | None, Parameter(help="Only sessions of this agent name (a pool) may claim it.")
    ] = None,
    draft: Annotated[
        bool, Parameter(negative=(), help="Create it as a draft (publish it later).")
    ] = False,
    approval: Annotated[
        Literal["none", "manual"],
        Parameter(help="manual: its run is enqueued only once approved."),
    ] = "none",
    artifact: Annotated[
        list[str] | None,
        Parameter(
            help="A PATH (relative to the workspace root) required to complete (repeatable)."
        ),
    ] = None,
) -> int:
    """Create a task.

    Parameters
    ----------
    title
        What the task is.
    """
    meta = _json_arg(metadata, "--metadata", object_only=True)
    owner = _owner(owner_session, owner_agent)
    with _client() as client:
        task = client.create_task(
            title,
            description=description,
            priority=priority,
            workspace=workspace,
            max_attempts=max_attempts,
            capabilities=capability or [],
            metadata=meta,
            start=start,
            parent=parent,
            preferred_capabilities=preferred_capability or [],
            owner=owner,
            draft=draft,
            approval_policy=approval,
            required_artifacts=artifact or [],
        )
    emit({"task": plain(task)}, GLOBALS.output)
    return 0


def _owner(session: str | None, agent: str | None) -> Ownership | None:
    if session is not None and agent is not None:
        raise UsageError("give --owner-session or --owner-agent, not both")
    if session is not None:
        return Ownership(kind="agent_session", ref=session)
    if agent is not None:
        return Ownership(kind="pool", ref=agent)
    return None


@task_app.command(name="start")
def task_start(
    task_id: str,
    /,
    *,
    idempotency_key: Annotated[
        str | None, Parameter(help="Repeat with the same KEY and get the same run back.")
    ] = None,
) -> int:
    """Enqueue a run of a task (its next attempt).

    Parameters
    ----------
    task_id
        The task to start.
    """
    with _client() as client:
        run = client.start_task(task_id, idempotency_key=idempotency_key)
    emit({"run": plain(run)}, GLOBALS.output)
    return 0


@task_app.command(name="show")
def task_show(task_id: str, /) -> int:
    """Show a task with its full history: runs, checkpoints, events, graph edges, pause.

    Parameters
    ----------
    task_id
        The task to show.
    """
    with _client() as client:
        detail = client.show_task(task_id)
    document = plain(detail)
    document.pop("id", None)
    emit(document, GLOBALS.output)
    return 0


@task_app.command(name="list")
def task_list(
    *,
    status: Annotated[TaskStatus | None, Parameter(help="Only tasks in this status.")] = None,
    workspace: Annotated[str | None, Parameter(help="Only tasks of this workspace.")] = None,
    limit: Annotated[int | None, Parameter(help="At most this many tasks.")] = None,
) -> int:
    """List tasks in creation order."""
    with _client() as client:
        tasks = client.list_tasks(status=status, workspace=workspace, limit=limit)
    emit({"tasks": plain(tasks)}, GLOBALS.output)
    return 0


@task_app.command(name="events")
def task_events(
    task_id: str,
    /,
    *,
    follow: Annotated[
        bool, Parameter(help="Keep printing new events (one JSON object per line).")
    ] = False,
    after_seq: Annotated[int, Parameter(help="Only events after this sequence number.")] = 0,
) -> int:
    """Show a task's events; with --follow, keep streaming them until interrupted.

    Parameters
    ----------
    task_id
        The task whose events to show.
    """
    with _client() as client:
        client.show_task(task_id)  # a clear TASK_NOT_FOUND instead of an empty stream
        if not follow:
            events = client.events(task_id=task_id, after_seq=after_seq)
            emit({"events": plain(events)}, GLOBALS.output)
            return 0
        with client.follow_events(task_id=task_id, after_seq=after_seq) as stream:
            for event in stream:
                emit_event(plain(event), GLOBALS.output)
    return 0


# ----------------------------------------------------------------------- session-scoped runs
@task_app.command(name="next")
def task_next(
    *,
    wait: Annotated[bool, Parameter(help="Wait for a claimable run to arrive.")] = False,
    timeout: Annotated[
        float | None, Parameter(help="Give up waiting after SECONDS (implies --wait).")
    ] = None,
    lease_seconds: Annotated[
        float | None, Parameter(help="Lease length; 0 or omitted means 300, capped at 24 h.")
    ] = None,
    workspace: Annotated[str | None, Parameter(help="Only runs of this workspace.")] = None,
    scope: Annotated[
        Literal["global", "workspace"] | None,
        Parameter(help="global: only tasks without a workspace; workspace: only those with one."),
    ] = None,
    priority_min: Annotated[
        Priority | None, Parameter(help="Skip runs of a lower priority than this.")
    ] = None,
) -> int:
    """Claim the best queued run this session may take.

    Exits 4 with NO_CLAIMABLE_RUN when there is none (after the timeout when waiting).
    """
    waiting = wait or timeout is not None
    with _client() as client, _spinner(waiting):
        claim = client.claim_next(
            wait=waiting,
            timeout=timeout,
            lease_seconds=lease_seconds,
            workspace=workspace,
            scope=scope,
            priority_min=priority_min,
        )
    emit(
        {"task": plain(claim.task), "run": plain(claim.run), "lease": plain(claim.lease)},
        GLOBALS.output,
    )
    return 0


# Options shared by complete, fail and release: claim the next run in the same request.
NextFlag = Annotated[
    bool,
    Parameter(
        name="--next",
        negative=(),
        help="Then claim the session's next run in the same request (exit 0 once the "
        "finish is recorded, even if nothing is claimable: see next / no_claim).",
        group="Claim next",
    ),
]
NextWait = Annotated[
    bool,
    Parameter(help="With --next: wait for a claimable run to arrive.", group="Claim next"),
]
NextTimeout = Annotated[
    float | None,
    Parameter(
        help="With --next: give up waiting after SECONDS (implies --wait).", group="Claim next"
    ),
]
NextLease = Annotated[
    float | None,
    Parameter(help="With --next: lease length of the new claim.", group="Claim next"),
]
NextWorkspace = Annotated[
    str | None, Parameter(help="With --next: only runs of this workspace.", group="Claim next")
]
NextScope = Annotated[
    Literal["global", "workspace"] | None,
    Parameter(
        help="With --next: global for tasks without a workspace, workspace for those with one.",
        group="Claim next",
    ),
]
NextPriorityMin = Annotated[
    Priority | None,
    Parameter(help="With --next: skip runs of a lower priority.", group="Claim next"),
]


@dataclass
class _NextOptions:
    wanted: bool
    wait: bool
    timeout: float | None
    lease_seconds: float | None
    workspace: str | None
    scope: Literal["global", "workspace"] | None = None
    priority_min: Priority | None = None

    @classmethod
    def of(
        cls,
        wanted: bool,
        wait: bool,
        timeout: float | None,
        lease_seconds: float | None,
        workspace: str | None,
        scope: Literal["global", "workspace"] | None = None,
        priority_min: Priority | None = None,
    ) -> _NextOptions:
        claim_options = (wait, timeout is not None, lease_seconds is not None, workspace, scope)
        if not wanted and (any(claim_options) or priority_min):
            raise UsageError(
                "--wait, --timeout, --lease-seconds, --workspace, --scope and --priority-min "
                "apply to the claim of --next; add --next"
            )
        return cls(
            wanted, wait or timeout is not None, timeout, lease_seconds, workspace, scope,
            priority_min,
        )  # fmt: skip

    def kwargs(self) -> dict[str, Any]:
        return {
            "wait": self.wait,
            "timeout": self.timeout,
            "lease_seconds": self.lease_seconds,
            "workspace": self.workspace,
            "scope": self.scope,
            "priority_min": self.priority_min,
        }


def _emit_finished(finished: Finished) -> int:
    claim = finished.claim
    emit(
        {
            "run": plain(finished.run),
            "next": None
            if claim is None
            else {"task": plain(claim.task), "run": plain(claim.run), "lease": plain(claim.lease)},
            "no_claim": None if finished.no_claim is None else plain(finished.no_claim),
        },
        GLOBALS.output,
    )
    # The finish is recorded whatever the claim part found: never invite a retry.
    return 0


@contextlib.contextmanager
def _spinner(waiting: bool) -> Iterator[None]:
    if not waiting or not _is_terminal(sys.stderr):
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status("waiting for a claimable run…"):
        yield


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


@task_app.command(name="heartbeat")
def task_heartbeat(
    run_id: str,
    /,
    *,
    lease_seconds: Annotated[
        float | None, Parameter(help="New lease length from now; 0 or omitted means 300.")
    ] = None,
) -> int:
    """Renew the session's lease on a run: lease_until = now + lease seconds.

    Parameters
    ----------
    run_id
        The run the session holds.
    """
    with _client() as client:
        beat = client.heartbeat(run_id, lease_seconds=lease_seconds)
    emit({"run": plain(beat.run), "lease": plain(beat.lease)}, GLOBALS.output)
    return 0


@task_app.command(name="complete")
def task_complete(
    run_id: str,
    /,
    *,
    result: Annotated[str | None, Parameter(help="A JSON result to keep with the run.")] = None,
    next_: NextFlag = False,
    wait: NextWait = False,
    timeout: NextTimeout = None,
    lease_seconds: NextLease = None,
    workspace: NextWorkspace = None,
    scope: NextScope = None,
    priority_min: NextPriorityMin = None,
) -> int:
    """Finish the session's run successfully.

    With --next, also claim the session's next run in the same request. Exit 0 once the run
    is completed, whether or not a run was claimed: "next" holds the claim (as task next
    prints it), or null with "no_claim" saying why (NO_CLAIMABLE_RUN).

    Parameters
    ----------
    run_id
        The run the session holds.
    """
    value = _json_arg(result, "--result")
    after = _NextOptions.of(next_, wait, timeout, lease_seconds, workspace, scope, priority_min)
    with _client() as client:
        if after.wanted:
            with _spinner(after.wait):
                finished = client.complete_and_next(run_id, result=value, **after.kwargs())
            return _emit_finished(finished)
        run = client.complete(run_id, result=value)
    emit({"run": plain(run)}, GLOBALS.output)
    return 0


@task_app.command(name="fail")
def task_fail(
    run_id: str,
    /,
    *,
    error: Annotated[str, Parameter(help="What went wrong.")],
    metadata: Annotated[str | None, Parameter(help="A JSON object with details.")] = None,
    next_: NextFlag = False,
    wait: NextWait = False,
    timeout: NextTimeout = None,
    lease_seconds: NextLease = None,
    workspace: NextWorkspace = None,
    scope: NextScope = None,
    priority_min: NextPriorityMin = None,
) -> int:
    """End the session's run as failed (the task may be started again while attempts remain).

    With --next, also claim the session's next run in the same request; exit 0 once the run
    is failed, whether or not a run was claimed (see task complete --next).

    Parameters
    ----------
    run_id
        The run the session holds.
    """
    meta = _json_arg(metadata, "--metadata", object_only=True)
    after = _NextOptions.of(next_, wait, timeout, lease_seconds, workspace, scope, priority_min)
    with _client() as client:
        if after.wanted:
            with _spinner(after.wait):
                finished = client.fail_and_next(
                    run_id, error=error, metadata=meta, **after.kwargs()
                )
            return _emit_finished(finished)
        run = client.fail(run_id, error=error, metadata=meta)
    emit({"run": plain(run)}, GLOBALS.output)
    return 0


@task_app.command(name="release")
def task_release(
    run_id: str,
    /,
    *,
    reason: Annotated[str | None, Parameter(help="Why the session lets go.")] = None,
    next_: NextFlag = False,
    wait: NextWait = False,
    timeout: NextTimeout = None,
    lease_seconds: NextLease = None,
    workspace: NextWorkspace = None,
    scope: NextScope = None,
    priority_min: NextPriorityMin = None,
) -> int:
    """Give the run back to the queue (same attempt) without finishing it.

    With --next, also claim the session's next run in the same request, under the ordinary
    claim rules (the released run itself may come straight back); exit 0 once the run is
    released, whether or not a run was claimed (see task complete --next).

    Parameters
    ----------
    run_id
        The run the session holds.
    """
    after = _NextOptions.of(next_, wait, timeout, lease_seconds, workspace, scope, priority_min)
    with _client() as client:
        if after.wanted:
            with _spinner(after.wait):
                finished = client.release_and_next(run_id, reason=reason, **after.kwargs())
            return _emit_finished(finished)
        run = client.release(run_id, reason=reason)
    emit({"run": plain(run)}, GLOBALS.output)
    return 0


@task_app.command(name="block")
def task_block(
    run_id: str,
    /,
    *,
    reason: Annotated[str, Parameter(help="What a human must look at.")],
) -> int:
    """Park the run as needs_attention for a human, ending the lease.

    Parameters
    ----------
    run_id
        The run the session holds.
    """
    with _client() as client:
        run = client.block(run_id, reason=reason)
    emit({"run": plain(run)}, GLOBALS.output)
    return 0


# ------------------------------------------------------- task lifecycle and graph
def _emit_task(task: Any) -> int:
    emit({"task": plain(task)}, GLOBALS.output)
    return 0


@task_app.command(name="publish")
def task_publish(
    task_id: str,
    /,
    *,
    start: Annotated[
        bool, Parameter(help="Also enqueue its first run (unless it needs manual approval).")
    ] = True,
) -> int:
    """Publish a draft task so it can run.

    Parameters
    ----------
    task_id
        The draft to publish.
    """
    with _client() as client:
        return _emit_task(client.publish_task(task_id, start=start))


@task_app.command(name="approve")
def task_approve(task_id: str, /) -> int:
    """Approve a task that waits for manual approval: its run is enqueued.

    Parameters
    ----------
    task_id
        The task to approve.
    """
    with _client() as client:
        run = client.approve_task(task_id)
    emit({"run": plain(run)}, GLOBALS.output)
    return 0


@task_app.command(name="reject")
def task_reject(
    task_id: str,
    /,
    *,
    reason: Annotated[str | None, Parameter(help="Why it is rejected.")] = None,
) -> int:
    """Reject a task that waits for approval: it and its open descendants are canceled.

    Parameters
    ----------
    task_id
        The task to reject.
    """
    with _client() as client:
        return _emit_task(client.reject_task(task_id, reason=reason))


@task_app.command(name="update")
def task_update(
    task_id: str,
    /,
    *,
    title: Annotated[str | None, Parameter(help="A new title.")] = None,
    description: Annotated[str | None, Parameter(help="A new description.")] = None,
    priority: Annotated[Priority | None, Parameter(help="A new priority.")] = None,
    max_attempts: Annotated[int | None, Parameter(help="Runs allowed, 1 to 10.")] = None,
    metadata: Annotated[
        str | None, Parameter(help="A JSON object replacing the task's metadata.")
    ] = None,
    capability: Annotated[
        list[str] | None, Parameter(help="Replace the required capabilities (repeatable).")
    ] = None,
    preferred_capability: Annotated[
        list[str] | None, Parameter(help="Replace the preferred capabilities (repeatable).")
    ] = None,
    owner_session: Annotated[str | None, Parameter(help="Assign it to this SESSION_ID.")] = None,
    owner_agent: Annotated[str | None, Parameter(help="Assign it to this agent's pool.")] = None,
    no_owner: Annotated[bool, Parameter(negative=(), help="Remove its assignee.")] = False,
    changes: Annotated[
        str | None,
        Parameter(help='Raw changes as a JSON object, e.g. \'{"title": "x"}\' (merged first).'),
    ] = None,
) -> int:
    """Change a task's mutable fields. Immutable ones (scope, workspace_id, parent_task_id,
    required_artifacts, approval_policy) are refused with IMMUTABLE_FIELD.

    Parameters
    ----------
    task_id
        The task to change.
    """
    wanted: dict[str, Any] = dict(_json_arg(changes, "--changes", object_only=True) or {})
    flags = {
        "title": title,
        "description": description,
        "priority": priority,
        "max_attempts": max_attempts,
        "metadata": _json_arg(metadata, "--metadata", object_only=True),
        "required_capabilities": capability,
        "preferred_capabilities": preferred_capability,
    }
    wanted.update({key: value for key, value in flags.items() if value is not None})
    owner = _owner(owner_session, owner_agent)
    if no_owner and owner is not None:
        raise UsageError("--no-owner cannot be combined with --owner-session or --owner-agent")
    if owner is not None:
        wanted["owner"] = {"kind": owner.kind, "ref": owner.ref}
    elif no_owner:
        wanted["owner"] = None
    if not wanted:
        raise UsageError("nothing to change: give at least one field option or --changes")
    with _client() as client:
        return _emit_task(client.update_task(task_id, wanted))


@task_app.command(name="delete")
def task_delete(task_id: str, /) -> int:
    """Delete a task and its finished runs (refused while it has children or open runs).

    Parameters
    ----------
    task_id
        The task to delete.
    """
    with _client() as client:
        return _emit_task(client.delete_task(task_id))


@task_app.command(name="depend")
def task_depend(
    task_id: str,
    /,
    *,
    on: Annotated[str, Parameter(help="The BLOCKER task that must complete first.")],
) -> int:
    """Make a task wait for another to complete (it is blocked until then).

    Parameters
    ----------
    task_id
        The task that waits.
    """
    with _client() as client:
        return _emit_task(client.add_dependency(task_id, on))


@task_app.command(name="undepend")
def task_undepend(
    task_id: str,
    /,
    *,
    on: Annotated[str, Parameter(help="The BLOCKER task to stop waiting for.")],
) -> int:
    """Remove a dependency edge.

    Parameters
    ----------
    task_id
        The task that waits.
    """
    with _client() as client:
        return _emit_task(client.remove_dependency(task_id, on))


@task_app.command(name="pause")
def task_pause(
    task_id: str,
    /,
    *,
    reason: Annotated[str, Parameter(help="Why it is paused.")],
) -> int:
    """Pause a task and its descendants: their queued runs are not claimed until resumed.

    Parameters
    ----------
    task_id
        The task to pause.
    """
    with _client() as client:
        return _emit_task(client.pause_task(task_id, reason=reason))


@task_app.command(name="resume")
def task_resume(task_id: str, /) -> int:
    """Resume a paused task.

    Parameters
    ----------
    task_id
        The task to resume.
    """
    with _client() as client:
        return _emit_task(client.resume_task(task_id))


@task_app.command(name="cancel")
def task_cancel(
    task_id: str,
    /,
    *,
    reason: Annotated[str | None, Parameter(help="Why it is canceled.")] = None,
) -> int:
    """Cancel a task, its open runs and every open descendant.

    Parameters
    ----------
    task_id
        The task to cancel.
    """
    with _client() as client:
        return _emit_task(client.cancel_task(task_id, reason=reason))


@task_app.command(name="checkpoint")
def task_checkpoint(
    task_id: str,
    note: str,
    /,
    *,
    author: Annotated[str | None, Parameter(help="Who writes the note.")] = None,
) -> int:
    """Add a progress note to a task's history (not a heartbeat: the lease is unchanged).

    Parameters
    ----------
    task_id
        The task.
    note
        The progress note.
    """
    with _client() as client:
        return _emit_task(client.checkpoint(task_id, note, author=author))


@task_app.command(name="stuck")
def task_stuck(
    *,
    threshold: Annotated[
        float | None,
        Parameter(help="Seconds without heartbeat or checkpoint that count as stuck (600)."),
    ] = None,
) -> int:
    """List runs whose lease ran out, then leased runs idle past the threshold."""
    with _client() as client:
        runs = client.stuck(threshold=threshold)
    emit({"stuck": plain(runs)}, GLOBALS.output)
    return 0


@task_app.command(name="steal")
def task_steal(
    task_id: str,
    /,
    *,
    if_expired: Annotated[
        bool, Parameter(negative=(), help="Only if its lease has run out (atomic).")
    ] = False,
    force: Annotated[bool, Parameter(negative=(), help="Take even a live lease.")] = False,
    lease_seconds: Annotated[float | None, Parameter(help="Length of the new lease.")] = None,
    reason: Annotated[str | None, Parameter(help="Why it is taken over.")] = None,
) -> int:
    """Take a task's current run for this session under a new lease (session-scoped).

    Exactly one of --if-expired and --force. With --if-expired it fails with
    LEASE_NOT_EXPIRED (exit 5) unless the lease has run out at that very moment.

    Parameters
    ----------
    task_id
        The task whose run to take.
    """
    if if_expired == force:
        raise UsageError("give exactly one of --if-expired and --force")
    with _client() as client:
        claim = client.steal(task_id, force=force, lease_seconds=lease_seconds, reason=reason)
    emit(
        {"task": plain(claim.task), "run": plain(claim.run), "lease": plain(claim.lease)},
        GLOBALS.output,
    )
    return 0


@task_app.command(name="timeline")
def task_timeline(
    task_id: str,
    /,
    *,
    after_seq: Annotated[int, Parameter(help="Only events after this sequence number.")] = 0,
) -> int:
    """A task's audit events (actor, origin, kind, data), oldest first.

    Parameters
    ----------
    task_id
        The task.
    """
    with _client() as client:
        events = client.timeline(task_id, after_seq=after_seq)
    emit({"events": plain(events)}, GLOBALS.output)
    return 0


def _emit_inspect(view: Any) -> int:
    emit(plain(view), GLOBALS.output)
    return 0


@task_app.command(name="inspect")
def task_inspect(task_id: str, /) -> int:
    """What a task is doing and what should happen next (next_action).

    Parameters
    ----------
    task_id
        The task.
    """
    with _client() as client:
        return _emit_inspect(client.inspect_task(task_id))


# ---------------------------------------------------------------------- runs
@run_app.command(name="inspect")
def run_inspect(run_id: str, /) -> int:
    """A run in the context of its task, with the next_action.

    Parameters
    ----------
    run_id
        The run.
    """
    with _client() as client:
        return _emit_inspect(client.inspect_run(run_id))


@run_app.command(name="cancel")
def run_cancel(
    run_id: str,
    /,
    *,
    reason: Annotated[str | None, Parameter(help="Why it is canceled.")] = None,
) -> int:
    """Cancel a queued or leased run (a lease ends; its session may claim again).

    Parameters
    ----------
    run_id
        The run.
    """
    with _client() as client:
        run = client.cancel_run(run_id, reason=reason)
    emit({"run": plain(run)}, GLOBALS.output)
    return 0


@run_app.command(name="retry")
def run_retry(run_id: str, /) -> int:
    """Queue a new run after a failed one (previous_run_id links them).

    Parameters
    ----------
    run_id
        The failed run.
    """
    with _client() as client:
        result = client.retry_run(run_id)
    emit({"previous_run": plain(result.previous_run), "run": plain(result.run)}, GLOBALS.output)
    return 0


ForceReason = Annotated[str, Parameter(help="Why (required; kept in the audit trail).")]


@run_app.command(name="force-release")
def run_force_release(run_id: str, /, *, reason: ForceReason) -> int:
    """Operator: take a claimed run back to the queue. At most 10 per minute per task.

    Parameters
    ----------
    run_id
        The run.
    """
    with _client() as client:
        run = client.force_release(run_id, reason=reason)
    emit({"run": plain(run)}, GLOBALS.output)
    return 0


@run_app.command(name="force-fail")
def run_force_fail(run_id: str, /, *, reason: ForceReason) -> int:
    """Operator: fail a run (failure_kind operator_forced). At most 10 per minute per task.

    Parameters
    ----------
    run_id
        The run.
    """
    with _client() as client:
        run = client.force_fail(run_id, reason=reason)
    emit({"run": plain(run)}, GLOBALS.output)
    return 0


def _emit_bulk(result: Any) -> int:
    items = plain(result.items)
    ok = sum(1 for item in result.items if item.ok)
    emit({"items": items, "ok": ok, "failed": len(items) - ok}, GLOBALS.output)
    # Each run has its own outcome; the command itself worked.
    return 0


@run_app.command(name="bulk-force-release")
def run_bulk_force_release(*run_ids: str, reason: ForceReason) -> int:
    """Force-release up to 50 runs; one outcome per run (exit 0 even if some failed).

    Parameters
    ----------
    run_ids
        The runs.
    """
    if not run_ids:
        raise UsageError("name at least one RUN_ID")
    with _client() as client:
        return _emit_bulk(client.bulk_force_release(run_ids, reason=reason))


@run_app.command(name="bulk-force-fail")
def run_bulk_force_fail(*run_ids: str, reason: ForceReason) -> int:
    """Force-fail up to 50 runs; one outcome per run (exit 0 even if some failed).

    Parameters
    ----------
    run_ids
        The runs.
    """
    if not run_ids:
        raise UsageError("name at least one RUN_ID")
    with _client() as client:
        return _emit_bulk(client.bulk_force_fail(run_ids, reason=reason))


# ------------------------------------------------------------------ scheduler
def _emit_scheduler(status: Any) -> int:
    emit({"scheduler": plain(status)}, GLOBALS.output)
    return 0


@scheduler_app.command(name="pause")
def scheduler_pause(
    *, reason: Annotated[str | None, Parameter(help="Why claims stop.")] = None
) -> int:
    """Stop handing out runs (lease expiry, heartbeats and finishes carry on)."""
    with _client() as client:
        return _emit_scheduler(client.pause_scheduler(reason=reason))


@scheduler_app.command(name="resume")
def scheduler_resume(
    *, reason: Annotated[str | None, Parameter(help="Why claims start again.")] = None
) -> int:
    """Hand out runs again."""
    with _client() as client:
        return _emit_scheduler(client.resume_scheduler(reason=reason))


@scheduler_app.command(name="drain")
def scheduler_drain(
    *,
    timeout: Annotated[
        float | None, Parameter(help="Stop waiting after SECONDS (default 30).")
    ] = None,
    reason: Annotated[str | None, Parameter(help="Why.")] = None,
) -> int:
    """Pause the scheduler and wait until no lease is active; report what remains.

    The scheduler stays paused afterwards (scheduler resume). Exit 0 either way: see
    completed, timed_out and remaining_claims.
    """
    with _client() as client:
        drain = client.drain_scheduler(timeout=timeout, reason=reason)
    document = plain(drain)
    emit({"scheduler": document.pop("status"), **document}, GLOBALS.output)
    return 0


@scheduler_app.command(name="status")
def scheduler_status() -> int:
    """Paused or not, active leases, queued and claimable runs, paused tasks."""
    with _client() as client:
        return _emit_scheduler(client.scheduler_status())


@scheduler_app.command(name="backlog")
def scheduler_backlog(
    *,
    limit: Annotated[int | None, Parameter(help="At most this many runs (default 100).")] = None,
    after: Annotated[str | None, Parameter(help="Start after this RUN_ID (next_after).")] = None,
    workspace: Annotated[str | None, Parameter(help="Only runs of this workspace.")] = None,
) -> int:
    """Queued runs with their task and what holds each back (gate), one page at a time."""
    with _client() as client:
        backlog = client.backlog(workspace=workspace, after=after, limit=limit)
    emit(
        {"backlog": plain(backlog.runs), "total": backlog.total, "next_after": backlog.next_after},
        GLOBALS.output,
    )
    return 0
