"""What every ``parasnn`` command does the same way: defaults shown in ``--help``, and
``--config FILE`` to re-run the resolved configuration an earlier run wrote.

Every ``<out>.config.json`` written by convert, calibrate, ablate and evaluate holds
``"command"`` and ``"arguments"`` (every option's resolved value, defaults included);
``parasnn convert --config runs/net.config.json --out other`` runs the same command again,
options given on the command line overriding the file's.
"""
from __future__ import annotations

import argparse
import enum
import json
from pathlib import Path
from typing import Any, Sequence

__all__ = ["show_defaults", "arguments_record", "expand_config", "subcommands"]

_CONFIG_HELP = ("re-run the resolved configuration an earlier run wrote (<out>.config.json); options given on the "
                "command line override it")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-parsers of ``parser`` by command name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_shown(item) for item in value) or "none"
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Add ``(default: …)`` to the help of every option of every command whose help does not
    already state its default, and ``--config`` to every command."""
    for command in subcommands(parser).values():
        for action in command._actions:
            default = action.default
            if (not action.option_strings or default in (None, False, argparse.SUPPRESS)
                    or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
                continue
            help_text = action.help or ""
            if "default" in help_text.lower():
                continue
            shown = _shown(default).replace("%", "%%")
            action.help = f"{help_text} (default: {shown})" if help_text else f"default: {shown}"
        if "--config" not in command._option_string_actions:
            command.add_argument("--config", type=Path, metavar="FILE", help=_CONFIG_HELP)


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # paths, devices


def arguments_record(args: argparse.Namespace) -> dict:
    """``{"command": …, "arguments": {option: value}}`` of a parsed command line, for a
    resolved configuration file."""
    arguments = {name: _jsonable(value) for name, value in vars(args).items()
                 if name not in ("handler", "command", "config") and not callable(value)}
    return {"command": args.command, "arguments": arguments}


def _tokens(command: argparse.ArgumentParser, arguments: dict, where: str) -> list[str]:
    positional, options = [], []
    for action in command._actions:
        if action.dest not in arguments or isinstance(action, argparse._HelpAction) or action.dest == "config":
            continue
        value = arguments[action.dest]
        if not action.option_strings:
            if value is not None:
                positional.append(_shown(value))
        elif isinstance(action, argparse._StoreTrueAction):
            options += [action.option_strings[-1]] if value else []
        elif isinstance(action, argparse._StoreFalseAction):
            options += [] if value else [action.option_strings[-1]]
        elif value is not None:
            options += [action.option_strings[-1], _shown(value)]
    unknown = set(arguments) - {action.dest for action in command._actions}
    if unknown:
        raise SystemExit(f"parasnn: error: {where} has options this version does not know: {sorted(unknown)}")
    return positional + options


def expand_config(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """``argv`` with ``--config FILE`` replaced by the command and options the file records
    (the file's options first, so that the command line's own options win)."""
    argv = list(argv)
    if "--config" not in argv:
        return argv
    index = argv.index("--config")
    if index + 1 >= len(argv):
        raise SystemExit("parasnn: error: --config needs a file (a <out>.config.json written by a run)")
    path = Path(argv[index + 1])
    rest = argv[:index] + argv[index + 2:]
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SystemExit(f"parasnn: error: --config {path}: cannot read it ({error})") from None
    record = data.get("config", data) if isinstance(data, dict) else {}
    record = record if "arguments" in record else data
    if not isinstance(record, dict) or not isinstance(record.get("arguments"), dict) or "command" not in record:
        raise SystemExit(f"parasnn: error: --config {path} records no command and arguments (files written by "
                         "parasnn convert, calibrate, ablate and evaluate --json do)")
    command_name = record["command"]
    commands = subcommands(parser)
    if rest and rest[0] in commands:
        if rest[0] != command_name:
            raise SystemExit(f"parasnn: error: --config {path} is a '{command_name}' configuration, not '{rest[0]}'")
        rest = rest[1:]
    if command_name not in commands:
        raise SystemExit(f"parasnn: error: --config {path}: unknown command {command_name!r}")
    return [command_name, *_tokens(commands[command_name], record["arguments"], f"--config {path}"), *rest]
