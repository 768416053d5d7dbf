"""Benchmark: launch latency of an empty app, dlapp against the systems users would pick instead.

    .venv/bin/python bench/launch.py [--runs 20] [--warmup 2] [--systems ...] [--image ...]
                                     [--json | --markdown] [--out report.json]

Measures, in one run on one machine, for each system: submit -> the user's process ran its first
instruction ("started"), and submit -> the submitter sees the app finished ("finished"), p50
and p95 over RUNS runs, with the ratios of dlapp to each peer. The systems:

  dlapp-process  dlapp, process runtime, through the HTTP SDK (what `dlapp launch` does)
  dlapp-actor    the same on the start path before node agents (`start_path: actor`: a
                 placement group and a supervisor actor per container), on a Ray cluster and
                 dlapp server of its own
  dlapp-docker   dlapp, Docker runtime, image --image (dlapp/minimal)
  spawn          a bare process spawn (subprocess)
  docker-run     a bare `docker run --rm` of the same image
  ray-jobs       Ray's Jobs API (JobSubmissionClient, entrypoint_num_gpus=1) on the Ray cluster
                 dlapp runs on
  slurm          `sbatch --gres=gpu:1` on a local slurmctld + slurmd (set up with
                 `sudo bench/peers/slurm.sh`)

dlapp and Ray Jobs share one single-node Ray cluster (4 CPUs, 2 declared GPUs, token
authentication on) that this script starts with its dashboard, with a dlapp server on it. The
runs are interleaved (one run of each system in turn, in a rotating order) so that a busy
machine slows all systems alike. A system that cannot be set up, or fails a run, is reported
as "not available: why" and the others go on. See docs/benchmarks.md, "Launch latency".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from peers.systems import (
    POLL_S,
    BareSpawn,
    BenchError,
    Dlapp,
    DockerRun,
    Peer,
    RayJobs,
    Sample,
    SharedCluster,
    Slurm,
    Unavailable,
    make_workspace,
    require_token_auth,
)
from stats import markdown_table, percentile, plain_table, ratio_text

SYSTEMS = (
    "dlapp-process",
    "dlapp-actor",
    "dlapp-docker",
    "spawn",
    "docker-run",
    "ray-jobs",
    "slurm",
)
SUBJECTS = ("dlapp-process", "dlapp-actor", "dlapp-docker")  # the ratio table's columns
MEASURES = ("started", "finished")


# -- statistics (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    n: int
    p50: float
    p95: float
    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        return cls(
            n=len(values),
            p50=percentile(values, 50),
            p95=percentile(values, 95),
            mean=sum(values) / len(values),
            min=min(values),
            max=max(values),
        )


@dataclass
class Result:
    """One system's outcome: its samples, or why it could not be measured."""

    name: str
    describe: str = ""
    samples: list[Sample] = field(default_factory=list)
    unavailable: str | None = None

    def stats(self, measure: str) -> Stats | None:
        if self.unavailable is not None or not self.samples:
            return None
        return Stats.of([getattr(s, f"{measure}_s") for s in self.samples])


