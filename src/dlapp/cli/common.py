"""What the CLI's command modules share: the consoles, a client for the configured server (or
the embedded cluster), JSON output, and launching a spec (``dlapp launch``, ``dlapp run``)."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from dlapp import __version__
from dlapp.client_config import default_home, load_client_settings
from dlapp.credentials import ADMIN_TOKEN_FILE, read_private
from dlapp.errors import DlappError, ServerUnavailable

if TYPE_CHECKING:  # imported where used, as are the workspace packer and the embedded cluster
    from dlapp.client import DlappClient
    from dlapp.spec import AppSpec

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
if not out.is_terminal:  # tables piped to a file or a pager: do not truncate ids
    out.width = 240
SHOW_PROGRESS_BYTES = 16 * 1024 * 1024


def connect(autostart: bool = False, gpus: int | None = None) -> DlappClient:
    """A client for the configured server with its token, else for the embedded cluster with the
    token of its first admin (``<home>/admin.token``, written there by the server)."""
    from dlapp.client import DlappClient

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
    from dlapp import embedded  # only without a server configured

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


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def dashboard_url(app: dict[str, Any], log: tuple[int, str] | None = None) -> str:
    """The app's page on the server's web dashboard (``dlapp.server.dashboard``), or, with
    ``log`` (container index, stream), that page showing that log: what a browser can open
    (the API's URLs need a token in a header, which a browser does not send: 401)."""
    page = f"{app['url'].split('/api/v1/')[0]}/dashboard/#/apps/{app['id']}"
    return page if log is None else f"{page}/logs/{log[0]}/{log[1]}"


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def launch_app(spec_file: str, wait: bool, follow: bool, array: str | None = None) -> int:
    """Launch SPEC_FILE; ``array`` (``--array``, Slurm's syntax) makes it an array, over the
    spec's own ``array`` field."""
    from dlapp.data.workspace import check_entry_script
    from dlapp.spec import AppSpec

    path = Path(spec_file)
    out.print(f"dlapp launcher {__version__}")
    spec = AppSpec.from_file(path)
    if array is not None:
        spec = AppSpec.from_dict(spec.to_dict() | {"array": array})
    if spec.is_array and follow:
        raise DlappError("--follow follows one app: follow a member with dlapp logs -f ID_INDEX")
    r = spec.resources
    out.print(
        f"checking the spec {path}: ok (name {spec.name!r}, queue {spec.queue}, "
        f"{spec.num_containers} container(s) of {r.cpus:g} CPU, {r.memory_mb} MiB, {r.gpus} GPU)"
    )
    if not Path(spec.workspace.path).is_dir():
        raise DlappError(f"the workspace {spec.workspace.path} is not a directory")
    # before the upload (and before an embedded cluster is started for it)
    check_entry_script(Path(spec.workspace.path), spec.workspace.exclude, spec.entry.script)
    with connect(autostart=True) as client:
        warn_ignored_username(path, client)
        return submit_and_watch(client, spec, wait, follow)


def warn_ignored_username(path: Path, client: DlappClient) -> None:
    """A dl_app.properties' ``username`` is ignored: say so when it names someone else."""
    from dlapp.spec import PROPERTIES, properties_username

    named = properties_username(path.read_text()) if path.suffix in PROPERTIES else None
    if named is None:
        return
    me = client.whoami()["name"]
    if named != me:
        err.print(
            f"warning: {path.name} says username={named}, which dlapp ignores: the app runs "
            f"as the user of your token, {me}",
            markup=False,
        )


def submit_and_watch(client: DlappClient, spec: AppSpec, wait: bool, follow: bool) -> int:
    from dlapp.data.workspace import pack_workspace

    health = client.health()
    out.print(f"checking the server {client.base_url}: dlapp {health.get('version')} ok")
    ws = Path(spec.workspace.path)
    out.print(f"workspace path: {ws}")
    out.print(f"exclude list: {', '.join(spec.workspace.exclude) or '(none)'}")
    with tempfile.TemporaryDirectory(prefix="dlapp-launch-") as tmp:
        tarball = Path(tmp) / "workspace.tar.gz"
        packed = pack_workspace(ws, tarball, spec.workspace.exclude, progress=progress_printer())
        out.print(
            f"workspace size: {human_size(packed.bytes)} in {packed.files} files "
            f"({human_size(packed.compressed_bytes)} compressed)"
        )
        app = client.submit(spec, tarball, progress=progress_printer("uploading workspace"))
    if spec.is_array:
        return watch_array(client, app, wait)
    app_id = app["id"]
    out.print(f"submitted: {app_id}")
    out.print(f"  dashboard: {dashboard_url(app)}")
    out.print(f"  its log:   {dashboard_url(app, (0, 'stdout'))}")
    out.print(f"  status:    dlapp status {app_id}")
    out.print(f"  logs:      dlapp logs {app_id} --follow")
    out.print(f"  API:       {app['url']} (JSON, with your token)")
    if not (wait or follow):
        return 0
    if follow:
        follow_app(client, app_id)
    final = client.wait(app_id)
    out.print(f"{app_id} {final['state']} {final['final_status']}: {final['diagnostics']}")
    return 0 if final["final_status"] == "SUCCEEDED" else 1


def watch_array(client: DlappClient, array: dict[str, Any], wait: bool, poll_s: float = 1.0) -> int:
    """What ``launch`` says of an array it submitted; with ``wait``, wait until every member
    has finished: 0 only if all SUCCEEDED."""
    array_id = array["id"]
    limit = array["max_running"]
    out.print(
        f"submitted: {array_id}, an array of {array['size']} apps"
        + (f", at most {limit} running at once" if limit else "")
    )
    out.print(f"  status:    dlapp status {array_id}  (one member: dlapp status {array_id}_INDEX)")
    out.print(f"  members:   dlapp list --array {array_id}")
    out.print(f"  kill:      dlapp kill {array_id}")
    out.print(f"  API:       {array['url']} (JSON, with your token)")
    if not wait:
        return 0
    while not array["finished"]:
        time.sleep(poll_s)
        array = client.get_array(array_id)
    counts = array["counts"]
    out.print(
        f"{array_id} FINISHED: {counts['SUCCEEDED']} SUCCEEDED, {counts['FAILED']} FAILED, "
        f"{counts['KILLED']} KILLED"
    )
    return 0 if counts["SUCCEEDED"] == array["size"] else 1


def follow_app(client: DlappClient, app_id: str, poll_s: float = 0.5) -> None:
    """What ``launch --follow`` shows: while the app waits and its containers stage their
    inputs in, why it waits and each staging line; then container 0's stdout as it runs; then
    the staging lines that came after (outputs)."""
    seen, waiting = 0, ""

    def new_lines() -> None:
        nonlocal seen
        events = client.events(app_id)
        for e in events[seen:]:
            if e["kind"] == "staging":
                out.print(f"[dlapp] {e['reason']}", markup=False)
        seen = len(events)

    while True:
        app = client.get(app_id)
        new_lines()
        if app["pending_reason"] and app["pending_reason"] != waiting:
            waiting = app["pending_reason"]
            out.print(f"[dlapp] waiting: {waiting}", markup=False)
        first = next((c for c in app["containers"] if c["index"] == 0), None)
        if app["state"] == "FINISHED" or (first is not None and first["state"] != "STARTING"):
            break
        time.sleep(poll_s)
    for text in client.follow_logs(app_id):
        sys.stdout.write(text)
        sys.stdout.flush()
    new_lines()


def progress_printer(what: str = "packing workspace") -> Any:
    """``progress(done, total)`` that prints ``what``'s progress after each further tenth (of
    a transfer of at least SHOW_PROGRESS_BYTES), and 100% once."""
    state = {"last": -1}

    def show(done: int, total: int) -> None:
        if total < SHOW_PROGRESS_BYTES or state["last"] == 100:
            return
        pct = int(done * 100 / total) if total else 100
        if pct // 10 != state["last"] // 10 or done >= total:
            state["last"] = 100 if done >= total else pct
            err.print(f"{what}: {pct}% ({human_size(done)} of {human_size(total)})")

    return show
