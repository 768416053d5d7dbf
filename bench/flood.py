"""Benchmark: another user's latency while one user floods the API, against the same user's
latency with no load, measured in the same run on the same server.

    .venv/bin/python bench/flood.py [--concurrency 1000] [--follows 64] [--samples 300] [--json]

One real server (``dlapp server``, the embedded cluster ``dlapp up`` starts: FastAPI behind
uvicorn, an embedded Ray, SQLite in WAL mode) with its default settings but ``tenancy: single``
(apps run as the server's user: this measures the API, and leaves no Unix accounts behind),
and two plain users: alice, hostile, and bob, who only wants to work.

1. **No load**: bob's ``GET /api/v1/me`` and ``GET /healthz``, SAMPLES of each, one after the
   other on one kept-alive connection (what ``DlappClient`` does).
2. **Flood**: a second process (this script with ``--hostile``) opens CONCURRENCY connections
   as alice and keeps a request in flight on each, sent again the moment its answer comes
   (``/api/v1/cluster``, ``/api/v1/apps`` and ``/api/v1/queues`` in turn), and holds FOLLOWS
   ``logs?follow=true`` streams open on her running app. Its client is raw asyncio HTTP/1.1, so
   that it costs the machine less than the server it floods. Once every connection has its
   first answer, bob's two requests are measured again, SAMPLES each, and bob submits APPS apps.
3. **After**: the flood stopped, bob's requests again, and one of each of alice's routes.

Prints p50 / p99 of each with its ratio to the no-load figure, alice's answers by status (a
500 or a dropped connection is a failure), and bob's accepted apps found again (none lost).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml
from stats import machine, percentile

from dlapp import embedded
from dlapp.client import DlappClient
from dlapp.credentials import ADMIN_TOKEN_FILE
from dlapp.data.workspace import pack_workspace
from dlapp.spec import AppSpec

ROUTES = ("/api/v1/cluster", "/api/v1/apps", "/api/v1/queues")
READY = "ready"  # the hostile process's line once every connection had its first answer
AIM_P99_S = 1.0  # issue 14: bob's p99 under a flood
FOLLOWS_SETTLE_S = 30.0  # the longest the follows may take to be answered before the flood

# -- figures (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    """Seconds per call: p50, p99, max over ``n`` calls."""

    n: int
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        return cls(len(seconds), percentile(seconds, 50), percentile(seconds, 99), max(seconds))


@dataclass(frozen=True)
class Row:
    """One measured figure beside the no-load figure it is read against."""

    what: str
    phase: str
    latency: Latency
    base: Latency | None = None

    def ratio(self, pick: Callable[[Latency], float]) -> float | None:
        if self.base is None or pick(self.base) <= 0:
            return None
        return pick(self.latency) / pick(self.base)


@dataclass
class Report:
    machine: str
    settings: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    hostile: dict[str, int] = field(default_factory=dict)  # alice's answers, by status
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "settings": self.settings,
            "rows": [
                {
                    **asdict(r),
                    "p50_ratio": r.ratio(lambda x: x.p50),
                    "p99_ratio": r.ratio(lambda x: x.p99),
                }
                for r in self.rows
            ],
            "hostile": self.hostile,
            "notes": self.notes,
        }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}" if seconds < 10 else f"{seconds * 1000:.0f}"


def _x(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.1f}x"


def format_table(report: Report) -> str:
    """The report as a Markdown table (as docs/benchmarks.md shows it)."""
    lines = [
        f"machine: {report.machine}",
        "",
        "| bob's request | while | p50 ms | p99 ms | max ms | calls | p50 ratio | p99 ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report.rows:
        lat = r.latency
        lines.append(
            f"| {r.what} | {r.phase} | {_ms(lat.p50)} | {_ms(lat.p99)} | {_ms(lat.max)} "
            f"| {lat.n} | {_x(r.ratio(lambda x: x.p50))} | {_x(r.ratio(lambda x: x.p99))} |"
        )
    answers = ", ".join(f"{k}: {v:,}" for k, v in sorted(report.hostile.items()))
    lines += ["", f"alice's answers: {answers}"]
    lines += [f"{k}: {v}" for k, v in report.notes.items()]
    return "\n".join(lines)


def status_line(head: bytes) -> tuple[int, int | None, bool]:
    """(status, Content-Length or None, whether the server closes) of a response head."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length: int | None = None
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    return status, length, close


