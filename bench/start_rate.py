"""Benchmark: app starts per second on free capacity, dlapp against Ray Jobs and Slurm.

    .venv/bin/python bench/start_rate.py [--n 200] [--gpus 16] [--systems ...]
                                         [--json | --markdown] [--out report.json]

Issue 16's goal: >= 100 app starts/s, many short apps asking for declared GPUs. For each
system, one client submits N empty apps (``run.sh``: ``busybox adjtimex``, the launch
benchmark's app), each asking for 1 GPU, as fast as it can, on a cluster of G declared GPUs
(free: nothing else runs there), then waits until all have finished. Measured:

  submit/s        N / the time the N submit calls took (dlapp-array: one call for N members)
  starts/s        apps started / (the last start - the first submission's start), where an
                  app's start is its own first instruction (the wall clock it prints)
  system's view   the same rate from the system's own start times: dlapp's container
                  start_time (ms), Slurm's StartTime (1 s resolution); Ray Jobs has none
                  (its JobInfo.start_time is the submission time)
  all finished    seconds from the first submission until the client saw all N finished
                  (polled every FINISH_POLL_S)

The systems, one after the other (never two at once):

  dlapp        N ``DlappClient.submit`` calls (the HTTP SDK, the same packed workspace each time)
  dlapp-array  one ``DlappClient.submit`` of the same spec with ``array: 0-(N-1)``
  spawn        the floor: N bare process spawns, at most G at a time
  ray-jobs     N ``JobSubmissionClient.submit_job(entrypoint_num_gpus=1)``
  slurm        N ``sbatch --gres=gpu:1`` on the local slurmctld + slurmd of bench/peers/slurm.sh
               (``SLURM_GPUS=16 SLURM_CPUS=20 bench/peers/slurm.sh`` declares G = 16; a node with
               fewer GPUs is measured as it is, and the report says so)

dlapp and Ray Jobs share one single-node Ray cluster (G declared GPUs, G + 4 CPUs, token
authentication on) with a dlapp server on it, as in bench/launch.py; the server's pending limits
are off so that N may exceed them. Each system first runs one app untimed (a warm-up). A system
that cannot be set up, or fails, is reported as "not available: why" and the others go on. See
docs/benchmarks.md, "App starts per second".
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
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from launch import machine
from peers.systems import (
    SCRIPT,
    BenchError,
    Dlapp,
    RayJobs,
    SharedCluster,
    Slurm,
    Unavailable,
    make_workspace,
    parse_stamp,
    require_token_auth,
)
from stats import markdown_table, plain_table, ratio_text

SYSTEMS = ("dlapp", "dlapp-array", "spawn", "ray-jobs", "slurm")
SUBJECTS = ("dlapp", "dlapp-array")  # the ratio table's columns
FINISH_POLL_S = 0.25  # how often "all finished?" is asked, the same for every system
BURST_TIMEOUT_S = 900.0


# -- figures (pure) -------------------------------------------------------------------------------


def start_rate(starts: Sequence[float], first_submit: float) -> float | None:
    """Apps started per second: how many started / (the last start - the first submission);
    None without starts or with the last start not after the first submission."""
    if not starts:
        return None
    span = max(starts) - first_submit
    return len(starts) / span if span > 0 else None


@dataclass
class Burst:
    """One system's burst of N apps; times are epoch seconds."""

    n: int
    submit_start: float  # just before the first submit call
    submit_end: float  # just after the last submit call returned
    starts: list[float]  # each app's first instruction (the stamp it printed)
    system_starts: list[float] = field(default_factory=list)  # the system's own start times
    all_finished: float = 0.0  # when the client saw the last app finished
    failed: int = 0  # apps that ended other than successfully (or printed no stamp)
    submit_calls: int = 0
    gpus: int = 0  # the declared GPUs: the first min(N, gpus) apps start on free ones

    @property
    def submit_per_s(self) -> float | None:
        span = self.submit_end - self.submit_start
        return self.n / span if span > 0 else None

    @property
    def starts_per_s(self) -> float | None:
        return start_rate(self.starts, self.submit_start)

    @property
    def system_starts_per_s(self) -> float | None:
        return start_rate(self.system_starts, self.submit_start)

    @property
    def free_starts_per_s(self) -> float | None:
        """The rate of the first min(N, gpus) starts: apps on free GPUs, none of them waiting
        for another to finish (None without ``gpus``)."""
        if self.gpus < 1:
            return None
        return start_rate(sorted(self.starts)[: self.gpus], self.submit_start)

    @property
    def last_start_s(self) -> float | None:
        return max(self.starts) - self.submit_start if self.starts else None

    @property
    def all_finished_s(self) -> float:
        return self.all_finished - self.submit_start

    def to_dict(self) -> dict[str, Any]:
        t0 = self.submit_start
        return {
            "n": self.n,
            "submit_calls": self.submit_calls,
            "submit_s": self.submit_end - t0,
            "submit_per_s": self.submit_per_s,
            "starts_per_s": self.starts_per_s,
            "system_starts_per_s": self.system_starts_per_s,
            "gpus": self.gpus,
            "free_starts_per_s": self.free_starts_per_s,
            "last_start_s": self.last_start_s,
            "all_finished_s": self.all_finished_s,
            "started": len(self.starts),
            "failed": self.failed,
            "starts_s": sorted(s - t0 for s in self.starts),
            "system_starts_s": sorted(s - t0 for s in self.system_starts),
        }


