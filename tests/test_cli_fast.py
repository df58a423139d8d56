"""The CLI's fast path reads a command line exactly as cyclopts would, or leaves it alone;
the client path loads neither cyclopts nor the server side; help is plain text."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from cyclopts import CycloptsError
from hypothesis import event, given
from hypothesis import strategies as st

from runlease.cli import fast, run
from runlease.cli.app import app
from runlease.cli.commands import COMMANDS, GROUPS, load
from runlease.cli.context import global_options

# Values of every kind the commands take, and some that only cyclopts reads (0x10, inf,
# HIGH) or that look like options.
VALUES = [
    "r1", "a b", "", "5", "0", "1e3", ".5", "007", "-1", "inf", "0x10", "+5",
    "high", "urgent", "HIGH", "global", "workspace", "json", "table", "draft", "ready",
    "manual", "none", "relaxed",
    "/tmp/s.sock", "x=y", "status", "next", "-", "--",
]  # fmt: skip
NOISE = ["--help", "-h", "--version", "--no-wait", "--wait=true", "-ojson", "--", "--bogus"]
GLOBAL_FLAGS = ["-o", "--output", "--socket", "--session-token"]


@pytest.fixture(autouse=True)
def _no_runlease_env() -> Iterator[None]:
    """Global options come from the command line only, unless a test sets them."""
    cleared = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEASE_")}
    with mock.patch.dict(os.environ, cleared, clear=True):
        yield


def cyclopts_reading(tokens: list[str]) -> tuple[Any, ...] | None:
    """What cyclopts makes of a command line: (function, args, kwargs, global options)."""
    try:
        _, meta, _ = app.meta.parse_args(tokens, exit_on_error=False, print_error=False)
        options = dict(meta.arguments)
        rest = list(options.pop("tokens", ()))
        command, bound, _ = app.parse_args(rest, exit_on_error=False, print_error=False)
    except CycloptsError:
        return None
    return (getattr(command, "__wrapped__", None), tuple(bound.args), dict(bound.kwargs), options)


def fast_reading(tokens: list[str]) -> tuple[Any, ...] | None:
    found = fast.parse(tokens, os.environ)
    if found is None:
        return None
    return (found.command, found.args, found.kwargs, found.options)


def test_every_command_signature_is_readable_by_the_fast_path() -> None:
    for words in COMMANDS:
        fast._signature(load(words))  # raises Unreadable otherwise
    fast._signature(global_options)


@pytest.mark.parametrize(
    "tokens",
    [
        ["status"],
        ["-o", "json", "status"],
        ["task", "next"],
        ["task", "next", "--wait", "--timeout", "30", "--lease-seconds=120", "-o", "table"],
        ["task", "next", "--scope", "global", "--priority-min", "high", "--workspace", ""],
        ["task", "heartbeat", "--lease-seconds", "5", "run_1"],
        ["task", "complete", "run_1", "--result", '{"a": 1}', "--next", "--wait"],
        ["task", "fail", "run_1", "--error", "boom", "--next", "--timeout", ".5"],
        ["task", "create", "t", "--capability", "a", "--capability", "b", "--start"],
        ["task", "create", "write it", "--priority", "urgent", "--max-attempts", "007"],
        ["task", "checkpoint", "tsk_1", "a note", "--author", "me"],
        ["task", "list", "--status", "ready", "--limit", "10"],
        ["session", "open", "--agent", "me", "--ttl", "1e3", "--capability", "gpu"],
        ["run", "bulk-force-release", "r1", "r2", "--reason", "x"],
        ["scheduler", "backlog", "--after", "run_1", "--limit", "5"],
        ["serve", "--data-dir", "/tmp/d", "--workspace-root", "ws=/tmp", "--fresh-store"],
        ["task", "-o", "json", "show", "tsk_1"],
        ["--socket", "/tmp/s.sock", "--session-token", "rl_x", "task", "block", "r", "--reason=y"],
    ],
)
def test_plain_command_lines_run_without_cyclopts_and_read_the_same(tokens: list[str]) -> None:
    found = fast_reading(tokens)
    assert found is not None
    assert found == cyclopts_reading(tokens)


@pytest.mark.parametrize(
    "tokens",
    [
        ["--help"],
        ["task", "next", "--help"],
        ["--version"],
        ["task"],
        ["task", "frobnicate"],
        ["task", "next", "--no-wait"],
        ["task", "next", "--wait", "--wait"],
        ["task", "next", "--wait=false"],
        ["task", "list", "--limit", "0x10"],
        ["task", "next", "--lease-seconds", "inf"],
        ["task", "next", "--priority-min", "HIGH"],
        ["task", "create", "--", "-t"],
        ["task", "fail", "run_1"],  # --error is required
        ["task", "show"],
        ["task", "show", "a", "b"],
        ["run", "bulk-force-fail", "--reason", "x"],
        ["-ojson", "status"],
        ["-o", "xml", "status"],
        ["task", "create", "-o", "json", "-o", "table", "t"],
    ],
)
def test_unusual_command_lines_are_left_to_cyclopts(tokens: list[str]) -> None:
    assert fast_reading(tokens) is None


def test_global_options_from_the_environment() -> None:
    tokens = ["task", "next"]
    os.environ["RUNLEASE_SOCKET"] = "/tmp/from-env.sock"
    os.environ["RUNLEASE_SESSION_TOKEN"] = "rl_session_env"
    found = fast_reading(tokens)
    assert found is not None
    assert found[3] == {"socket": mock.ANY, "session_token": "rl_session_env"}
    assert found == cyclopts_reading(tokens)
    os.environ["RUNLEASE_SESSION_TOKEN"] = ""
    assert fast_reading(tokens) is None  # an empty variable is cyclopts' to interpret


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    words = list(draw(st.sampled_from(sorted(COMMANDS))))
    options = sorted(fast._signature(load(tuple(words))).options) or ["--none"]
    global_pair = st.tuples(st.sampled_from(GLOBAL_FLAGS), st.sampled_from(VALUES)).map(list)
    option = st.tuples(st.sampled_from(options), st.sampled_from(VALUES)).flatmap(
        lambda fv: st.sampled_from([[fv[0]], list(fv), [f"{fv[0]}={fv[1]}"]])
    )
    piece = st.one_of(
        option,
        option,
        st.sampled_from(VALUES).map(lambda v: [v]),
        global_pair,
        st.sampled_from(NOISE).map(lambda n: [n]),
    )
    before = list(itertools.chain(*draw(st.lists(global_pair, max_size=2))))
    if len(words) == 2 and draw(st.booleans()):
        words[1:1] = draw(global_pair)  # `task -o json show ...`
    after = list(itertools.chain(*draw(st.lists(piece, max_size=6))))
    return [*before, *words, *after]


def _valid_values(option: Any) -> list[str]:
    if option.convert is None:
        return []
    valid = []
    for value in VALUES:
        try:
            option.convert(value)
        except fast._Unsure:
            continue
        if not value.startswith("-"):
            valid.append(value)
    return valid


@st.composite
def plain_command_lines(draw: st.DrawFn) -> list[str]:
    """Command lines the fast path should mostly accept: known options with values of their
    type, the right number of positional values, sometimes one odd token."""
    words = draw(st.sampled_from(sorted(COMMANDS)))
    signature = fast._signature(load(words))
    by_parameter = {option.parameter: (flag, option) for flag, option in signature.options.items()}
    pieces: list[list[str]] = []
    for name, (flag, option) in by_parameter.items():
        if name not in signature.required and not draw(st.booleans()):
            continue
        valid = _valid_values(option)
        if option.convert is None:
            pieces.append([flag])
        elif valid:
            value = draw(st.sampled_from(valid))
            pieces.append(draw(st.sampled_from([[flag, value], [f"{flag}={value}"]])))
    plain_values = st.sampled_from([v for v in VALUES if v and not v.startswith("-")])
    count = len(signature.positional) + (draw(st.integers(1, 3)) if signature.variadic else 0)
    pieces += [[draw(plain_values)] for _ in range(count)]
    pieces = draw(st.permutations(pieces))
    if draw(st.integers(0, 3)) == 0:
        pieces.insert(draw(st.integers(0, len(pieces))), [draw(st.sampled_from(NOISE))])
    return [*words, *itertools.chain(*pieces)]


@given(st.one_of(command_lines(), plain_command_lines()))
def test_the_fast_path_never_disagrees_with_cyclopts(tokens: list[str]) -> None:
    found = fast_reading(tokens)
    event("fast" if found is not None else "left to cyclopts")
    if found is not None:
        assert found == cyclopts_reading(tokens)


def test_the_client_path_loads_no_server_side_and_no_cyclopts() -> None:
    """Running any command through the fast path imports only the client side."""
    script = textwrap.dedent(
        """
        import json, os, sys
        from runlease.cli import fast
        from runlease.cli.commands import COMMANDS, load
        for words in COMMANDS:
            fast._signature(load(words))
        assert fast.parse(["task", "next", "--wait"], os.environ) is not None
        heavy = ("cyclopts", "trio", "lmdb", "rich", "runlease.core.machine",
                 "runlease.runtime", "runlease.persistence")
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy
                                or any(m.startswith(h) for h in heavy))))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["serve", "--help"]) == 0
    shown = capsys.readouterr().out
    assert "<data dir>/runlease.sock" in shown


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--help"]) == 0
    top = capsys.readouterr().out
    for words in COMMANDS:
        assert f" {words[0]} " in top
    for group in GROUPS:
        assert run([group, "--help"]) == 0
        listed = capsys.readouterr().out
        for words in COMMANDS:
            if words[0] == group and len(words) > 1:  # a group's own command has no word
                assert f" {words[1]} " in listed, (group, words)
