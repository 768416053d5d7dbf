"""Benchmark: a CLI command as a whole process, start-up included (issue 16: p50 <= 200 ms).

    .venv/bin/python bench/cli_startup.py [--runs 20] [--server URL --token TOKEN --app ID]
                                          [--json]

Times, as whole processes started from here (``subprocess.run``, wall clock from the start to
the reaped exit), in turn run after run so that a drift of the machine's speed touches all alike:

- ``python -c pass``: the interpreter's own floor;
- ``python -c "import httpx"``: the floor of any Python HTTP client;
- ``dlapp --version``: the CLI's imports and nothing else;
- ``dlapp status ID``: one real command against a live server (two requests: the app, its
  events).

With no ``--server`` it starts the embedded cluster (``dlapp up``) in a temporary home, submits
one short app and asks for its status; ``--server`` points at a server already up. Prints
p50 / min / max per command and each one's p50 over the two floors' p50.
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stats import machine, percentile

FLOOR = "python -c pass"
HTTPX = 'python -c "import httpx"'


@dataclass(frozen=True)
class Timing:
    """Wall seconds of ``n`` runs of one command: p50, min, max."""

    p50: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Timing:
        ordered = sorted(samples)
        return cls(percentile(ordered, 50), ordered[0], ordered[-1], len(ordered))


@dataclass
class Report:
    machine: str
    runs: int
    timings: dict[str, Timing] = field(default_factory=dict)

    def ratio(self, name: str, base: str) -> float:
        return self.timings[name].p50 / self.timings[base].p50

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "runs": self.runs,
            "commands": {
                name: {
                    "p50_ms": t.p50 * 1000,
                    "min_ms": t.min * 1000,
                    "max_ms": t.max * 1000,
                    "x_python": self.ratio(name, FLOOR),
                    "x_httpx": self.ratio(name, HTTPX),
                }
                for name, t in self.timings.items()
            },
        }


def format_table(report: Report) -> str:
    lines = [
        report.machine,
        f"{report.runs} runs each, in turn; wall ms of the whole process",
        "",
        "| command | p50 | min | max | x python -c pass | x import httpx |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, t in report.timings.items():
        lines.append(
            f"| `{name}` | {t.p50 * 1000:.0f} | {t.min * 1000:.0f} | {t.max * 1000:.0f} "
            f"| {report.ratio(name, FLOOR):.2f}x | {report.ratio(name, HTTPX):.2f}x |"
        )
    return "\n".join(lines)


def dlapp_command() -> list[str]:
    """The ``dlapp`` console script beside this interpreter, else ``python -m dlapp.cli.main``."""
    script = Path(sys.executable).parent / "dlapp"
    return [str(script)] if script.exists() else [sys.executable, "-m", "dlapp.cli.main"]


def commands(app_id: str | None) -> dict[str, list[str]]:
    out = {
        FLOOR: [sys.executable, "-c", "pass"],
        HTTPX: [sys.executable, "-c", "import httpx"],
        "dlapp --version": [*dlapp_command(), "--version"],
    }
    if app_id is not None:
        out["dlapp status ID"] = [*dlapp_command(), "status", app_id]
    return out


def run_once(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, check=False)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.decode()[-800:]}")
    return took


def measure(
    url: str | None, token: str | None, app_id: str | None, runs: int, warmup: int = 1
) -> Report:
    """Every command ``runs`` times in turn (after ``warmup`` rounds not counted); ``url`` and
    ``token`` are the server ``dlapp status app_id`` asks (no status without them)."""
    env = dict(os.environ)
    if url is not None and token is not None:
        env |= {"DLAPP_SERVER": url, "DLAPP_TOKEN": token}
    else:
        app_id = None
    env["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="dlapp-bench-noconfig-")
    try:
        cmds = commands(app_id)
        samples: dict[str, list[float]] = {name: [] for name in cmds}
        for i in range(warmup + runs):
            for name, argv in cmds.items():
                took = run_once(argv, env)
                if i >= warmup:
                    samples[name].append(took)
    finally:
        shutil.rmtree(env["XDG_CONFIG_HOME"], ignore_errors=True)
    report = Report(machine(), runs)
    report.timings = {name: Timing.of(s) for name, s in samples.items()}
    return report


def start_embedded(work: Path) -> tuple[str, str, str]:
    """The embedded cluster in ``work/home`` with one short app finished: (url, token, app id)."""
    from dlapp import embedded
    from dlapp.client import DlappClient
    from dlapp.credentials import ADMIN_TOKEN_FILE
    from dlapp.data.workspace import pack_workspace
    from dlapp.spec import AppSpec

    home = work / "home"
    info, _ = embedded.up(home, gpus=0, cpus=2)
    token = (home / ADMIN_TOKEN_FILE).read_text().strip()
    ws = work / "workspace"
    ws.mkdir()
    (ws / "run.sh").write_text("true\n")
    spec = AppSpec.from_dict(
        {"name": "bench", "workspace": {"path": str(ws)}, "entry": {"script": "run.sh"}}
        | {"resources": {"cpus": 0.5, "memory": "64M"}}
    )
    tarball = pack_workspace(ws, work / "workspace.tar.gz").path
    with DlappClient(info.url, token, timeout_s=120) as c:
        app_id = str(c.submit(spec, tarball)["id"])
        c.wait(app_id)
    return info.url, token, app_id


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--server", help="a server already up (else the embedded cluster is started)")
    ap.add_argument("--token", help="a token for --server")
    ap.add_argument("--app", help="the app ID `dlapp status` asks for on --server")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.server and not (args.token and args.app):
        ap.error("--server needs --token and --app")
    work: Path | None = None
    try:
        if args.server:
            url, token, app_id = args.server, args.token, args.app
        else:
            work = Path(tempfile.mkdtemp(prefix="dlapp-bench-cli-"))
            print("starting the embedded cluster ...", file=sys.stderr, flush=True)
            url, token, app_id = start_embedded(work)
        report = measure(url, token, app_id, args.runs)
    finally:
        if work is not None:
            from dlapp import embedded

            embedded.down(work / "home")
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