@dataclass
class Result:
    """One system's outcome: its burst, or why it could not be measured."""

    name: str
    describe: str = ""
    burst: Burst | None = None
    unavailable: str | None = None
    note: str = ""  # how this system differs from the others (say a smaller Slurm node)


def ratios(results: dict[str, Result]) -> dict[str, dict[str, float | None]]:
    """Each dlapp row's starts/s over each peer's: ``{subject: {peer: x}}`` (above 1: dlapp
    starts more apps a second); None where either was not measured."""
    out: dict[str, dict[str, float | None]] = {}
    for subject in SUBJECTS:
        if subject not in results:
            continue
        a = results[subject].burst
        out[subject] = {}
        for peer, r in results.items():
            if peer in SUBJECTS:
                continue
            x = a.starts_per_s if a else None
            y = r.burst.starts_per_s if r.burst else None
            out[subject][peer] = x / y if x is not None and y else None
    return out


# -- rendering (pure) -----------------------------------------------------------------------------

HEADER = [
    "system",
    "N",
    "submit/s",
    "starts/s",
    "system's view",
    "on free GPUs",
    "last start",
    "all finished",
]


def _rate(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}/s" if x < 1000 else f"{x:,.0f}/s"


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f} s" if x < 10 else f"{x:.1f} s"


def table_rows(results: dict[str, Result]) -> list[list[str]]:
    rows = []
    for r in results.values():
        b = r.burst
        if b is None:
            rows.append([r.name, f"not available: {r.unavailable or 'not run'}"])
            continue
        started = f"{len(b.starts)}" if len(b.starts) == b.n else f"{len(b.starts)} of {b.n}"
        rows.append(
            [
                r.name,
                started if b.failed == 0 else f"{started} ({b.failed} failed)",
                _rate(b.submit_per_s),
                _rate(b.starts_per_s),
                _rate(b.system_starts_per_s),
                _rate(b.free_starts_per_s),
                _s(b.last_start_s),
                _s(b.all_finished_s),
            ]
        )
    return rows


def ratio_rows(results: dict[str, Result]) -> list[list[str]]:
    table = ratios(results)
    return [
        [peer] + [ratio_text(table[s][peer]) for s in SUBJECTS if s in table]
        for peer in results
        if peer not in SUBJECTS
    ]


def _ratio_header(results: dict[str, Result]) -> list[str]:
    return ["starts/s: dlapp / peer"] + [s for s in SUBJECTS if s in results]


