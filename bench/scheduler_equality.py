"""Check that ``decide()`` makes the same decisions before and after a change to the policy.

    .venv/bin/python bench/scheduler_equality.py OUT.json         # dump every decision
    .venv/bin/python bench/scheduler_equality.py OUT.json --compare BEFORE.json

Runs ``decide()`` and ``decide_changes()`` on seeded random snapshots (``bench/scheduler.py``'s
generator, plus variants: preemption off, fifo / las / srtf queues, gangs spread over nodes,
reservations, user limits and maxima, stopping apps, max runtimes, other placements) and
writes the whole output, in order: every Admit with its nodes and devices, every Wait with its
position, reason and estimate, every Preempt with its reason. ``--compare`` says which case
differs, and where.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scheduler import build

from dlapp.scheduler import (
    Admit,
    AppHead,
    Backlog,
    Preempt,
    Resources,
    Snapshot,
    Wait,
    decide,
    decide_changes,
    parse_tree,
)


def tree_of(
    queues: int,
    preemption: bool,
    orderings: list[str],
    rng: random.Random,
    limits: bool,
    reserve: bool,
    models: bool = False,
) -> Any:
    parents = max(1, queues // 10)
    per_parent = max(1, queues // parents)
    spec: dict[str, Any] = {}
    for p in range(parents):
        children: dict[str, Any] = {}
        for c in range(per_parent):
            leaf: dict[str, Any] = {"guaranteed": f"{100 / per_parent:.4f}%"}
            if models:  # GPU-model guarantees and maxima: the quotas per model
                leaf["guaranteed"] = {
                    "gpus": f"{100 / per_parent:.4f}%",
                    "gpu_types": {"A100": f"{100 / per_parent:.4f}%"},
                }
                if rng.random() < 0.4:
                    leaf["maximum"] = {"gpu_types": {"H100": f"{rng.choice([5, 10, 30])}%"}}
            leaf["ordering"] = orderings[(p * per_parent + c) % len(orderings)]
            if limits and rng.random() < 0.3:
                leaf["maximum"] = f"{rng.choice([20, 40, 60])}%"
            if limits and rng.random() < 0.3:
                leaf["user_limit"] = {"gpus": rng.choice([2, 4, 8, 16])}
            if limits and rng.random() < 0.2:
                leaf["preemptible"] = False
            if reserve:
                leaf["reserve_after"] = "1h"
            else:
                leaf["reserve_after"] = "never" if rng.random() < 0.5 else "100h"
            children[f"q{p}_{c}"] = leaf
        guaranteed: Any = f"{100 / parents:.4f}%"
        if models:
            guaranteed = {"gpus": guaranteed, "gpu_types": {"A100": guaranteed}}
        spec[f"p{p}"] = {"guaranteed": guaranteed, "children": children}
    return parse_tree({"queues": spec, "preemption": {"enabled": preemption}})


def case(
    seed: int,
    pending: int,
    queues: int,
    nodes: int,
    *,
    preemption: bool = True,
    orderings: tuple[str, ...] = ("backfill",),
    extras: bool = False,
    limits: bool = False,
    reserve: bool = False,
    placement: str = "fgd",
    spread: bool = False,
    skew: bool = False,
    models: bool = False,
) -> tuple[list[AppHead], Snapshot]:
    heads, snap = build(pending, queues, nodes, seed=seed)
    if (
        preemption
        and orderings == ("backfill",)
        and not (extras or limits or reserve or spread or skew or models)
        and placement == "fgd"
    ):
        return heads, snap  # the bench's own snapshot
    rng = random.Random(seed * 1000 + 1)
    tree = tree_of(queues, preemption, list(orderings), rng, limits, reserve, models)
    leaves = [q.path for q in tree.leaves]
    # the generator's queue names are the same paths: keep them (they exist in this tree)
    now = 100_000.0 if extras or reserve else 0.0
    new_heads = []
    for h in heads:
        changes: dict[str, Any] = {}
        if extras:
            changes["ran_s"] = rng.choice([0.0, 0.0, 600.0, 7200.0, 50_000.0])
            changes["max_runtime_s"] = rng.choice([None, 3600.0, 20_000.0, 200_000.0])
            changes["waiting_since"] = now - rng.choice([10.0, 3000.0, 8000.0, 700_000.0])
            if rng.random() < 0.05:
                changes["queue"] = "gone_queue"
        elif reserve:
            changes["waiting_since"] = now - rng.choice([10.0, 3000.0, 8000.0])
        if spread and h.num_containers > 1 and rng.random() < 0.5:
            changes["spread"] = True
        if spread and rng.random() < 0.03:
            changes["exclude_nodes"] = (f"node{rng.randrange(nodes):04d}",)
        if models and rng.random() < 0.15:
            changes["gpu_types"] = (rng.choice(["A100", "H100"]),)
        elif models and rng.random() < 0.1:  # a share of one device
            changes["request"] = Resources(2, 8 * 1024, 0.5)
            changes["num_containers"] = 1
        new_heads.append(replace(h, **changes) if changes else h)
    running = []
    for a in snap.running:
        changes = {"queue": rng.choice(leaves[:3] if skew else leaves)}
        if extras:
            changes["ends_by"] = rng.choice([None, now + 500.0, now + 5000.0, now + 90_000.0])
            changes["ran_before_s"] = rng.choice([0.0, 3600.0, 40_000.0])
            changes["stopping"] = rng.random() < 0.02
            changes["priority"] = rng.choice([0, 0, 1])
        running.append(replace(a, **changes))
    views = snap.nodes
    if models:
        views = tuple(replace(n, model="A100" if i % 2 else "H100") for i, n in enumerate(views))
    snapshot = Snapshot(views, running=tuple(running), queues=tree, now=now, placement=placement)
    return new_heads, snapshot


CASES: dict[str, dict[str, Any]] = {
    "bench-small-s1": dict(seed=1, pending=1500, queues=20, nodes=150),
    "bench-small-s2": dict(seed=2, pending=2500, queues=30, nodes=250),
    "bench-small-s3": dict(seed=3, pending=800, queues=10, nodes=60),
    "bench-full-s7": dict(seed=7, pending=10_000, queues=100, nodes=1000),
    "nopreempt-s4": dict(seed=4, pending=2000, queues=20, nodes=200, preemption=False),
    "nopreempt-s5": dict(seed=5, pending=3000, queues=40, nodes=300, preemption=False),
    "fifo-s6": dict(seed=6, pending=1500, queues=20, nodes=150, orderings=("fifo", "backfill")),
    "las-s8": dict(seed=8, pending=1500, queues=20, nodes=150, orderings=("las",), extras=True),
    "srtf-s9": dict(seed=9, pending=1500, queues=20, nodes=150, orderings=("srtf",), extras=True),
    "mixed-s10": dict(
        seed=10,
        pending=2000,
        queues=20,
        nodes=150,
        orderings=("las", "srtf", "fifo", "backfill"),
        extras=True,
        limits=True,
    ),
    "limits-s11": dict(seed=11, pending=2000, queues=20, nodes=200, limits=True),
    "limits-nopre-s12": dict(
        seed=12, pending=2000, queues=20, nodes=200, limits=True, preemption=False
    ),
    "reserve-s13": dict(seed=13, pending=1500, queues=20, nodes=150, reserve=True, limits=True),
    "spread-s14": dict(seed=14, pending=1500, queues=20, nodes=150, spread=True),
    "pack-s15": dict(seed=15, pending=1500, queues=20, nodes=150, placement="pack", spread=True),
    "bestfit-s16": dict(seed=16, pending=1000, queues=10, nodes=100, placement="best-fit"),
    "firstfit-s17": dict(seed=17, pending=600, queues=10, nodes=60, placement="first-fit"),
    "las-fifo-s18": dict(
        seed=18,
        pending=1500,
        queues=20,
        nodes=150,
        orderings=("las", "fifo"),
        extras=True,
        reserve=True,
    ),
    "skew-s21": dict(seed=21, pending=1500, queues=20, nodes=150, skew=True),
    "skew-las-s22": dict(
        seed=22, pending=1500, queues=20, nodes=150, skew=True, orderings=("las", "backfill")
    ),
    "skew-limits-s23": dict(seed=23, pending=2000, queues=20, nodes=150, skew=True, limits=True),
    "models-s24": dict(seed=24, pending=2000, queues=20, nodes=150, models=True),
    "models-skew-s25": dict(seed=25, pending=2000, queues=20, nodes=150, models=True, skew=True),
    "models-pack-s26": dict(
        seed=26, pending=1500, queues=20, nodes=150, models=True, placement="pack", extras=True
    ),
    "tiny-s19": dict(seed=19, pending=50, queues=10, nodes=5, extras=True, limits=True),
    "tiny-s20": dict(seed=20, pending=200, queues=10, nodes=3, orderings=("las", "srtf")),
}


def dump(decisions: list[Any]) -> list[Any]:
    out: list[Any] = []
    for d in decisions:
        if isinstance(d, Admit):
            out.append(["admit", d.app_id, list(d.nodes), [list(x) for x in d.devices]])
        elif isinstance(d, Wait):
            out.append(["wait", d.app_id, d.position, d.reason, d.estimate])
        elif isinstance(d, Preempt):
            out.append(["preempt", d.app_id, d.for_app, d.for_queue, d.reason])
        else:
            raise TypeError(d)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out")
    ap.add_argument("--compare")
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    results: dict[str, Any] = {}
    for name, params in CASES.items():
        if args.only and name not in args.only:
            continue
        heads, snapshot = case(**params)
        t0 = time.perf_counter()
        out = dump(decide(heads, snapshot))
        took = time.perf_counter() - t0
        kinds = [row[0] for row in out]
        print(
            f"{name:18} {took * 1e3:8.1f} ms  admit {kinds.count('admit'):5d}  "
            f"wait {kinds.count('wait'):5d}  preempt {kinds.count('preempt'):4d}  "
            f"reasons {len({row[3] for row in out if row[0] == 'wait'}):4d}"
        )
        results[name] = out
        # decide_changes (the simulator's way): the same cycle on a Backlog, without reasons
        changes = decide_changes(Backlog(snapshot.queues, heads), snapshot)
        results[f"{name}/changes"] = dump(list(changes))
    Path(args.out).write_text(json.dumps(results, indent=0))
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        bad = 0
        for name, out in results.items():
            old = before.get(name)
            if old is None:
                print(f"{name}: not in {args.compare}")
                continue
            if old != json.loads(json.dumps(out)):
                bad += 1
                diffs = [
                    (i, a, b) for i, (a, b) in enumerate(zip(old, out, strict=False)) if a != b
                ]
                print(f"{name}: DIFFERS ({len(old)} vs {len(out)} rows, {len(diffs)} differ)")
                for i, a, b in diffs[:3]:
                    print(f"  row {i}: before {a}\n          after  {b}")
        print("identical" if not bad else f"{bad} case(s) differ")
        sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
