"""Chaos: a stream of apps on a local multi-node Ray cluster while faults strike at random.

    .venv/bin/python bench/chaos.py [--minutes 3] [--seed 1] [--workers 2]
                                    [--fault-every 20] [--faults node,server,supervisor,process]
                                    [--json]

A Ray cluster of a head and WORKERS worker nodes (``ray.cluster_utils``, each 2 CPUs and 1
declared GPU) and a ``dlapp server`` process on it. For MINUTES it submits apps (short sleeps;
some need a GPU, some are gangs of 2, one in ten fails by itself) and, about every FAULT_EVERY
seconds, strikes one of:

  node        SIGKILL a worker node's raylet (a machine lost), then add a fresh node;
  server      SIGKILL the server, start it again on the same store;
  supervisor  SIGKILL the supervisor of a running container (its app ends FAILED);
  process     SIGKILL an app's main process (it exits 137: the app's own failure).

After each fault and at the end it checks the invariant of ``tests/invariants.py``: the
containers running on this machine are exactly the store's RUNNING containers. Then it waits
for every acknowledged app to finish and reports: submitted, succeeded, failed by their own
doing (or a killed process), failed by a fault that ends apps (a killed supervisor), failed
unexpectedly (a fault dlapp should have absorbed), and lost (never finished, or gone from the
store). Exit status 0 only when nothing is lost or unexpected and every check held.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from dlapp import embedded
from dlapp.client import DlappClient
from dlapp.data.workspace import pack_workspace
from dlapp.errors import DlappError
from dlapp.spec import AppSpec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from invariants import assert_running_matches

FAULTS = ("node", "server", "supervisor", "process")
FAST_HEALTH_CHECKS = {  # Ray declares a node dead in seconds
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}
NODE = {"num_cpus": 2, "num_gpus": 1}
# kind -> (script, containers, GPUs); the sleep varies with $SLEEP
KINDS = {
    "ok": ('sleep "$SLEEP"; echo done\n', 1, 0),
    "gpu": ('sleep "$SLEEP"; echo "gpu $CUDA_VISIBLE_DEVICES"\n', 1, 1),
    "gang": ('sleep "$SLEEP"; echo "rank $RANK of $WORLD_SIZE"\n', 2, 0),
    "fails": ("sleep 1; echo failing >&2; exit 3\n", 1, 0),
}


@dataclass
class Options:
    minutes: float = 3.0
    seed: int = 1
    workers: int = 2
    fault_every_s: float = 20.0
    faults: tuple[str, ...] = FAULTS
    drain_s: float = 180.0
    settle_s: float = 60.0
    min_faults: int = 0  # apps stream on past the minutes until this many faults struck


@dataclass
class Tally:
    submitted: dict[str, str] = field(default_factory=dict)  # app id -> kind
    faults: Counter[str] = field(default_factory=Counter)
    ended_by_fault: set[str] = field(default_factory=set)  # supervisor killed
    failed_by_kill: set[str] = field(default_factory=set)  # main process killed
    checks_passed: int = 0
    check_failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Server:
    """``dlapp server`` as a process of its own; restarted on the same home and store."""

    def __init__(self, home: Path, ray_address: str) -> None:
        self.home, self.ray_address = home, ray_address
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        embedded.state_path(self.home).unlink(missing_ok=True)
        with (self.home / "server.log").open("ab") as log:
            argv = ["server", "--home", str(self.home), "--port", "0"]
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dlapp.cli.main", *argv, "--ray-address", self.ray_address],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while (info := embedded.running(self.home)) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.home / "server.log").read_text()[-2000:]
                raise RuntimeError(f"the server did not come up:\n{tail}")
            time.sleep(0.2)
        self.url = info.url

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self, token: str) -> DlappClient:
        return DlappClient(self.url, token)


def _workspaces(root: Path) -> dict[str, Path]:
    tarballs = {}
    for kind, (script, _, _) in KINDS.items():
        ws = root / f"ws-{kind}"
        ws.mkdir()
        (ws / "run.sh").write_text(script)
        tarballs[kind] = pack_workspace(ws, root / f"{kind}.tar.gz").path
    return tarballs


def _spec(kind: str, rng: random.Random) -> AppSpec:
    _, containers, gpus = KINDS[kind]
    return AppSpec.from_dict(
        {
            "name": f"chaos-{kind}",
            "entry": {"script": "run.sh"},
            "env": {"SLEEP": str(rng.randint(1, 4))},
            "num_containers": containers,
            "resources": {"cpus": 0.5, "memory": "64M", "gpus": gpus},
        }
    )


def _app_processes(app_ids: set[str]) -> list[tuple[str, int, int]]:
    """(app id, guard pid, guard's parent pid) for running containers of these apps."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            env = dict(
                v.split(b"=", 1) for v in (entry / "environ").read_bytes().split(b"\0") if b"=" in v
            )
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        app_id = env.get(b"DLAPP_APP_ID", b"").decode()
        if app_id in app_ids and b"guard.py" in cmdline:
            ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
            out.append((app_id, int(entry.name), ppid))
    return out


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        tasks = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [int(t) for t in tasks]
    return []


