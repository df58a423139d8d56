"""Run an ordinary command line without loading cyclopts.

An agent starts the CLI on every step, and importing cyclopts costs several times Python's
own start-up. Most command lines are plain: command words, positional values, ``--flag``,
``--option value`` or ``--option=value``, and the global options. :func:`parse` reads those
from the same signatures cyclopts reads (see :mod:`runlease.cli.params`) and returns the
call to make.

It is deliberately narrow: anything it is not sure to read exactly as cyclopts would (help
and version flags, ``--``, a negative flag such as ``--no-wait``, a repeated option, a value
that starts with ``-``, a number in another notation, a value outside a choice, a missing
required option, a config file for a command that reads one) makes it return None, and
cyclopts parses the whole command line instead, with its own help and error messages.
tests/test_cli_fast.py checks that whenever this module answers, cyclopts gives the same
answer.
"""

from __future__ import annotations

import inspect
import math
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, NamedTuple

from runlease.cli.commands import COMMANDS, CONFIGURABLE, GROUPS, Command, load
from runlease.cli.context import global_options
from runlease.cli.params import FAST_OPTIONS, Param, default_flag

# Numbers in the plain notation only; cyclopts also reads 0x10, +5, inf and the like, and
# such values are left to it.
_INTEGER = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class _Unsure(Exception):
    """This command line is cyclopts' to read."""


class Unreadable(_Unsure):
    """A signature this module cannot read: its command always goes through cyclopts."""


class Invocation(NamedTuple):
    """A parsed command line: the command's function, its arguments, the global options."""

    command: Command
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]


class _Option(NamedTuple):
    parameter: str
    convert: Callable[[str], Any] | None  # None: a flag, present or absent
    repeatable: bool
    env_var: str | None
    # Takes a value starting with "-"; read here only when it is "-" alone (stdin).
    leading_hyphen: bool = False


class _Signature:
    def __init__(self) -> None:
        self.options: dict[str, _Option] = {}  # flag -> option
        self.positional: list[Callable[[str], Any]] = []  # converters, in order
        self.variadic: Callable[[str], Any] | None = None
        self.required: set[str] = set()  # keyword-only parameters without a default


def parse(tokens: Sequence[str], env: Mapping[str, str]) -> Invocation | None:
    """The call a command line asks for, or None when cyclopts should read it."""
    try:
        options, rest = _scan(_signature(global_options), tokens, env, leave_others=True)
        words = _command_words(rest)
        _no_config_file(words, options)
        command = load(words)
        signature = _signature(command)
        values, positional = _scan(signature, rest[len(words) :], env)
        args = _bind_positional(signature, positional)
    except _Unsure:
        return None
    return Invocation(command, args, values, options)


def _command_words(rest: Sequence[str]) -> tuple[str, ...]:
    # A group's command before the group's own (``events get`` before ``events``).
    if len(rest) >= 2 and rest[0] in GROUPS and (rest[0], rest[1]) in COMMANDS:
        return (rest[0], rest[1])
    if rest and (rest[0],) in COMMANDS:
        return (rest[0],)
    raise _Unsure


def _no_config_file(words: tuple[str, ...], options: Mapping[str, Any]) -> None:
    """A command that reads a config file and is given one is cyclopts' to run: it applies
    the file beneath the flags."""
    if words in CONFIGURABLE and options.get("config") is not None:
        raise _Unsure


def _scan(
    signature: _Signature,
    tokens: Sequence[str],
    env: Mapping[str, str],
    *,
    leave_others: bool = False,
) -> tuple[dict[str, Any], list[str]]:
    """The options of ``signature`` by parameter name, and the other tokens in order (which
    must not look like options unless ``leave_others``)."""
    values: dict[str, Any] = {}
    others: list[str] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        flag, equals, inline = token.partition("=") if token.startswith("--") else (token, "", "")
        option = signature.options.get(flag) if token.startswith("-") else None
        if option is None:
            if token.startswith("-") and not leave_others:
                raise _Unsure
            others.append(token)
            continue
        if option.convert is None:
            if equals or option.parameter in values:
                raise _Unsure
            values[option.parameter] = True
            continue
        if equals:
            text = inline
            if not text:
                raise _Unsure
        elif index < len(tokens) and (
            not tokens[index].startswith("-") or (option.leading_hyphen and tokens[index] == "-")
        ):
            text = tokens[index]
            index += 1
        else:
            raise _Unsure
        value = option.convert(text)
        if option.repeatable:
            values.setdefault(option.parameter, []).append(value)
        elif option.parameter in values:
            raise _Unsure
        else:
            values[option.parameter] = value
    for option in signature.options.values():
        if option.env_var is not None and option.parameter not in values:
            found = env.get(option.env_var)
            if found is not None:
                if not found or option.repeatable or option.convert is None:
                    raise _Unsure
                values[option.parameter] = option.convert(found)
    if signature.required - values.keys():
        raise _Unsure
    return values, others


