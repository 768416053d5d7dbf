"""Benchmark: submission throughput and list / status latency at scale, against baselines
measured in the same run on the same server.

    .venv/bin/python bench/throughput.py [--queued 1000] [--history 100000] [--sustained 200]
                                         [--cli-runs 20] [--samples 40] [--clients 8]
                                         [--json]

One real server (``dlapp server``, the embedded cluster ``dlapp up`` starts: FastAPI behind
uvicorn, an embedded Ray, SQLite in WAL mode, or ``--db-url``) with one declared GPU. A first
app takes the GPU and keeps it; every app after it asks for one GPU and waits, as on a busy
cluster: each is checked, stored and scheduled exactly as normal, and says why it waits.
The submitter is one plain user; the per-user limits are off (``submit_rate_per_min: 0``,
``max_pending_per_user: 0``), as an admin would set them for a bulk user.

1. **Submissions**, one client, one after the other: ``DlappClient.submit`` of a packed
   workspace while the queue fills 0 -> QUEUED, then SUSTAINED more with QUEUED waiting; and
   ``dlapp launch app.yaml`` as its own process (spec parse, workspace pack, submit: what one
   user pays per launch) CLI-RUNS times. Baselines: an authenticated ``GET /api/v1/me`` (the
   HTTP and auth floor) and ``dlapp --version`` as a process (the interpreter and import
   floor). Then SUSTAINED more from CLIENTS callers at once (``--clients``, 8; a thread and a
   connection each): the server's capacity, its rate the calls over the wall time. The
   scheduler's mean cycle time (``/metrics``) while QUEUED apps wait.
2. **list / status** with the store as it is after step 1 (about QUEUED apps), then again after
   HISTORY finished apps (one container, three events each) are bulk-inserted through the store
   layer: ``dlapp list`` (queued and running), ``dlapp list --all`` (newest first),
   ``--all --user`` (the submitter's own, a fifth of the history) and ``dlapp status ID``,
   through the API (SAMPLES calls each) and the CLI (CLI-RUNS processes each). Baselines: the
   same queries at the small size, and a raw SQLAlchemy Core ``SELECT`` of the same rows.

3. **The store alone** (``--indexes``, no server): the same list queries through ``repo`` and
   a submit's count of the user's waiting apps, on two SQLite stores holding the same HISTORY
   apps (the newest 1,000 waiting), one with the indexes of migration 0003 and one with those of
   0004, interleaved SAMPLES times.

Prints a table of p50 / p95 and rates with the ratios; ``--json`` prints the report as JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine, func, insert, select, text, update
from sqlalchemy.orm import Session
from stats import machine, percentile

from dlapp import embedded
from dlapp.client import DlappClient
from dlapp.credentials import ADMIN_TOKEN_FILE
from dlapp.data.workspace import pack_workspace
from dlapp.spec import AppSpec
from dlapp.status import AppState, ContainerState, FinalStatus
from dlapp.store import repo
from dlapp.store.db import MIGRATIONS, make_engine, migrate, session_factory
from dlapp.store.models import App, Container, Event

SUBMITTER = "bench"
HISTORY_USERS = 100  # the submitter and 99 others
SUBMITTER_SHARE = 0.2  # of the history
LIVE = (AppState.ACCEPTED.value, AppState.RUNNING.value)


# -- figures (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Latency:
    """Seconds per call: p50, p95, mean over ``n`` calls."""

    n: int
    p50: float
    p95: float
    mean: float
    wall: float | None = None  # calls made at once: the seconds from the first to the last

    @classmethod
    def of(cls, seconds: Sequence[float], wall: float | None = None) -> Latency:
        return cls(
            len(seconds),
            percentile(seconds, 50),
            percentile(seconds, 95),
            sum(seconds) / len(seconds),
            wall,
        )

    @property
    def rate(self) -> float:
        """Calls per second: one after the other, or all of them over ``wall`` when made at
        once by several callers."""
        if self.wall is not None:
            return self.n / self.wall if self.wall > 0 else float("inf")
        return 1.0 / self.mean if self.mean > 0 else float("inf")


@dataclass(frozen=True)
class Row:
    """One measured figure beside the baseline it is read against."""

    section: str
    what: str
    latency: Latency
    baseline: str = ""
    base: Latency | None = None
    rows: int | None = None  # apps in the answer, for lists

    @property
    def ratio(self) -> float | None:
        """How many times the baseline's p50 this one's p50 is (1.0: as fast)."""
        if self.base is None or self.base.p50 <= 0:
            return None
        return self.latency.p50 / self.base.p50


@dataclass
class Report:
    machine: str
    settings: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "settings": self.settings,
            "rows": [{**asdict(r), "ratio": r.ratio} for r in self.rows],
            "notes": self.notes,
        }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}" if seconds < 10 else f"{seconds * 1000:.0f}"


def format_table(report: Report) -> str:
    """The report as a Markdown table (as docs/benchmarks.md shows it)."""
    lines = [
        f"machine: {report.machine}",
        "",
        "| section | measured | p50 / p95 ms | per s | rows | baseline | p50 / p95 ms | ratio |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in report.rows:
        base = f"{_ms(r.base.p50)} / {_ms(r.base.p95)}" if r.base else ""
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        lines.append(
            f"| {r.section} | {r.what} | {_ms(r.latency.p50)} / {_ms(r.latency.p95)} "
            f"| {r.latency.rate:.1f} | {'' if r.rows is None else f'{r.rows:,}'} "
            f"| {r.baseline} | {base} | {ratio} |"
        )
    if report.notes:
        lines.append("")
        lines += [f"{k}: {v}" for k, v in report.notes.items()]
    return "\n".join(lines)


# -- history rows (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryBatch:
    apps: list[dict[str, Any]]
    containers: list[dict[str, Any]]
    events: list[dict[str, Any]]


def history_user(rng: random.Random) -> str:
    if rng.random() < SUBMITTER_SHARE:
        return SUBMITTER
    return f"user{rng.randrange(1, HISTORY_USERS):02d}"


def history(
    first_seq: int,
    count: int,
    cluster_ts: int,
    now: float,
    spec: dict[str, Any],
    batch: int = 5000,
    seed: int = 7,
) -> Iterator[HistoryBatch]:
    """``count`` finished apps numbered from ``first_seq``, as the server would have left them
    (IDs as it makes them; one container and the ACCEPTED / RUNNING / FINISHED events each),
    submitted over the 90 days before ``now``, in batches of ``batch`` apps."""
    if count < 0 or first_seq < 1 or batch < 1:
        raise ValueError("history needs count >= 0, first_seq >= 1 and batch >= 1")
    rng = random.Random(seed)
    spec_json = json.dumps(spec)
    span = 90 * 86400.0
    for start in range(first_seq, first_seq + count, batch):
        apps, containers, events = [], [], []
        for seq in range(start, min(start + batch, first_seq + count)):
            app_id = f"application_{cluster_ts}_{seq:04d}"
            user = history_user(rng)
            submitted = now - span + span * (seq - first_seq) / max(count, 1)
            started = submitted + rng.uniform(1, 600)
            finished = started + rng.uniform(60, 36000)
            roll = rng.random()
            final = (
                FinalStatus.SUCCEEDED
                if roll < 0.85
                else FinalStatus.FAILED
                if roll < 0.95
                else FinalStatus.KILLED
            )
            exit_code = {FinalStatus.SUCCEEDED: 0, FinalStatus.FAILED: 1}.get(final, 137)
            why = {
                FinalStatus.SUCCEEDED: "all containers exited with code 0",
                FinalStatus.FAILED: "container 0 exited with code 1",
                FinalStatus.KILLED: "killed by request",
            }[final]
            apps.append(
                {
                    "id": app_id,
                    "seq": seq,
                    "user": user,
                    "name": f"job-{seq}",
                    "queue": "root.default",
                    "state": AppState.FINISHED.value,
                    "final_status": final.value,
                    "diagnostics": why,
                    "pending_reason": "",
                    "spec": spec_json,
                    "num_containers": 1,
                    "cpus": 1.0,
                    "memory_mb": 2048,
                    "gpus": 1,
                    "workspace": f"/var/lib/dlapp/artifacts/workspaces/{app_id}.tar.gz",
                    "kill_requested": "kill" if final is FinalStatus.KILLED else None,
                    "attempt": 1,
                    "submit_time": submitted,
                    "start_time": started,
                    "finish_time": finished,
                }
            )
            containers.append(
                {
                    "app_id": app_id,
                    "attempt": 1,
                    "index": 0,
                    "state": ContainerState.EXITED.value,
                    "node_id": f"node{seq % 32:02d}",
                    "node_name": f"gpu-{seq % 32:02d}",
                    "gpu_ids": str(seq % 8),
                    "pid": 1000 + seq % 30000,
                    "start_time": started,
                    "end_time": finished,
                    "exit_code": exit_code,
                    "log_location": f"/var/lib/dlapp/artifacts/logs/{app_id}/1/0",
                    "diagnostics": "",
                }
            )
            for t, a, b, reason in (
                (submitted, None, "ACCEPTED", f"submitted by {user} to queue root.default"),
                (started, "ACCEPTED", "RUNNING", f"admitted on gpu-{seq % 32:02d}"),
                (finished, "RUNNING", "FINISHED", f"{final.value}: {why}"),
            ):
                events.append(
                    {
                        "app_id": app_id,
                        "time": t,
                        "kind": "state",
                        "from_state": a,
                        "to_state": b,
                        "reason": reason,
                    }
                )
        yield HistoryBatch(apps, containers, events)


# -- the server under test ---------------------------------------------------------------------


def dlapp_command() -> list[str]:
    """The ``dlapp`` console script beside this interpreter, else ``python -m dlapp.cli.main``."""
    script = Path(sys.executable).parent / "dlapp"
    return [str(script)] if script.exists() else [sys.executable, "-m", "dlapp.cli.main"]


def timed_at_once(fns: Sequence[Callable[[], object]], n: int) -> tuple[list[float], float]:
    """``n`` calls shared out among ``fns`` (one caller each, in its own thread), all at once:
    each call's seconds, and the seconds from the first call to the last answer."""
    from concurrent.futures import ThreadPoolExecutor

    counts = [n // len(fns) + (1 if i < n % len(fns) else 0) for i in range(len(fns))]
    start = time.perf_counter()
    with ThreadPoolExecutor(len(fns)) as pool:
        parts = list(pool.map(timed, fns, counts))
    return [s for part in parts for s in part], time.perf_counter() - start


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


@dataclass
class Bench:
    home: Path
    url: str
    admin: str
    token: str
    spec_file: Path
    tarball: Path
    engine: Engine
    cli_env: dict[str, str]

    def client(self) -> DlappClient:
        return DlappClient(self.url, self.token, timeout_s=120)

    def cli(self, *args: str) -> None:
        proc = subprocess.run(
            [*dlapp_command(), *args],
            env=self.cli_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"dlapp {' '.join(args)} failed: {proc.stderr.decode()[-800:]}")

    def cycle_seconds(self) -> tuple[float, float]:
        """The scheduler's cycle-time histogram: (sum of seconds, count) so far."""
        import httpx

        text = httpx.get(
            f"{self.url}/metrics", headers={"Authorization": f"Bearer {self.admin}"}, timeout=60
        ).text
        found = dict(
            re.findall(r"^dlapp_scheduler_cycle_seconds_(sum|count) ([0-9.e+-]+)$", text, re.M)
        )
        return float(found.get("sum", 0)), float(found.get("count", 0))


def start(work: Path, db_url: str | None) -> Bench:
    home = work / "home"
    home.mkdir()
    settings: dict[str, Any] = {
        "submit_rate_per_min": 0,
        "max_pending_per_user": 0,
        "container": {"gpus": "none"},  # a declared GPU, no device
    }
    if db_url:
        settings["db_url"] = db_url
    (home / "server.yaml").write_text(yaml.safe_dump(settings))
    info, _ = embedded.up(home, gpus=1, cpus=4)
    admin = (home / ADMIN_TOKEN_FILE).read_text().strip()
    with DlappClient(info.url, admin) as c:
        token = c.admin_add_user(SUBMITTER)["token"]
    ws = work / "workspace"
    ws.mkdir()
    (ws / "run.sh").write_text("sleep 3600\n")
    (ws / "train.py").write_text("print('training')\n" * 200)
    spec = {
        "name": "bench",
        "queue": "default",
        "workspace": {"path": str(ws)},
        "entry": {"script": "run.sh"},
        "resources": {"cpus": 0.5, "memory": "64M", "gpus": 1},
    }
    spec_file = work / "app.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    tarball = pack_workspace(ws, work / "workspace.tar.gz").path
    engine = make_engine(db_url or f"sqlite:///{home / 'dlapp.db'}")
    env = {
        **os.environ,
        "DLAPP_SERVER": info.url,
        "DLAPP_TOKEN": token,
        "XDG_CONFIG_HOME": str(work / "no-client-config"),
    }
    return Bench(home, info.url, admin, token, spec_file, tarball, engine, env)


def wait_running(client: DlappClient, app_id: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app = client.get(app_id)
        if app["state"] == "RUNNING":
            return
        if app["state"] == "FINISHED":
            raise RuntimeError(f"the app holding the GPU ended: {app['diagnostics']}")
        time.sleep(0.3)
    raise RuntimeError(f"{app_id} did not start in {timeout_s:g}s")


# -- the measurements ----------------------------------------------------------------------------


def submissions(
    b: Bench, report: Report, queued: int, sustained: int, cli_runs: int, clients: int = 1
) -> None:
    spec = AppSpec.from_file(b.spec_file)
    with b.client() as c:
        holder = c.submit(spec, b.tarball)["id"]
        wait_running(c, holder)
        floor = Latency.of(timed(c.whoami, 100))
        fill = Latency.of(timed(lambda: c.submit(spec, b.tarball), queued))
        report.rows.append(
            Row("submit", f"API submit, queue 0 -> {queued:,}", fill, "GET /api/v1/me", floor)
        )
        time.sleep(2)  # the scheduler has seen them all
        before = b.cycle_seconds()
        at = Latency.of(timed(lambda: c.submit(spec, b.tarball), sustained))
        after = b.cycle_seconds()
        report.rows.append(
            Row("submit", f"API submit, {queued:,}+ queued", at, "GET /api/v1/me", floor)
        )
        cycles = after[1] - before[1]
        if cycles:
            report.notes["scheduler cycle mean while queued (ms)"] = round(
                (after[0] - before[0]) / cycles * 1000, 1
            )
            report.notes["scheduler cycles during sustained submits"] = int(cycles)
        if clients > 1:  # the server's capacity: several callers at once
            callers = [b.client() for _ in range(clients)]
            try:
                each, wall = timed_at_once(
                    [partial(cl.submit, spec, b.tarball) for cl in callers], sustained
                )
            finally:
                for cl in callers:
                    cl.close()
            report.rows.append(
                Row(
                    "submit",
                    f"API submit, {clients} clients at once, {queued:,}+ queued",
                    Latency.of(each, wall),
                    "GET /api/v1/me",
                    floor,
                )
            )
        report.notes["apps waiting"] = c.cluster()["apps"]["ACCEPTED"]
        newest = c.list_apps(states=["ACCEPTED"], limit=1)
        report.notes["why the last one waits"] = newest[0]["pending_reason"] if newest else ""
    version = Latency.of(timed(lambda: b.cli("--version"), cli_runs))
    launch = Latency.of(timed(lambda: b.cli("launch", str(b.spec_file)), cli_runs))
    report.rows.append(
        Row("submit", f"CLI dlapp launch, {queued:,}+ queued", launch, "dlapp --version", version)
    )


@dataclass(frozen=True)
class Query:
    """A list or status request, how the CLI asks it, and the same rows in raw SQL."""

    name: str
    api: Callable[[DlappClient], int]
    cli: tuple[str, ...]
    raw: Callable[[Engine], int]


def queries(app_id: str) -> list[Query]:
    t = App.__table__
    ct = Container.__table__

    def raw_list(where: Any, limit: int = 1000) -> Callable[[Engine], int]:
        def run(engine: Engine) -> int:
            q = select(t).order_by(t.c.seq.desc()).limit(limit)
            if where is not None:
                q = q.where(where)
            with engine.connect() as conn:
                return len(conn.execute(q).all())

        return run

    def raw_status(engine: Engine) -> int:
        with engine.connect() as conn:
            conn.execute(select(t).where(t.c.id == app_id)).one()
            conn.execute(select(ct).where(ct.c.app_id == app_id)).all()
        return 1

    return [
        Query(
            "list (queued + running)",
            lambda c: len(c.list_apps(states=LIVE)),
            ("list",),
            raw_list(t.c.state.in_(LIVE)),
        ),
        Query("list --all", lambda c: len(c.list_apps()), ("list", "--all"), raw_list(None)),
        Query(
            f"list --all --user {SUBMITTER}",
            lambda c: len(c.list_apps(user=SUBMITTER)),
            ("list", "--all", "--user", SUBMITTER),
            raw_list(t.c.user == SUBMITTER),
        ),
        Query("status ID", lambda c: len([c.get(app_id)]), ("status", app_id), raw_status),
    ]


def look(b: Bench, label: str, app_id: str, samples: int, cli_runs: int) -> dict[str, Any]:
    """API, CLI and raw SQL latencies of every query, at the store's present size."""
    found: dict[str, Any] = {}
    with b.client() as c:
        for q in queries(app_id):
            rows = q.api(c)
            api = Latency.of(timed(partial(q.api, c), samples))
            raw = Latency.of(timed(partial(q.raw, b.engine), samples))
            cli = Latency.of(timed(partial(b.cli, *q.cli), cli_runs))
            found[q.name] = {"rows": rows, "api": api, "raw": raw, "cli": cli, "label": label}
    return found


def insert_history(b: Bench, count: int) -> float:
    """Bulk-insert ``count`` finished apps after the newest; returns the seconds it took."""
    started = time.perf_counter()
    sessions = session_factory(b.engine)
    with sessions() as session:
        ts = repo.cluster_timestamp(session, time.time())
        first = repo.next_app_id(session, time.time())[1]
    spec = AppSpec.from_file(b.spec_file).to_dict()
    for batch in history(first, count, ts, time.time(), spec):
        with sessions() as session:
            session.execute(insert(App), batch.apps)
            session.execute(insert(Container), batch.containers)
            session.execute(insert(Event), batch.events)
            session.commit()
    return time.perf_counter() - started


def lookups(
    report: Report, small: dict[str, Any], large: dict[str, Any], n_small: int, n_large: int
) -> None:
    for name, s in small.items():
        big = large[name]
        sec = "list/status"
        report.rows += [
            Row(sec, f"API {name}, {n_small:,} apps", s["api"], "raw SELECT", s["raw"], s["rows"]),
            Row(
                sec,
                f"API {name}, {n_large:,} apps",
                big["api"],
                "raw SELECT",
                big["raw"],
                big["rows"],
            ),
            Row(
                sec,
                f"API {name}, {n_large:,} vs {n_small:,}",
                big["api"],
                f"same, {n_small:,} apps",
                s["api"],
            ),
            Row(
                sec,
                f"CLI {name}, {n_large:,} apps",
                big["cli"],
                f"same, {n_small:,} apps",
                s["cli"],
                big["rows"],
            ),
        ]


def count_apps(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(App.__table__)).scalar_one())


def store_queries() -> dict[str, Callable[[Session], object]]:
    """The store's side of list / status and of a submit's limit check, through ``repo``."""
    live = [AppState.ACCEPTED, AppState.RUNNING]
    return {
        "list (queued + running)": lambda s: repo.apps_page(s, repo.AppFilter(states=live)),
        "list --all": lambda s: repo.apps_page(s, repo.AppFilter()),
        f"list --all --user {SUBMITTER}": lambda s: repo.apps_page(
            s, repo.AppFilter(user=SUBMITTER)
        ),
        f"list --all --user {SUBMITTER}, 100 a page": lambda s: repo.apps_page(
            s, repo.AppFilter(user=SUBMITTER), 100
        ),
        "a submit's count of the user's waiting apps": lambda s: s.scalar(
            select(func.count()).where(App.user == SUBMITTER, App.state == AppState.ACCEPTED.value)
        ),
    }


def _indexes_of_0003(engine: Engine) -> None:
    """Swap migration 0004's composite indexes on apps back for the single-column ones it
    replaced (its own REPLACED and ADDED tables, read from the migration file)."""
    path = MIGRATIONS / "versions" / "0004_app_list_indexes.py"
    loaded = importlib.util.spec_from_file_location("migration_0004", path)
    assert loaded is not None and loaded.loader is not None
    migration = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(migration)
    with engine.begin() as conn:
        for name, columns in migration.REPLACED.items():
            quoted = ", ".join(f'"{c}"' for c in columns)
            conn.execute(text(f'CREATE INDEX "{name}" ON apps ({quoted})'))
        for name in migration.ADDED:
            conn.execute(text(f'DROP INDEX "{name}"'))


def indexes(report: Report, history_n: int, samples: int) -> None:
    """The same queries on two SQLite stores holding the same apps, both at head (today's
    columns): one with 0003's single-column indexes on apps (0004's swapped back), one with
    0004's; interleaved, so both see the same machine."""
    work = Path(tempfile.mkdtemp(prefix="dlapp-bench-indexes-"))
    try:
        spec = {"name": "bench", "entry": {"script": "run.sh"}}
        engines = {}
        for label in ("0003", "head"):
            engine = make_engine(f"sqlite:///{work / label}.db")
            migrate(engine, "head")
            if label == "0003":
                _indexes_of_0003(engine)
            sessions = session_factory(engine)
            for batch in history(1, history_n, 1700000000000, time.time(), spec):
                with sessions() as session:
                    session.execute(insert(App), batch.apps)
                    session.execute(insert(Container), batch.containers)
                    session.execute(insert(Event), batch.events)
                    session.commit()
            with sessions() as session:  # a queue of waiting apps, as in the server's run
                session.execute(
                    update(App).where(App.seq > history_n - 1000).values(state="ACCEPTED")
                )
                session.commit()
            engines[label] = sessions
        for name, query in store_queries().items():
            times: dict[str, list[float]] = {"0003": [], "head": []}
            for _ in range(samples):
                for label, sessions in engines.items():
                    with sessions() as session:
                        times[label] += timed(partial(query, session), 1)
            report.rows.append(
                Row(
                    "store",
                    f"{name}, {history_n:,} apps, indexes of 0004",
                    Latency.of(times["head"]),
                    "same, indexes of 0003",
                    Latency.of(times["0003"]),
                )
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace) -> Report:
    report = Report(
        machine(),
        {k: v for k, v in vars(args).items() if k not in ("json", "db_url")}
        | {"db": "postgresql" if args.db_url else "sqlite"},
    )
    work = Path(tempfile.mkdtemp(prefix="dlapp-bench-throughput-"))
    b: Bench | None = None
    try:
        b = start(work, args.db_url)
        _log(f"server at {b.url}; submitting {args.queued} apps")
        submissions(b, report, args.queued, args.sustained, args.cli_runs, args.clients)
        with b.client() as c:
            probe = c.list_apps(states=["ACCEPTED"])[-1]["id"]
        n_small = count_apps(b.engine)
        _log(f"{n_small} apps stored; measuring list / status")
        small = look(b, "small", probe, args.samples, args.cli_runs)
        _log(f"inserting {args.history} finished apps")
        report.notes["history insert (s)"] = round(insert_history(b, args.history), 1)
        n_large = count_apps(b.engine)
        _log(f"{n_large} apps stored; measuring list / status")
        large = look(b, "large", probe, args.samples, args.cli_runs)
        lookups(report, small, large, n_small, n_large)
        spec = AppSpec.from_file(b.spec_file)
        with b.client() as c:
            floor = Latency.of(timed(c.whoami, 100))
            more = Latency.of(timed(lambda: c.submit(spec, b.tarball), args.sustained))
        report.rows.append(
            Row("submit", f"API submit, {n_large:,} apps stored", more, "GET /api/v1/me", floor)
        )
    finally:
        if b is not None:
            b.engine.dispose()
        if not args.keep:
            embedded.down(work / "home")
            shutil.rmtree(work, ignore_errors=True)
        else:
            _log(f"kept {work} (server still running: dlapp down with DLAPP_HOME={work / 'home'})")
    return report


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--queued", type=int, default=1000, help="apps to queue before measuring")
    ap.add_argument("--sustained", type=int, default=200, help="API submissions at that depth")
    ap.add_argument(
        "--clients", type=int, default=8, help="callers submitting at once for the capacity row"
    )
    ap.add_argument("--history", type=int, default=100_000, help="finished apps to insert")
    ap.add_argument("--samples", type=int, default=40, help="API calls per list / status figure")
    ap.add_argument("--cli-runs", type=int, default=20, help="CLI processes per figure")
    ap.add_argument("--db-url", help="PostgreSQL URL for the store (default: SQLite)")
    ap.add_argument("--keep", action="store_true", help="leave the server and its files")
    ap.add_argument(
        "--indexes",
        action="store_true",
        help="only the store's queries, on HISTORY apps, with the indexes before and after 0004",
    )
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    for name in ("queued", "sustained", "samples", "cli_runs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.history < 0:
        ap.error("--history must be 0 or more")
    if args.indexes:
        report = Report(machine(), {"history": args.history, "samples": args.samples})
        indexes(report, args.history, args.samples)
    else:
        report = run(args)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
