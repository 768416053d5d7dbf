"""The ``dlapp`` command and the reference tools' names (dlapp-launcher, dlapp-status, ...).

Every command talks to a server through ``DlappClient``; with no server configured it uses the
embedded local cluster (``dlapp up``), and ``launch`` starts that cluster when it is not up.
Each command group lives in a module of its own, registered here. Tested through ``main(argv)``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from dlapp import __version__
from dlapp.cli import admin, apps, cluster, containers, sim, usage
from dlapp.cli.apps import kill_app, list_apps, show_status
from dlapp.cli.common import err, launch_app
from dlapp.errors import DlappError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dlapp")
def cli() -> None:
    """Run deep-learning apps on a shared GPU cluster."""


apps.register(cli)  # dlapp launch, status, list, kill, softkill, logs, spec
cluster.register(cli)  # dlapp queues, gpus, node, up, down, server
admin.register(cli)  # dlapp admin ..., dlapp login
sim.register(cli)  # dlapp simulate
usage.register(cli)  # dlapp usage
containers.register(cli)  # dlapp images, dlapp shell, dlapp run

# -- entry points -----------------------------------------------------------------------------


def _run(fn: Any, argv: Sequence[str] | None, prog: str) -> int:
    try:
        result = fn.main(
            args=list(argv) if argv is not None else None, prog_name=prog, standalone_mode=False
        )
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except DlappError as exc:
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
    sys.exit(launch_app(spec_file, wait=False, follow=False))


def _ref_status_fn(app_id: str) -> None:
    sys.exit(show_status(app_id, as_json=False))


def _ref_list_fn(user: str | None) -> None:
    sys.exit(list_apps(user, show_all=True, as_json=False))


def _ref_kill(soft: bool) -> Any:
    def fn(args: tuple[str, ...]) -> None:
        if len(args) not in (1, 2):
            raise click.UsageError("give [USER] APP_ID")
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
    return _run(containers.shell, argv, "dlapp-shell")


def run_main(argv: Sequence[str] | None = None) -> int:
    """``dlapp-run``: ``dlapp run``, which launches from inside that shell."""
    return _run(containers.run, argv, "dlapp-run")


if __name__ == "__main__":
    sys.exit(main())
