"""The policies a replay compares, all of them the server's own ``decide`` on a queue tree:

- ``dlapp``: the tree as configured (each queue's ``ordering``, guarantees, borrowing,
  dominant-share fairness between users, preemption when the tree enables it);
- ``fifo``: the same tree with every queue ``ordering: fifo``: first come first served inside
  each queue with head-of-line blocking (the first app that cannot start holds back the rest),
  as YARN's Capacity Scheduler does;
- ``fifo-skip``: the same tree with every queue ``ordering: backfill``: FIFO that lets a later
  app which fits start while an earlier one waits;
- ``las``: every queue ``ordering: las``, least attained GPU service first (Tiresias's levels,
  a job that has waited long promoted), no duration needed;
- ``srtf``: every queue ``ordering: srtf``, shortest remaining ``max_runtime`` first (give the
  jobs one: ``SimOptions.runtime_estimate``, ``dlapp simulate --runtime-estimate``).

Preemption is the tree's ``preemption.enabled``; ``policy_tree`` may override it and its grace.
``tree_from_vc`` builds a tree from a list of virtual clusters and their node counts
(Philly's ``philly_vc.csv``): one queue each, guaranteed its share of the nodes.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from dlapp.scheduler import DEFAULT_TREE, Queue, QueueConfigError, QueueTree, parse_tree
from dlapp.sim.trace import SimInputError

POLICIES = ("dlapp", "fifo", "fifo-skip", "las", "srtf")
_ORDERING = {"fifo": "fifo", "fifo-skip": "backfill", "las": "las", "srtf": "srtf"}


def load_queues(path: Path | None) -> QueueTree:
    """The tree in a queues.yaml (the server's format), or the built-in one-queue default."""
    if path is None:
        return DEFAULT_TREE
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SimInputError(f"cannot read queue file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SimInputError(f"queue file {path} is not valid YAML: {exc}") from None
    return parse_tree(data, str(path))


def vc_config(path: Path, maximum: str = "100%") -> dict[str, Any]:
    """A queues.yaml mapping from a ``vc,node_num`` CSV: a queue per virtual cluster whose
    guarantee is its node count over the total, and ``maximum`` (``100%`` lets it borrow the
    whole idle cluster; ``guaranteed`` caps it at its own share, as a hard quota)."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise SimInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        nodes = {r["vc"].strip(): int(r["node_num"]) for r in rows}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise SimInputError(f"{path}: needs columns vc,node_num with whole node counts") from None
    total = sum(nodes.values())
    if not nodes or total <= 0:
        raise SimInputError(f"{path}: no virtual cluster with nodes")
    queues: dict[str, Any] = {}
    for vc, count in nodes.items():
        share = f"{count / total * 100!r}%"  # full precision: shares add up to 100%
        queues[vc] = {
            "guaranteed": share,
            "maximum": share if maximum == "guaranteed" else maximum,
        }
    return {"queues": queues}


def tree_from_vc(path: Path, maximum: str = "100%") -> QueueTree:
    try:
        return parse_tree(vc_config(path, maximum), f"{path} (virtual clusters)")
    except QueueConfigError as exc:
        raise SimInputError(exc.message) from None


def policy_tree(
    tree: QueueTree,
    policy: str,
    preemption: bool | None = None,
    grace_s: float | None = None,
) -> QueueTree:
    """``tree`` as ``policy`` runs it; ``preemption`` / ``grace_s`` override the tree's when
    given."""
    if policy not in POLICIES:
        raise SimInputError(f"unknown policy {policy!r}; policies: {', '.join(POLICIES)}")
    root = tree.root
    ordering = _ORDERING.get(policy)
    if ordering is not None:
        root = _with_ordering(root, ordering)
    return replace(
        tree,
        root=root,
        preemption=tree.preemption if preemption is None else preemption,
        preemption_grace_s=tree.preemption_grace_s if grace_s is None else grace_s,
        _resolved={},
    )


def _with_ordering(q: Queue, ordering: str) -> Queue:
    return replace(
        q, ordering=ordering, children=tuple(_with_ordering(c, ordering) for c in q.children)
    )
