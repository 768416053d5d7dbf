"""The ``dlapp`` command and the reference tools' names (dlapp-launcher, dlapp-status, ...).

Every command talks to a server through ``DlappClient``; with no server configured it uses the
embedded local cluster (``dlapp up``), and ``launch`` starts that cluster when it is not up.
Tested through ``main(argv)``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from dlapp import __version__, cli_admin, cli_containers, cli_sim, cli_usage, embedded
from dlapp.client import DlappClient
from dlapp.config import default_home, load_client_settings
from dlapp.credentials import ADMIN_TOKEN_FILE, read_private
from dlapp.errors import DlappError, ServerUnavailable
from dlapp.spec import AppSpec
from dlapp.workspace import pack_workspace

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
if not out.is_terminal:  # tables piped to a file or a pager: do not truncate ids
    out.width = 240
SHOW_PROGRESS_BYTES = 16 * 1024 * 1024


def _client(autostart: bool = False, gpus: int | None = None) -> DlappClient:
    """A client for the configured server with its token, else for the embedded cluster with the
    token of its first admin (``<home>/admin.token``, written there by the server)."""
    settings = load_client_settings()
    if settings.server:
        if settings.token is None:
            raise DlappError(
                f"no token for {settings.server}: run `dlapp login {settings.server}` "
                "or set DLAPP_TOKEN"
            )
        return DlappClient(
            settings.server,
            settings.token.get_secret_value(),
            settings.timeout_s,
            ca_file=settings.ca_file,
        )
    home = default_home()
    info = embedded.running(home)
    if info is None and autostart:
        err.print(f"no dlapp server configured: starting the embedded local cluster in {home} ...")
        info, _ = embedded.up(home, gpus=gpus)
        err.print(f"embedded cluster up at {info.url}")
    if info is None:
        raise ServerUnavailable(
            "no dlapp server is running: start the local cluster with `dlapp up`, "
            "or point DLAPP_SERVER at a server"
        )
    token = read_private(home / ADMIN_TOKEN_FILE, "the embedded cluster's admin token")
    return DlappClient(info.url, token, settings.timeout_s, ca_file=info.ca_file)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _dashboard_url(app: dict[str, Any]) -> str:
    """The app's page on the server's web dashboard (``dlapp.server.dashboard``)."""
    return f"{app['url'].split('/api/v1/')[0]}/dashboard/#/apps/{app['id']}"


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dlapp")
def cli() -> None:
    """Run deep-learning apps on a shared GPU cluster."""


# -- launch -----------------------------------------------------------------------------------


def _launch(spec_file: str, wait: bool, follow: bool) -> int:
    path = Path(spec_file)
    out.print(f"dlapp launcher {__version__}")
    spec = AppSpec.from_file(path)
    r = spec.resources
    out.print(
        f"checking the spec {path}: ok (name {spec.name!r}, queue {spec.queue}, "
        f"{spec.num_containers} container(s) of {r.cpus:g} CPU, {r.memory_mb} MiB, {r.gpus} GPU)"
    )
    if not Path(spec.workspace.path).is_dir():
        raise DlappError(f"the workspace {spec.workspace.path} is not a directory")
    with _client(autostart=True) as client:
        return _submit_and_watch(client, spec, wait, follow)


def _submit_and_watch(client: DlappClient, spec: AppSpec, wait: bool, follow: bool) -> int:
    health = client.health()
    out.print(f"checking the server {client.base_url}: dlapp {health.get('version')} ok")
    ws = Path(spec.workspace.path)
    out.print(f"workspace path: {ws}")
    out.print(f"exclude list: {', '.join(spec.workspace.exclude) or '(none)'}")
    with tempfile.TemporaryDirectory(prefix="dlapp-launch-") as tmp:
        tarball = Path(tmp) / "workspace.tar.gz"
        packed = pack_workspace(ws, tarball, spec.workspace.exclude, progress=_progress_printer())
        out.print(
            f"workspace size: {_size(packed.bytes)} in {packed.files} files "
            f"({_size(packed.compressed_bytes)} compressed)"
        )
        app = client.submit(spec, tarball)
    app_id = app["id"]
    out.print(f"submitted: {app_id}")
    out.print(f"  see it at: {app['url']}")
    out.print(f"  dashboard: {_dashboard_url(app)}")
    out.print(f"  status:    dlapp status {app_id}")
    out.print(f"  logs:      dlapp logs {app_id} --follow")
    if not (wait or follow):
        return 0
    if follow:
        for text in client.follow_logs(app_id):
            sys.stdout.write(text)
            sys.stdout.flush()
    final = client.wait(app_id)
    out.print(f"{app_id} {final['state']} {final['final_status']}: {final['diagnostics']}")
    return 0 if final["final_status"] == "SUCCEEDED" else 1


def _progress_printer() -> Any:
    state = {"last": -1}

    def show(done: int, total: int) -> None:
        if total < SHOW_PROGRESS_BYTES:
            return
        pct = int(done * 100 / total) if total else 100
        if pct // 10 != state["last"] // 10 or done == total:
            state["last"] = pct
            err.print(f"packing workspace: {pct}% ({_size(done)} of {_size(total)})")

    return show


@cli.command()
@click.argument("spec_file", type=click.Path(dir_okay=False))
@click.option("--wait", is_flag=True, help="wait for the app; exit 0 only if it SUCCEEDED")
@click.option("--follow", is_flag=True, help="stream container 0's stdout until the app ends")
def launch(spec_file: str, wait: bool, follow: bool) -> None:
    """Launch the app described by SPEC_FILE (app.yaml or dl_app.properties)."""
    sys.exit(_launch(spec_file, wait, follow))


# -- status / list ----------------------------------------------------------------------------


def _status(app_id: str, as_json: bool) -> int:
    with _client() as client:
        app = client.get(app_id)
        staged = [] if as_json else [e for e in client.events(app_id) if e["kind"] == "staging"]
    if as_json:
        _print_json(app)
        return 0
    out.print(f"Application ID : {app['id']}")
    out.print(f"Name           : {app['name']}")
    out.print(f"User           : {app['user']}")
    out.print(f"Queue          : {app['queue']}")
    out.print(f"State          : {app['state']}")
    out.print(f"Final status   : {app['final_status']}")
    if app["pending_reason"]:
        out.print(f"Pending because: {app['pending_reason']}")
    if app["diagnostics"]:
        out.print(f"Diagnostics    : {app['diagnostics']}")
    out.print(f"Submitted      : {app['submit_time']}")
    out.print(f"Started        : {app['start_time'] or '-'}")
    out.print(f"Finished       : {app['finish_time'] or '-'}")
    if app["elapsed_s"] is not None:
        out.print(f"Elapsed        : {app['elapsed_s']:.1f}s")
    if staged:  # the latest progress or summary line of its data staging
        out.print(f"Staging        : {staged[-1]['reason']}", markup=False)
    gpu = app.get("gpu_usage")
    if gpu:
        mean = gpu["utilisation_mean"]
        out.print(
            f"GPU use        : {'-' if mean is None else f'{mean:.0f}%'} on average, "
            f"{gpu['gpu_hours_used']:.2f} GPU-hours used"
            + (f"; IDLE since {gpu['idle_since']}" if gpu["idle"] else "")
        )
    out.print(f"URL            : {app['url']}")
    out.print(f"Dashboard      : {_dashboard_url(app)}")
    if app["containers"]:
        table = Table("index", "node", "gpu ids", "state", "exit code", "diagnostics")
        base = app["url"].split("/api/v1/")[0]
        for c in app["containers"]:
            table.add_row(
                str(c["index"]),
                c["node"],
                ",".join(c["gpu_ids"]) or "-",
                c["state"],
                "-" if c["exit_code"] is None else str(c["exit_code"]),
                c["diagnostics"],
            )
        out.print(table)
        for c in app["containers"]:
            out.print(f"container {c['index']} stdout: {base + c['logs']['stdout']}")
            out.print(f"container {c['index']} stderr: {base + c['logs']['stderr']}")
    return 0


@cli.command()
@click.argument("app_id")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(app_id: str, as_json: bool) -> None:
    """Show one app: state, times, containers (node, GPU ids, exit code), log URLs."""
    sys.exit(_status(app_id, as_json))


LIST_LIMIT = 100  # apps ``dlapp list`` shows unless told otherwise


def _list(
    user: str | None,
    show_all: bool,
    as_json: bool,
    queue: str | None = None,
    limit: int = LIST_LIMIT,
) -> int:
    if limit < 0:
        raise DlappError(f"--limit must be 0 (every app) or more, not {limit}")
    states = () if show_all else ("ACCEPTED", "RUNNING")
    with _client() as client:
        if limit == 0:
            apps, more = list(client.iter_apps(user=user, queue=queue, states=states)), None
        else:
            apps, more = client.list_page(user=user, queue=queue, states=states, limit=limit)
    if as_json:
        _print_json(apps)
        return 0
    table = Table(
        "id", "name", "user", "queue", "state", "final status", "gpus", "submitted", "why pending"
    )
    for a in apps:
        table.add_row(
            a["id"],
            a["name"],
            a["user"],
            a["queue"],
            a["state"],
            a["final_status"],
            str(a["resources"]["gpus"] * a["num_containers"])
            + (" (idle)" if (a.get("gpu_usage") or {}).get("idle") else ""),
            a["submit_time"],
            a.get("pending_reason") or "",
        )
    out.print(table)
    if more is not None:
        out.print(f"the newest {len(apps)} shown; there are more (--limit N, --limit 0 for all)")
    if not apps:
        out.print(
            "no apps" + ("" if show_all else " queued or running (--all shows finished ones)")
        )
    return 0


@cli.command("list")
@click.option("--user", help="only this user's apps")
@click.option("--queue", help="only this queue's apps")
@click.option("--all", "show_all", is_flag=True, help="include finished apps")
@click.option(
    "--limit",
    type=int,
    default=LIST_LIMIT,
    show_default=True,
    help="show the newest N apps; 0: all of them",
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def list_cmd(
    user: str | None, queue: str | None, show_all: bool, limit: int, as_json: bool
) -> None:
    """List queued and running apps (all with --all), newest first."""
    sys.exit(_list(user, show_all, as_json, queue, limit))


# -- kill / softkill / logs -------------------------------------------------------------------


def _kill(app_id: str, soft: bool) -> int:
    with _client() as client:
        app = client.softkill(app_id) if soft else client.kill(app_id)
    word = "softkill" if soft else "kill"
    out.print(f"{word} sent to {app_id} (state {app['state']}, final status {app['final_status']})")
    return 0


@cli.command()
@click.argument("app_id")
def kill(app_id: str) -> None:
    """End an app now."""
    sys.exit(_kill(app_id, soft=False))


@cli.command()
@click.argument("app_id")
def softkill(app_id: str) -> None:
    """SIGTERM the app, wait the grace period, then SIGKILL."""
    sys.exit(_kill(app_id, soft=True))


@cli.command()
@click.argument("app_id")
@click.option("--container", "-c", default=0, show_default=True, help="container index")
@click.option("--stderr", is_flag=True, help="stderr instead of stdout")
@click.option("--follow", "-f", is_flag=True, help="keep reading until the container ends")
def logs(app_id: str, container: int, stderr: bool, follow: bool) -> None:
    """Print a container's stdout (or stderr), live or after the app ended."""
    stream = "stderr" if stderr else "stdout"
    with _client() as client:
        if follow:
            for text in client.follow_logs(app_id, container, stream):
                sys.stdout.write(text)
                sys.stdout.flush()
        else:
            sys.stdout.write(client.logs(app_id, container, stream))