def _notes(results: dict[str, Result]) -> list[str]:
    return [f"{r.name}: {r.note}" for r in results.values() if r.note and r.burst is not None]


def render(results: dict[str, Result], markdown: bool = False) -> str:
    fmt = markdown_table if markdown else plain_table
    out = [fmt(HEADER, table_rows(results))]
    if any(s in results for s in SUBJECTS) and any(p not in SUBJECTS for p in results):
        out += ["", fmt(_ratio_header(results), ratio_rows(results))]
    notes = _notes(results)
    if notes:
        out += ["", *notes]
    return "\n".join(out)


def to_json(results: dict[str, Result], info: dict[str, Any], n: int, gpus: int) -> dict[str, Any]:
    systems: dict[str, Any] = {}
    for r in results.values():
        entry: dict[str, Any] = {"describe": r.describe, "available": r.burst is not None}
        if r.burst is None:
            entry["reason"] = r.unavailable or "not run"
        else:
            entry |= r.burst.to_dict()
        if r.note:
            entry["note"] = r.note
        systems[r.name] = entry
    return {
        "n": n,
        "gpus": gpus,
        "finish_poll_s": FINISH_POLL_S,
        "machine": info,
        "systems": systems,
        "starts_per_s_ratios": ratios(results),
    }


# -- the systems ----------------------------------------------------------------------------------


