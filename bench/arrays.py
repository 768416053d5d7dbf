"""Benchmark: an array of apps made by one request, against single submissions measured in the
same run on the same server.

    .venv/bin/python bench/arrays.py [--size 10000] [--singles 10000] [--db-url URL] [--json]

One server in this process (``create_app`` over the LocalExecutor, behind uvicorn on a free
loopback port, SQLite in WAL mode or ``--db-url``) with one declared GPU. A first app takes the
GPU and keeps it; every app after it, single or member, asks for one GPU and waits, as on a
busy cluster: each is checked, stored and scheduled as normal, and says why it waits. The
per-user limits are off (``submit_rate_per_min: 0``, ``max_pending_per_user: 0``,
``max_pending_per_queue: 0``), as an admin would set them for a bulk user.

1. **Singles**: SINGLES ``DlappClient.submit`` calls, one after the other, each with the same
   packed workspace: their rate (apps accepted per second).
2. **The array**: one ``DlappClient.submit`` of the same spec with ``array: 0-(SIZE-1)``: the
   request's time and its members per second; the ratio of that rate to the singles'. Then
   the array's view (``GET /api/v1/arrays/ID``) and its first page of members
   (``GET /api/v1/apps?array=ID``), and how many workspace tarballs the server keeps for it
   (one).

Figures are ratios against the singles of the same run, not timed assertions. (Named
``arrays.py``: a script's folder comes first on ``sys.path``, and ``array.py`` would hide the
standard library's ``array`` module, which ``socket`` imports.)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stats import machine, percentile

from dlapp.client import DlappClient
from dlapp.config import ServerSettings
from dlapp.credentials import ADMIN_TOKEN_FILE
from dlapp.data.workspace import pack_workspace
from dlapp.executor import LocalExecutor
from dlapp.scheduler import Resources
from dlapp.server.app import create_app
from dlapp.spec import AppSpec

# -- figures (pure) ----------------------------------------------------------------------------


@dataclass
class Report:
    machine: str
    params: dict[str, Any]
    singles: int = 0
    singles_s: float = 0.0
    single_p50_s: float = 0.0
    single_p95_s: float = 0.0
    size: int = 0
    array_s: float = 0.0
    view_s: float = 0.0
    members_page_s: float = 0.0
    kept_tarballs: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def singles_rate(self) -> float:
        return self.singles / self.singles_s if self.singles_s > 0 else 0.0

    @property
    def array_rate(self) -> float:
        return self.size / self.array_s if self.array_s > 0 else 0.0

    @property
    def ratio(self) -> float | None:
        """How many times faster apps are accepted as an array's members than as singles."""
        return self.array_rate / self.singles_rate if self.singles_rate > 0 else None

    @property
    def singles_time_for_size(self) -> float | None:
        """How long SIZE single submissions take at the singles' rate."""
        return self.size / self.singles_rate if self.singles_rate > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "singles_rate": self.singles_rate,
            "array_rate": self.array_rate,
            "ratio": self.ratio,
        }


def format_report(r: Report) -> str:
    ratio = "-" if r.ratio is None else f"{r.ratio:,.1f}x"
    alone = r.singles_time_for_size
    lines = [
        f"machine: {r.machine}",
        "| figure | value |",
        "|---|---|",
        f"| single submissions | {r.singles:,} in {r.singles_s:.1f} s: {r.singles_rate:,.1f}/s "
        f"(p50 {r.single_p50_s * 1000:.1f} ms, p95 {r.single_p95_s * 1000:.1f} ms) |",
        f"| one array request | {r.size:,} members in {r.array_s:.2f} s: "
        f"{r.array_rate:,.0f} members/s |",
        f"| array / singles | {ratio} the singles' rate"
        + ("" if alone is None else f"; {r.size:,} singles would take {alone:.0f} s")
        + " |",
        f"| GET /api/v1/arrays/ID | {r.view_s * 1000:.1f} ms |",
        f"| GET /api/v1/apps?array=ID (1,000) | {r.members_page_s * 1000:.1f} ms |",
        f"| workspace tarballs kept for the array | {r.kept_tarballs} |",
    ]
    lines += [f"{k}: {v}" for k, v in r.notes.items()]
    return "\n".join(lines)


