"""``runlease serve`` and ``runlease status``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from runlease.cli.context import GLOBALS, connect, show
from runlease.cli.output import plain
from runlease.cli.params import Param
from runlease.errors import InvalidInput, UsageError
from runlease.hooks import Hook, parse_hook
from runlease.paths import default_data_dir, default_socket_path

# Where `serve` reads the secret of URL hooks when no --hook-secret-file is given.
ENV_HOOK_SECRET = "RUNLEASE_HOOK_SECRET"


def serve(
    *,
    data_dir: Annotated[Path | None, Param(help="Where state is kept.")] = None,
    durability: Annotated[
        Literal["durable", "relaxed"],
        Param(help="durable: sync every commit to disk; relaxed: survive process crashes."),
    ] = "durable",
    workspace_root: Annotated[
        list[str] | None,
        Param(
            help="WORKSPACE=DIR: where completion-contract artifacts of that workspace's tasks "
            "are checked; =DIR (empty workspace) for global tasks. Repeatable.",
            negative=(),
        ),
    ] = None,
    allow_agent_force: Annotated[
        bool,
        Param(
            help="Let sessions (agents) use the operator's force operations: steal --force, "
            "run force-release / force-fail and their bulk forms. Off by default: those are "
            "refused to a session with FORBIDDEN_OPERATOR_ACTION.",
            negative=(),
        ),
    ] = False,
    fresh_store: Annotated[
        bool,
        Param(
            help="Start a new, empty store where the data dir's database is missing or "
            "empty, discarding the old store's identity. Refused if the database holds data.",
            negative=(),
        ),
    ] = False,
    max_connections: Annotated[
        int,
        Param(
            help="Serve at most this many clients at once; more are refused with "
            "SERVER_BUSY. Also kept 64 below the open-file limit (ulimit -n)."
        ),
    ] = 1024,
    handshake_timeout: Annotated[
        float,
        Param(
            help="Close, with CONNECTION_TIMEOUT, a connection that has not said hello "
            "within SECONDS."
        ),
    ] = 10.0,
    idle_timeout: Annotated[
        float,
        Param(
            help="Close, with CONNECTION_TIMEOUT, a connection with nothing in flight for "
            "SECONDS (a waiting claim, an event stream or a drain is never idle); 0: never."
        ),
    ] = 300.0,
    starve_after: Annotated[
        float | None,
        Param(
            help="Park a queued run that no live session could take (capabilities, owner) "
            "for SECONDS in needs_attention with reason starved, for `run recover`. "
            "Off by default."
        ),
    ] = None,
    max_buffered_bytes: Annotated[
        int,
        Param(
            help="BYTES that frames still being received may declare across all clients; "
            "a frame that would exceed it is refused with SERVER_BUSY."
        ),
    ] = 64 * 1024 * 1024,
    hook: Annotated[
        list[str] | None,
        Param(
            help="KINDS=URL or KINDS=exec:COMMAND: send each event of those kinds (a comma "
            "list, or * for all) to the URL as a signed JSON POST, or to the command on its "
            "standard input; at least once, with retries. Repeatable.",
            negative=(),
        ),
    ] = None,
    hook_secret_file: Annotated[
        Path | None,
        Param(
            help="File holding the secret that signs URL hooks' deliveries (else "
            "$RUNLEASE_HOOK_SECRET)."
        ),
    ] = None,
) -> int:
    """Run the server in the foreground until SIGINT or SIGTERM.

    The data directory defaults to $RUNLEASE_HOME, else $XDG_DATA_HOME/runlease, else
    ~/.local/share/runlease; the socket to --socket, else $RUNLEASE_SOCKET, else
    <data dir>/runlease.sock. Log lines go to stderr as JSON.
    """
    # The server (and trio with it) loads only here: client commands never pay for it.
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
    if starve_after is not None and not 0 < starve_after < float("inf"):
        raise UsageError(f"--starve-after takes a positive number of seconds, got {starve_after}")

    directory = data_dir.expanduser() if data_dir is not None else default_data_dir()
    socket_path = GLOBALS.socket or default_socket_path(directory)
    roots: dict[str, str] = {}
    for item in workspace_root or ():
        workspace, sep, root = item.partition("=")
        if not sep or not root:
            raise UsageError(f"--workspace-root takes WORKSPACE=DIR, got {item!r}")
        roots[workspace] = str(Path(root).expanduser().resolve())
    hooks = _hooks(hook or [], hook_secret_file)
    configure_logging()
    run_server(
        socket_path,
        data_dir=directory,
        durability=durability,
        workspace_roots=roots,
        allow_agent_force=allow_agent_force,
        fresh_store=fresh_store,
        limits=limits,
        starve_after=starve_after,
        hooks=hooks,
    )
    return 0


def _hooks(specs: list[str], secret_file: Path | None) -> list[Hook]:
    """The hooks of ``--hook`` flags, each checked now (a usage error otherwise)."""
    if not specs:
        return []
    secret = os.environ.get(ENV_HOOK_SECRET) or None
    if secret_file is not None:
        try:
            secret = secret_file.expanduser().read_text().strip() or None
        except OSError as exc:
            raise UsageError(
                f"cannot read --hook-secret-file {secret_file}: {exc.strerror}"
            ) from None
    hooks: list[Hook] = []
    for spec in specs:
        try:
            hooks.append(parse_hook(spec, secret))
        except InvalidInput as exc:
            raise UsageError(f"--hook {spec!r}: {exc.message}") from None
    names = [h.name for h in hooks]
    if len(set(names)) != len(names):
        raise UsageError("two --hook flags name the same event kinds and target")
    return hooks


def status() -> int:
    """Is the server up, has recovery finished, and how much is in it."""
    with connect() as client:
        info = client.status()
    document = plain(info)
    return show(
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
        }
    )
