"""The ``dlapp`` command and the reference tools' names (dlapp-launcher, dlapp-status, ...).

Every command talks to a server through ``DlappClient``; with no server configured it uses the
embedded local cluster (``dlapp up``), and ``launch`` starts that cluster when it is not up.
Each command group lives in a module of its own, loaded only when one of its commands runs (or
``--help`` lists them all): ``dlapp status ID`` imports no simulator, server, Ray or container
code (``tests/test_cli_imports.py``; ``bench/cli_startup.py`` times it). Tested through
``main(argv)``.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Sequence
from typing import Any

import click

from dlapp import __version__
from dlapp.errors import DlappError


def _without_httpx_command_line() -> None:
    """``import httpx`` imports httpx's own command-line tool (``httpx._main``, with rich's
    console and pygments) whenever those are installed: about a third of its import time, in
    every ``dlapp`` command that talks to a server. dlapp's process never runs that tool, so it
    gets a stand-in that says so (the ``httpx`` command, a process of its own, is unchanged)."""
    if "httpx" in sys.modules or "httpx._main" in sys.modules:
        return
    stand_in = types.ModuleType("httpx._main")

    def main(*_args: object, **_kwargs: object) -> None:
        raise SystemExit("httpx's command line is not loaded in the dlapp command's process")

    stand_in.main = main  # type: ignore[attr-defined]
    sys.modules["httpx._main"] = stand_in


_without_httpx_command_line()

# The modules whose ``register(group)`` adds their commands, in the order they are registered.
MODULES = (
    "apps",  # dlapp launch, status, list, kill, softkill, logs, spec
    "cluster",  # dlapp queues, gpus, node, up, down, server
    "admin",  # dlapp admin ..., dlapp login, dlapp token
    "sim",  # dlapp simulate
    "usage",  # dlapp usage
    "containers",  # dlapp images, dlapp shell, dlapp run
)
# Which module registers a command: only that one is imported to run it. A command missing here
# still runs (every module is loaded to find it); a test keeps this table whole.
COMMANDS = {
    **dict.fromkeys(("launch", "status", "list", "kill", "softkill", "logs", "spec"), "apps"),
    **dict.fromkeys(("queues", "gpus", "node", "up", "down", "server"), "cluster"),
    **dict.fromkeys(("admin", "login", "token"), "admin"),
    "simulate": "sim",
    "usage": "usage",
    **dict.fromkeys(("images", "shell", "run"), "containers"),
}


class LazyGroup(click.Group):
    """A group whose commands' modules are imported when a command is looked up: the one
    module of that command (``COMMANDS``), or all of them to list them (``--help``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loaded: set[str] = set()

    def load(self, module: str) -> None:
        if module not in self.loaded:
            self.loaded.add(module)
            importlib.import_module(f"dlapp.cli.{module}").register(self)

    def load_all(self) -> None:
        for module in MODULES:
            self.load(module)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            if cmd_name in COMMANDS:
                self.load(COMMANDS[cmd_name])
            if cmd_name not in self.commands:
                self.load_all()
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.load_all()
        return super().list_commands(ctx)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dlapp")
def cli() -> None:
    """Run deep-learning apps on a shared GPU cluster."""


# -- entry points -----------------------------------------------------------------------------


def _run(fn: Any, argv: Sequence[str] | None, prog: str) -> int:
    try:
        result = fn.main(
            args=list(argv) if argv is not None else None, prog_name=prog, standalone_mode=False
        )
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except DlappError as exc:
        from dlapp.cli.common import err

        err.print(f"{prog}: error: {exc.message}", markup=False)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        return 130
    return int(result or 0)


def main(argv: Sequence[str] | None = None) -> int:
    return _run(cli, argv, "dlapp")


HELP = {"help_option_names": ["-h", "--help"]}


def _reference(name: str, fn: Any, help: str) -> Any:
    """A reference tool's name (``dlapp-list`` ...) as an entry point of its own."""
    command = click.command(name=name, help=help, context_settings=HELP)(fn)

    def entry(argv: Sequence[str] | None = None) -> int:
        return _run(command, argv, name)

    return entry


def _ref_launcher_fn(spec_file: str) -> None:
    from dlapp.cli.common import launch_app

    sys.exit(launch_app(spec_file, wait=False, follow=False))


def _ref_status_fn(app_id: str) -> None:
    from dlapp.cli.apps import show_status

    sys.exit(show_status(app_id, as_json=False))


def _ref_list_fn(user: str | None) -> None:
    from dlapp.cli.apps import list_apps

    sys.exit(list_apps(user, show_all=True, as_json=False))


def _ref_kill(soft: bool) -> Any:
    def fn(args: tuple[str, ...]) -> None:
        if len(args) not in (1, 2):
            raise click.UsageError("give [USER] APP_ID")
        from dlapp.cli.apps import kill_app

        sys.exit(kill_app(args[-1], soft, owner=args[0] if len(args) == 2 else None))

    return fn


_KILL_ARGS = click.argument("args", nargs=-1, metavar="[USER] APP_ID")
launcher_main = _reference(
    "dlapp-launcher",
    click.argument("spec_file")(_ref_launcher_fn),
    "Launch the app SPEC_FILE describes (dl_app.properties or app.yaml) and print its app ID "
    "(as `dlapp launch`).",
)
status_main = _reference(
    "dlapp-status",
    click.argument("app_id")(_ref_status_fn),
    "Show one app: state, user, name, times, containers and their log URLs (as `dlapp status`).",
)
list_main = _reference(
    "dlapp-list",
    click.argument("user", required=False)(_ref_list_fn),
    "List apps, finished ones too, newest first; only USER's when given (as `dlapp list --all "
    "--user USER`).",
)
kill_main = _reference(
    "dlapp-kill",
    _KILL_ARGS(_ref_kill(False)),
    "End an app now (as `dlapp kill`). With USER, refuse unless the app is USER's.",
)
softkill_main = _reference(
    "dlapp-softkill",
    _KILL_ARGS(_ref_kill(True)),
    "SIGTERM an app, wait the grace period, then SIGKILL (as `dlapp softkill`). With USER, "
    "refuse unless the app is USER's.",
)


def shell_main(argv: Sequence[str] | None = None) -> int:
    """``dlapp-shell``: ``dlapp shell``, the development shell."""
    from dlapp.cli import containers

    return _run(containers.shell, argv, "dlapp-shell")


def run_main(argv: Sequence[str] | None = None) -> int:
    """``dlapp-run``: ``dlapp run``, which launches from inside that shell."""
    from dlapp.cli import containers

    return _run(containers.run, argv, "dlapp-run")


if __name__ == "__main__":
    sys.exit(main())
