"""simctl: every operator command. Exit codes: 0 success, 1 check failed or refused, 2 bad usage
or configuration. Every refusal is one line on stderr, mapped from the project's errors here
(exit_for) and nowhere else.

Each command or command group lives in its own module of this package (COMMANDS), imported only
when a command line names it: a short command such as `simctl run` loads only what it uses, so an
operator's script calling it in a loop does not take a core from the engine. `--help` and a
command line that names no known command import them all, to list them."""

from __future__ import annotations

import importlib
import sys
from typing import NoReturn

import typer
from typer._click import exceptions as click_exc  # typer vendors click; pinned in constraints.txt
from typer.core import TyperArgument

from simctl.common import Exit, err, refuse_key_arguments


def _usage_name(self: TyperArgument) -> str:
    """An argument in a usage line as the help and the docs name it: `USER`, `[FILE]`."""
    name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
    return name + ("..." if self.nargs != 1 else "")


# typer writes a required argument as `{user}`; operators read USER in the help and the docs.
TyperArgument._usage_display_name = _usage_name  # type: ignore[method-assign]

app = typer.Typer(
    name="simctl",
    help="Operate simengine, the paper-trading simulation engine. "
    "Configuration comes from the environment (DATABASE_URL, REDIS_URL, SIM_*) and .env.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _commands() -> None:
    # A group even when only one command is registered (typer would run a lone command as the
    # whole app, and its usage line would lose the command's name).
    pass


# Every command, in registration order (--help lists the commands, then the groups):
# name -> (its module in simctl, the command function, or "app" for a group).
COMMANDS: dict[str, tuple[str, str]] = {
    "migrate": ("migrate", "migrate"),
    "seed-demo": ("seed", "seed_demo"),
    "scheduler": ("processes", "scheduler"),
    "worker": ("processes", "worker"),
    "run": ("run", "run"),
    "status": ("status", "status"),
    "reconcile": ("reconcile", "reconcile"),
    "checkpoint": ("checkpoint", "checkpoint"),
    "market": ("market", "app"),
    "users": ("users", "app"),
    "withdrawals": ("withdrawals", "app"),
    "prices": ("prices", "app"),
    "report": ("report", "report"),
    "grant-reader": ("roles", "grant_reader"),
    "bench": ("bench", "bench"),
}
# A USER of `-1` reaches the command, which refuses it in words, not click's option parser.
_COMMAND_SETTINGS: dict[str, dict[str, bool]] = {
    "run": {"ignore_unknown_options": True},
    "report": {"ignore_unknown_options": True},
}
_registered: set[str] = set()


def _register(only: str | None = None) -> None:
    """Import and add the command a command line names, or every command (only=None)."""
    for name in COMMANDS if only is None else (only,):
        if name in _registered:
            continue
        _registered.add(name)
        module_name, attribute = COMMANDS[name]
        found = getattr(importlib.import_module(f"simctl.{module_name}"), attribute)
        if isinstance(found, typer.Typer):
            app.add_typer(found, name=name)
        else:
            app.command(name, context_settings=_COMMAND_SETTINGS.get(name))(found)


def register_all() -> typer.Typer:
    """The app with every command (main() registers only what a command line needs): for tools
    and tests that list the commands."""
    _register()
    return app


def exit_for(exc: BaseException) -> Exit | None:
    """The one-line exit for an error an operator fixes or waits out; None for a bug. Waiting or
    configuration (the database or Redis away, credentials, schema, privileges, a busy metrics
    port, a market setting that differs from the stored one): 2. A refusal or a failed check: 1.
    Imports lazily: only a failing command pays for them."""
    if isinstance(exc, Exit):
        return exc
    from redis.exceptions import RedisError

    from engine.errors import Rejected
    from store.db import driver_error
    from store.errors import Misconfigured, StoreError, Unavailable, first_line
    from store.market import MarketMismatch
    from workers.enqueue import RedisUnavailable
    from workers.metrics import MetricsPortError

    if isinstance(exc, RedisError):
        return Exit(2, f"cannot reach Redis: {first_line(exc)}")
    project = driver_error(exc) or exc
    if isinstance(
        project, Unavailable | Misconfigured | RedisUnavailable | MetricsPortError | MarketMismatch
    ):
        return Exit(2, str(project))
    if isinstance(project, StoreError | Rejected):  # NotFound, Refused, MigrationError, ...
        return Exit(1, str(project))
    return None


def fail(code: int, message: str) -> NoReturn:
    from engine.text import printable

    # A message may quote what an operator or a stored row gave: no control character. Its own
    # line breaks stay (a refusal may list one problem a line, as migrate's adoption check does).
    shown = "\n".join(printable(line) for line in message.split("\n"))
    err.print(f"simctl: {shown}", markup=False)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point: click's usage errors and our own become one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    try:
        refuse_key_arguments(args)
    except Exit as exc:
        fail(exc.code, str(exc))
    _register(_command_line_command(args))
    try:
        result = app(args=args or ["--help"], standalone_mode=False)
    except click_exc.NoArgsIsHelpError as exc:
        # A group named alone (`simctl users`) asks what it holds, as `simctl` alone does.
        print(exc.ctx.get_help())
        sys.exit(0)
    except click_exc.UsageError as exc:
        fail(2, f"error: {exc.format_message()} (see --help)")
    except click_exc.ClickException as exc:
        fail(exc.exit_code, f"error: {exc.format_message()}")
    except (typer.Abort, KeyboardInterrupt):
        fail(130, "interrupted")
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        mapped = exit_for(exc)
        if mapped is None:
            raise
        fail(mapped.code, str(mapped))
    sys.exit(result if isinstance(result, int) else 0)


def _command_line_command(args: list[str]) -> str | None:
    """The command a command line names, None (all of them) for an option first (e.g. --help),
    no arguments or an unknown command, so that help and "No such command" list every one."""
    if args and args[0] in COMMANDS:
        return args[0]
    return None
