"""The CLI loads only what a command uses (issue 16: a command as a process at p50 <= 200 ms).

Structural, not timed: a fresh interpreter imports the CLI (or runs a command) and the test
looks at ``sys.modules``. ``bench/cli_startup.py`` measures the time itself.
"""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from dlapp.cli import main as cli
from dlapp.client_config import _client_model, build, client_settings
from dlapp.errors import DlappError

# What no light command may pull in: Ray, the server (FastAPI, SQLAlchemy), the simulator and
# the scheduler, the embedded cluster, containers and data transfers, the spec's models.
HEAVY = (
    "ray",
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "fsspec",
    "dlapp.sim",
    "dlapp.scheduler",
    "dlapp.server",
    "dlapp.store",
    "dlapp.embedded",
    "dlapp.runtime",
    "dlapp.executor",
    "dlapp.data",
    "dlapp.spec",
    "dlapp.config",
    "dlapp.cli.sim",
    "dlapp.cli.containers",
    "dlapp.cli.relay",
)


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return set(json.loads(proc.stdout.splitlines()[-1]))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(f"{h}.") for h in HEAVY))


def test_importing_the_cli_loads_no_command_module_and_nothing_heavy() -> None:
    modules = loaded_after("import dlapp.cli.main")
    assert heavy(modules) == []
    assert not {"httpx", "pydantic", "rich", "yaml"} & modules
    assert not {m for m in modules if m.startswith("dlapp.cli.")} - {"dlapp.cli.main"}


def test_version_loads_no_command_module() -> None:
    modules = loaded_after("from dlapp.cli.main import main\nassert main(['--version']) == 0")
    assert heavy(modules) == [] and "httpx" not in modules


def test_status_loads_the_client_and_its_commands_module_only() -> None:
    """``dlapp status ID`` (here with no server: it fails at the connection) imports the apps
    commands and the HTTP client, and no other command module, no spec, no server code."""
    code = (
        "import os\n"
        "os.environ.update(DLAPP_SERVER='http://127.0.0.1:9', DLAPP_TOKEN='dlapp_x')\n"
        "from dlapp.cli.main import main\n"
        "assert main(['status', 'application_1_0001']) == 1"
    )
    modules = loaded_after(code)
    assert heavy(modules) == [] and "pydantic" not in modules
    assert {"dlapp.cli.apps", "dlapp.client", "httpx"} <= modules
    assert {m for m in modules if m.startswith("dlapp.cli.")} <= {
        "dlapp.cli.main",
        "dlapp.cli.apps",
        "dlapp.cli.common",
    }
    # httpx's own command-line tool (and pygments, which only it wanted) is not loaded
    assert "pygments" not in modules


def test_the_httpx_command_line_stand_in_says_what_it_is() -> None:
    code = (
        "import dlapp.cli.main, httpx\n"
        "try:\n"
        "    httpx.main()\n"
        "except SystemExit as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert "httpx's command line is not loaded" in proc.stdout


@pytest.mark.parametrize("module", cli.MODULES)
def test_each_command_is_found_in_the_module_the_table_names(module: str) -> None:
    """``COMMANDS`` names, for every command a module registers, that module: running it
    imports that module alone (a command missing from the table would load them all)."""
    group = click.Group()
    __import__(f"dlapp.cli.{module}", fromlist=["register"]).register(group)
    assert group.commands, module
    assert {name: cli.COMMANDS.get(name) for name in group.commands} == dict.fromkeys(
        group.commands, module
    )


def test_help_still_lists_every_command() -> None:
    group = cli.LazyGroup(name="dlapp")
    with click.Context(group) as ctx:
        assert group.list_commands(ctx) == sorted(cli.COMMANDS)
    assert group.loaded == set(cli.MODULES)


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"server": "http://x", "token": "dlapp_t", "ca_file": "/ca.pem", "timeout_s": "12.5"},
        {"timeout_s": 5},
        {"timeout_s": " 5 "},  # not plain: the pydantic model reads it
        {"timeout_s": "1e2"},
        {"token": ""},
    ],
)
def test_client_settings_without_pydantic_read_as_the_pydantic_model(
    values: dict[str, object],
) -> None:
    plain = client_settings(values, "client.yaml")
    model = build(_client_model(), dict(values), "client.yaml")
    token = None if model.token is None else model.token.get_secret_value()
    assert (plain.server, plain.ca_file, plain.timeout_s) == (
        model.server,
        model.ca_file,
        model.timeout_s,
    )
    assert (None if plain.token is None else plain.token.get_secret_value()) == token
    assert "dlapp_t" not in repr(plain)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"user": "alice"}, "user: Extra inputs are not permitted"),
        ({"timeout_s": "soon"}, "timeout_s: Input should be a valid number"),
        ({"server": 5}, "server: Input should be a valid string"),
    ],
)
def test_a_bad_client_setting_gets_the_pydantic_message(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(DlappError, match=rf"invalid configuration \(client.yaml\): {message}"):
        client_settings(values, "client.yaml")
