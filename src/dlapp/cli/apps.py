"""The commands on apps: launch, status, list, kill, softkill, logs, spec check."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from dlapp.cli.common import connect, dashboard_url, err, human_size, launch_app, out, print_json
from dlapp.errors import DlappError

if TYPE_CHECKING:  # the spec's models and the data locations: imported where used
    from dlapp.client import DlappClient
    from dlapp.spec import AppSpec


@click.command()
@click.argument("spec_file", type=click.Path(dir_okay=False))
@click.option("--wait", is_flag=True, help="wait for the app; exit 0 only if it SUCCEEDED")
@click.option("--follow", is_flag=True, help="stream container 0's stdout until the app ends")
@click.option(
    "--array",
    metavar="INDICES[%N]",
    help="launch an array of apps, one per index, Slurm's syntax: 0-999, 1,3,5, 0-20:4; "
    "%N: at most N running at once (over the spec's array field)",
)
def launch(spec_file: str, wait: bool, follow: bool, array: str | None) -> None:
    """Launch the app described by SPEC_FILE (app.yaml or dl_app.properties).

    With --array (or the spec's array or sweep field) one request makes every member, which
    share the workspace uploaded once; see docs/arrays.md."""
    sys.exit(launch_app(spec_file, wait, follow, array))


# -- status / list ----------------------------------------------------------------------------

FAILED_OUTPUT_EVENT = "failed-output"  # an event's reason: where a failed app's output went


def show_array(array_id: str, as_json: bool) -> int:
    """An array: what it is and how many of its members are in each state."""
    with connect() as client:
        array = client.get_array(array_id)
    if as_json:
        print_json(array)
        return 0
    counts = array["counts"]
    limit = array["max_running"]
    out.print(f"Array ID       : {array['id']}")
    out.print(f"Name           : {array['name']}")
    out.print(f"User           : {array['user']}")
    out.print(f"Queue          : {array['queue']}")
    indices = f" ({array['indices']})" if array["indices"] else ""
    out.print(f"Size           : {array['size']} apps{indices}", markup=False)
    if array["sweep"]:
        out.print(f"Sweep          : {array['sweep']}", markup=False)
    out.print(f"Running limit  : {limit if limit else 'none'}")
    out.print(
        f"States         : {counts['ACCEPTED']} ACCEPTED, {counts['RUNNING']} RUNNING, "
        f"{counts['SUCCEEDED']} SUCCEEDED, {counts['FAILED']} FAILED, {counts['KILLED']} KILLED"
    )
    out.print(f"Submitted      : {array['submit_time']}")
    out.print(f"Its members    : dlapp list --array {array['id']} --all")
    out.print(f"One member     : dlapp status {array['id']}_INDEX")
    return 0


def show_status(app_id: str, as_json: bool) -> int:
    from dlapp.arrays import is_array_id

    if is_array_id(app_id):
        return show_array(app_id, as_json)
    with connect() as client:
        app = client.get(app_id)
        events = [] if as_json else client.events(app_id)
    if as_json:
        print_json(app)
        return 0
    staged = [e for e in events if e["kind"] == "staging"]
    kept = [e["reason"] for e in events if e["kind"] == FAILED_OUTPUT_EVENT]
    starting = [str(c["index"]) for c in app["containers"] if c["state"] == "STARTING"]
    state = app["state"]
    if state == "RUNNING" and starting:  # its supervisors stage the workspace and inputs in
        state += f" (starting: staging in; container {', '.join(starting)} not started yet)"
    out.print(f"Application ID : {app['id']}")
    out.print(f"Name           : {app['name']}")
    out.print(f"User           : {app['user']}")
    out.print(f"Queue          : {app['queue']}")
    member = app.get("array")
    if member:
        out.print(f"Array member   : {member['member']} (index {member['index']})")
        for key, value in member["values"].items():
            out.print(f"  {key} = {value}", markup=False)
    out.print(f"State          : {state}")
    out.print(f"Final status   : {app['final_status']}")
    if app["pending_reason"]:
        out.print(f"Pending because: {app['pending_reason']}")
    if app["diagnostics"]:
        out.print(f"Diagnostics    : {app['diagnostics']}")
    if app["final_status"] == "FAILED" and kept:  # save_on_failure: <url>.failed-<app id>
        for url in dict.fromkeys(kept):
            out.print(f"Output kept at : {url}", markup=False)
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
    out.print(f"Dashboard      : {dashboard_url(app)}")
    out.print(f"API            : {app['url']} (JSON, with your token)")
    if app["containers"]:
        table = Table("index", "node", "gpu ids", "state", "exit code", "diagnostics")
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
        for c in app["containers"]:  # pages a browser opens (the API's URLs need a token)
            for stream in ("stdout", "stderr"):
                url = dashboard_url(app, (c["index"], stream))
                out.print(f"container {c['index']} {stream}: {url}")
    return 0


@click.command()
@click.argument("app_id")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(app_id: str, as_json: bool) -> None:
    """Show one app: state, times, containers (node, GPU ids, exit code), log URLs.

    An array's id (array_...) shows its members' counts by state; ARRAY_ID_INDEX, one member."""
    sys.exit(show_status(app_id, as_json))


LIST_LIMIT = 100  # apps ``dlapp list`` shows unless told otherwise


def list_apps(
    user: str | None,
    show_all: bool,
    as_json: bool,
    queue: str | None = None,
    limit: int = LIST_LIMIT,
    array: str | None = None,
) -> int:
    """The apps as a table, newest first; an array's members one row per array (its counts by
    state), unless ``array`` asks for that array's members."""
    if limit < 0:
        raise DlappError(f"--limit must be 0 (every app) or more, not {limit}")
    states = () if show_all else ("ACCEPTED", "RUNNING")
    with connect() as client:
        if limit == 0:
            apps = list(client.iter_apps(user=user, queue=queue, states=states, array=array))
            more = None
        else:
            apps, more = client.list_page(
                user=user, queue=queue, states=states, limit=limit, array=array
            )
        grouped = {} if array else _arrays_of(client, apps)
    if as_json:
        print_json(apps)
        return 0
    table = Table(
        "id", "name", "user", "queue", "state", "final status", "gpus", "submitted", "why pending"
    )
    shown: set[str] = set()
    for a in apps:
        member = a.get("array")
        if member and member["id"] in grouped:
            if member["id"] not in shown:
                shown.add(member["id"])
                _array_row(table, grouped[member["id"]], a)
            continue
        table.add_row(
            a["id"] if not member else f"{a['id']} ({member['member']})",
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
    if shown:
        out.print(
            "an array's members are one row; its members: dlapp list --array ID, "
            "one member: dlapp status ID_INDEX"
        )
    if more is not None:
        out.print(f"the newest {len(apps)} shown; there are more (--limit N, --limit 0 for all)")
    if not apps:
        out.print(
            "no apps" + ("" if show_all else " queued or running (--all shows finished ones)")
        )
    return 0


def _arrays_of(client: DlappClient, apps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each array some of ``apps`` belong to: its view (the counts of all its members)."""
    ids = dict.fromkeys(a["array"]["id"] for a in apps if a.get("array"))
    return {i: client.get_array(i) for i in ids}


def _array_row(table: Table, array: dict[str, Any], first: dict[str, Any]) -> None:
    c = array["counts"]
    state = ", ".join(f"{n} {k}" for k, n in c.items() if n) or "-"
    limit = array["max_running"]
    table.add_row(
        f"{array['id']} [{array['size']} apps]",
        array["name"],
        array["user"],
        array["queue"],
        "ARRAY",
        state,
        str(first["resources"]["gpus"] * first["num_containers"]) + " each",
        array["submit_time"],
        f"array limit {limit} running" if limit else "",
    )


@click.command("list")
@click.option("--user", help="only this user's apps")
@click.option("--queue", help="only this queue's apps")
@click.option("--array", help="only this array's members (an array_... id), one row each")
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
    user: str | None,
    queue: str | None,
    array: str | None,
    show_all: bool,
    limit: int,
    as_json: bool,
) -> None:
    """List queued and running apps (all with --all), newest first; an array's members as one
    row (--array ID lists them)."""
    sys.exit(list_apps(user, show_all, as_json, queue, limit, array))


# -- kill / softkill / logs -------------------------------------------------------------------


def kill_app(app_id: str, soft: bool, owner: str | None = None) -> int:
    """Kill or softkill ``app_id``; with ``owner`` (``dlapp-kill USER ID``), only if it is
    that user's app."""
    from dlapp.arrays import is_array_id

    if is_array_id(app_id):
        return kill_array(app_id, soft, owner)
    with connect() as client:
        if owner is not None:
            user = client.get(app_id)["user"]
            if user != owner:
                raise DlappError(f"{app_id} is {user}'s app, not {owner}'s: nothing was killed")
        app = client.softkill(app_id) if soft else client.kill(app_id)
    word = "softkill" if soft else "kill"
    out.print(f"{word} sent to {app_id} (state {app['state']}, final status {app['final_status']})")
    return 0


def kill_array(array_id: str, soft: bool, owner: str | None = None) -> int:
    """Kill or softkill every unfinished member of an array."""
    with connect() as client:
        array = client.get_array(array_id)
        if owner is not None and array["user"] != owner:
            raise DlappError(
                f"{array_id} is {array['user']}'s array, not {owner}'s: nothing was killed"
            )
        before = array["counts"]
        client.kill_array(array_id, soft)
    word = "softkill" if soft else "kill"
    out.print(
        f"{word} sent to {array_id}: {before['ACCEPTED']} queued members killed, "
        f"{before['RUNNING']} running members stopping"
    )
    return 0


@click.command()
@click.argument("app_id")
def kill(app_id: str) -> None:
    """End an app now; an array's id (array_...): every unfinished member."""
    sys.exit(kill_app(app_id, soft=False))


@click.command()
@click.argument("app_id")
def softkill(app_id: str) -> None:
    """SIGTERM the app, wait the grace period, then SIGKILL."""
    sys.exit(kill_app(app_id, soft=True))


TAIL_LINES = 100  # lines ``dlapp logs`` shows unless told otherwise
MAX_READ = 16 * 1024 * 1024  # bytes of a log one request reads at most (the server's limit)


@click.command()
@click.argument("app_id")
@click.option("--container", "-c", default=0, show_default=True, help="container index")
@click.option("--stderr", is_flag=True, help="stderr instead of stdout")
@click.option("--tail", "-n", type=click.IntRange(min=1), help=f"the last N lines [{TAIL_LINES}]")
@click.option("--head", type=click.IntRange(min=1), help="the first N lines")
@click.option("--all", "whole", is_flag=True, help="the whole log, however long")
@click.option(
    "--attempt",
    type=click.IntRange(min=1),
    help="an earlier attempt's log (before a preemption or a requeue) [the current one]",
)
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="keep reading until the container ends: from the start, or with --tail N the last N",
)
def logs(
    app_id: str,
    container: int,
    stderr: bool,
    tail: int | None,
    head: int | None,
    whole: bool,
    attempt: int | None,
    follow: bool,
) -> None:
    """Print the end of a container's stdout (or stderr), live or after the app ended.

    The last 100 lines by default; a notice on stderr says what was left out."""
    stream = "stderr" if stderr else "stdout"
    chosen = [name for name, on in (("--tail", tail), ("--head", head), ("--all", whole)) if on]
    if len(chosen) > 1:
        raise DlappError(f"{' and '.join(chosen)} cannot be used together: choose one")
    if follow and (head or whole):
        raise DlappError(f"--follow reads on from the end: not with {chosen[0]}")
    with connect() as client:
        if follow:
            for text in client.follow_logs(app_id, container, stream, tail, attempt):
                sys.stdout.write(text)
                sys.stdout.flush()
            return
        if whole:
            for data in client.download_logs(app_id, container, stream, attempt):
                sys.stdout.buffer.write(data)
            sys.stdout.flush()
            return
        lines = client.log_lines(
            app_id,
            container,
            stream,
            tail=None if head else tail or TAIL_LINES,
            head=head,
            attempt=attempt,
            max_bytes=MAX_READ,
        )
    shown = lines.text.count("\n") + (0 if lines.text.endswith("\n") or not lines.text else 1)
    if lines.cut_before and not head:
        err.print(
            f"[dlapp] the last {shown} lines of {human_size(lines.size)}: "
            f"{human_size(lines.cut_before)} before them left out "
            "(--tail N for more, --head N for the start, --all for the whole log)",
            markup=False,
        )
    sys.stdout.write(lines.text)
    sys.stdout.flush()
    if lines.cut_after and head:
        err.print(
            f"[dlapp] the first {shown} lines of {human_size(lines.size)}: "
            f"{human_size(lines.cut_after)} after them left out "
            "(--head N for more, --tail N for the end, --all for the whole log)",
            markup=False,
        )
    if attempt is None and lines.attempt > 1:
        err.print(
            f"[dlapp] attempt {lines.attempt}'s log; the earlier ones: --attempt 1"
            + (f" to {lines.attempt - 1}" if lines.attempt > 2 else ""),
            markup=False,
        )


@click.group()
def spec() -> None:
    """Work with app specs."""


@spec.command("check")
@click.argument("spec_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print the normalised spec as JSON")
def spec_check(spec_file: str, as_json: bool) -> None:
    """Validate SPEC_FILE and print the normalised spec, or every problem. What only a server
    can tell (a scheme it must be configured for, an ignored username) comes as notes."""
    from dlapp.spec import AppSpec

    path = Path(spec_file)
    parsed = AppSpec.from_file(path)
    if as_json:
        print_json(parsed.to_dict())
    else:
        click.echo(parsed.to_yaml(), nl=False)
    for note in spec_notes(path, parsed):
        err.print(f"note: {note}", markup=False)


def spec_notes(path: Path, parsed: AppSpec) -> list[str]:
    """What a valid spec may still meet on a server."""
    from dlapp.data.locations import in_hdfs_namespace
    from dlapp.spec import PROPERTIES, properties_username

    notes = []
    hdfs = [b.url for b in (*parsed.inputs, *parsed.outputs) if in_hdfs_namespace(b.url)]
    if hdfs:
        notes.append(
            f"{', '.join(hdfs)}: hdfs:/// paths (no namenode in the URL) are served only by a "
            "server whose admin set hdfs_endpoint or hdfs_map (docs/data.md#hdfs); any other "
            "server refuses them at launch"
        )
    named = properties_username(path.read_text()) if path.suffix in PROPERTIES else None
    if named is not None:
        notes.append(
            f"username={named} is ignored: an app runs as the user whose token launches it"
        )
    return notes


def register(group: click.Group) -> None:
    for command in (launch, status, list_cmd, kill, softkill, logs, spec):
        group.add_command(command)