class Chaos:
    def __init__(self, opts: Options, root: Path) -> None:
        from ray.cluster_utils import Cluster

        self.opts, self.root = opts, root
        self.rng = random.Random(opts.seed)
        self.tally = Tally()
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                **NODE,
                "include_dashboard": False,
                "_system_config": FAST_HEALTH_CHECKS,
            },
        )
        for _ in range(opts.workers):
            self.cluster.add_node(**NODE)
        home = root / "home"
        home.mkdir()
        config = {"schedule_interval_s": 0.3, "lease_ttl_s": 3.0, "file_roots": [str(root)]}
        (home / "server.yaml").write_text(yaml.safe_dump(config))
        self.server = Server(home, str(self.cluster.address))
        self.server.start()
        self.admin = (home / "admin.token").read_text().strip()
        with self.server.client(self.admin) as c:
            self.token = c.admin_add_user("chaos")["token"]
        self.tarballs = _workspaces(root)

    def close(self) -> None:
        self.server.stop()
        self.cluster.shutdown()

    # -- the stream -------------------------------------------------------------------------

    def submit_one(self) -> None:
        kind = self.rng.choices(list(KINDS), weights=[5, 2, 2, 1])[0]
        try:
            with self.server.client(self.token) as c:
                app_id = c.submit(_spec(kind, self.rng), self.tarballs[kind])["id"]
        except (DlappError, OSError):
            return  # not acknowledged: not counted
        self.tally.submitted[app_id] = kind

    # -- faults -----------------------------------------------------------------------------

    def strike(self, fault: str) -> bool:
        """Inject one fault; False when there was nothing to strike (no container running)."""
        if fault == "node":
            workers = [n for n in self.cluster.worker_nodes if n.all_processes.get("raylet")]
            if not workers:
                return False
            node = self.rng.choice(workers)
            os.kill(node.all_processes["raylet"][0].process.pid, signal.SIGKILL)
            time.sleep(3)  # Ray's health checks notice; dlapp requeues the node's apps
            self.cluster.remove_node(node, allow_graceful=False)
            try:
                self.cluster.add_node(**NODE)
            except Exception as exc:  # Ray's own start-up timeout, on a loaded machine
                self.tally.notes.append(f"could not add a node back: {exc}")
        elif fault == "server":
            self.server.kill()
            self.server.start()
        else:
            running = _app_processes(set(self.tally.submitted))
            if not running:
                return False
            app_id, guard, supervisor = self.rng.choice(running)
            if fault == "supervisor":
                os.kill(supervisor, signal.SIGKILL)
                self.tally.ended_by_fault.add(app_id)
            else:
                main = _children(guard)
                if not main:
                    return False
                os.kill(main[0], signal.SIGKILL)
                self.tally.failed_by_kill.add(app_id)
        self.tally.faults[fault] += 1
        return True

    def check(self, when: str) -> None:
        with self.server.client(self.admin) as c:

            def every_app() -> list[dict[str, Any]]:
                for _ in range(60):  # a server just restarted may not answer at once
                    with contextlib.suppress(DlappError, httpx.HTTPError):
                        return c.list_apps()
                    time.sleep(0.5)
                return c.list_apps()

            try:
                assert_running_matches(every_app, self.opts.settle_s)
                self.tally.checks_passed += 1
            except AssertionError as exc:
                self.tally.check_failures.append(f"after {when}: {exc}")

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        end = time.monotonic() + self.opts.minutes * 60
        # a loaded machine may spend a short run recovering from its first fault: with
        # min_faults the run goes on until that many struck (at most five times as long)
        latest = time.monotonic() + 5 * self.opts.minutes * 60
        next_fault = time.monotonic() + self.rng.uniform(0.3, 1.0) * self.opts.fault_every_s
        order = self.rng.sample(self.opts.faults, len(self.opts.faults))
        struck = 0
        while time.monotonic() < end or (
            sum(self.tally.faults.values()) < self.opts.min_faults and time.monotonic() < latest
        ):
            self.submit_one()
            if time.monotonic() >= next_fault:
                fault = order[struck % len(order)]  # each kind in turn, in a random order
                struck += 1
                pause = self.rng.uniform(0.5, 1.5) * self.opts.fault_every_s
                if self.strike(fault):
                    self.check(fault)
                else:
                    pause = 1.0  # nothing to strike (no container running): the next kind soon
                next_fault = time.monotonic() + pause
            time.sleep(self.rng.uniform(0.5, 2.0))
        outcomes = self.drain()
        self.check("the end")
        return self.report(outcomes)

    def drain(self) -> dict[str, str]:
        """Wait (bounded) for every acknowledged app to finish; app id -> outcome."""
        deadline = time.monotonic() + self.opts.drain_s
        out: dict[str, str] = {}
        with self.server.client(self.admin) as c:
            while True:
                views = {a["id"]: a for a in c.list_apps(user="chaos")}
                out = {a: self._outcome(a, views.get(a)) for a in self.tally.submitted}
                if "lost" not in out.values() or time.monotonic() > deadline:
                    return out
                time.sleep(1.0)

    def _outcome(self, app_id: str, view: dict[str, Any] | None) -> str:
        if view is None or view["state"] != "FINISHED":
            return "lost"
        if view["final_status"] == "SUCCEEDED":
            return "succeeded"
        if self.tally.submitted[app_id] == "fails" or app_id in self.tally.failed_by_kill:
            return "failed_by_app"
        if app_id in self.tally.ended_by_fault:
            return "failed_by_fault"
        return "unexpected"

    def report(self, outcomes: dict[str, str]) -> dict[str, Any]:
        counts = Counter(outcomes.values())
        return {
            "minutes": self.opts.minutes,
            "seed": self.opts.seed,
            "submitted": len(outcomes),
            "succeeded": counts["succeeded"],
            "failed_by_app": counts["failed_by_app"],
            "failed_by_fault": counts["failed_by_fault"],
            "unexpected": counts["unexpected"],
            "lost": counts["lost"],
            "faults": dict(self.tally.faults),
            "invariant_checks": self.tally.checks_passed,
            "invariant_failures": self.tally.check_failures,
            "unexpected_apps": sorted(a for a, o in outcomes.items() if o == "unexpected"),
            "lost_apps": sorted(a for a, o in outcomes.items() if o == "lost"),
            "notes": self.tally.notes,
        }


