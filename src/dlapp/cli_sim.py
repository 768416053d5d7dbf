"""``dlapp simulate``: replay a job trace through the scheduler's own policy, offline.

No server is needed: the command reads the trace, the cluster and the queue tree, runs
``dlapp.sim.simulate`` and prints the report (a table, or ``--json``); ``--out DIR`` writes
``report.json`` (with the timeline) and PNG plots. Registered on the main group by
``dlapp.cli``; tested through ``dlapp.cli.main``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from dlapp.scheduler import QueueTree
from dlapp.sim import (
    POLICIES,
    ClusterSpec,
    SimOptions,
    build_report,
    load_queues,
    load_trace,
    policy_tree,
    simulate,
    tree_from_vc,
)

console = Console(highlight=False, soft_wrap=True)
if not console.is_terminal:  # piped: do not wrap the tables
    console.width = 200


def _duration(seconds: float | None) -> str:
    """``42 s``, ``12.5 min``, ``3.1 h``, ``2.4 d``."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _times(figures: dict[str, Any]) -> list[str]:
    return [_duration(figures[k]) for k in ("mean", "p50", "p95", "p99")]


def tables(report: dict[str, Any]) -> list[Table]:
    """The overall figures and the per-queue figures of a report, as rich tables."""
    overall = report["overall"]
    alloc, fair, dec = report["allocation"], report["fairness"], report["decide"]
    head = Table(
        title=f"{report.get('label', report.get('policy', ''))}: {overall['finished']} jobs "
        f"finished, {report['dropped']['jobs']} dropped, on {report['cluster']['nodes']} nodes / "
        f"{report['cluster']['gpus']} GPUs, {report['span_h'] / 24:.1f} days simulated "
        f"in {report['wall_s']:.1f} s ({report['cpu_s']:.1f} s CPU)",
        title_justify="left",
    )
    for col in ("", "mean", "p50", "p95", "p99"):
        head.add_column(col, justify="left" if not col else "right")
    head.add_row("JCT", *_times(overall["jct_s"]))
    head.add_row("queueing delay", *_times(overall["queueing_s"]))
    summary = Table(show_header=False, box=None)
    summary.add_column()
    summary.add_column(justify="right")
    for name, value in (
        ("GPU allocation, mean", f"{alloc['mean_share']:.1%} ({alloc['mean_gpus']:g} GPUs)"),
        ("GPU allocation, peak", f"{alloc['peak_gpus']} GPUs"),
        ("preemptions (jobs)", f"{overall['preemptions']} ({overall['preempted_jobs']})"),
        ("GPU time lost to preemption", f"{alloc['lost_gpu_h']:g} GPU-h"),
        ("Jain's index, normalised delay", f"{fair['jain_normalised_delay']}"),
        ("worst queue's normalised delay", f"{fair['worst_normalised_delay']}"),
        ("queue-hours starved", f"{fair['starved_h']:g} h"),
        (
            "decide() calls, mean / max CPU",
            f"{dec['calls']}, {dec['mean_ms']:g} / {dec['max_ms']:g} ms "
            f"({dec['mean_heads']:g} heads, {dec['mean_running']:g} running on average)",
        ),
    ):
        summary.add_row(name, value)
    queues = Table(title="per queue", title_justify="left")
    for col in (
        "queue",
        "jobs",
        "guar.",
        "GPU-time",
        "JCT mean",
        "JCT p95",
        "wait mean",
        "wait p95",
        "norm. delay",
        "starved",
        "preempted",
    ):
        queues.add_column(col, justify="left" if col == "queue" else "right")
    for q in report["queues"]:
        queues.add_row(
            q["queue"],
            str(q["finished"]),
            f"{q['guaranteed_share']:.1%}",
            f"{q['gpu_time_share']:.1%}",
            _duration(q["jct_s"]["mean"]),
            _duration(q["jct_s"]["p95"]),
            _duration(q["queueing_s"]["mean"]),
            _duration(q["queueing_s"]["p95"]),
            "-" if q["normalised_delay"] is None else f"{q['normalised_delay']:.2f}",
            f"{q['starved_h']:g} h",
            str(q["preemptions"]),
        )
    return [head, summary, queues]


def _tree(queues_file: str | None, vc_file: str | None, vc_maximum: str) -> QueueTree | None:
    if queues_file and vc_file:
        raise click.UsageError("give --queues or --queues-from-vc, not both")
    if vc_file:
        return tree_from_vc(Path(vc_file), vc_maximum)
    if queues_file:
        return load_queues(Path(queues_file))
    return None