# -- the hostile client (its own process) ------------------------------------------------------


def request_bytes(host: str, path: str, token: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        "Accept: */*\r\n\r\n"
    ).encode()


async def flood_one(
    host: str, port: int, request: bytes, tally: Counter[str], first: asyncio.Event
) -> None:
    """One connection: a request in flight at all times, sent again when answered."""
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while True:
        try:
            if writer is None or reader is None:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            status, length, close = status_line(await reader.readuntil(b"\r\n\r\n"))
            if length is None:
                raise ValueError("an answer without Content-Length")
            await reader.readexactly(length)
            tally[str(status)] += 1
            first.set()
            if close:
                writer.close()
                reader = writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            tally[type(e).__name__] += 1
            first.set()
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)


async def follow_one(
    host: str, port: int, request: bytes, tally: Counter[str], first: asyncio.Event
) -> None:
    """One log follow, held open once its answer started (a refused one is tried again)."""
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            status, _, _ = status_line(await reader.readuntil(b"\r\n\r\n"))
            tally[f"follow {status}"] += 1
            first.set()
            if status == 200:
                while await reader.read(65536):
                    pass  # streams until the app ends
            writer.close()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            tally[f"follow {type(e).__name__}"] += 1
            first.set()
        await asyncio.sleep(0.5)


