"""PNG plots of a replay, drawn from its report (so saved ``report.json`` files can be plotted
again and compared): GPUs held per queue over time, apps waiting per queue over time, and a
comparison of several replays side by side.

Needs matplotlib, the ``sim`` extra: ``pip install 'dlapp[sim]'``. Only the object-oriented
API is used (no pyplot, no global state, no display).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dlapp.errors import DlappError

ALLOCATION_PNG = "allocation.png"
QUEUES_PNG = "queues.png"


def _new_figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise DlappError(
            "PNG plots need matplotlib: pip install 'dlapp[sim]' (or leave out --out)"
        ) from None
    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _days(series: dict[str, Any]) -> list[float]:
    return [t / 24 for t in series["t_h"]]


def _day_label(report: dict[str, Any]) -> str:
    origin = report.get("trace", {}).get("origin")
    return f"days since {origin[:16]}" if origin else "day"


def _colors(n: int) -> list[Any]:
    """Up to 20 distinguishable colours (matplotlib's tab20), then again."""
    from matplotlib import colormaps  # type: ignore[import-not-found, unused-ignore]

    return [colormaps["tab20"](i % 20) for i in range(n)]


def _short(queue: str) -> str:
    return queue.removeprefix("root.")


def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    """``allocation.png`` and ``queues.png`` in ``out`` from ``report["timeline"]``."""
    series = report["timeline"]
    days = _days(series)
    queues = list(series["gpus_held_by_queue"])
    title = report.get("label") or report.get("policy", "")
    out.mkdir(parents=True, exist_ok=True)

    fig = _new_figure(11, 4.5)
    ax = fig.add_subplot()
    ax.stackplot(
        days,
        [series["gpus_held_by_queue"][q] for q in queues],
        labels=[_short(q) for q in queues],
        colors=_colors(len(queues)),
        step="post",
    )
    ax.axhline(report["cluster"]["gpus"], color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel(_day_label(report))
    ax.set_ylabel(f"GPUs held (mean per {series['bucket_s'] / 3600:g} h)")
    share = report["allocation"]["mean_share"]
    ax.set_title(f"{title}: GPU allocation by queue (mean {share:.1%} of the cluster)")
    ax.margins(x=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", title="queue")
    allocation = out / ALLOCATION_PNG
    fig.savefig(allocation)

    fig = _new_figure(11, 4.5)
    ax = fig.add_subplot()
    for q, color in zip(queues, _colors(len(queues)), strict=True):
        ax.plot(
            days, series["apps_waiting_by_queue"][q], label=_short(q), color=color, linewidth=0.8
        )
    ax.set_xlabel(_day_label(report))
    ax.set_ylabel("apps waiting (mean per bucket)")
    ax.set_title(f"{title}: queue lengths")
    ax.margins(x=0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", title="queue")
    lengths = out / QUEUES_PNG
    fig.savefig(lengths)
    return [allocation, lengths]


def write_comparison(reports: Sequence[tuple[str, dict[str, Any]]], path: Path) -> Path:
    """One PNG comparing several replays of the same trace: GPUs held and apps waiting over
    time (daily means), JCT (hours) and queueing delay (minutes) per replay."""
    fig = _new_figure(12, 10)
    axes = fig.subplot_mosaic([["held", "held"], ["waiting", "waiting"], ["jct", "queueing"]])
    held, waiting = axes["held"], axes["waiting"]
    for label, report in reports:
        series = report["timeline"]
        per_day = max(1, round(86400 / series["bucket_s"]))
        days = [d / per_day for d in range(0, len(series["t_h"]), per_day)]
        total_waiting = [
            sum(v) for v in zip(*series["apps_waiting_by_queue"].values(), strict=True)
        ]
        held.plot(days, _daily(series["gpus_held"], per_day), label=label, linewidth=1)
        waiting.plot(days, _daily(total_waiting, per_day), label=label, linewidth=1)
    gpus = reports[0][1]["cluster"]["gpus"] if reports else 0
    held.axhline(gpus, color="black", linewidth=0.8, linestyle="--")
    held.set_ylabel("GPUs held (daily mean)")
    held.set_title("GPU allocation over time (dashed: the cluster's GPUs)")
    waiting.set_ylabel("apps waiting (daily mean)")
    waiting.set_title("queue length over time (all queues)")
    waiting.set_xlabel(_day_label(reports[0][1]) if reports else "day")
    for ax in (held, waiting):
        ax.margins(x=0)
        ax.legend(fontsize="small")
    _bars(axes["jct"], reports, "jct_s", 3600, "hours", "job completion time")
    _bars(axes["queueing"], reports, "queueing_s", 60, "minutes", "queueing delay")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def write_compare(reports: Sequence[tuple[str, dict[str, Any]]], path: Path) -> Path:
    """``dlapp simulate --compare``'s figure, three panels side by side: the JCT CDF of each
    replay, the mean queueing delay per queue, and the GPU allocation over time (daily mean,
    as a share of each replay's cluster)."""
    fig = _new_figure(17, 5)
    cdf, waits, alloc = fig.subplots(1, 3)
    for label, report in reports:
        points = report.get("jct_cdf_s") or []
        if points:
            fractions = [k / (len(points) - 1) for k in range(len(points))]
            cdf.plot([max(v, 1.0) / 3600 for v in points], fractions, label=label, linewidth=1.2)
    cdf.set_xscale("log")
    cdf.set_xlabel("job completion time (hours, log scale)")
    cdf.set_ylabel("share of jobs finished by then")
    cdf.set_title("JCT CDF")
    cdf.legend(fontsize="small")
    queues = [q["queue"] for q in reports[0][1]["queues"]] if reports else []
    width = 0.8 / max(1, len(reports))
    for k, (label, report) in enumerate(reports):
        by_queue = {q["queue"]: q for q in report["queues"]}
        values = [
            (by_queue[q]["queueing_s"]["mean"] or 0.0) / 3600 if q in by_queue else 0.0
            for q in queues
        ]
        waits.bar([m + k * width for m in range(len(queues))], values, width, label=label)
    waits.set_xticks([m + width * (len(reports) - 1) / 2 for m in range(len(queues))])
    waits.set_xticklabels([_short(q) for q in queues], rotation=60, fontsize="small")
    waits.set_ylabel("mean queueing delay (hours)")
    waits.set_title("waiting per queue")
    waits.legend(fontsize="small")
    for label, report in reports:
        series = report["timeline"]
        gpus = report["cluster"]["gpus"] or 1
        per_day = max(1, round(86400 / series["bucket_s"]))
        days = [d / per_day for d in range(0, len(series["t_h"]), per_day)]
        share = [v / gpus for v in _daily(series["gpus_held"], per_day)]
        alloc.plot(days, share, label=label, linewidth=1)
    alloc.set_ylim(0, 1.05)
    alloc.set_xlabel(_day_label(reports[0][1]) if reports else "day")
    alloc.set_ylabel("GPUs held, share of the cluster (daily mean)")
    alloc.set_title("allocation")
    alloc.margins(x=0)
    alloc.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _bars(
    ax: Any,
    reports: Sequence[tuple[str, dict[str, Any]]],
    key: str,
    unit_s: float,
    unit: str,
    title: str,
) -> None:
    stats = ("mean", "p50", "p95")
    width = 0.8 / max(1, len(reports))
    for k, (label, report) in enumerate(reports):
        values = [(report["overall"][key][stat] or 0.0) / unit_s for stat in stats]
        ax.bar([m + k * width for m in range(len(stats))], values, width, label=label)
    ax.set_xticks([m + width * (len(reports) - 1) / 2 for m in range(len(stats))])
    ax.set_xticklabels(stats)
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.legend(fontsize="small")


def _daily(values: Sequence[float], per_day: int) -> list[float]:
    return [
        sum(values[i : i + per_day]) / len(values[i : i + per_day])
        for i in range(0, len(values), per_day)
    ]
