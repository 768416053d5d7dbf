"""The simulated cluster: node groups, and how a trace's job becomes a gang of containers.

A cluster file is YAML, a list of node groups (or a mapping with that list under ``nodes``)::

    - {count: 352, gpus: 8, cpus: 64, memory: 512G, model: A100}
    - {count: 100, gpus: 2, cpus: 104, memory: 524288Mi, model: T4, name: t4}
    - {count: 4, gpus: 0, cpus: 32, memory: 128G, name: cpu}   # name: node id prefix

``cpus`` defaults to 8 per GPU (at least 8), and may be written in thousandths as Kubernetes
does (``96000m``); ``memory`` defaults to 64 GiB per GPU (at least 64 GiB), and may be written
as Kubernetes does (``393216Mi``, ``384Gi``); ``model`` is the GPU model of the group's nodes
(what jobs' ``gpu_type`` and queues' per-model capacities name). A CSV node list such as
Alibaba's ``openb_node_list_gpu_node.csv`` (``sn,cpu_milli,memory_mib,gpu,model``) is read too,
one group per kind of node.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dlapp.errors import InfeasibleError
from dlapp.scheduler import NodeView, QueueConfigError, QueueTree, Resources, check_feasible
from dlapp.sim.trace import SimInputError, TraceJob, parse_memory_mb

GROUP_KEYS = ("count", "gpus", "cpus", "memory", "model", "name")
_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CPUS_PER_GPU = 8
MEMORY_MB_PER_GPU = 64 * 1024


@dataclass(frozen=True)
class NodeGroup:
    count: int
    gpus: int
    cpus: float
    memory_mb: int
    name: str = "node"
    model: str = ""

    @property
    def node(self) -> Resources:
        return Resources(self.cpus, self.memory_mb, self.gpus)


@dataclass(frozen=True)
class ClusterSpec:
    """Groups of identical nodes. Validated when built; ``to_dict`` round-trips."""

    groups: tuple[NodeGroup, ...]

    @classmethod
    def uniform(
        cls, nodes: int, gpus_per_node: int, cpus: float | None = None, memory: str | None = None
    ) -> ClusterSpec:
        """The ``--nodes N --gpus-per-node G`` shortcut."""
        group: dict[str, Any] = {"count": nodes, "gpus": gpus_per_node}
        if cpus is not None:
            group["cpus"] = cpus
        if memory is not None:
            group["memory"] = memory
        return cls.from_dict([group])

    @classmethod
    def from_yaml(cls, path: Path) -> ClusterSpec:
        if path.suffix.lower() == ".csv":
            return cls.from_csv(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise SimInputError(f"cannot read cluster file {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise SimInputError(f"cluster file {path} is not valid YAML: {exc}") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "cluster") -> ClusterSpec:
        if isinstance(data, Mapping):
            unknown = set(data) - {"nodes"}
            if unknown:
                raise SimInputError(f"{source}: unknown key(s) {sorted(unknown)}; valid: nodes")
            data = data.get("nodes")
        if not isinstance(data, list) or not data:
            raise SimInputError(f"{source}: must be a non-empty list of node groups")
        problems: list[str] = []
        groups = []
        for i, spec in enumerate(data, 1):
            group = _group(spec, f"{source}: node group {i}", problems)
            if group is not None:
                groups.append(group)
        names = [g.name for g in groups]
        if len(set(names)) != len(names):
            problems.append(f"{source}: node group names must differ (give each a name)")
        if problems:
            raise SimInputError("; ".join(problems))
        return cls(tuple(groups))

    @classmethod
    def from_csv(cls, path: Path) -> ClusterSpec:
        """A node list with a row per node: ``cpu_milli`` (or ``cpus``), ``memory_mib`` (or
        ``memory``), ``gpu`` (or ``gpus``), ``model``; alike nodes make one group."""
        try:
            with path.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
        except OSError as exc:
            raise SimInputError(f"cannot read cluster file {path}: {exc.strerror or exc}") from None
        counts: Counter[tuple[str, str, str, str]] = Counter()
        for i, row in enumerate(rows, 1):
            lowered = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            cpus = lowered.get("cpus") or (
                f"{lowered['cpu_milli']}m" if lowered.get("cpu_milli") else ""
            )
            memory = lowered.get("memory") or (
                f"{lowered['memory_mib']}Mi" if lowered.get("memory_mib") else ""
            )
            gpus = lowered.get("gpus") or lowered.get("gpu") or ""
            if not cpus or not memory or not gpus:
                raise SimInputError(
                    f"{path}: row {i} needs cpu_milli (or cpus), memory_mib (or memory) and "
                    "gpu (or gpus)"
                )
            model = lowered.get("model", "")
            counts[(cpus, memory, gpus, "" if model.lower() == "nan" else model)] += 1
        if not counts:
            raise SimInputError(f"{path}: no nodes")
        groups: list[dict[str, Any]] = []
        for (cpus, memory, gpus, model), n in sorted(counts.items(), key=lambda kv: -kv[1]):
            name = f"{(model or 'cpu').lower()}-{len(groups)}-"
            groups.append(
                {
                    "count": n,
                    "gpus": int(gpus) if gpus.isdigit() else gpus,
                    "cpus": cpus,
                    "memory": memory,
                    "name": name,
                }
                | ({"model": model} if model else {})
            )
        return cls.from_dict(groups, str(path))

    def to_dict(self) -> list[dict[str, Any]]:
        return [
            {"count": g.count, "gpus": g.gpus, "cpus": g.cpus, "memory": f"{g.memory_mb}M"}
            | ({"name": g.name} if len(self.groups) > 1 or g.name != "node" else {})
            | ({"model": g.model} if g.model else {})
            for g in self.groups
        ]

    def nodes(self) -> tuple[NodeView, ...]:
        """Every node, empty: ids ``node0000``, ``node0001``, ... (the group's name first)."""
        views = []
        for g in self.groups:
            width = max(4, len(str(g.count - 1)))
            for i in range(g.count):
                node_id = f"{g.name}{i:0{width}d}"
                views.append(NodeView(node_id, node_id, g.node, g.node, model=g.model))
        return tuple(views)

    @property
    def total(self) -> Resources:
        return sum((g.node.scaled(g.count) for g in self.groups), Resources())

    @property
    def node_count(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def max_gpus_per_node(self) -> int:
        return max(g.gpus for g in self.groups)

    def gpus_by_model(self) -> dict[str, int]:
        """GPUs of each model (``""``: of no stated model)."""
        out: dict[str, int] = {}
        for g in self.groups:
            if g.gpus:
                out[g.model] = out.get(g.model, 0) + g.gpus * g.count
        return out


def _group(spec: Any, where: str, problems: list[str]) -> NodeGroup | None:
    if not isinstance(spec, Mapping):
        problems.append(f"{where}: must be a mapping with keys {', '.join(GROUP_KEYS)}")
        return None
    unknown = set(spec) - set(GROUP_KEYS)
    if unknown:
        problems.append(
            f"{where}: unknown key(s) {sorted(unknown)}; valid: {', '.join(GROUP_KEYS)}"
        )
    count = _whole(spec.get("count"), "count", 1, where, problems)
    gpus = _whole(spec.get("gpus"), "gpus", 0, where, problems)
    if count is None or gpus is None:
        return None
    cpus = _cpus(spec.get("cpus", max(CPUS_PER_GPU, CPUS_PER_GPU * gpus)))
    if cpus is None:
        problems.append(
            f"{where}: cpus must be a non-negative number (or thousandths: 96000m), "
            f"not {spec.get('cpus')!r}"
        )
        return None
    model = spec.get("model", "")
    if not isinstance(model, str) or (model and not _MODEL_RE.match(model)):
        problems.append(f"{where}: model must be a GPU model name such as A100, not {model!r}")
        return None
    try:
        memory = parse_memory_mb(
            spec.get("memory", max(MEMORY_MB_PER_GPU, MEMORY_MB_PER_GPU * gpus)), f"{where} memory"
        )
    except SimInputError as exc:
        problems.append(exc.message)
        return None
    return NodeGroup(count, gpus, cpus, memory, str(spec.get("name", "node")), model)


def _cpus(value: Any) -> float | None:
    """CPUs from ``64``, ``0.5`` or Kubernetes' thousandths ``96000m``; None when not so."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        try:
            number = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
        except ValueError:
            return None
    elif isinstance(value, int | float):
        number = float(value)
    else:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _whole(value: Any, key: str, low: int, where: str, problems: list[str]) -> int | None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        problems.append(f"{where}: {key} must be a whole number >= {low}, not {value!r}")
        return None
    return value


def split_gang(
    job: TraceJob, max_gpus_per_node: int, round_fractions: bool = False
) -> tuple[Resources, int]:
    """(request per container, number of containers) for ``job``.

    A job that fits on one node is one container (a fraction of a GPU is one container with
    that share; ``round_fractions`` asks for a whole GPU instead, as before GPU sharing). A
    larger one becomes a gang of equal containers of at most ``max_gpus_per_node`` GPUs: the
    fewest containers that divide its GPUs evenly (64 GPUs on 8-GPU nodes: 8 x 8; 12: 2 x 6).
    Its CPUs and memory are shared out evenly (memory rounded up to whole MiB).
    """
    gpus = job.gpus
    if gpus < 1:
        if gpus > 0 and round_fractions:
            gpus = 1
        else:
            return Resources(job.cpus, job.memory_mb, gpus), 1
    whole = int(gpus)
    n = 1
    if max_gpus_per_node > 0 and whole > max_gpus_per_node:
        n = math.ceil(whole / max_gpus_per_node)
        while whole % n:
            n += 1
    request = Resources(job.cpus / n, math.ceil(job.memory_mb / n), whole // n)
    return request, n


class Admission:
    """Whether a job can ever run here, decided at submit as the server decides it: a node
    must hold each container, the gang must fit the empty cluster, the queue must exist, and
    the whole job must fit under its queue's (and ancestors') maximum and the user limit.
    Answers are cached by shape, so an 80,000-job trace is checked in a moment."""

    def __init__(self, cluster: ClusterSpec, tree: QueueTree) -> None:
        self.nodes = cluster.nodes()
        self.tree = tree
        self.limits = tree.resolve(cluster.total)
        self._fits: dict[tuple[Resources, int, tuple[str, ...]], str | None] = {}
        self._queues: dict[str, str] = {}

    def leaf(self, queue: str) -> str:
        """The full path of ``queue``; raises QueueConfigError when it is not a leaf."""
        path = self._queues.get(queue)
        if path is None:
            path = self._queues[queue] = self.tree.leaf(queue).path
        return path

    def refuse(
        self, request: Resources, n: int, queue: str, gpu_types: tuple[str, ...] = ()
    ) -> str | None:
        """Why a job of ``n`` containers of ``request`` in ``queue`` can never run, or None."""
        key = (request, n, gpu_types)
        if key not in self._fits:
            try:
                check_feasible(request, n, self.nodes, gpu_types=gpu_types)
                self._fits[key] = None
            except InfeasibleError as exc:
                self._fits[key] = f"never fits the cluster: {exc.message}"
        if self._fits[key] is not None:
            return self._fits[key]
        try:
            path = self.leaf(queue)
        except QueueConfigError:
            return f"no leaf queue {queue!r}"
        need = request.scaled(n)
        for p in self.tree.ancestors(path):
            if not need.fits_in(self.limits[p].maximum):
                return f"over the maximum of queue {p}"
        if not need.fits_in(self.tree.user_cap(path, self.limits[path].maximum)):
            return f"over the user limit of queue {path}"
        return None