def _cluster(
    cluster_file: str | None,
    nodes: int | None,
    gpus_per_node: int,
    cpus_per_node: float | None,
    memory_per_node: str | None,
) -> ClusterSpec:
    if cluster_file and nodes is not None:
        raise click.UsageError("give --cluster or --nodes, not both")
    if cluster_file:
        return ClusterSpec.from_yaml(Path(cluster_file))
    if nodes is None:
        raise click.UsageError("give a cluster: --cluster FILE, or --nodes N [--gpus-per-node G]")
    return ClusterSpec.uniform(nodes, gpus_per_node, cpus_per_node, memory_per_node)


@click.command("simulate")
@click.argument("trace_file", metavar="TRACE", type=click.Path(dir_okay=False))
@click.option("--cluster", "cluster_file", type=click.Path(dir_okay=False), help="YAML node groups")
@click.option("--nodes", type=click.IntRange(min=1), help="a cluster of N identical nodes")
@click.option("--gpus-per-node", type=click.IntRange(min=0), default=8, show_default=True)
@click.option("--cpus-per-node", type=click.FloatRange(min=0), help="default: 8 per GPU")
@click.option("--memory-per-node", help="e.g. 512G (default: 64G per GPU)")
@click.option("--queues", "queues_file", type=click.Path(dir_okay=False), help="a queues.yaml")
@click.option(
    "--queues-from-vc",
    "vc_file",
    type=click.Path(dir_okay=False),
    help="vc,node_num CSV: a queue per virtual cluster, guaranteed its share of the nodes",
)
@click.option(
    "--vc-maximum",
    default="100%",
    show_default=True,
    help="maximum of those queues: a share, or 'guaranteed' (a hard quota)",
)
@click.option("--policy", type=click.Choice(POLICIES), default="dlapp", show_default=True)
@click.option(
    "--preemption/--no-preemption", default=None, help="override the queue tree's setting"
)
@click.option("--grace", type=click.FloatRange(min=0), help="preemption grace, s (the tree's)")
@click.option(
    "--cycle",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="scheduling cycle, simulated seconds (0: decide at every event)",
)
@click.option(
    "--bucket",
    type=click.FloatRange(min=1),
    default=3600.0,
    show_default=True,
    help="timeline bucket, s",
)
@click.option("--limit", type=click.IntRange(min=1), help="replay only the first N jobs")
@click.option("--label", help="this run's name in the report and plots (default: the policy)")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option(
    "--out", type=click.Path(file_okay=False), help="write report.json and PNG plots here"
)
def simulate_command(
    trace_file: str,
    cluster_file: str | None,
    nodes: int | None,
    gpus_per_node: int,
    cpus_per_node: float | None,
    memory_per_node: str | None,
    queues_file: str | None,
    vc_file: str | None,
    vc_maximum: str,
    policy: str,
    preemption: bool | None,
    grace: float | None,
    cycle: float,
    bucket: float,
    limit: int | None,
    label: str | None,
    as_json: bool,
    out: str | None,
) -> None:
    """Replay TRACE (CSV) through the scheduler's policy on a simulated cluster.

    TRACE needs a submit time (seconds, or a `timestamp`), `duration` (s) and `num_gpus`;
    it may have `cpus`, `memory`, `queue` (or `cluster`) and `user`. Without --queues or
    --queues-from-vc every job goes to the one queue `default`.
    """
    cluster = _cluster(cluster_file, nodes, gpus_per_node, cpus_per_node, memory_per_node)
    tree = _tree(queues_file, vc_file, vc_maximum)
    trace = load_trace(Path(trace_file))
    if tree is None:
        trace = trace.in_queue("default")
        tree = load_queues(None)
    if limit is not None:
        trace = trace.head(limit)
    tree = policy_tree(tree, policy, preemption, grace)
    result = simulate(trace, cluster, tree, SimOptions(cycle_s=cycle, bucket_s=bucket))
    report = build_report(
        result,
        {"label": label or policy, "policy": policy, "queues_source": tree.source},
    )
    timeline = result.timeline.series()
    written: list[Path] = []
    if out is not None:
        from dlapp.sim.plots import write_plots  # matplotlib loads only when plotting

        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "report.json"
        path.write_text(json.dumps(report | {"timeline": timeline}, indent=1) + "\n")
        written = [path, *write_plots(report | {"timeline": timeline}, folder)]
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for table in tables(report):
            console.print(table)
    for path in written:
        click.echo(f"wrote {path}", file=sys.stderr if as_json else sys.stdout)


def register(group: click.Group) -> None:
    group.add_command(simulate_command)
