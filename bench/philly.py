"""Replay the Philly trace with `dlapp simulate` under each policy, and compare the runs.

    .venv/bin/python bench/philly.py [--scenario n48 n52 n96 vc quota small] [--parallel 2]
                                     [--limit N] [--out /tmp/dlapp-philly]
                                     [--figures docs/benchmarks]

Every run is one `dlapp simulate` command, printed before it starts, writing
OUT/<scenario>/<run>/report.json and its PNGs. Then, per scenario, a markdown table of the
runs side by side and OUT/<scenario>/compare.png (copied to FIGURES/philly-<scenario>.png
with --figures). The trace and the virtual clusters come from ../shared/traces/.

--in-process runs the same replays in worker processes of this script, without the CLI (so
on a machine with no more than dlapp's core dependencies; the commands are printed all the
same), --tables-only prints the tables and draws the figures from the reports already in OUT,
and --traces says where the trace and the virtual clusters are.

The saturated scenarios (n48, n52, n96) replay every ordering with and without preemption,
the jobs stating their duration as max_runtime (`--runtime-estimate 1`; containers placed by
`--placement pack`, dlapp's placement before GPU sharing: with whole GPUs on identical
8-GPU nodes it decides as fgd does, in a third of the time), and the
duration-aware reference of bench/reference.py on the same cluster in the same run: their
tables give each run's JCT as a ratio to the reference's. n52 also replays each queue alone
on its guarantee (`--fairness`: finish-time fairness).

Scenarios:
  vc     352 nodes x 8 GPUs; a queue per virtual cluster, guaranteed its share of the nodes,
         maximum 100% (idle GPUs are lent): the replay the traces README describes
  quota  the same with each queue's maximum = its guarantee: a hard quota per virtual
         cluster, no borrowing (so no preemption either)
  small  as vc on 96 nodes (768 GPUs): the same demand on a cluster about a quarter the size
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from dlapp.cli.sim import _duration  # noqa: E402
from dlapp.errors import DlappError  # noqa: E402
from dlapp.sim import load_trace  # noqa: E402
from dlapp.sim.plots import write_compare, write_comparison  # noqa: E402

TRACES = ROOT.parent / "shared" / "traces"
DLAPP = str(Path(sys.executable).parent / "dlapp")

# each queue's ordering, and the `dlapp simulate --policy` that sets it on every queue
ORDERINGS = {"fifo": "fifo", "backfill": "fifo-skip", "las": "las", "srtf": "srtf"}
SATURATED = [
    (
        f"{o}{'+preemption' if pre else ''}",
        ["--policy", policy, "--preemption" if pre else "--no-preemption"],
    )
    for o, policy in ORDERINGS.items()
    for pre in (False, True)
]
# every job states its duration as its max_runtime; containers placed as dlapp placed them
# before GPU sharing (pack: whole GPUs on 8-GPU nodes, decided close to fgd at a third the cost)
EXACT = ["--runtime-estimate", "1", "--placement", "pack"]

SCENARIOS: dict[str, tuple[list[str], list[tuple[str, list[str]]]]] = {
    "n48": (["--nodes", "48", "--queues-from-vc", "{vc}", *EXACT], SATURATED),
    "n52": (["--nodes", "52", "--queues-from-vc", "{vc}", *EXACT, "--fairness"], SATURATED),
    "n96": (["--nodes", "96", "--queues-from-vc", "{vc}", *EXACT], SATURATED),
    "vc": (
        ["--nodes", "352", "--queues-from-vc", "{vc}"],
        [
            ("dlapp+preemption", ["--policy", "dlapp", "--preemption"]),
            ("dlapp", ["--policy", "dlapp", "--no-preemption"]),
            ("fifo", ["--policy", "fifo", "--no-preemption"]),
            ("fifo-skip", ["--policy", "fifo-skip", "--no-preemption"]),
        ],
    ),
    "quota": (
        ["--nodes", "352", "--queues-from-vc", "{vc}", "--vc-maximum", "guaranteed"],
        [
            ("dlapp", ["--policy", "dlapp", "--no-preemption"]),
            ("fifo", ["--policy", "fifo", "--no-preemption"]),
        ],
    ),
    "small": (
        ["--nodes", "96", "--queues-from-vc", "{vc}"],
        [
            ("dlapp+preemption", ["--policy", "dlapp", "--preemption"]),
            ("dlapp", ["--policy", "dlapp", "--no-preemption"]),
            ("fifo", ["--policy", "fifo", "--no-preemption"]),
            ("fifo-skip", ["--policy", "fifo-skip", "--no-preemption"]),
        ],
    ),
}


def command(scenario: str, label: str, extra: list[str], out: Path, limit: int | None) -> list[str]:
    base, _ = SCENARIOS[scenario]
    argv = [DLAPP, "simulate", str(TRACES / "philly.csv")]
    argv += [a.format(vc=TRACES / "philly_vc.csv") for a in base] + extra
    argv += ["--label", label, "--out", str(out / scenario / label)]
    return argv + (["--limit", str(limit)] if limit else [])


def run_in_process(argv: list[str]) -> tuple[float, float]:
    """What ``dlapp simulate argv`` does, in this process (only the options used above)."""
    from dlapp.sim import (
        ClusterSpec,
        SimOptions,
        build_report,
        finish_time_fairness,
        policy_tree,
        simulate,
        tree_from_vc,
    )

    print("$", " ".join(argv).replace(str(ROOT) + "/", ""), flush=True)
    started, cpu = time.perf_counter(), time.process_time()
    args = argv[2:]

    def value(flag: str, default: str | None = None) -> str | None:
        return args[args.index(flag) + 1] if flag in args else default

    trace = load_trace(Path(args[0]))
    limit = value("--limit")
    if limit:
        trace = trace.head(int(limit))
    tree = tree_from_vc(Path(value("--queues-from-vc") or ""), value("--vc-maximum", "100%") or "")
    preemption = True if "--preemption" in args else False if "--no-preemption" in args else None
    policy = value("--policy", "dlapp") or "dlapp"
    tree = policy_tree(tree, policy, preemption)
    estimate = value("--runtime-estimate")
    options = SimOptions(
        runtime_estimate=None if estimate is None else float(estimate),
        placement=value("--placement", "fgd") or "fgd",
    )
    cluster = ClusterSpec.uniform(int(value("--nodes") or 0), 8)
    result = simulate(trace, cluster, tree, options)
    fair = finish_time_fairness(result) if "--fairness" in args else []
    meta = {"label": value("--label"), "policy": policy, "queues_source": tree.source}
    report = build_report(result, meta, fair) | {"timeline": result.timeline.series()}
    folder = Path(value("--out") or ".")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return time.perf_counter() - started, time.process_time() - cpu


def run(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one command."""
    print("$", " ".join(argv).replace(str(ROOT) + "/", ""), flush=True)
    started = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"failed ({child.returncode}): {' '.join(argv)}")
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime


