"""Replay the Philly trace with `dlapp simulate` under each policy, and compare the runs.

    .venv/bin/python bench/philly.py [--scenario vc quota small] [--parallel 2] [--limit N]
                                     [--out /tmp/dlapp-philly] [--figures docs/benchmarks]

Every run is one `dlapp simulate` command, printed before it starts, writing
OUT/<scenario>/<run>/report.json and its PNGs. Then, per scenario, a markdown table of the
runs side by side and OUT/<scenario>/compare.png (copied to FIGURES/philly-<scenario>.png
with --figures). The trace and the virtual clusters come from ../shared/traces/.

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from dlapp.cli_sim import _duration  # noqa: E402
from dlapp.sim.plots import write_comparison  # noqa: E402

TRACES = ROOT.parent / "shared" / "traces"
DLAPP = str(Path(sys.executable).parent / "dlapp")

SCENARIOS: dict[str, tuple[list[str], list[tuple[str, list[str]]]]] = {
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--parallel", type=int, default=2, help="runs at once (one core each)")
    parser.add_argument("--limit", type=int, help="replay only the first N jobs")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "dlapp-philly")
    parser.add_argument("--figures", type=Path, help="copy each compare.png here")
    args = parser.parse_args()
    runs = [
        (scenario, label, command(scenario, label, extra, args.out, args.limit))
        for scenario in args.scenario
        for label, extra in SCENARIOS[scenario][1]
    ]
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        walls = list(pool.map(run, [argv for _, _, argv in runs]))
    for scenario in args.scenario:
        reports = []
        print(f"\n### {scenario}\n\n{HEADER}")
        for (s, label, _), wall in zip(runs, walls, strict=True):
            if s == scenario:
                report = json.loads((args.out / s / label / "report.json").read_text())
                reports.append((label, report))
                print(row(label, wall, report))
        png = write_comparison(reports, args.out / scenario / "compare.png")
        if args.figures:
            args.figures.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, args.figures / f"philly-{scenario}.png")
        print(f"\n{png}")


if __name__ == "__main__":
    main()
