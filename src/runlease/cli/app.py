"""The cyclopts application: help, usage errors and every command line the fast path leaves.

This module is loaded only when the fast path leaves a command line to cyclopts (help,
usage errors, unusual syntax). Every command of :data:`runlease.cli.commands.COMMANDS` is
registered lazily, with its docstring as help so listings show its summary: cyclopts
imports ``runlease.cli.app:<command words>`` when that command runs or shows its own help,
and this module's ``__getattr__`` answers with the command's function, its ``Param``
annotations turned into ``cyclopts.Parameter``. Help is plain text, so nothing in a help
string is read as markup (``<data dir>`` stays as written).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

from cyclopts import App, CycloptsError, Parameter

from runlease.cli.commands import APP_HELP, COMMANDS, GROUPS, load
from runlease.cli.config_file import ConfigFile
from runlease.cli.context import execute, global_options
from runlease.cli.output import Output, default_output, emit_error
from runlease.cli.params import Param
from runlease.errors import USAGE, UsageError


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("runlease")
    except Exception:
        return "0+unknown"


def for_cyclopts(
    declaration: Callable[..., Any], body: Callable[..., int] | None = None
) -> Callable[..., int]:
    """A function with the signature of ``declaration``, each ``Param`` in it turned into
    a ``cyclopts.Parameter``, that calls ``body`` (``declaration`` itself by default)."""
    hints = {
        name: _translate(hint)
        for name, hint in typing.get_type_hints(declaration, include_extras=True).items()
    }
    signature = inspect.signature(declaration)
    target = declaration if body is None else body

    @functools.wraps(declaration)
    def command(*args: Any, **kwargs: Any) -> int:
        return target(*args, **kwargs)

    command.__annotations__ = hints
    command.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[
            parameter.replace(annotation=hints.get(parameter.name, parameter.annotation))
            for parameter in signature.parameters.values()
        ]
    )
    return command


def _translate(hint: Any) -> Any:
    if typing.get_origin(hint) is not Annotated:
        return hint
    base, *extras = typing.get_args(hint)
    translated = [_parameter(x) if isinstance(x, Param) else x for x in extras]
    return Annotated[(base, *translated)]


def _parameter(param: Param) -> Parameter:
    options = dict(param.options)
    parse = options.pop("parse", None)
    if parse is not None:
        # A ValueError's message becomes cyclopts' "Invalid value for --flag: ...".
        options["converter"] = lambda _type, tokens: parse(tokens[0].value)
    return Parameter(**options)


def _launch(*tokens: str, config: Path | None = None, **options: Any) -> int:
    # A config file is one more source of the command's options, read while parsing: cyclopts
    # fills from it only what the command line left out (see runlease.cli.config_file).
    app.config = None if config is None else ConfigFile(config)
    try:
        command, bound, _ = app.parse_args(tokens)
    finally:
        app.config = None
    return execute(command, bound.args, bound.kwargs, **options)


app = App(
    name="runlease",
    help=APP_HELP,
    version=_version,
    default_parameter=Parameter(negative_iterable=()),
    help_format="plaintext",
)
_groups = {name: App(name=name, help=text) for name, text in GROUPS.items()}
for _group in _groups.values():
    app.command(_group)
for _words in COMMANDS:
    if _words[0] in _groups and len(_words) == 1:
        # The group's own command: what the group's name alone runs.
        _groups[_words[0]].default(for_cyclopts(load(_words)))
        continue
    _parent = app if len(_words) == 1 else _groups[_words[0]]
    _parent.command(f"{__name__}:{' '.join(_words)}", name=_words[-1], help=load(_words).__doc__)
app.meta.default(for_cyclopts(global_options, _launch))
# `runlease --install-completion [--shell S]`: cyclopts writes its script where the shell
# looks for completions and adds a loader line to the shell's startup file.
app.register_install_completion_command(
    help="Install shell completion for runlease (bash, zsh or fish; detected if not given)."
)


def __getattr__(name: str) -> Callable[..., int]:
    """The command whose words, joined by spaces, are ``name``: cyclopts' lazy import."""
    words = tuple(name.split(" "))
    if words not in COMMANDS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return for_cyclopts(load(words))


def run_cyclopts(tokens: list[str]) -> int:
    """Parse and run a command line with cyclopts; a usage error exits 2 with USAGE."""
    try:
        result = app.meta(
            tokens, exit_on_error=False, print_error=False, result_action="return_value"
        )
    except CycloptsError as exc:
        output = _output_from_argv(tokens) or default_output()
        if _stdout_is_for_a_script(tokens):
            output = "table"  # the error on stderr, so it is never taken for the value
        message = " ".join(str(exc).split()) or type(exc).__name__
        emit_error(USAGE, f"{message} (see runlease --help)", output)
        return UsageError.exit_code
    return result if isinstance(result, int) else 0


def _stdout_is_for_a_script(tokens: Sequence[str]) -> bool:
    """Whether the command line asks for a bare value (--field) or shell code (--export)."""
    return any(
        token in ("--field", "--export") or token.startswith(("--field=", "--export="))
        for token in tokens
    )


def _output_from_argv(tokens: Sequence[str]) -> Output | None:
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