def row(label: str, times: tuple[float, float], r: dict[str, Any]) -> str:
    o, a, f, d = r["overall"], r["allocation"], r["fairness"], r["decide"]
    cells = [
        label,
        *(_duration(o["jct_s"][k]) for k in ("mean", "p50", "p95", "p99")),
        *(_duration(o["queueing_s"][k]) for k in ("mean", "p50", "p95", "p99")),
        f"{a['mean_share']:.1%}",
        f"{o['preemptions']}",
        f"{f['jain_normalised_delay']}",
        f"{f['worst_normalised_delay']}",
        f"{f['starved_h']:g}",
        f"{d['calls']} x {d['mean_ms']:g} ms",
        f"{times[0]:.0f} s ({times[1]:.0f} s CPU)",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| run | JCT mean | p50 | p95 | p99 | queueing mean | p50 | p95 | p99 | GPU alloc. "
    "| preemptions | Jain (norm. delay) | worst queue | starved queue-h "
    "| decide() calls x mean | wall (CPU) |\n"
    "|---|" + "---:|" * 15
)

SATURATED_HEADER = (
    "| run | JCT mean | / ref. | p50 | / ref. | queueing mean | GPU alloc. | preemptions "
    "| Jain (norm. delay) | worst queue | worst FTF | starved queue-h | longest starved "
    "| decide() calls x mean | wall (CPU) |\n"
    "|---|" + "---:|" * 14
)