def wait_until(done: Callable[[], bool], what: str, timeout_s: float = BURST_TIMEOUT_S) -> float:
    """Ask ``done()`` every FINISH_POLL_S until it is true; the time it first was."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not all finish within {timeout_s:g}s")
        time.sleep(FINISH_POLL_S)
    return time.time()


def stamp_or_none(text: str) -> float | None:
    try:
        return parse_stamp(text)
    except BenchError:
        return None


def _iso(text: str | None) -> float | None:
    return None if not text else datetime.fromisoformat(text).timestamp()


class System(ABC):
    name: str = ""
    describe: str = ""
    note: str = ""
    gpus: int = 0  # the GPUs it has, where it knows better than the run's --gpus

    def setup(self) -> None:
        """Check the system is there (raise Unavailable), then run one app untimed."""
        return None

    def close(self) -> None:
        """Release what setup took."""
        return None

    @abstractmethod
    def burst(self, n: int) -> Burst:
        """Submit N apps as fast as one client can, wait until all finished."""


class SpawnBurst(System):
    name = "spawn"

    def __init__(self, workspace: Path, gpus: int) -> None:
        self.workspace, self.gpus = workspace, gpus
        self.describe = f"bare process spawns of `bash run.sh`, at most {gpus} at a time"

    def setup(self) -> None:
        if shutil.which("busybox") is None:
            raise Unavailable("busybox is not installed (apt-get install busybox-static)")

    def burst(self, n: int) -> Burst:
        running: list[subprocess.Popen[str]] = []
        outputs: list[str] = []
        failed = 0

        def reap() -> None:
            nonlocal failed
            proc = running.pop(0)
            out, _ = proc.communicate()
            failed += proc.returncode != 0
            outputs.append(out)

        t0 = time.time()
        for _ in range(n):
            while len(running) >= self.gpus:
                reap()
            running.append(
                subprocess.Popen(
                    ["bash", SCRIPT], cwd=self.workspace, stdout=subprocess.PIPE, text=True
                )
            )
        t1 = time.time()
        while running:
            reap()
        done = time.time()
        stamps = [s for s in map(stamp_or_none, outputs) if s is not None]
        return Burst(n, t0, t1, stamps, [], done, max(failed, n - len(stamps)), n)


class DlappBurst(Dlapp, System):
    """dlapp through its HTTP SDK: N submits of the same packed workspace, or one array."""

    def __init__(self, url: str, token: str, workspace: Path, array: bool) -> None:
        from dlapp.spec import AppSpec

        Dlapp.__init__(self, url, token, workspace, "process", "")
        self.array = array
        # 64 MiB, not the launch benchmark's 256: the node's memory (23 GiB here) then holds
        # every app of a big --gpus run, and only the GPUs bound how many run at once
        spec = self.spec.to_dict()
        spec["resources"]["memory"] = "64M"
        self.spec = AppSpec.from_dict(spec)
        self.name = "dlapp-array" if array else "dlapp"
        self.describe = (
            "dlapp, process runtime: one DlappClient.submit with array: 0-(N-1)"
            if array
            else "dlapp, process runtime: N DlappClient.submit calls"
        )

    def setup(self) -> None:
        Dlapp.setup(self)
        self._run()  # one app untimed: the node agent and the server's paths warm

    def burst(self, n: int) -> Burst:
        from dlapp.data.workspace import pack_workspace
        from dlapp.spec import AppSpec

        tarball = pack_workspace(self.workspace, self.tmp / "ws.tar.gz").path
        client = self.client
        if self.array:
            spec = AppSpec.from_dict(self.spec.to_dict() | {"array": f"0-{n - 1}"})
            t0 = time.time()
            array_id = client.submit(spec, tarball)["id"]
            t1 = time.time()
            done = wait_until(lambda: bool(client.get_array(array_id)["finished"]), array_id)
            apps = list(client.iter_apps(array=array_id))
        else:
            t0 = time.time()
            ids = {client.submit(self.spec, tarball)["id"] for _ in range(n)}
            t1 = time.time()
            # this server runs nothing else: every app finished is every one of ours finished
            done = wait_until(
                lambda: not client.list_page(states=("ACCEPTED", "RUNNING"), limit=1)[0],
                f"{n} dlapp apps",
            )
            apps = [a for a in client.iter_apps() if a["id"] in ids]
        if len(apps) != n:
            raise BenchError(f"{len(apps)} of the {n} apps submitted are listed")
        stamps, views, failed = [], [], 0
        for app in apps:
            containers = app.get("containers") or []
            view = _iso(containers[0].get("start_time")) if containers else None
            if view is not None:
                views.append(view)
            stamp = stamp_or_none(client.logs(app["id"]))
            if stamp is not None:
                stamps.append(stamp)
            if app["final_status"] != "SUCCEEDED" or stamp is None:
                failed += 1
        return Burst(n, t0, t1, stamps, views, done, failed, 1 if self.array else n)


class RayJobsBurst(RayJobs, System):
    describe = "Ray Jobs API: N JobSubmissionClient.submit_job(entrypoint_num_gpus=1)"

    def setup(self) -> None:
        import logging

        # Ray's SDK logs a line a submission ("Package ... already exists, skipping upload")
        logging.getLogger("ray.dashboard.modules.dashboard_sdk").setLevel(logging.WARNING)
        RayJobs.setup(self)  # checks token auth, waits for the job agent with a first job
        self._run()  # one job of the app untimed: its working_dir uploaded once

    def burst(self, n: int) -> Burst:
        from ray.job_submission import JobStatus

        client = self.client
        t0 = time.time()
        ids = [
            client.submit_job(
                entrypoint=f"bash {SCRIPT}",
                runtime_env={"working_dir": str(self.workspace)},
                entrypoint_num_gpus=1,
            )
            for _ in range(n)
        ]
        t1 = time.time()
        wanted = set(ids)
        statuses: dict[str, Any] = {}

        def all_done() -> bool:
            statuses.update(
                {j.submission_id: j.status for j in client.list_jobs() if j.submission_id in wanted}
            )
            return len(statuses) == n and all(s.is_terminal() for s in statuses.values())

        done = wait_until(all_done, f"{n} Ray jobs")
        stamps = [s for s in (stamp_or_none(str(client.get_job_logs(j))) for j in ids) if s]
        failed = sum(s != JobStatus.SUCCEEDED for s in statuses.values())
        return Burst(n, t0, t1, stamps, [], done, max(failed, n - len(stamps)), n)


def slurm_start_times(scontrol_all: str, job_ids: set[str]) -> dict[str, tuple[str, float | None]]:
    """``{job id: (JobState, StartTime)}`` of ``job_ids`` in ``scontrol show job -o``'s answer
    (StartTime is local time, whole seconds)."""
    out: dict[str, tuple[str, float | None]] = {}
    for line in scontrol_all.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        job = fields.get("JobId")
        if job in job_ids:
            start = fields.get("StartTime", "")
            when = datetime.fromisoformat(start).timestamp() if start[:1].isdigit() else None
            out[job] = (fields.get("JobState", "?"), when)
    return out


def slurm_node_shape(sinfo: str) -> tuple[int, int]:
    """CPUs and GPUs of the nodes in ``sinfo -h -o "%c %G"``'s answer (summed over its lines)."""
    cpus = gpus = 0
    for line in sinfo.splitlines():
        parts = line.split()
        if parts and parts[0].isdigit():
            cpus += int(parts[0])
        for g in parts[1:]:
            for item in g.split(","):
                name, _, count = item.partition("(")[0].rpartition(":")
                if name.split(":")[0] == "gpu" and count.isdigit():
                    gpus += int(count)
    return cpus, gpus