def _bind_positional(signature: _Signature, tokens: list[str]) -> tuple[Any, ...]:
    count = len(signature.positional)
    if len(tokens) < count or (len(tokens) > count and signature.variadic is None):
        raise _Unsure
    bound = [convert(text) for convert, text in zip(signature.positional, tokens, strict=False)]
    if signature.variadic is not None:
        extra = tokens[count:]
        if not extra:
            raise _Unsure
        bound += [signature.variadic(text) for text in extra]
    return tuple(bound)


@cache
def _signature(function: Callable[..., Any]) -> _Signature:
    hints = typing.get_type_hints(function, include_extras=True)
    signature = _Signature()
    for parameter in inspect.signature(function).parameters.values():
        hint, param = _unannotated(hints[parameter.name])
        if parameter.kind is parameter.VAR_POSITIONAL:
            if param is None or not param.options.get("allow_leading_hyphen"):
                signature.variadic = _converter(hint)
            continue
        if parameter.kind is parameter.POSITIONAL_ONLY:
            signature.positional.append(_converter(hint))
            continue
        if parameter.kind is not parameter.KEYWORD_ONLY:
            raise Unreadable(
                f"{function.__name__}: {parameter.name} is neither positional-only nor keyword-only"
            )
        repeatable = typing.get_origin(hint) is list
        item = typing.get_args(hint)[0] if repeatable else hint
        parse = None if param is None else param.options.get("parse")
        option = _Option(
            parameter=parameter.name,
            convert=_parsed(parse) if parse else None if item is bool else _converter(item),
            repeatable=repeatable,
            env_var=None if param is None else param.options.get("env_var"),
            leading_hyphen=param is not None and bool(param.options.get("allow_leading_hyphen")),
        )
        for flag in param.names(parameter.name) if param else (default_flag(parameter.name),):
            signature.options[flag] = option
        if parameter.default is parameter.empty:
            signature.required.add(parameter.name)
    return signature


def _unannotated(hint: Any) -> tuple[Any, Param | None]:
    """The type without ``Annotated`` or ``| None``, and its ``Param`` if it has one."""
    param = None
    if typing.get_origin(hint) is Annotated:
        for extra in hint.__metadata__:
            if isinstance(extra, Param):
                param = extra
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) in (UnionType, typing.Union):
        members = [member for member in typing.get_args(hint) if member is not NoneType]
        if len(members) == 1:
            hint = members[0]
    if param is not None and not param.options.keys() <= FAST_OPTIONS:
        raise Unreadable(f"the fast path cannot read {param!r}")
    return hint, param


def _converter(hint: Any) -> Callable[[str], Any]:
    if hint is str:
        return str
    if hint is int:
        return _integer
    if hint is float:
        return _decimal
    if hint is Path:
        return Path
    if typing.get_origin(hint) is Literal:
        return _choice(frozenset(typing.get_args(hint)))
    raise Unreadable(f"the fast path cannot convert to {hint!r}")


def _parsed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An option's own reader (``Param(parse=...)``); a wrong value is cyclopts' to report."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise _Unsure from None
        if isinstance(value, float) and not math.isfinite(value):
            raise _Unsure  # inf and nan: left to cyclopts, as for a plain number
        return value

    return convert


def _integer(text: str) -> int:
    if not _INTEGER.fullmatch(text):
        raise _Unsure
    return int(text)


def _decimal(text: str) -> float:
    if not _DECIMAL.fullmatch(text):
        raise _Unsure
    return float(text)


def _choice(choices: frozenset[Any]) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text not in choices:
            raise _Unsure
        return text

    return convert