def saturated_row(
    label: str, times: tuple[float, float] | None, r: dict[str, Any], ref: dict[str, Any]
) -> str:
    """One run against the reference of the same run: JCT mean and p50 as ratios."""
    o, f = r["overall"], r["fairness"]
    mean, p50 = o["jct_s"]["mean"], o["jct_s"]["p50"]
    ref_mean, ref_p50 = ref["overall"]["jct_s"]["mean"], ref["overall"]["jct_s"]["p50"]
    ftf = f.get("worst_finish_time_fairness")
    starved = f.get("longest_starved_h")
    d = r.get("decide")
    cells = [
        label,
        _duration(mean),
        f"{mean / ref_mean:.2f}x",
        _duration(p50),
        f"{p50 / ref_p50:.2f}x",
        _duration(o["queueing_s"]["mean"]),
        f"{r['allocation']['mean_share']:.1%}",
        str(o.get("preemptions", 0)),
        f"{f['jain_normalised_delay']}",
        f"{f['worst_normalised_delay']}",
        "-" if ftf is None else f"{ftf:g}",
        "-" if f.get("starved_h") is None else f"{f['starved_h']:g}",  # the reference: no queues
        "-" if starved is None else _duration(starved * 3600),
        "-" if d is None else f"{d['calls']} x {d['mean_ms']:g} ms",
        "-" if times is None else f"{times[0]:.0f} s ({times[1]:.0f} s CPU)",
    ]
    return "| " + " | ".join(cells) + " |"


def reference_report(scenario: str, limit: int | None) -> dict[str, Any]:
    """The duration-aware reference (bench/reference.py) on the scenario's cluster."""
    import reference  # bench/reference.py, beside this script

    base, _ = SCENARIOS[scenario]
    nodes = int(base[base.index("--nodes") + 1])
    trace = load_trace(TRACES / "philly.csv")
    jobs = list(trace.jobs[:limit] if limit else trace.jobs)
    return reference.replay(jobs, nodes, 8, 60.0, reference.vc_names(TRACES / "philly_vc.csv"))


def main() -> None:
    global TRACES
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--scenario", nargs="+", choices=list(SCENARIOS), default=["n48", "n52", "n96"]
    )
    parser.add_argument("--parallel", type=int, default=2, help="runs at once (one core each)")
    parser.add_argument("--limit", type=int, help="replay only the first N jobs")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "dlapp-philly")
    parser.add_argument("--figures", type=Path, help="copy each compare.png here")
    parser.add_argument("--traces", type=Path, default=TRACES, help="philly.csv is here")
    parser.add_argument("--in-process", action="store_true", help="replay without the CLI")
    parser.add_argument("--tables-only", action="store_true", help="from the reports in OUT")
    args = parser.parse_args()
    TRACES = args.traces
    runs = [
        (scenario, label, command(scenario, label, extra, args.out, args.limit))
        for scenario in args.scenario
        for label, extra in SCENARIOS[scenario][1]
    ]
    if args.tables_only:
        walls = []
        for s, label, _ in runs:
            saved = json.loads((args.out / s / label / "report.json").read_text())
            walls.append((saved["wall_s"], saved["cpu_s"]))
    elif args.in_process:
        with ProcessPoolExecutor(max_workers=args.parallel) as procs:
            walls = list(procs.map(run_in_process, [argv for _, _, argv in runs]))
    else:
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            walls = list(pool.map(run, [argv for _, _, argv in runs]))
    for scenario in args.scenario:
        reports = []
        saturated = scenario.startswith("n")
        ref = reference_report(scenario, args.limit) if saturated else None
        print(f"\n### {scenario}\n\n{SATURATED_HEADER if ref else HEADER}")
        for (s, label, _), wall in zip(runs, walls, strict=True):
            if s == scenario:
                report = json.loads((args.out / s / label / "report.json").read_text())
                reports.append((label, report))
                print(saturated_row(label, wall, report, ref) if ref else row(label, wall, report))
        if ref is not None:
            print(saturated_row(f"reference ({ref['wall_s']:.0f} s)", None, ref, ref))
            (args.out / scenario / "reference.json").write_text(json.dumps(ref, indent=1))
        try:
            draw = write_compare if ref is not None else write_comparison
            png = draw(reports, args.out / scenario / "compare.png")
        except DlappError as exc:  # no matplotlib here: the tables are all
            print(f"\n(no figure: {exc.message})")
            continue
        if args.figures:
            args.figures.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, args.figures / f"philly-{scenario}.png")
        print(f"\n{png}")


if __name__ == "__main__":
    main()
