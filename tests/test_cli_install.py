"""Running runlease as an installed tool: shell completion, ``serve --print-systemd`` and
``serve``'s TOML config file (``--config`` / ``$RUNLEASE_CONFIG``)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any
from unittest import mock

import pytest

from cli_helpers import RUNLEASE, Cli, Server, clean_env
from runlease.cli import fast, run
from runlease.cli.params import Param
from runlease.cli.systemd import option_flags, quote, serve_unit


@pytest.fixture(autouse=True)
def _no_runlease_env() -> Iterator[None]:
    """Options come from each test's command line and files only."""
    cleared = {k: v for k, v in os.environ.items() if not k.startswith("RUNLEASE_")}
    with mock.patch.dict(os.environ, cleared, clear=True):
        yield


def runlease(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    return subprocess.run(
        [*RUNLEASE, *args],
        capture_output=True,
        text=True,
        env=clean_env(env),
        cwd=cwd,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def unit_lines(text: str) -> dict[str, list[str]]:
    """A unit file's settings: key -> values in order (comments and sections left out)."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def usage_error(capsys: pytest.CaptureFixture[str], *tokens: str) -> str:
    assert run(list(tokens)) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "USAGE"
    message: str = error["message"]
    return message


# ------------------------------------------------------------------------------ completion
def test_the_bash_completion_script_completes_commands_and_flags(tmp_path: Path) -> None:
    done = runlease("completion", "bash")
    assert done.returncode == 0, done.stderr
    script = done.stdout
    for word in ("serve", "status", "heartbeat", "force-release", "--data-dir", "--socket"):
        assert word in script
    bash = shutil.which("bash")
    assert bash is not None, "bash is needed to try the script"
    (tmp_path / "runlease.bash").write_text(script)
    probe = (
        f"source {shlex.quote(str(tmp_path / 'runlease.bash'))}\n"
        'complete_words() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _runlease; '
        'echo "${COMPREPLY[*]}"; }\n'
        "complete_words runlease ta\n"
        "complete_words runlease task heartb\n"
        "complete_words runlease serve --data-d\n"
    )
    answers = subprocess.run(
        [bash, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    assert answers == ["task", "heartbeat", "--data-dir"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_name_the_commands(
    shell: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert "runlease" in script
    assert "heartbeat" in script


def test_an_unknown_shell_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert "csh" in usage_error(capsys, "completion", "csh")


def test_install_completion_writes_the_script_and_loads_it_from_bashrc(tmp_path: Path) -> None:
    done = runlease("--install-completion", "--shell", "bash", env={"HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    installed = tmp_path / ".local/share/bash-completion/completions/runlease"
    assert "_runlease" in installed.read_text()
    assert str(installed) in (tmp_path / ".bashrc").read_text()


# ------------------------------------------------------------------------------ systemd
def test_print_systemd_prints_a_unit_for_the_options_given_and_serves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    tokens = ["serve", "--data-dir", "data", "--durability", "relaxed", "--max-connections"]
    tokens += ["20", "--listen", f"unix:{tmp_path / 'sockets/s.sock'}", "--print-systemd"]
    assert run(tokens) == 0
    unit = unit_lines(capsys.readouterr().out)
    # Nothing was served: no data directory, no socket.
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "sockets").exists()

    command = shlex.split(unit["ExecStart"][0])
    assert Path(command[0]).is_absolute()
    assert os.access(command[0], os.X_OK)
    arguments = command[command.index("serve") + 1 :]
    assert arguments == [
        "--data-dir",
        str(tmp_path / "data"),
        "--durability",
        "relaxed",
        "--max-connections",
        "20",
        "--listen",
        f"unix:{tmp_path / 'sockets/s.sock'}",
    ]
    assert unit["Type"] == ["simple"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["KillSignal"] == ["SIGTERM"]
    assert int(unit["TimeoutStopSec"][0]) > 10  # above the server's 10 s shutdown grace
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
    # The data dir and the socket's directory stay writable under ProtectSystem=strict.
    assert shlex.split(unit["ReadWritePaths"][0]) == [
        str(tmp_path / "data"),
        str(tmp_path / "sockets"),
    ]
    assert unit["WorkingDirectory"] == [str(tmp_path)]
    # A private /tmp would hide a data dir or socket kept in /tmp from everyone else.
    assert ("PrivateTmp" in unit) == (not tmp_path.is_relative_to("/tmp"))


def test_a_private_tmp_and_file_system_limits_only_where_they_break_nothing() -> None:
    def unit(data_dir: str, *, exec_hooks: bool = False) -> dict[str, list[str]]:
        text = serve_unit(
            ["/usr/bin/runlease", "serve"],
            data_dir=Path(data_dir),
            sockets=[Path(data_dir) / "runlease.sock"],
            working_dir=Path("/"),
            user="runlease",
            shutdown_grace=10.0,
            exec_hooks=exec_hooks,
            hook_secret_from_env=False,
            tcp=False,
        )
        return unit_lines(text)

    assert unit("/var/lib/runlease")["PrivateTmp"] == ["yes"]
    assert unit("/var/lib/runlease")["User"] == ["runlease"]
    assert "PrivateTmp" not in unit("/tmp/runlease")
    assert unit("/home/me/.local/share/runlease")["ProtectHome"] == ["read-only"]
    with_exec = unit("/var/lib/runlease", exec_hooks=True)
    assert "ProtectSystem" not in with_exec
    assert with_exec["NoNewPrivileges"] == ["yes"]


def test_the_units_command_line_runs_that_server(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    done = runlease(
        "serve", "--data-dir", str(tmp_path / "data"), "--socket", str(sock), "--durability",
        "relaxed", "--print-systemd",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    command = shlex.split(unit_lines(done.stdout)["ExecStart"][0])
    assert command[-2:] == ["--socket", str(sock)]
    server = Server(command)
    try:
        server.wait_listening()
        status = Cli(socket=sock).ok("status")
        assert status["durability"] == "relaxed"
        assert server.stop() == 0
    finally:
        server.kill()


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit's syntax cannot be checked here")
    done = runlease("serve", "--data-dir", str(tmp_path / "my data"), "--print-systemd")
    assert done.returncode == 0, done.stderr
    unit = tmp_path / "runlease.service"
    unit.write_text(done.stdout)
    checked = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    complaints = [line for line in checked.stderr.splitlines() if "runlease.service" in line]
    assert checked.returncode == 0, checked.stderr
    assert complaints == []


def test_words_are_quoted_for_systemd() -> None:
    assert quote("/usr/bin/runlease") == "/usr/bin/runlease"
    assert quote("/srv/my data") == '"/srv/my data"'
    assert quote('say "hi"') == '"say \\"hi\\""'
    assert quote("50%") == "50%%"
    assert quote("$HOME") == "$$HOME"
    assert quote("") == '""'


def test_the_flags_are_rebuilt_from_any_signature() -> None:
    """A new option of serve is written into the unit with no change to the writer."""

    def declaration(
        *,
        level: Annotated[str, Param(name="--log-level")] = "info",
        http: str | None = None,
        verbose: bool = False,
        colour: bool = True,
        tag: list[str] | None = None,
        key_file: Path | None = None,
    ) -> int:
        return 0

    given = {
        "level": "debug",
        "http": "127.0.0.1:8080",
        "verbose": True,
        "colour": False,
        "tag": ["a", "b c"],
        "key_file": Path("k.pem"),
    }
    assert option_flags(declaration, given) == [
        "--log-level", "debug", "--http", "127.0.0.1:8080", "--verbose", "--no-colour",
        "--tag", "a", "--tag", "b c", "--key-file", str(Path("k.pem").absolute()),
    ]  # fmt: skip
    defaults = {"level": "info", "http": None, "verbose": False, "colour": True}
    assert option_flags(declaration, defaults) == []


# ------------------------------------------------------------------------------ config
def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_values_apply_and_flags_given_win(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path / "runlease.toml",
        f'data-dir = "{tmp_path / "data"}"\n'
        'durability = "relaxed"\n'
        "max-connections = 7\n"
        "allow-agent-force = true\n"
        'hook = ["run_failed=exec:logger"]\n'
        'listen = ["unix:/tmp/runlease-test.sock"]\n',
    )
    assert run(["--config", str(config), "serve", "--max-connections", "9", "--print-systemd"]) == 0
    command = shlex.split(unit_lines(capsys.readouterr().out)["ExecStart"][0])
    arguments = command[command.index("serve") + 1 :]
    assert arguments == [
        "--data-dir", str(tmp_path / "data"), "--durability", "relaxed", "--allow-agent-force",
        "--max-connections", "9", "--hook", "run_failed=exec:logger",
        "--listen", "unix:/tmp/runlease-test.sock",
    ]  # fmt: skip

    # The same file from $RUNLEASE_CONFIG, and --config after the command.
    for tokens, env in [
        (["serve", "--print-systemd"], {"RUNLEASE_CONFIG": str(config)}),
        (["serve", "--config", str(config), "--print-systemd"], {}),
    ]:
        with mock.patch.dict(os.environ, env):
            assert run(tokens) == 0
        command = shlex.split(unit_lines(capsys.readouterr().out)["ExecStart"][0])
        assert command[command.index("--max-connections") + 1] == "7"
        assert "--allow-agent-force" in command


def test_bad_config_files_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def refused(text: str | None) -> str:
        path = tmp_path / "bad.toml"
        if text is not None:
            path.write_text(text)
        message = usage_error(capsys, "--config", str(path), "serve", "--print-systemd")
        assert str(path) in message
        return message

    assert "max-conections" in refused("max-conections = 5\n")
    assert "socket" in refused('socket = "/tmp/x.sock"\n')  # a global option: use listen
    assert "max-connections" in refused('max-connections = "many"\n')
    assert "durability" in refused('durability = "sometimes"\n')
    assert "not valid TOML" in refused("data-dir = \n")
    (tmp_path / "bad.toml").unlink()
    assert "No such file" in refused(None)
    with mock.patch.dict(os.environ, {"RUNLEASE_CONFIG": str(tmp_path / "bad.toml")}):
        assert run(["serve", "--print-systemd"]) == 2
    assert "No such file" in json.loads(capsys.readouterr().out)["error"]["message"]


def test_only_serve_reads_the_config_and_other_commands_stay_fast(tmp_path: Path) -> None:
    env = {"RUNLEASE_CONFIG": str(tmp_path / "absent.toml")}
    assert fast.parse(["status"], env) is not None
    assert fast.parse(["serve", "--data-dir", "d"], env) is None
    assert fast.parse(["serve", "--data-dir", "d"], {}) is not None
    assert fast.parse(["--config", "x.toml", "serve"], {}) is None


def test_a_server_runs_from_its_config_file(tmp_path: Path) -> None:
    sock = tmp_path / "from-config.sock"
    config = write_config(
        tmp_path / "runlease.toml",
        f'data-dir = "{tmp_path / "data"}"\ndurability = "relaxed"\nlisten = ["unix:{sock}"]\n',
    )
    server = Server([*RUNLEASE, "serve"], env={"RUNLEASE_CONFIG": str(config)})
    try:
        listening = server.wait_listening()
        assert str(sock) in json.dumps(listening)
        status = Cli(socket=sock).ok("status")
        assert status["durability"] == "relaxed"
        assert server.stop() == 0
    finally:
        server.kill()
    assert (tmp_path / "data").is_dir()