# -- cluster ----------------------------------------------------------------------------------


def _amounts(r: dict[str, Any]) -> str:
    return f"{r['gpus']} GPU / {r['cpus']:g} CPU / {r['memory_mb'] / 1024:.1f} GiB"


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--reload", is_flag=True, help="read the queue file again now (admins)")
def queues(as_json: bool, reload: bool) -> None:
    """The queue tree: guaranteed / maximum / used / pending, and users' shares."""
    with _client() as client:
        data = client.reload_queues() if reload else client.queues()
    if as_json:
        _print_json(data)
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
    state = f"on (grace {pre['grace_s']:g}s)" if pre["enabled"] else "off"
    out.print(f"configuration: {data['source']}; preemption {state}")
    if data["error"]:
        err.print(f"the queue file was refused, the running configuration is kept: {data['error']}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def gpus(as_json: bool) -> None:
    """The cluster's GPU map: every node and GPU, free or held by which app and user."""
    with _client() as client:
        data = client.cluster()
    if as_json:
        _print_json(data)
        return
    table = Table("node", "state", "gpu", "app", "user")
    for n in data["nodes"]:
        state = n.get("state", "ready")
        if not n["gpus"]:
            table.add_row(n["name"], state, "-", "(no GPUs)", "")
        for g in n["gpus"]:
            table.add_row(n["name"], state, f"gpu{g['id']}", g["app_id"] or "free", g["user"] or "")
    out.print(table)


@cli.group()
def node() -> None:
    """This machine as a node of a cluster."""


@node.command("join")
@click.argument("head_address")
@click.option("--gpus", type=int, help="GPUs to offer (default: those NVML finds)")
@click.option("--cpus", type=float, help="CPUs to offer (default: all)")
@click.option("--node-ip", help="this node's address on the cluster network")
def node_join(head_address: str, gpus: int | None, cpus: float | None, node_ip: str | None) -> None:
    """Join the Ray cluster whose head is HEAD_ADDRESS (host:port) as a GPU node."""
    from dlapp.executor.ray import count_gpus
    from dlapp.nodes_join import join

    sys.exit(join(head_address, count_gpus() if gpus is None else gpus, cpus, node_ip))


@cli.command()
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
    if info.ca_file is not None:
        out.print(f"its CA (trusted by this CLI by itself; give it to others): {info.ca_file}")
    elif tls_on and not info.url.startswith("https:"):
        err.print("it runs without TLS: `dlapp down`, then `dlapp up --tls`")


@cli.command()
def down() -> None:
    """Stop the embedded local cluster and every app on it."""
    home = default_home()
    out.print("stopped" if embedded.down(home) else "no embedded cluster was running")


@cli.group(invoke_without_command=True)
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


# -- spec -------------------------------------------------------------------------------------


@cli.group()
def spec() -> None:
    """Work with app specs."""


@spec.command("check")
@click.argument("spec_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print the normalised spec as JSON")
def spec_check(spec_file: str, as_json: bool) -> None:
    """Validate SPEC_FILE and print the normalised spec, or every problem."""
    parsed = AppSpec.from_file(Path(spec_file))
    if as_json:
        _print_json(parsed.to_dict())
    else:
        click.echo(parsed.to_yaml(), nl=False)


cli_admin.register(cli)  # dlapp admin ..., dlapp login
cli_sim.register(cli)  # dlapp simulate
cli_usage.register(cli)  # dlapp usage
cli_containers.register(cli)  # dlapp images, dlapp shell, dlapp run

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


def _reference(name: str, fn: Any) -> Any:
    command = click.command(name=name)(fn)

    def entry(argv: Sequence[str] | None = None) -> int:
        return _run(command, argv, name)

    return entry


def _ref_launcher_fn(spec_file: str) -> None:
    sys.exit(_launch(spec_file, wait=False, follow=False))


def _ref_status_fn(app_id: str) -> None:
    sys.exit(_status(app_id, as_json=False))


def _ref_list_fn(user: str | None) -> None:
    sys.exit(_list(user, show_all=True, as_json=False))


def _ref_kill(soft: bool) -> Any:
    def fn(args: tuple[str, ...]) -> None:
        if len(args) not in (1, 2):
            raise click.UsageError("usage: [USER] APP_ID")
        sys.exit(_kill(args[-1], soft))

    return fn


launcher_main = _reference("dlapp-launcher", click.argument("spec_file")(_ref_launcher_fn))
status_main = _reference("dlapp-status", click.argument("app_id")(_ref_status_fn))
list_main = _reference("dlapp-list", click.argument("user", required=False)(_ref_list_fn))
kill_main = _reference("dlapp-kill", click.argument("args", nargs=-1)(_ref_kill(False)))
softkill_main = _reference("dlapp-softkill", click.argument("args", nargs=-1)(_ref_kill(True)))


if __name__ == "__main__":
    sys.exit(main())
