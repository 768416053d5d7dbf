"""Benchmark: the scheduler's read of the waiting apps, once a cycle, at scale.

    .venv/bin/python bench/waiting_read.py [--waiting 9000] [--new 20] [--runs 9] [--json]

A SQLite store (WAL, as ``dlapp up`` makes it) holding WAITING apps. Timed, quiet and then
beside one busy Python thread (as the API's threads are while submissions stream in):

- **whole read**, the baseline: every waiting app's row (``repo.waiting_apps``), what each
  cycle read before the rows were kept;
- **kept read**: ``WaitingSet.read`` once it has read them all, with NEW apps submitted since
  the last cycle (which it reads whole): what a cycle reads now.

Prints p50 of each and the ratio (whole / kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from sqlalchemy import insert
from sqlalchemy.orm import Session
from stats import busy_thread, percentile

from dlapp.server.scheduling.waiting import WaitingSet
from dlapp.store import repo
from dlapp.store.db import make_engine, migrate, session_factory
from dlapp.store.models import App

REASON = (
    "needs 1 container of 0.5 CPUs, 64 MiB, 1 GPU; the most free on any node: 0 GPUs "
    "(position 1200 in queue root.default)"
)


def rows(first: int, count: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"application_1800000000000_{seq:05d}",
            "seq": seq,
            "user": f"user{seq % 50}",
            "name": "bench",
            "queue": "root.default",
            "state": "ACCEPTED",
            "final_status": "UNDEFINED",
            "diagnostics": "",
            "pending_reason": REASON,
            "spec": "{}",
            "num_containers": 1,
            "cpus": 0.5,
            "memory_mb": 64,
            "gpus": 1.0,
            "workspace": "/nowhere.tar.gz",
            "kill_requested": None,
            "attempt": 0,
            "submit_time": 1.8e9 + seq,
        }
        for seq in range(first, first + count)
    ]


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def kept_cycle(session: Session, kept: WaitingSet, first: int, new: int) -> float:
    """Submit ``new`` apps numbered from ``first``, then time one kept read (seconds); it must
    see every app stored."""
    session.execute(insert(App), rows(first, new))
    session.commit()
    t = time.perf_counter()
    got = kept.read(session)
    took = time.perf_counter() - t
    session.commit()
    assert len(got) == first + new - 1, (len(got), first + new - 1)
    return took


def measure(waiting: int, new: int, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        engine = make_engine(f"sqlite:///{d}/dlapp.db")
        migrate(engine)
        with engine.begin() as conn:
            conn.execute(insert(App), rows(1, waiting))
        report: dict[str, Any] = {"waiting": waiting, "new_per_cycle": new, "runs": runs}
        stored = waiting
        with session_factory(engine)() as session:
            for busy in (False, True):
                kept = WaitingSet()
                kept.read(session)
                session.commit()
                with busy_thread(busy):
                    whole = timed(lambda: repo.waiting_apps(session), runs)
                    session.commit()
                    took = []
                    for _ in range(runs):
                        took.append(kept_cycle(session, kept, stored + 1, new))
                        stored += new
                w50, k50 = percentile(whole, 50), percentile(took, 50)
                report["busy" if busy else "quiet"] = {
                    "whole_read_p50_ms": round(w50 * 1000, 2),
                    "kept_read_p50_ms": round(k50 * 1000, 2),
                    "ratio": round(w50 / k50, 1),
                }
        engine.dispose()
        return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--waiting", type=int, default=9000)
    p.add_argument("--new", type=int, default=20, help="apps submitted between two cycles")
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    report = measure(args.waiting, args.new, args.runs)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{report['waiting']:,} waiting, {report['new_per_cycle']} new a cycle, p50 of {args.runs}:"
    )
    print("| machine | whole read (baseline) | kept read | whole / kept |")
    print("|---|---:|---:|---:|")
    for label in ("quiet", "busy"):
        r = report[label]
        print(
            f"| {label} | {r['whole_read_p50_ms']} ms | {r['kept_read_p50_ms']} ms | "
            f"{r['ratio']}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
