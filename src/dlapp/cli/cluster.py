"""The commands on the cluster: queues, gpus, node join, up, down, and the server itself."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from dlapp import embedded
from dlapp.cli.common import connect, err, out, print_json
from dlapp.client_config import default_home
from dlapp.credentials import ADMIN_TOKEN_FILE


def _amounts(r: dict[str, Any]) -> str:
    return f"{r['gpus']} GPU / {r['cpus']:g} CPU / {r['memory_mb'] / 1024:.1f} GiB"


@click.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--reload", is_flag=True, help="read the queue file again now (admins)")
def queues(as_json: bool, reload: bool) -> None:
    """The queue tree: guaranteed / maximum / used / pending, and users' shares."""
    with connect() as client:
        data = client.reload_queues() if reload else client.queues()
    if as_json:
        print_json(data)
        return
    table = Table("queue", "guaranteed", "maximum", "used", "pending", "apps", "users")
    for q in data["queues"]:
        depth = q["path"].count(".")
        name = "  " * depth + q["path"].rsplit(".", 1)[-1]
        if not q["configured"]:
            name += " (removed)"
        users = ", ".join(
            f"{u} {r['gpus']} GPU ({r['share_of_maximum']:.0%})"
            for u, r in q.get("users", {}).items()
        )
        table.add_row(
            name,
            _amounts(q["guaranteed"]) if "guaranteed" in q else "-",
            _amounts(q["maximum"]) if "maximum" in q else "-",
            _amounts(q["used"]),
            _amounts(q["pending"]),
            f"{q['running_apps']} running, {q['pending_apps']}"
            + (f"/{q['max_pending_apps']}" if q.get("max_pending_apps") else "")
            + " pending",
            users,
        )
    out.print(table)
    pre = data["preemption"]
    past = "" if pre.get("past_guarantee", True) else ", not past a guarantee"
    state = f"on (grace {pre['grace_s']:g}s{past})" if pre["enabled"] else "off"
    out.print(f"configuration: {data['source']}; preemption {state}")
    if data["error"]:
        err.print(f"the queue file was refused, the running configuration is kept: {data['error']}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def gpus(as_json: bool) -> None:
    """The cluster's GPU map: every node and GPU (or MIG instance), free or held by which
    apps and users, and the share of a shared GPU each holds."""
    with connect() as client:
        data = client.cluster()
    if as_json:
        print_json(data)
        return
    table = Table("node", "state", "model", "gpu", "app", "user", "share")
    for n in data["nodes"]:
        state = n.get("state", "ready")
        model = n.get("model") or ""
        if not n["gpus"]:
            table.add_row(n["name"], state, model, "-", "(no GPUs)", "", "")
        for g in n["gpus"]:
            gpu = f"{g['mig']} {g['id'][:12]}" if g.get("mig") else f"gpu{g['id']}"
            holders = g.get("holders") or ([g] if g["app_id"] else [])
            for h in holders:
                share = h.get("share", 1.0)
                table.add_row(n["name"], state, model, gpu, h["app_id"], h["user"], f"{share:g}")
            free = g.get("free", 0.0 if holders else 1.0)
            if not holders or free > 0:
                table.add_row(n["name"], state, model, gpu, "free", "", f"{free:g}")
    out.print(table)


@click.group()
def node() -> None:
    """This machine as a node of a cluster."""


@node.command("join")
@click.argument("head_address")
@click.option("--gpus", type=int, help="GPUs to offer (default: those NVML finds)")
@click.option("--cpus", type=float, help="CPUs to offer (default: all)")
@click.option("--node-ip", help="this node's address on the cluster network")
@click.option(
    "--gpu-model",
    help="the model this node's GPUs are labelled with (default: from NVML's name, e.g. H100)",
)
def node_join(
    head_address: str,
    gpus: int | None,
    cpus: float | None,
    node_ip: str | None,
    gpu_model: str | None,
) -> None:
    """Join the Ray cluster whose head is HEAD_ADDRESS (host:port) as a GPU node."""
    from dlapp.cli.nodes_join import join

    sys.exit(join(head_address, gpus, cpus, node_ip, gpu_model))


@click.command()
@click.option("--gpus", type=int, help="GPUs to declare (default: those NVML finds)")
@click.option("--cpus", type=float, help="CPUs to declare (default: all)")
@click.option(
    "--tls", "tls_on", is_flag=True, help="serve https, with a certificate of a CA of its own"
)
def up(gpus: int | None, cpus: float | None, tls_on: bool) -> None:
    """Start the embedded local cluster (server + single-node Ray) in the background."""
    home = default_home()
    info, started = embedded.up(home, gpus=gpus, cpus=cpus, tls_on=tls_on)
    out.print(f"{'started' if started else 'already running'}: {info.url} (state in {home})")
    token = home / ADMIN_TOKEN_FILE
    out.print(f"dashboard: {info.url}/dashboard/ (sign in with your token, in {token})")
    if info.ca_file is not None:
        out.print(f"its CA (trusted by this CLI by itself; give it to others): {info.ca_file}")
    elif tls_on and not info.url.startswith("https:"):
        err.print("it runs without TLS: `dlapp down`, then `dlapp up --tls`")


@click.command()
def down() -> None:
    """Stop the embedded local cluster and every app on it."""
    home = default_home()
    out.print("stopped" if embedded.down(home) else "no embedded cluster was running")


@click.group(invoke_without_command=True)
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--home", type=click.Path(file_okay=False, path_type=Path))
@click.option("--host")
@click.option("--port", type=int)
@click.option("--gpus", type=int, help="embedded Ray: GPUs to declare")
@click.option("--cpus", type=float, help="embedded Ray: CPUs to declare")
@click.option("--ray-address", help="join this Ray cluster instead of starting one")
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PEM certificate (chain): serve https (with --tls-key)",
)
@click.option(
    "--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="PEM key of --tls-cert"
)
@click.pass_context
def server(ctx: click.Context, /, config_file: Path | None, **overrides: Any) -> None:
    """Run the dlapp server in the foreground; or migrate, back up or restore its store."""
    ctx.obj = (config_file, overrides)
    if ctx.invoked_subcommand is None:
        from dlapp.server.run import serve

        serve(config_file, overrides)


