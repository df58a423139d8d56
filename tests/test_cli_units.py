"""CLI pieces that need no server: default paths, JSON rendering, usage handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runlease.cli import run
from runlease.cli.app import _output_from_argv
from runlease.cli.output import plain, rfc3339
from runlease.core.model import Event, Run, Task
from runlease.paths import default_data_dir, default_socket_path


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"RUNLEASE_HOME": "/srv/rl", "XDG_DATA_HOME": "/x", "HOME": "/h"}, "/srv/rl"),
        ({"XDG_DATA_HOME": "/x", "HOME": "/h"}, "/x/runlease"),
        ({"XDG_DATA_HOME": "relative/ignored", "HOME": "/h"}, "/h/.local/share/runlease"),
        ({"HOME": "/h"}, "/h/.local/share/runlease"),
    ],
)
def test_data_dir_rules(env: dict[str, str], expected: str) -> None:
    assert default_data_dir(env) == Path(expected)


def test_socket_rules() -> None:
    assert default_socket_path(env={"RUNLEASE_SOCKET": "/run/s.sock", "HOME": "/h"}) == Path(
        "/run/s.sock"
    )
    assert default_socket_path("/d", env={"HOME": "/h"}) == Path("/d/runlease.sock")
    assert default_socket_path(env={"RUNLEASE_HOME": "/r"}) == Path("/r/runlease.sock")


def test_times_become_rfc3339_and_payloads_pass_through() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1700000000.1234) == "2023-11-14T22:13:20.123Z"
    task = Task(
        id="tsk_1",
        title="t",
        metadata={"created_at": 1.0},
        created_at=1700000000.0,
        updated_at=1700000000.5,
    )
    document = plain(task)
    assert document["created_at"] == "2023-11-14T22:13:20.000Z"
    assert document["metadata"] == {"created_at": 1.0}
    assert document["closed_at"] is None  # every field is present, even defaults
    assert "type" not in document  # the wire tag is not part of the record
    run = Run(id="r", task_id="t", queued_at=0.0, result={"lease_until": 5})
    assert plain(run)["result"] == {"lease_until": 5}
    event = Event(seq=1, kind="lease_renewed", at=0.0, data={"lease_until": 60.0, "n": 2})
    assert plain(event)["data"] == {"lease_until": "1970-01-01T00:01:00.000Z", "n": 2}
    json.dumps(plain([task, run, event]))


def test_usage_errors_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["-o", "json", "task", "frobnicate"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "USAGE"
    assert "frobnicate" in error["message"]
    assert run(["--help"]) == 0
    assert "session" in capsys.readouterr().out
    assert run(["task", "next", "--help"]) == 0
    assert "--lease-seconds" in capsys.readouterr().out


def test_output_flag_is_found_even_when_parsing_fails() -> None:
    assert _output_from_argv(["-o", "table", "x"]) == "table"
    assert _output_from_argv(["--output=json"]) == "json"
    assert _output_from_argv(["-ojson"]) == "json"
    assert _output_from_argv(["--output", "xml"]) is None
    assert _output_from_argv([]) is None


def test_python_dash_m_runlease_is_the_same_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runlease", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