class SlurmBurst(Slurm, System):
    describe = "Slurm: N sbatch --gres=gpu:1 on a local slurmctld + slurmd"

    def __init__(self, workspace: Path, gpus: int) -> None:
        Slurm.__init__(self, workspace)
        self.gpus = gpus

    def setup(self) -> None:
        Slurm.setup(self)
        info = subprocess.run(["sinfo", "-h", "-o", "%c %G"], capture_output=True, text=True)
        cpus, have = slurm_node_shape(info.stdout)
        fix = f"SLURM_GPUS={self.gpus} SLURM_CPUS={self.gpus + 4} bench/peers/slurm.sh"
        if have != self.gpus:
            self.note = (
                f"the Slurm node declares {have} GPUs, not {self.gpus}: measured as it is "
                f"({fix} declares {self.gpus})"
            )
            self.gpus = have
        if cpus < self.gpus:
            self.note += (self.note and "; ") + (
                f"the Slurm node has {cpus} CPUs for {self.gpus} GPUs: at most {cpus} jobs "
                f"of 1 CPU run at once ({fix})"
            )
        self._run()  # one job untimed

    def burst(self, n: int) -> Burst:
        name = f"dlapp-start-rate-{os.getpid()}"
        cmd = ["sbatch", "--parsable", "--gres=gpu:1", f"--job-name={name}"]
        cmd += [f"--chdir={self.workspace}", f"--output={self.out}/%j.out", SCRIPT]
        t0 = time.time()
        ids = []
        for _ in range(n):
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=self.workspace)
            if proc.returncode != 0:
                raise BenchError(f"sbatch exited with {proc.returncode}: {proc.stderr[-300:]}")
            ids.append(proc.stdout.strip().split(";")[0])
        t1 = time.time()
        squeue = ["squeue", "-h", f"--name={name}", "-o", "%i"]
        done = wait_until(
            lambda: not subprocess.run(squeue, capture_output=True, text=True).stdout.strip(),
            f"{n} Slurm jobs",
        )
        shown = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True)
        jobs = slurm_start_times(shown.stdout, set(ids))
        views = [t for _, t in jobs.values() if t is not None]
        stamps = []
        for j in ids:
            out = self.out / f"{j}.out"
            stamp = stamp_or_none(out.read_text()) if out.exists() else None
            if stamp is not None:
                stamps.append(stamp)
        failed = sum(state != "COMPLETED" for state, _ in jobs.values())
        failed += n - len(jobs)  # jobs the controller no longer shows are counted failed
        return Burst(n, t0, t1, stamps, views, done, max(failed, n - len(stamps)), n)


# -- the run --------------------------------------------------------------------------------------