def ratios(results: dict[str, Result]) -> dict[str, dict[str, dict[str, float | None]]]:
    """p50 of each dlapp variant over p50 of each peer: ``{subject: {peer: {measure: x}}}``;
    None where either side was not measured."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for subject in SUBJECTS:
        if subject not in results:
            continue
        out[subject] = {}
        for peer in results:
            if peer in SUBJECTS:
                continue
            row: dict[str, float | None] = {}
            for measure in MEASURES:
                a, b = results[subject].stats(measure), results[peer].stats(measure)
                row[measure] = a.p50 / b.p50 if a and b and b.p50 > 0 else None
            out[subject][peer] = row
    return out


# -- rendering (pure) -----------------------------------------------------------------------------


def _ms(x: float) -> str:
    return f"{x * 1000:.0f} ms" if x < 10 else f"{x:.1f} s"


def table_rows(results: dict[str, Result]) -> list[list[str]]:
    """One row a system: name, started p50 / p95, finished p50 / p95, runs (or why not)."""
    rows = []
    for r in results.values():
        started, finished = r.stats("started"), r.stats("finished")
        if started is None or finished is None:
            why = r.unavailable or "no runs"
            rows.append([r.name, f"not available: {why}"])
            continue
        rows.append(
            [
                r.name,
                _ms(started.p50),
                _ms(started.p95),
                _ms(finished.p50),
                _ms(finished.p95),
                str(started.n),
            ]
        )
    return rows


def ratio_rows(results: dict[str, Result]) -> list[list[str]]:
    """One row a peer: dlapp-process and dlapp-docker over it, started / finished (p50)."""
    table = ratios(results)
    peers = [p for p in results if p not in SUBJECTS]
    rows = []
    for peer in peers:
        row = [peer]
        for subject in SUBJECTS:
            if subject in table:
                r = table[subject][peer]
                row.append(f"{ratio_text(r['started'])} / {ratio_text(r['finished'])}")
        rows.append(row)
    return rows


HEADER = ["system", "started p50", "p95", "finished p50", "p95", "runs"]


def _ratio_header(results: dict[str, Result]) -> list[str]:
    return ["dlapp p50 / peer p50 (started / finished)"] + [s for s in SUBJECTS if s in results]


def render_plain(results: dict[str, Result]) -> str:
    out = [plain_table(HEADER, table_rows(results))]
    if any(s in results for s in SUBJECTS):
        out += ["", plain_table(_ratio_header(results), ratio_rows(results))]
    return "\n".join(out)


def render_markdown(results: dict[str, Result]) -> str:
    out = [markdown_table(HEADER, table_rows(results))]
    if any(s in results for s in SUBJECTS):
        out += ["", markdown_table(_ratio_header(results), ratio_rows(results))]
    return "\n".join(out)


def to_json(results: dict[str, Result], machine: dict[str, Any], runs: int) -> dict[str, Any]:
    systems: dict[str, Any] = {}
    for r in results.values():
        entry: dict[str, Any] = {"describe": r.describe, "available": r.unavailable is None}
        if r.unavailable is not None:
            entry["reason"] = r.unavailable
        for measure in MEASURES:
            st = r.stats(measure)
            if st is not None:
                entry[measure] = {
                    **st.__dict__,
                    "samples": [getattr(s, f"{measure}_s") for s in r.samples],
                }
        systems[r.name] = entry
    return {
        "runs": runs,
        "poll_s": POLL_S,
        "machine": machine,
        "systems": systems,
        "ratios_p50": ratios(results),
    }


# -- the run --------------------------------------------------------------------------------------


def _version(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    return proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout else "?"


def machine() -> dict[str, Any]:
    import ray

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "docker": _version(["docker", "version", "--format", "{{.Server.Version}}"]),
        "slurm": _version(["sbatch", "--version"]),
        "load_avg_start": list(os.getloadavg()),
    }


def build_systems(
    names: Sequence[str],
    work: Path,
    image: str,
    cluster: SharedCluster | None,
    actor_cluster: SharedCluster | None = None,
) -> list[Peer]:
    ws = make_workspace(work)
    peers: list[Peer] = []
    for name in names:
        if name == "spawn":
            peers.append(BareSpawn(ws))
        elif name == "docker-run":
            peers.append(DockerRun(ws, image))
        elif name == "slurm":
            peers.append(Slurm(ws))
        elif cluster is not None and name == "ray-jobs":
            peers.append(RayJobs(ws, cluster.dashboard_url))
        elif name == "dlapp-actor":
            if actor_cluster is not None:
                a = actor_cluster
                peers.append(Dlapp(a.url, a.token, ws, "process", image, name="dlapp-actor"))
        elif cluster is not None and name.startswith("dlapp-"):
            peers.append(Dlapp(cluster.url, cluster.token, ws, name.removeprefix("dlapp-"), image))
    return peers


def measure(
    peers: Sequence[Peer], runs: int, warmup: int, progress: bool = True
) -> dict[str, Result]:
    """Set each system up, then ``warmup`` + ``runs`` rounds of one run each, interleaved."""
    results = {p.name: Result(p.name, p.describe) for p in peers}
    live: list[Peer] = []
    for p in peers:
        try:
            p.setup()
            live.append(p)
        except Unavailable as exc:
            results[p.name].unavailable = str(exc)
        except Exception as exc:  # a peer that breaks is reported, the others go on
            results[p.name].unavailable = f"setup failed: {type(exc).__name__}: {exc}"
    for i in range(warmup + runs):
        order = live[i % len(live) :] + live[: i % len(live)] if live else []
        for p in order:
            try:
                sample = p.run_once()
            except (BenchError, Exception) as exc:
                results[p.name].unavailable = f"run {i + 1} failed: {type(exc).__name__}: {exc}"
                live.remove(p)
                continue
            if i >= warmup:
                results[p.name].samples.append(sample)
        if progress:
            what = "warm-up" if i < warmup else f"run {i - warmup + 1}/{runs}"
            print(f"  {what} done", file=sys.stderr, flush=True)
    for p in peers:
        p.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="measured runs per system (default 20)")
    ap.add_argument("--warmup", type=int, default=2, help="runs per system not counted (default 2)")
    ap.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"comma list of {', '.join(SYSTEMS)}"
    )
    ap.add_argument(
        "--image", default="dlapp/minimal", help="image for dlapp-docker and docker-run"
    )
    ap.add_argument("--out", type=Path, help="also write the JSON report to this file")
    out = ap.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the results as JSON")
    out.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        ap.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    if args.runs < 1 or args.warmup < 0:
        ap.error("--runs must be at least 1 and --warmup at least 0")

    cluster: SharedCluster | None = None
    actor_cluster: SharedCluster | None = None
    cluster_error = ""
    if any(n.startswith("dlapp-") or n == "ray-jobs" for n in names):
        try:
            require_token_auth()  # before the first import of ray
        except Unavailable as exc:
            cluster_error = str(exc)
    work = Path(tempfile.mkdtemp(prefix="dlapp-bench-launch-"))
    info = machine()
    try:
        if not cluster_error and any(n.startswith("dlapp-") or n == "ray-jobs" for n in names):
            print(
                "starting the Ray cluster (with its dashboard) and a dlapp server on it",
                file=sys.stderr,
                flush=True,
            )
            cluster = SharedCluster(work / "dlapp-home")
            try:
                cluster.start()
            except Exception as exc:
                cluster_error = f"the shared Ray cluster / dlapp server did not start: {exc}"
        if not cluster_error and "dlapp-actor" in names:
            print("starting a second Ray cluster, dlapp with start_path: actor", file=sys.stderr)
            actor_cluster = SharedCluster(
                work / "dlapp-actor-home", start_path="actor", dashboard=False
            )
            try:
                actor_cluster.start()
            except Exception as exc:
                cluster_error = f"the second Ray cluster / dlapp server did not start: {exc}"
        peers = build_systems(
            names, work, args.image, cluster if not cluster_error else None, actor_cluster
        )
        print(
            f"{args.runs} runs (+{args.warmup} warm-up) of {', '.join(p.name for p in peers)}",
            file=sys.stderr,
            flush=True,
        )
        results = measure(peers, args.runs, args.warmup)
        for name in names:  # keep the order asked for; the cluster's users when it failed
            if name not in results:
                results[name] = Result(name, unavailable=cluster_error or "not built")
        results = {n: results[n] for n in names}
    finally:
        for started in (cluster, actor_cluster):
            if started is not None:
                started.stop()
        shutil.rmtree(work, ignore_errors=True)
    info["load_avg_end"] = list(os.getloadavg())
    report = to_json(results, info, args.runs)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.markdown:
        print(render_markdown(results))
    else:
        print(render_plain(results))
        print(
            f"\n{info['cpus']} CPUs ({info['cpu_model']}), load {info['load_avg_start'][0]:.2f}"
            f" -> {info['load_avg_end'][0]:.2f}; Ray {info['ray']}, Docker {info['docker']}, "
            f"{info['slurm']}; completion polled every {POLL_S * 1000:.0f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
