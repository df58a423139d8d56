"""Scripting without inline Python: --field, session open --export, JSON options read from
stdin or a file, durations, tables that keep ids whole, and the README walkthrough."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cli_helpers import RUNLEASE, Cli, Server, clean_env, queued_task, serve_relaxed
from runlease.cli import fast
from runlease.cli.app import app
from runlease.cli.durations import format_duration, parse_duration
from runlease.cli.output import (
    INSPECT_TABLE,
    NoSuchField,
    emit,
    field_text,
    field_value,
)
from runlease.protocol import MAX_FRAME_BYTES

README = Path(__file__).resolve().parent.parent / "README.md"
WALKTHROUGH = "## Two-terminal walkthrough"


# ------------------------------------------------------------------------- durations
@given(
    st.lists(st.integers(min_value=0, max_value=400), min_size=4, max_size=4).filter(any),
)
def test_a_formatted_duration_reads_back_as_its_seconds(parts: list[int]) -> None:
    days, hours, minutes, seconds = parts
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    # Every unit written (1d0h3m0s), only the non-zero ones, and the canonical form.
    spelled = "".join(f"{n}{u}" for n, u in zip(parts, "dhms", strict=True))
    sparse = "".join(f"{n}{u}" for n, u in zip(parts, "dhms", strict=True) if n)
    for text in (spelled, sparse, format_duration(total), str(total)):
        assert parse_duration(text) == total, text


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_a_bare_number_is_seconds(value: float) -> None:
    assert parse_duration(repr(value)) == value


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("5m", 300), ("2h", 7200), ("1d", 86400), ("1h30m", 5400),
     ("1.5h", 5400), ("0", 0), ("1e3", 1000), ("0s", 0)],
)  # fmt: skip
def test_duration_forms(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "m", "5m1h", "1h1h", "1 h", "1H", "h5", "5m ", "1.h"])
def test_what_is_not_a_duration_names_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"90s, 5m, 2h, 1d, 1h30m"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("tokens", "seconds"),
    [
        (["task", "next", "--lease-seconds", "2m", "--timeout", "1h30m"],
         {"lease_seconds": 120, "timeout": 5400}),
        (["task", "complete", "r1", "--next", "--timeout", "90s", "--lease-seconds", "5"],
         {"timeout": 90, "lease_seconds": 5}),
        (["task", "heartbeat", "r1", "--lease-seconds=1d"], {"lease_seconds": 86400}),
        (["task", "steal", "t1", "--force", "--lease-seconds", "1m"], {"lease_seconds": 60}),
        (["run", "claim", "r1", "--lease-seconds", "1m"], {"lease_seconds": 60}),
        (["session", "open", "--ttl", "2h"], {"ttl": 7200}),
        (["token", "create", "--role", "reader", "--name", "n", "--ttl", "1d"], {"ttl": 86400}),
        (["task", "create", "t", "--stale-after", "15m"], {"stale_after": 900}),
        (["task", "update", "t1", "--stale-after", "15m"], {"stale_after": 900}),
        (["task", "stuck", "--threshold", "10m"], {"threshold": 600}),
        (["scheduler", "drain", "--timeout", "45s"], {"timeout": 45}),
        (["serve", "--idle-timeout", "5m", "--handshake-timeout", "3s", "--starve-after", "1h",
          "--idempotency-window", "2d"],
         {"idle_timeout": 300, "handshake_timeout": 3, "starve_after": 3600,
          "idempotency_window": 172800}),
    ],
)  # fmt: skip
def test_both_readers_take_durations_alike(tokens: list[str], seconds: dict[str, float]) -> None:
    found = fast.parse(tokens, {})
    assert found is not None, "the fast path should read a duration itself"
    _, bound, _ = app.parse_args(tokens, exit_on_error=False, print_error=False)
    assert found.kwargs == bound.kwargs
    for name, value in seconds.items():
        assert found.kwargs[name] == value, name
        assert isinstance(found.kwargs[name], float), name


def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RUNLEASE, *args],
        capture_output=True,
        text=True,
        env=clean_env({"RUNLEASE_SOCKET": "/nonexistent/s.sock", **(env or {})}),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        timeout=60,
    )


@pytest.mark.parametrize(
    "args",
    [
        ("task", "next", "--lease-seconds", "5x"),
        ("session", "open", "--ttl", "1h1h"),
        ("serve", "--idle-timeout", "soon"),
    ],
)
def test_a_bad_duration_is_a_usage_error_naming_the_option(args: tuple[str, ...]) -> None:
    done = run_cli("-o", "json", *args)
    assert done.returncode == 2, done
    error = json.loads(done.stdout)["error"]
    assert error["code"] == "USAGE"
    assert args[-2] in error["message"], error
    assert "1h30m" in error["message"], error


@pytest.mark.parametrize(
    ("flag", "value"), [("--session-idle-timeout", "1x"), ("--history-max-age", "7days")]
)
def test_serve_retention_durations_refuse_what_they_cannot_read(flag: str, value: str) -> None:
    done = run_cli("-o", "json", "serve", flag, value)
    assert done.returncode == 2, done
    message = json.loads(done.stdout)["error"]["message"]
    assert flag in message, message
    assert "1h30m" in message, message


def test_serve_retention_durations_accept_the_unit_forms() -> None:
    from runlease.cli.commands.server import _idle_timeout, history_retention

    assert _idle_timeout("90m") == 5400
    assert _idle_timeout("none") is None
    assert history_retention("7d", None).max_age == 7 * 86400


# ----------------------------------------------------------------------------- field
DOCUMENT: dict[str, Any] = {
    "run": {"id": "run_1", "attempt": 2, "lease_until": None, "ok": True},
    "tasks": [{"id": "tsk_a", "tags": ["x", "y"]}, {"id": "tsk_b", "tags": []}],
    "note": 'say "hi"',
}


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("run.id", "run_1"),
        ("run.attempt", "2"),
        ("run.ok", "true"),
        ("run.lease_until", ""),
        ("tasks.1.id", "tsk_b"),
        ("tasks.-1.id", "tsk_b"),
        ("tasks.0.tags", '["x","y"]'),
        ("tasks.0", '{"id":"tsk_a","tags":["x","y"]}'),
        ("note", 'say "hi"'),
    ],
)
def test_a_field_prints_strings_raw_null_empty_and_the_rest_as_json(path: str, text: str) -> None:
    assert field_text(field_value(DOCUMENT, path)) == text


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("run.idx", "run has no key 'idx' (its keys: id, attempt, lease_until, ok)"),
        ("tasks.2.id", "tasks is a list of 2; '2' is not an index in it"),
        ("tasks.first", "tasks is a list of 2"),
        ("run.id.more", 'run.id is "run_1", not an object or a list'),
        ("nothing", "the answer has no key 'nothing'"),
    ],
)
def test_a_field_path_that_leads_nowhere_says_what_is_there(path: str, says: str) -> None:
    with pytest.raises(NoSuchField) as raised:
        field_value(DOCUMENT, path)
    assert says in str(raised.value)


# ---------------------------------------------------------------------------- tables
LONG_ID = "run_06H2518XC5C0C8AWNM9XENDZA8"


def render(
    document: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    width: int,
    **kwargs: Any,
) -> str:
    monkeypatch.setenv("COLUMNS", str(width))
    emit(document, "table", **kwargs)
    out: str = capsys.readouterr().out
    return out


@pytest.mark.parametrize("width", [30, 50, 80])
def test_ids_are_printed_whole_on_one_line_however_narrow_the_console(
    width: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    row: dict[str, Any] = {
        "id": LONG_ID,
        "task_id": "tsk_06H2518XC5C0C8AWNM9XENDZA4",
        "status": "leased",
        "attempt": 1,
        "session_id": "ses_06H2518WAWW5RZ0PXMDPAH6VGM",
        "lease_until": "2026-11-28T14:17:59.664Z",
        "reason": "a long reason that may well wrap over several lines of a table",
        "error": None,
    }
    out = render({"runs": [row], "run": row, "run_id": LONG_ID}, capsys, monkeypatch, width)
    lines = out.splitlines()
    for wanted in (LONG_ID, row["task_id"], row["session_id"]):
        # Every line where the id starts holds the whole of it.
        starts = [line for line in lines if wanted[:8] in line]
        assert starts, out
        assert all(wanted in line for line in starts), out
    # The run's id is in the list table, in the record's table and among the scalars.
    assert sum(LONG_ID in line for line in lines) == 3, out


def test_inspect_tables_show_the_curated_fields_and_json_keeps_everything(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = {
        "run_id": LONG_ID,
        "task_id": "tsk_1",
        "status": "leased",
        "attempt": 1,
        "claim_token_hash_prefix": "abcd1234",
        "queued_at": "2026-11-28T14:00:00.000Z",
        "bound_session_id": "ses_1",
    }
    view = {
        "target": "task",
        "task": {"id": "tsk_1", "title": "write", "description": "long words", "max_attempts": 3},
        "current_run": summary,
        "recent_runs": [summary],
        "open_dependencies": [],
        "gate": None,
        "diagnostics": [],
        "next_action": "wait_for_lease",
    }
    out = render(view, capsys, monkeypatch, 200, table=INSPECT_TABLE)
    assert LONG_ID in out
    assert "write" in out
    assert "wait_for_lease" in out
    for left_out in ("claim_token_hash_prefix", "queued_at", "max_attempts", "description"):
        assert left_out not in out, out
    assert "open_dependencies" not in out
    assert "gate" not in out
    assert "diagnostics (0)" in out  # an empty list the layout names still says so
    emit(view, "json", INSPECT_TABLE)
    assert json.loads(capsys.readouterr().out) == view


def test_session_list_table_has_the_columns_an_operator_reads_first(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    session: dict[str, Any] = {
        "id": "ses_06H2518WAWW5RZ0PXMDPAH6VGM",
        "agent": "me",
        "state": "live",
        "lease_run_id": LONG_ID,
        "parent_id": None,
        "opened_at": "2026-11-28T14:00:00.000Z",
        "ttl_deadline": None,
        "age_seconds": 12.5,
        "last_active_at": "2026-11-28T14:00:01.000Z",
    }
    out = render({"sessions": [session]}, capsys, monkeypatch, 80)
    header = next(line for line in out.splitlines() if "agent" in line)
    assert re.findall(r"[a-z_]+", header) == ["id", "agent", "state", "lease_run_id",
                                              "age_seconds", "last_active_at"]  # fmt: skip
    assert any(session["id"] in line and LONG_ID in line for line in out.splitlines()), out


# ------------------------------------------------------------ against a real server
def test_field_gives_one_value_and_keeps_the_exit_code_of_nothing_to_claim(
    cli: Cli, ws: str
) -> None:
    _, token = cli.session("field")
    task = queued_task(cli, ws)
    run_id = cli.run("--field", "run.id", "task", "next", "--workspace", ws, token=token)
    assert run_id.code == 0, run_id
    assert run_id.stdout == f"{task['current_run_id']}\n", run_id
    until = cli.run("task", "heartbeat", run_id.stdout.strip(), "--field", "lease.lease_until",
                    "--lease-seconds", "2m", token=token)  # fmt: skip
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[0-9:.]+Z\n", until.stdout), until
    missing = cli.run("task", "show", task["id"], "--field", "task.nope")
    assert missing.code == 2, missing
    assert missing.stdout == "", missing
    assert "task has no key 'nope'" in missing.stderr
    assert "USAGE" in missing.stderr
    nothing = cli.run("task", "next", "--workspace", ws, "--field", "run.id", token=token)
    assert nothing.code == 5, nothing  # the session still holds its lease
    cli.ok("task", "complete", run_id.stdout.strip(), token=token)
    nothing = cli.run("task", "next", "--workspace", ws, "--field", "run.id", token=token)
    assert nothing.code == 4, nothing
    assert nothing.stdout == "", nothing
    assert "NO_CLAIMABLE_RUN" in nothing.stderr
    assert "Traceback" not in nothing.stderr
    usage = cli.run("task", "next", "--bogus", "--field", "run.id", token=token)
    assert usage.code == 2, usage
    assert usage.stdout == "", usage
    assert "USAGE" in usage.stderr, usage


def test_lease_durations_reach_the_server_as_seconds(cli: Cli, ws: str) -> None:
    _, token = cli.session("durations")
    queued_task(cli, ws)
    claim = cli.ok("task", "next", "--workspace", ws, "--lease-seconds", "1h30m", token=token)
    run = claim["run"]
    assert _epoch(run["lease_until"]) - _epoch(run["claimed_at"]) == pytest.approx(5400, abs=1)


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_session_open_export_is_eval_ready(cli: Cli, ws: str) -> None:
    task = queued_task(cli, ws)
    agent = "agent-of-export"
    script = (
        f'eval "$(runlease session open --agent {shlex.quote(agent)} --export)"\n'
        f"runlease task next --workspace {ws} --field run.id\n"
        'echo "$RUNLEASE_SESSION_ID"\n'
    )
    done = subprocess.run(
        ["bash", "-euc", script],
        capture_output=True,
        text=True,
        env=_with_runlease_on_path(clean_env({"RUNLEASE_SOCKET": str(cli.socket)})),
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert done.returncode == 0, done
    run_id, session_id = done.stdout.split()
    assert run_id == task["current_run_id"]
    listed = cli.ok("session", "list")["sessions"]
    assert any(s["id"] == session_id and s["agent"] == agent for s in listed)


def test_export_lines_are_shell_quoted_and_carry_the_server(cli: Cli, tmp_path: Path) -> None:
    done = subprocess.run(
        [*RUNLEASE, "--socket", str(cli.socket), "session", "open", "--export"],
        capture_output=True,
        text=True,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert done.returncode == 0, done
    names = [line.split("=", 1)[0] for line in done.stdout.splitlines()]
    assert names == [
        "export RUNLEASE_SESSION_TOKEN",
        "export RUNLEASE_SESSION_ID",
        "export RUNLEASE_SOCKET",
    ]
    assert f"export RUNLEASE_SOCKET={cli.socket}" in done.stdout.splitlines()


def test_export_values_survive_the_shell_whatever_they_hold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from runlease.cli.commands.sessions import _exports
    from runlease.cli.context import GLOBALS

    socket = '/tmp/a dir/it\'s "odd" $HOME `x`.sock'
    monkeypatch.setattr(GLOBALS, "socket", Path(socket))
    monkeypatch.setattr(GLOBALS, "server", None)
    monkeypatch.setattr(GLOBALS, "tls_ca", None)
    monkeypatch.setattr(GLOBALS, "token", "rl_token_x")
    lines = _exports("ses_1", "rl_session_$(id)")
    done = subprocess.run(
        ["bash", "-euc", lines + 'printf "%s\\n" "$RUNLEASE_SESSION_TOKEN" "$RUNLEASE_SESSION_ID" '
         '"$RUNLEASE_SOCKET" "$RUNLEASE_TOKEN"'],
        capture_output=True,
        text=True,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done
    assert done.stdout.splitlines() == ["rl_session_$(id)", "ses_1", socket, "rl_token_x"]


def test_export_failure_prints_nothing_for_eval(tmp_path: Path) -> None:
    done = run_cli("session", "open", "--export", env={"RUNLEASE_SOCKET": str(tmp_path / "s")})
    assert done.returncode == 6, done
    assert done.stdout == "", done
    assert "SERVER_UNAVAILABLE" in done.stderr


def _with_runlease_on_path(env: dict[str, str]) -> dict[str, str]:
    """``runlease`` resolvable by a shell: this interpreter's scripts first on PATH, or a
    small wrapper when the package is not installed as a console script."""
    bin_dir = Path(RUNLEASE[0]).parent if len(RUNLEASE) == 1 else _wrapper_dir()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def _wrapper_dir() -> Path:
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="runlease-bin-"))
    wrapper = directory / "runlease"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m runlease "$@"\n')
    wrapper.chmod(0o755)
    return directory


def test_result_reads_stdin_or_a_file(cli: Cli, ws: str, tmp_path: Path) -> None:
    _, token = cli.session("results")
    env = cli.environment(token)
    for how in ("stdin", "file"):
        queued_task(cli, ws)
        run_id = cli.ok("task", "next", "--workspace", ws, token=token)["run"]["id"]
        result = {"how": how, "pages": [1, 2]}
        if how == "stdin":
            done = _run(env, "task", "complete", run_id, "--result", "-", stdin=json.dumps(result))
        else:
            path = tmp_path / "result.json"
            path.write_text(json.dumps(result))
            done = _run(env, "task", "complete", run_id, "--result", f"@{path}")
        assert done.returncode == 0, done
        assert json.loads(done.stdout)["run"]["result"] == result


def test_json_options_from_files_refuse_clearly(cli: Cli, ws: str, tmp_path: Path) -> None:
    missing = cli.run("task", "create", "t", "--workspace", ws, "--metadata", "@/no/such.json")
    assert missing.code == 2, missing
    assert (
        "--metadata @/no/such.json: cannot read /no/such.json" in missing.json["error"]["message"]
    )
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    invalid = cli.run("task", "create", "t", "--workspace", ws, "--metadata", f"@{bad}")
    assert invalid.code == 3, invalid
    assert "--metadata is not valid JSON" in invalid.json["error"]["message"], invalid
    listed = cli.run("task", "create", "t", "--workspace", ws, "--metadata", "-")
    assert listed.code == 3, listed  # empty stdin is not JSON
    huge = tmp_path / "huge.json"
    huge.write_text('"' + "x" * MAX_FRAME_BYTES + '"')
    too_large = cli.run("task", "create", "t", "--workspace", ws, "--metadata", f"@{huge}")
    assert too_large.code == 3
    assert too_large.json["error"]["code"] == "PAYLOAD_TOO_LARGE"
    # The server's own payload limits still apply to a value read from a file.
    deep = tmp_path / "deep.json"
    deep.write_text('{"a": ' + "[" * 200 + "]" * 200 + "}")
    refused = cli.run("task", "create", "t", "--workspace", ws, "--metadata", f"@{deep}")
    assert refused.code == 3, refused


def _run(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RUNLEASE, *args],
        capture_output=True,
        text=True,
        env=env,
        input=stdin if stdin is not None else "",
        timeout=60,
    )


# ----------------------------------------------------------------------- walkthrough
def walkthrough_script() -> str:
    """The agent's commands of the README's walkthrough: its shell block that opens a
    session."""
    text = README.read_text()
    section = text[text.index(WALKTHROUGH) :]
    section = section[: section.index("\n## ", len(WALKTHROUGH))]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    agent: list[str] = [block for block in blocks if "session open" in block]
    assert len(agent) == 1, blocks
    return agent[0]


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    script = walkthrough_script()
    assert "python" not in script
    servers = serve_relaxed(tmp_path)
    server: Server
    server, socket = next(servers)
    try:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=_with_runlease_on_path(clean_env({"RUNLEASE_SOCKET": str(socket)})),
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
    finally:
        next(servers, None)
    assert done.returncode == 0, done
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(r"tsk_\w+", lines[0]), lines
    assert "completed" in lines, lines
    assert "nothing left (exit 4)" in lines, lines
    assert "NO_CLAIMABLE_RUN" in done.stderr
    status = json.loads(lines[-1])
    assert status["counts"]["tasks"] == 1
    assert status["counts"]["leased_runs"] == 0
    assert server.process.returncode == 0