def ok(report: dict[str, Any]) -> bool:
    return report["lost"] == 0 and report["unexpected"] == 0 and not report["invariant_failures"]


def table(report: dict[str, Any]) -> str:
    cols = ["submitted", "succeeded", "failed_by_app", "failed_by_fault", "unexpected", "lost"]
    lines = [
        "  ".join(f"{c:>15}" for c in cols),
        "  ".join(f"{report[c]:>15}" for c in cols),
        "faults: " + (", ".join(f"{k} {v}" for k, v in sorted(report["faults"].items())) or "none"),
        f"invariant checks: {report['invariant_checks']} held, "
        f"{len(report['invariant_failures'])} failed",
    ]
    lines += report["invariant_failures"]
    lines += report["notes"]
    if "kept" in report:
        lines.append(f"kept for a look: {report['kept']}")
    if report["unexpected_apps"] or report["lost_apps"]:
        lines.append(f"unexpected: {report['unexpected_apps']}  lost: {report['lost_apps']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--minutes", type=float, default=3.0, help="how long apps stream in")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2, help="worker nodes beside the head")
    ap.add_argument("--fault-every", type=float, default=20.0, help="mean seconds between faults")
    ap.add_argument("--faults", default=",".join(FAULTS), help="kinds of fault to inject")
    ap.add_argument("--drain", type=float, default=180.0, help="seconds to wait for the rest")
    ap.add_argument(
        "--min-faults", type=int, default=0, help="stream on past --minutes until this many struck"
    )
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    faults = tuple(f for f in args.faults.split(",") if f)
    unknown = [f for f in faults if f not in FAULTS]
    if unknown or not faults:
        ap.error(f"unknown fault(s) {unknown}; choose from {', '.join(FAULTS)}")
    if args.minutes <= 0 or args.fault_every <= 0 or args.workers < 1:
        ap.error("--minutes and --fault-every must be positive, --workers at least 1")
    opts = Options(
        args.minutes,
        args.seed,
        args.workers,
        args.fault_every,
        faults,
        args.drain,
        min_faults=args.min_faults,
    )
    work = Path(tempfile.mkdtemp(prefix="dlapp-chaos-"))
    chaos = Chaos(opts, work)
    try:
        report = chaos.run()
    finally:
        chaos.close()
    if ok(report):
        shutil.rmtree(work, ignore_errors=True)
    else:
        report["kept"] = str(work)  # the store and the server's log, to look into
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0 if ok(report) else 1


if __name__ == "__main__":
    sys.exit(main())