async def hostile(
    url: str, token: str, concurrency: int, follows: int, app_id: str, routes: Sequence[str]
) -> None:
    """Flood ``routes`` in turn until SIGTERM; then print the tally as JSON."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    tally: Counter[str] = Counter()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    firsts = []
    tasks = []
    # the follows first, each answered once (held open, or refused at the follow cap), then
    # the flood: a follow opened during the flood would race a thousand requests for its
    # user's admission slots, and whether any is held would be the machine's luck
    follow_req = request_bytes(host, f"/api/v1/apps/{app_id}/logs?follow=true", token)
    for _ in range(follows):
        first = asyncio.Event()
        tasks.append(asyncio.create_task(follow_one(host, port, follow_req, tally, first)))
        firsts.append(first)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(f.wait() for f in firsts)), FOLLOWS_SETTLE_S)
    for i in range(concurrency):
        first = asyncio.Event()
        req = request_bytes(host, routes[i % len(routes)], token)
        tasks.append(asyncio.create_task(flood_one(host, port, req, tally, first)))
        firsts.append(first)
    started = time.monotonic()

    async def all_answered() -> None:
        for first in firsts:
            await first.wait()
        print(READY, flush=True)

    ready = asyncio.create_task(all_answered())
    await stop.wait()
    elapsed = time.monotonic() - started
    ready.cancel()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"tally": dict(tally), "seconds": elapsed}), flush=True)


# -- the run -----------------------------------------------------------------------------------


def timed(fn: Callable[[], httpx.Response], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        resp = fn()
        out.append(time.perf_counter() - start)
        if resp.status_code != 200:
            raise RuntimeError(f"{resp.request.url.path}: {resp.status_code} {resp.text[:300]}")
    return out


@dataclass
class Cluster:
    work: Path
    url: str
    alice: str
    bob: str
    tarball: Path
    app_id: str = ""  # alice's running app, whose log she follows


def start(work: Path) -> Cluster:
    home = work / "home"
    home.mkdir()
    settings = {"container": {"gpus": "none"}, "tenancy": "single"}  # no Unix accounts made
    (home / "server.yaml").write_text(yaml.safe_dump(settings))
    info, _ = embedded.up(home, gpus=1, cpus=4)
    admin = (home / ADMIN_TOKEN_FILE).read_text().strip()
    with DlappClient(info.url, admin) as c:
        alice = c.admin_add_user("alice")["token"]
        bob = c.admin_add_user("bob")["token"]
    ws = work / "workspace"
    ws.mkdir()
    (ws / "run.sh").write_text("echo started\nsleep 3600\n")
    tarball = pack_workspace(ws, work / "workspace.tar.gz").path
    return Cluster(work, info.url, alice, bob, tarball)


def spec(name: str) -> AppSpec:
    return AppSpec.from_dict(
        {
            "name": name,
            "entry": {"script": "run.sh"},
            "resources": {"cpus": 0.25, "memory": "64M", "gpus": 0},
        }
    )


def wait_running(c: DlappClient, app_id: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if c.get(app_id)["state"] == "RUNNING":
            return
        time.sleep(0.3)
    raise RuntimeError(f"{app_id} did not start in {timeout_s:g}s")


def measure(b: httpx.Client, report: Report, phase: str, samples: int) -> None:
    base = {r.what: r.latency for r in report.rows if r.phase == "no load"}
    for what, path in (("GET /api/v1/me", "/api/v1/me"), ("GET /healthz", "/healthz")):
        lat = Latency.of(timed(lambda p=path: b.get(p), samples))  # type: ignore[misc]
        report.rows.append(Row(what, phase, lat, base.get(what)))


def run(args: argparse.Namespace) -> Report:
    report = Report(machine(), {k: v for k, v in vars(args).items() if k not in ("json",)})
    work = Path(tempfile.mkdtemp(prefix="dlapp-bench-flood-"))
    proc: subprocess.Popen[str] | None = None
    try:
        cl = start(work)
        _log(f"server at {cl.url}")
        with DlappClient(cl.url, cl.alice) as a:
            cl.app_id = a.submit(spec("followed"), cl.tarball)["id"]
            wait_running(a, cl.app_id)
        bob = {"Authorization": f"Bearer {cl.bob}"}
        with httpx.Client(base_url=cl.url, headers=bob, timeout=120) as b:
            timed(lambda: b.get("/api/v1/me"), 20)  # warm-up
            measure(b, report, "no load", args.samples)
            _log(f"flooding: {args.concurrency} requests in flight, {args.follows} follows")
            hostile_args = ["--concurrency", str(args.concurrency), "--follows", str(args.follows)]
            proc = subprocess.Popen(
                [sys.executable, __file__, "--hostile", cl.url, cl.app_id, *hostile_args],
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "DLAPP_TOKEN": cl.alice},  # not in argv: ps shows that
            )
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != READY:
                raise RuntimeError("the hostile client did not start")
            label = f"{args.concurrency:,} hostile requests + {args.follows} follows in flight"
            measure(b, report, label, args.samples)
            accepted = []
            with DlappClient(cl.url, cl.bob, timeout_s=120) as c:
                for i in range(args.apps):
                    accepted.append(c.submit(spec(f"bob-{i}"), cl.tarball)["id"])
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=120)
            result = json.loads(out.strip().splitlines()[-1])
            report.hostile = result["tally"]
            total = sum(report.hostile.values())
            report.notes["alice's request rate"] = f"{total / result['seconds']:,.0f}/s"
            proc = None
            measure(b, report, "after the flood", args.samples)
            with DlappClient(cl.url, cl.bob) as c:
                found = {a["id"] for a in c.list_apps()}
            report.notes["bob's apps accepted during the flood"] = len(accepted)
            report.notes["of them lost"] = len(set(accepted) - found)
            with httpx.Client(base_url=cl.url, timeout=120) as a:
                after = {
                    r: a.get(r, headers={"Authorization": f"Bearer {cl.alice}"}).status_code
                    for r in ROUTES
                }
            report.notes["alice's routes after the flood"] = after
        flood = [
            r for r in report.rows if r.what == "GET /api/v1/me" and r.base and "flight" in r.phase
        ]
        report.notes[f"aim: p99 under {AIM_P99_S:g} s under the flood"] = (
            "met" if flood and flood[0].latency.p99 < AIM_P99_S else "missed"
        )
    finally:
        if proc is not None:
            proc.kill()
        embedded.down(work / "home")
        shutil.rmtree(work, ignore_errors=True)
    return report


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=1000, help="hostile requests in flight")
    ap.add_argument("--follows", type=int, default=64, help="hostile log follows held open")
    ap.add_argument("--samples", type=int, default=300, help="bob's calls per figure")
    ap.add_argument("--apps", type=int, default=5, help="apps bob submits during the flood")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--hostile", nargs=2, metavar=("URL", "APP"), help=argparse.SUPPRESS)
    ap.add_argument("--routes", default=",".join(ROUTES), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.hostile:  # the flooding process: alice's token in DLAPP_TOKEN
        url, app_id = args.hostile
        token, routes = os.environ["DLAPP_TOKEN"], args.routes.split(",")
        asyncio.run(hostile(url, token, args.concurrency, args.follows, app_id, routes))
        return 0
    for name in ("concurrency", "samples"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1")
    report = run(args)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