def _store(obj: tuple[Path | None, dict[str, Any]]) -> tuple[Any, Any]:
    from dlapp.config import load_server_settings
    from dlapp.store.db import make_engine

    settings = load_server_settings(obj[0], **obj[1])
    return settings, make_engine(settings.database_url)


@server.command("migrate")
@click.pass_obj
def server_migrate(obj: tuple[Path | None, dict[str, Any]]) -> None:
    """Bring the store's schema up to this release (nothing is lost)."""
    from dlapp.store.backup import revision
    from dlapp.store.db import migrate

    _, engine = _store(obj)
    before = revision(engine)
    migrate(engine)
    out.print(f"store schema: {before or 'empty'} -> {revision(engine)}")
    engine.dispose()


@server.command("backup")
@click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def server_backup(obj: tuple[Path | None, dict[str, Any]], dest: Path) -> None:
    """Write the store and the artifact store to DEST (a tar.gz)."""
    from dlapp.store.backup import backup

    settings, engine = _store(obj)
    counts = backup(engine, settings.artifacts, dest)
    engine.dispose()
    rows = ", ".join(f"{n} {t}" for t, n in counts.items() if n)
    out.print(f"backed up to {dest}: {rows or 'an empty store'}")


@server.command("restore")
@click.argument("source", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.pass_obj
def server_restore(obj: tuple[Path | None, dict[str, Any]], source: Path) -> None:
    """Load a backup into an empty store (any database) and its artifact store."""
    from dlapp.store.backup import restore

    settings, engine = _store(obj)
    counts = restore(engine, settings.artifacts, source)
    engine.dispose()
    rows = ", ".join(f"{n} {t}" for t, n in counts.items() if n)
    out.print(f"restored from {source}: {rows or 'an empty store'}")


def register(group: click.Group) -> None:
    for command in (queues, gpus, node, up, down, server):
        group.add_command(command)
