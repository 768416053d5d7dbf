"""``dlapp admin ...`` (users, tokens, the audit log: cluster admins), ``dlapp login`` and
``dlapp token rotate`` (anyone's own token).

A token is printed once, when it is made (``user add``, ``token rotate``; ``--expires-in DAYS``
gives it an expiry of its own, besides the server's ``token_lifetime_days``); the server keeps
only its hash. ``dlapp login`` checks a token against a server and saves both in the client
config, mode 0600 (with ``--ca-file``, the CA that signed an https server's certificate too);
``dlapp token rotate`` saves the caller's new token where the CLI found the old one.
Registered on the main group by ``dlapp.cli.main``; tested through its ``main``.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import yaml
from rich.console import Console
from rich.table import Table

from dlapp.cli.common import connect, print_json
from dlapp.client import DlappClient
from dlapp.client_config import client_config_path, default_home, load_client_settings
from dlapp.credentials import ADMIN_TOKEN_FILE, write_private
from dlapp.errors import DlappError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
EXPIRES_IN = click.option(
    "--expires-in",
    "expires_in",
    type=click.FloatRange(min=0, min_open=True),
    metavar="DAYS",
    help="the token stops working this many days from now (the server's lifetime still applies)",
)


def _show_token(name: str, token: str, expires: str | None = None) -> None:
    click.echo(f"token for {name} (shown only this once; keep it secret):")
    click.echo(token)
    if expires:
        click.echo(f"it expires at {expires}")
    click.echo(f"{name} can save it with: dlapp login <server URL>  (then paste the token)")


@click.group()
def admin() -> None:
    """Users, tokens and the audit log (cluster admins only)."""


@admin.group()
def user() -> None:
    """Add, list, disable and enable users."""


@user.command("add")
@click.argument("name")
@click.option("--admin", "is_admin", is_flag=True, help="make a cluster admin")
@click.option("--group", "groups", multiple=True, help="a group (for queue ACLs); repeatable")
@EXPIRES_IN
@click.option("--json", "as_json", is_flag=True, help="print the user and token as JSON")
def user_add(
    name: str, is_admin: bool, groups: tuple[str, ...], expires_in: float | None, as_json: bool
) -> None:
    """Add user NAME and print their first token."""
    with connect() as client:
        made = client.admin_add_user(
            name, admin=is_admin, groups=groups, expires_in_days=expires_in
        )
    if as_json:
        print_json(made)
        return
    u = made["user"]
    role = "cluster admin" if u["is_admin"] else "user"
    out.print(
        f"added {role} {u['name']}" + (f" (groups {', '.join(u['groups'])})" if u["groups"] else "")
    )
    _show_token(u["name"], made["token"], u.get("token_expires"))
    if made.get("notice"):  # e.g. the second user: the multi-user rules apply from now on
        err.print(f"note: {made['notice']}")


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def user_list(as_json: bool) -> None:
    """Every user: admin or not, groups, disabled, when their token was made, last used and
    expires."""
    with connect() as client:
        found = client.admin_users()
    if as_json:
        print_json(found)
        return
    table = Table(
        "name", "admin", "groups", "disabled", "created", "token made", "token used", "expires"
    )
    for u in found:
        expires = u.get("token_expires") or ("-" if u["token_created"] else "")
        if u.get("token_expired"):
            expires += " (expired)"
        table.add_row(
            u["name"],
            "yes" if u["is_admin"] else "",
            ",".join(u["groups"]),
            "yes" if u["disabled"] else "",
            u["created"] or "-",
            u["token_created"] or "(none)",
            u["token_last_used"] or "-",
            expires,
        )
    out.print(table)


@user.command("disable")
@click.argument("name")
def user_disable(name: str) -> None:
    """Refuse every request of NAME from now on (their apps keep running)."""
    with connect() as client:
        client.admin_disable_user(name)
    out.print(f"disabled {name}")


@user.command("enable")
@click.argument("name")
def user_enable(name: str) -> None:
    """Let a disabled user in again (with their token, if it was not revoked)."""
    with connect() as client:
        client.admin_enable_user(name)
    out.print(f"enabled {name}")


@admin.group()
def token() -> None:
    """Rotate or revoke a user's token."""


@token.command("rotate")
@click.argument("name")
@EXPIRES_IN
def token_rotate(name: str, expires_in: float | None) -> None:
    """Give NAME a new token (printed once); the old one stops working."""
    with connect() as client:
        made = client.admin_issue_token(name, expires_in)
    _show_token(name, made["token"], made.get("token_expires"))


@token.command("revoke")
@click.argument("name")
def token_revoke(name: str) -> None:
    """Revoke NAME's token; they are locked out until `dlapp admin token rotate NAME`."""
    with connect() as client:
        count = client.admin_revoke_token(name)
    out.print(f"revoked {count} token(s) of {name}")


