"""``dlapp usage``: GPU-hours allocated and used per user or queue (``GET /api/v1/usage``).

Admins see everyone; other users their own apps. Registered on the main group by ``dlapp.cli.main``;
tested through its ``main``.
"""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from dlapp.cli.common import connect

out = Console(highlight=False, soft_wrap=True)


@click.command()
@click.option("--since", help="from this ISO date or date-time (UTC), e.g. 2026-11-01")
@click.option("--until", help="up to this ISO date or date-time (default: now)")
@click.option(
    "--by", type=click.Choice(["user", "queue"]), default="user", show_default=True, help="group"
)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def usage(since: str | None, until: str | None, by: str, as_json: bool) -> None:
    """GPU-hours allocated (and used, where GPUs were sampled) per user or queue."""
    with connect() as client:
        report = client.usage(since=since, until=until, by=by)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    out.print(
        f"GPU-hours allocated from {report['since']} to {report['until']}"
        + ("" if report["scope"] == "all" else f" (apps of {report['scope']})")
    )
    table = Table(by, "GPU-hours", "used", "utilisation", "apps", "containers")
    for row in report["rows"]:
        used, util = row["gpu_hours_used"], row["utilisation"]
        table.add_row(
            row["key"],
            f"{row['gpu_hours']:.2f}",
            "-" if used is None else f"{used:.2f}",
            "-" if util is None else f"{util:.0f}%",
            str(row["apps"]),
            str(row["containers"]),
        )
    out.print(table)
    used_total = report["total_gpu_hours_used"]
    out.print(
        f"total: {report['total_gpu_hours']:.2f} GPU-hours"
        + ("" if used_total is None else f", {used_total:.2f} used (where sampled)")
    )


def register(group: click.Group) -> None:
    group.add_command(usage)