def measure(
    systems: Sequence[System], n: int, gpus: int = 0, progress: bool = True
) -> dict[str, Result]:
    """Each system in turn: set up (and one app untimed), one burst of N apps, closed."""
    results: dict[str, Result] = {}
    for s in systems:
        r = results[s.name] = Result(s.name, s.describe)
        try:
            if progress:
                print(f"{s.name}: setting up", file=sys.stderr, flush=True)
            s.setup()
            if progress:
                print(f"{s.name}: {n} apps", file=sys.stderr, flush=True)
            r.burst = s.burst(n)
            r.burst.gpus = r.burst.gpus or s.gpus or gpus
        except Unavailable as exc:
            r.unavailable = str(exc)
        except Exception as exc:  # a system that breaks is reported, the others go on
            r.unavailable = f"{type(exc).__name__}: {exc}"
        finally:
            r.note = s.note
            s.close()
    return results


def build_systems(
    names: Sequence[str], work: Path, gpus: int, cluster: SharedCluster | None
) -> list[System]:
    ws = make_workspace(work)
    systems: list[System] = []
    for name in names:
        if name == "spawn":
            systems.append(SpawnBurst(ws, gpus))
        elif name == "slurm":
            systems.append(SlurmBurst(ws, gpus))
        elif cluster is not None and name == "ray-jobs":
            systems.append(RayJobsBurst(ws, cluster.dashboard_url))
        elif cluster is not None and name in ("dlapp", "dlapp-array"):
            systems.append(DlappBurst(cluster.url, cluster.token, ws, name == "dlapp-array"))
    return systems


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="apps per system (default 200)")
    ap.add_argument("--gpus", type=int, default=16, help="declared GPUs (default 16)")
    ap.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"comma list of {', '.join(SYSTEMS)}"
    )
    ap.add_argument("--out", type=Path, help="also write the JSON report to this file")
    out = ap.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the report as JSON")
    out.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.systems.split(",") if n.strip()]
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        ap.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    if args.n < 1 or args.gpus < 1:
        ap.error("--n and --gpus must be at least 1")

    on_ray = [n for n in names if n.startswith("dlapp") or n == "ray-jobs"]
    cluster: SharedCluster | None = None
    cluster_error = ""
    if on_ray:
        try:
            require_token_auth()  # before the first import of ray
        except Unavailable as exc:
            cluster_error = str(exc)
    work = Path(tempfile.mkdtemp(prefix="dlapp-bench-start-rate-"))
    info = machine()
    try:
        if on_ray and not cluster_error:
            print(
                f"starting a Ray cluster ({args.gpus} GPUs, {args.gpus + 4} CPUs, dashboard) "
                "and a dlapp server on it",
                file=sys.stderr,
                flush=True,
            )
            cluster = SharedCluster(
                work / "dlapp-home",
                cpus=args.gpus + 4,
                gpus=args.gpus,
                settings={
                    "max_pending_per_user": 0,
                    "max_pending_per_queue": 0,
                    "max_array_size": max(10_000, args.n),
                },
            )
            try:
                cluster.start()
            except Exception as exc:
                cluster_error = f"the Ray cluster / dlapp server did not start: {exc}"
        systems = build_systems(names, work, args.gpus, None if cluster_error else cluster)
        results = measure(systems, args.n, args.gpus)
        for name in names:  # the order asked for; the cluster's users when it failed
            if name not in results:
                results[name] = Result(name, unavailable=cluster_error or "not built")
        results = {n: results[n] for n in names}
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    info["load_avg_end"] = list(os.getloadavg())
    report = to_json(results, info, args.n, args.gpus)
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(results, markdown=args.markdown))
        print(
            f"\n{args.n} apps a system, {args.gpus} declared GPUs; {info['cpus']} CPUs "
            f"({info['cpu_model']}), load {info['load_avg_start'][0]:.2f} -> "
            f"{info['load_avg_end'][0]:.2f}; Ray {info['ray']}, {info['slurm']}; "
            f"finish polled every {FINISH_POLL_S * 1000:.0f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