@admin.command("audit")
@click.option("--user", help="only what this user did")
@click.option("--action", help="only this action (submit, kill, user.add, login.failed, ...)")
@click.option("--target", help="only what was done to this app or user")
@click.option("--limit", default=100, show_default=True, help="newest N entries")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def audit_cmd(
    user: str | None, action: str | None, target: str | None, limit: int, as_json: bool
) -> None:
    """Who did what, and when: submits, kills, user and token changes, refused tokens
    (login.failed, by client address). Newest first."""
    with connect() as client:
        entries = client.admin_audit(user=user, action=action, target=target, limit=limit)
    if as_json:
        print_json(entries)
        return
    table = Table("time", "user", "action", "target", "detail")
    for e in entries:
        table.add_row(e["time"], e["user"], e["action"], e["target"], e["detail"])
    out.print(table)


@admin.command("node")
@click.argument("state", type=click.Choice(["drain", "cordon", "ready"]))
@click.argument("node")
def node_cmd(state: str, node: str) -> None:
    """drain: no new apps, running ones finish; cordon: no new apps, running ones are evicted
    back to their queue; ready: undo either. NODE is its address or id."""
    with connect() as client:
        result = client.admin_node(node, state)
    evicted = f"; evicted: {', '.join(result['evicted'])}" if result["evicted"] else ""
    out.print(f"node {result['name']} ({result['node_id'][:12]}): {state}{evicted}")


@click.command()
@click.argument("server")
@click.option("--token-stdin", is_flag=True, help="read the token from stdin, not a prompt")
@click.option(
    "--ca-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="DLAPP_CA_FILE",
    help="the CA that signed an https server's certificate (saved too; default: the system's)",
)
def login(server: str, token_stdin: bool, ca_file: Path | None) -> None:
    """Check a token against SERVER and save both in the client config (mode 0600)."""
    server = server.rstrip("/")
    if in_clear(server):
        err.print(
            f"warning: {server} is plain http to another machine: your token will cross the "
            "network in clear. Use https (docs/deployment.md#tls)."
        )
    path = client_config_path()
    values = _read_config(path)
    if ca_file is None and values.get("server") == server and values.get("ca_file"):
        ca_file = Path(values["ca_file"])  # logging in again to the same server
    if token_stdin:
        secret = sys.stdin.readline().strip()
    else:
        secret = click.prompt("token", hide_input=True).strip()
    if not secret:
        raise DlappError("no token given")
    with DlappClient(server, secret, ca_file=ca_file) as client:
        me = client.whoami()
    values.update({"server": server, "token": secret})
    values.pop("ca_file", None)
    if ca_file is not None:
        values["ca_file"] = str(ca_file.resolve())
    write_private(path, yaml.safe_dump(values, sort_keys=False))
    out.print(f"logged in to {server} as {me['name']}; saved in {path} (mode 0600)")


def in_clear(server: str) -> bool:
    """Whether a token sent to ``server`` crosses a network unencrypted: plain http to a host
    that is not this machine's loopback."""
    parts = urlsplit(server)
    if parts.scheme != "http":
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


@click.group("token")
def my_token() -> None:
    """Your own API token."""


@my_token.command("rotate")
def my_token_rotate() -> None:
    """Replace your token: the old one stops working at once. The new one is printed once and
    saved where the CLI found the old one (the client config, or the embedded cluster's
    admin.token; mode 0600); a token from DLAPP_TOKEN is yours to replace there."""
    saved_in = token_file()
    with connect() as client:
        name = client.whoami()["name"]
        new = client.rotate_my_token()
    click.echo(f"new token for {name} (shown only this once; keep it secret):")
    click.echo(new)  # first: a failed save below must not lose it
    if saved_in is None:
        out.print(
            "DLAPP_TOKEN still holds the old token, which no longer works: set it to this one"
        )
        return
    if saved_in.name == ADMIN_TOKEN_FILE:
        write_private(saved_in, new + "\n")
    else:
        values = _read_config(saved_in)
        values["token"] = new
        write_private(saved_in, yaml.safe_dump(values, sort_keys=False))
    out.print(f"saved in {saved_in} (mode 0600); the old token no longer works")


def token_file(env: Mapping[str, str] = os.environ) -> Path | None:
    """The file the CLI takes its token from (as ``cli.common.connect`` does): the client config
    for a configured server, else the embedded cluster's ``admin.token``; None for DLAPP_TOKEN."""
    if env.get("DLAPP_TOKEN"):
        return None
    if load_client_settings(env).server:
        return client_config_path(env)
    return default_home(env) / ADMIN_TOKEN_FILE


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as exc:
        raise DlappError(f"cannot read the client config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DlappError(f"the client config {path} must be a mapping")
    return data


def register(group: click.Group) -> None:
    group.add_command(admin)
    group.add_command(login)
    group.add_command(my_token)