# -- the run -----------------------------------------------------------------------------------


@contextmanager
def serve(home: Path, db_url: str | None) -> Iterator[tuple[str, str]]:
    """The server in this process on a free loopback port; its URL and the admin's token."""
    import uvicorn

    from dlapp.server.run import listen_socket

    sock = listen_socket("127.0.0.1", 0)  # TCP_NODELAY, as ``dlapp server`` serves
    settings = ServerSettings(
        home=home,
        db_url=db_url,
        port=sock.getsockname()[1],
        submit_rate_per_min=0,
        max_pending_per_user=0,
        max_pending_per_queue=0,
        max_array_size=1_000_000,
    )
    app = create_app(settings, lambda s: LocalExecutor(Resources(4, 16384, 1)))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield (
            f"http://127.0.0.1:{sock.getsockname()[1]}",
            (home / ADMIN_TOKEN_FILE).read_text().strip(),
        )
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def spec_for(ws: Path, **extra: Any) -> AppSpec:
    return AppSpec.from_dict(
        {
            "name": "bench-array",
            "workspace": {"path": str(ws)},
            "entry": {"script": "run.sh"},
            "resources": {"cpus": 1, "memory": "64M", "gpus": 1},
            **extra,
        }
    )


def run(args: argparse.Namespace) -> Report:
    report = Report(machine(), {"size": args.size, "singles": args.singles})
    with tempfile.TemporaryDirectory(prefix="dlapp-bench-array-") as tmp:
        work = Path(tmp)
        ws = work / "ws"
        ws.mkdir()
        (ws / "run.sh").write_text("sleep 3600\n")
        tarball = pack_workspace(ws, work / "ws.tar.gz").path
        with serve(work / "home", args.db_url) as (url, token), DlappClient(url, token) as c:
            holder = c.submit(spec_for(ws), tarball)  # takes the one GPU: the rest wait
            _log(f"holder {holder['id']}; {args.singles} single submissions ...")
            times = []
            start = time.perf_counter()
            for _ in range(args.singles):
                t = time.perf_counter()
                c.submit(spec_for(ws), tarball)
                times.append(time.perf_counter() - t)
            report.singles_s = time.perf_counter() - start
            report.singles = args.singles
            if times:
                report.single_p50_s = percentile(times, 50)
                report.single_p95_s = percentile(times, 95)
            _log(f"an array of {args.size} in one request ...")
            t = time.perf_counter()
            array = c.submit(spec_for(ws, array=f"0-{args.size - 1}"), tarball)
            report.array_s = time.perf_counter() - t
            report.size = array["size"]
            t = time.perf_counter()
            counts = c.get_array(array["id"])["counts"]
            report.view_s = time.perf_counter() - t
            t = time.perf_counter()
            page, _ = c.list_page(array=array["id"], limit=1000)
            report.members_page_s = time.perf_counter() - t
            kept = work / "home" / "artifacts" / "workspaces"
            report.kept_tarballs = len(list(kept.glob(f"{array['id']}*")))
            report.notes["members listed on the first page"] = len(page)
            report.notes["members by state just after"] = counts
            report.notes["tarballs kept in all"] = len(list(kept.iterdir()))
    return report


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--size", type=int, default=10_000, help="members of the array")
    ap.add_argument("--singles", type=int, default=10_000, help="single submissions to time")
    ap.add_argument("--db-url", help="PostgreSQL URL for the store (default: SQLite)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    if args.size < 1 or args.singles < 1:
        ap.error("--size and --singles must be at least 1")
    report = run(args)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
