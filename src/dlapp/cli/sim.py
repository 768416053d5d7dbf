"""``dlapp simulate``: replay a job trace through the scheduler's own policy, offline.

No server is needed: the command reads the trace, the cluster and the queue tree, runs
``dlapp.sim.simulate`` and prints the report (a table, or ``--json``); ``--out DIR`` writes
``report.json`` (with the timeline) and PNG plots. Registered on the main group by
``dlapp.cli.main``; tested through ``dlapp.cli.main``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from dlapp.scheduler import PLACEMENTS, QueueTree
from dlapp.sim import (
    POLICIES,
    ClusterSpec,
    Progress,
    SimOptions,
    build_report,
    finish_time_fairness,
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
        ("GPU allocation, peak", f"{alloc['peak_gpus']:g} GPUs"),
        (
            "GPUs unallocated / fragmented, mean",
            f"{report['fragmentation']['unallocated_share_mean']:.1%} / "
            f"{report['fragmentation']['fragmented_share_mean']:.1%} of the cluster",
        ),
        (
            "GPU-hours asked (fractions rounded up)",
            f"{report['gpu_hours']['asked']:g} ({report['gpu_hours']['rounded_up']:g}); "
            f"{report['gpu_hours']['fractional_jobs']} jobs ask for a fraction",
        ),
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


@dataclass(frozen=True)
class _Run:
    """One replay of a comparison: a policy (with or without preemption) on one cluster."""

    policy: str
    preemption: bool | None
    cluster: ClusterSpec
    cluster_label: str

    def label(self, with_cluster: bool) -> str:
        name = self.policy
        if self.preemption is not None:
            name += "+preemption" if self.preemption else "+no-preemption"
        return f"{name} / {self.cluster_label}" if with_cluster else name


def _policy(text: str) -> tuple[str, bool | None]:
    """``las``, ``las+preemption``, ``fifo+no-preemption``."""
    name, _, flag = text.partition("+")
    if name not in POLICIES or flag not in ("", "preemption", "no-preemption"):
        raise click.BadParameter(
            f"{text!r}: give one of {', '.join(POLICIES)}, maybe with +preemption or "
            "+no-preemption",
            param_hint="--policy",
        )
    return name, None if not flag else flag == "preemption"


class _Progress:
    """How a replay is going, on stderr: rewritten in place on a terminal, else a line every
    15 s of wall time."""

    def __init__(self, index: int, runs: int, label: str) -> None:
        self.prefix = f"[{index}/{runs}] {label}" if runs > 1 else label
        self.tty = sys.stderr.isatty()
        self._last = 0.0
        click.echo(f"{self.prefix}: replaying", err=True)

    def __call__(self, p: Progress) -> None:
        if not self.tty and p.wall_s - self._last < 15:
            return
        self._last = p.wall_s
        line = (
            f"{self.prefix}: day {p.now / 86400:.1f}, {p.finished:,} of {p.jobs:,} jobs "
            f"finished, {p.wall_s:.0f} s"
        )
        click.echo(f"\r{line}\x1b[K" if self.tty else line, err=True, nl=not self.tty)

    def note(self, what: str) -> None:
        self._end_line()
        click.echo(f"{self.prefix}: finish-time fairness: replaying {what}", err=True)

    def done(self, report: dict[str, Any]) -> None:
        self._end_line()
        jct = report["overall"]["jct_s"]
        click.echo(
            f"{self.prefix}: done in {report['wall_s']:.0f} s (JCT mean {_duration(jct['mean'])},"
            f" p50 {_duration(jct['p50'])})",
            err=True,
        )

    def _end_line(self) -> None:
        if self.tty:
            click.echo("", err=True)


def comparison(reports: list[tuple[str, dict[str, Any]]]) -> Table:
    """One row per replay: the figures to compare them by."""
    table = Table(title="comparison", title_justify="left")
    for col in (
        "run",
        "GPUs",
        "JCT mean",
        "p50",
        "p95",
        "wait mean",
        "GPU alloc.",
        "preempt.",
        "Jain",
        "worst queue",
        "worst FTF",
        "longest starved",
        "decide() calls",
        "wall",
    ):
        table.add_column(col, justify="left" if col == "run" else "right")
    for label, r in reports:
        o, f, d = r["overall"], r["fairness"], r["decide"]
        ftf = f.get("worst_finish_time_fairness")
        table.add_row(
            label,
            f"{r['cluster']['gpus']:g}",
            *(_duration(o["jct_s"][k]) for k in ("mean", "p50", "p95")),
            _duration(o["queueing_s"]["mean"]),
            f"{r['allocation']['mean_share']:.1%}",
            str(o["preemptions"]),
            f"{f['jain_normalised_delay']}",
            f"{f['worst_normalised_delay']}",
            "-" if ftf is None else f"{ftf:g}",
            _duration(f["longest_starved_h"] * 3600),
            f"{d['calls']} x {d['mean_ms']:g} ms",
            f"{r['wall_s']:.0f} s",
        )
    return table


@click.command("simulate")
@click.argument("trace_file", metavar="TRACE", type=click.Path(dir_okay=False))
@click.option("--cluster", "cluster_file", type=click.Path(dir_okay=False), help="YAML node groups")
@click.option(
    "--nodes",
    type=click.IntRange(min=1),
    multiple=True,
    help="a cluster of N identical nodes (several, with --compare)",
)
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
@click.option(
    "--policy",
    "policies",
    multiple=True,
    default=("dlapp",),
    show_default=True,
    help=f"one of {', '.join(POLICIES)}; with --compare, several, each maybe ending in "
    "+preemption or +no-preemption",
)
@click.option(
    "--preemption/--no-preemption", default=None, help="override the queue tree's setting"
)
@click.option("--grace", type=click.FloatRange(min=0), help="preemption grace, s (the tree's)")
@click.option(
    "--runtime-estimate",
    type=click.FloatRange(min=1),
    help="jobs state a max_runtime of their duration times this (1: exactly); default: none",
)
@click.option(
    "--fairness",
    is_flag=True,
    help="finish-time fairness: replay each queue alone on its guarantee too (slower)",
)
@click.option(
    "--compare",
    is_flag=True,
    help="replay every --policy on every --nodes; one table, and one figure with --out",
)
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
@click.option(
    "--placement",
    type=click.Choice(PLACEMENTS),
    default="fgd",
    show_default=True,
    help="how containers' nodes are chosen: fragmentation-aware (fgd), best-fit, first-fit, "
    "or pack (fewest free GPUs: dlapp's placement before GPU sharing)",
)
@click.option(
    "--round-fractions",
    is_flag=True,
    help="a job asking for a fraction of a GPU takes a whole one (as before GPU sharing)",
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
    nodes: tuple[int, ...],
    gpus_per_node: int,
    cpus_per_node: float | None,
    memory_per_node: str | None,
    queues_file: str | None,
    vc_file: str | None,
    vc_maximum: str,
    policies: tuple[str, ...],
    preemption: bool | None,
    grace: float | None,
    runtime_estimate: float | None,
    fairness: bool,
    compare: bool,
    cycle: float,
    bucket: float,
    placement: str,
    round_fractions: bool,
    limit: int | None,
    label: str | None,
    as_json: bool,
    out: str | None,
) -> None:
    """Replay TRACE (CSV) through the scheduler's policy on a simulated cluster.

    TRACE needs a submit time (seconds, or a `timestamp`), `duration` (s) and `num_gpus`
    (a fraction of one GPU, such as 0.5, is shared; or Alibaba's `num_gpu` and `gpu_milli`);
    it may have `cpus`, `memory`, `gpu_type`, `queue` (or `cluster`) and `user`. Without
    --queues or --queues-from-vc every job goes to the one queue `default`.

    With --compare, every --policy (say `las`, `las+preemption`, `fifo`) is replayed on every
    --nodes count, one after the other with their progress on stderr, and one table compares
    them (with --out, each run's report and plots in a folder of its own, and compare.png).
    """
    chosen = [_policy(p) for p in policies]
    if not compare and (len(chosen) > 1 or len(nodes) > 1):
        raise click.UsageError("several --policy or --nodes: add --compare to replay them all")
    if not compare and chosen[0][1] is not None:
        raise click.UsageError("+preemption is for --compare; give --preemption instead")
    clusters = _clusters(cluster_file, nodes, gpus_per_node, cpus_per_node, memory_per_node)
    base = _tree(queues_file, vc_file, vc_maximum)
    trace = load_trace(Path(trace_file))
    if base is None:
        trace = trace.in_queue("default")
        base = load_queues(None)
    if limit is not None:
        trace = trace.head(limit)
    options = SimOptions(
        cycle_s=cycle,
        bucket_s=bucket,
        runtime_estimate=runtime_estimate,
        placement=placement,
        round_fractions=round_fractions,
    )
    runs = [
        _Run(name, pre if pre is not None else preemption, cluster, cluster_label)
        for name, pre in chosen
        for cluster_label, cluster in clusters
    ]
    reports: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    for k, run in enumerate(runs, 1):
        run_label = run.label(len(clusters) > 1) if compare else (label or run.policy)
        tree = policy_tree(base, run.policy, run.preemption, grace)
        progress = _Progress(k, len(runs), run_label) if compare or sys.stderr.isatty() else None
        result = simulate(trace, run.cluster, tree, options, progress)
        fair = finish_time_fairness(result, progress.note if progress else None) if fairness else []
        meta: dict[str, Any] = {
            "label": run_label,
            "policy": run.policy,
            "queues_source": tree.source,
        }
        if runtime_estimate is not None:
            meta["runtime_estimate"] = runtime_estimate
        report = build_report(result, meta, fair)
        if progress is not None:
            progress.done(report)
        reports.append((run_label, report, result.timeline.series()))
    if compare:
        _show_comparison(reports, as_json, out)
        return
    (_, report, timeline), written = reports[0], []
    if out is not None:
        written = _write(report, timeline, Path(out))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for table in tables(report):
            console.print(table)
    for path in written:
        click.echo(f"wrote {path}", file=sys.stderr if as_json else sys.stdout)


def _clusters(
    cluster_file: str | None,
    nodes: tuple[int, ...],
    gpus_per_node: int,
    cpus_per_node: float | None,
    memory_per_node: str | None,
) -> list[tuple[str, ClusterSpec]]:
    if cluster_file:
        if nodes:
            raise click.UsageError("give --cluster or --nodes, not both")
        return [(Path(cluster_file).stem, ClusterSpec.from_yaml(Path(cluster_file)))]
    if not nodes:
        raise click.UsageError("give a cluster: --cluster FILE, or --nodes N [--gpus-per-node G]")
    return [
        (f"{n} nodes", _cluster(None, n, gpus_per_node, cpus_per_node, memory_per_node))
        for n in nodes
    ]


def _write(report: dict[str, Any], timeline: dict[str, Any], folder: Path) -> list[Path]:
    """``report.json`` (with the timeline) and the run's plots in ``folder``."""
    from dlapp.sim.plots import write_plots  # matplotlib loads only when plotting

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "report.json"
    path.write_text(json.dumps(report | {"timeline": timeline}, indent=1) + "\n")
    return [path, *write_plots(report | {"timeline": timeline}, folder)]


def _show_comparison(
    reports: list[tuple[str, dict[str, Any], dict[str, Any]]], as_json: bool, out: str | None
) -> None:
    written: list[Path] = []
    if out is not None:
        from dlapp.sim.plots import write_compare

        folder = Path(out)
        for label, report, timeline in reports:
            written += _write(report, timeline, folder / _slug(label))[:1]
        full = [(label, report | {"timeline": tl}) for label, report, tl in reports]
        written.append(write_compare(full, folder / "compare.png"))
    if as_json:
        click.echo(json.dumps([report for _, report, _ in reports], indent=2))
    else:
        console.print(comparison([(label, report) for label, report, _ in reports]))
    for path in written:
        click.echo(f"wrote {path}", file=sys.stderr if as_json else sys.stdout)


def _slug(label: str) -> str:
    """``las+preemption / 52 nodes`` -> ``las+preemption-52-nodes``: a folder name."""
    words = "".join(c if c.isalnum() or c in "+-." else " " for c in label).split()
    return "-".join(words) or "run"


def register(group: click.Group) -> None:
    group.add_command(simulate_command)
