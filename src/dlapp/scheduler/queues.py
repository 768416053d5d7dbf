"""The queue tree: guaranteed and maximum capacity, user limits, ACLs, preemptibility.

Configured in YAML (``$DLAPP_HOME/queues.yaml``, see docs/queues.md)::

    preemption: {enabled: true, grace_s: 30}
    queues:
      research:
        guaranteed: {gpus: 60%}
        children:
          vision: {guaranteed: 50%, maximum: 100%, user_limit: {gpus: 4}, priority_max: 10}
      prod: {guaranteed: {gpus: 40%}, submit_acl: {users: [alice], groups: [ops]}}

A capacity is a share of the parent's (``50%``; the guarantee of the parent's guarantee, the
maximum of the parent's maximum) or an absolute amount (``8`` GPUs, ``64G`` memory), per
resource or for all three at once. A missing guarantee is 0; a missing maximum is the parent's.
Apps go to leaf queues, named by full path (``root.research.vision``) or a unique leaf name.
Pure values: ``resolve(total)`` turns shares into absolute ``Resources`` for a cluster size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from dlapp.errors import DlappError
from dlapp.scheduler.resources import Resources
from dlapp.spec import MIB_PER_UNIT, memory_size, parse_duration_s

ROOT = "root"
RESOURCE_KEYS = ("gpus", "cpus", "memory")
QUEUE_KEYS = (
    "guaranteed",
    "maximum",
    "user_limit",
    "user_limit_share",
    "submit_acl",
    "admin_acl",
    "preemptible",
    "ordering",
    "levels",
    "promote_after",
    "promote_factor",
    "reserve_after",
    "max_pending",
    "runtimes",
    "children",
)
ORDERINGS = ("backfill", "fifo", "las", "srtf")
# las: attained GPU-hours at which a job drops to the next priority level (Tiresias's levels)
DEFAULT_LEVELS_GPU_H = (1.0, 10.0)
DEFAULT_PROMOTE_AFTER_S = 7 * 86400.0  # las / srtf: a job that has waited this long goes first
DEFAULT_PROMOTE_FACTOR: float | None = None  # ... or this many times its size (off: see docs)
DEFAULT_RESERVE_AFTER_S = 2 * 3600.0  # a queue's longest waiter this old gets a reservation
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class QueueConfigError(DlappError):
    code = "invalid_queue_config"
    http_status = 400


@dataclass(frozen=True)
class Amount:
    """One resource's capacity: a share of the parent's, or an absolute amount."""

    share: float | None = None  # 0..1
    absolute: float | None = None

    def of(self, parent: float) -> float:
        if self.share is not None:
            return parent * self.share
        return min(float(self.absolute or 0.0), parent)

    def describe(self) -> str:
        return f"{self.share * 100:g}%" if self.share is not None else f"{self.absolute:g}"


@dataclass(frozen=True)
class Capacity:
    gpus: Amount
    cpus: Amount
    memory: Amount
    # GPUs of one model (``A100``): a share of the parent's GPUs of that model, or a number of
    # them; models not named here have no capacity of their own
    gpu_types: tuple[tuple[str, Amount], ...] = ()

    def of(self, parent: Resources) -> Resources:
        return Resources(
            cpus=self.cpus.of(parent.cpus),
            memory_mb=int(self.memory.of(parent.memory_mb)),
            gpus=int(round(self.gpus.of(parent.gpus), 6)),
        )


@dataclass(frozen=True)
class Acl:
    users: frozenset[str] = frozenset({"*"})
    groups: frozenset[str] = frozenset()

    def allows(self, user: str, groups: frozenset[str] = frozenset()) -> bool:
        return "*" in self.users or user in self.users or bool(self.groups & groups)

    def describe(self) -> str:
        parts = sorted(self.users) + [f"group:{g}" for g in sorted(self.groups)]
        return ", ".join(parts) or "nobody"


ALL = Amount(share=1.0)
NONE = Amount(share=0.0)


def _some(a: Amount) -> bool:
    return bool(a.share) or bool(a.absolute)


def apportion(amounts: list[float], total: float) -> list[int]:
    """Whole GPUs for sibling queues whose guarantees are ``amounts`` (fractions of GPUs),
    by largest remainder: each gets its whole part, and the GPUs that the fractions add up
    to go to the largest fractions (a 2% queue on 46 GPUs gets 1, not 0), never more in all
    than ``total`` or than the amounts add up to."""
    whole = [math.floor(round(a, 6)) for a in amounts]
    spare = min(math.floor(round(sum(amounts), 6)), math.floor(total)) - sum(whole)
    by_remainder = sorted(range(len(amounts)), key=lambda i: (whole[i] - amounts[i], i))
    for i in by_remainder[: max(0, spare)]:
        whole[i] += 1
    return whole


@dataclass(frozen=True)
class Queue:
    path: str
    guaranteed: Capacity
    maximum: Capacity
    user_limit: Resources | None = None  # absolute caps per user (None: no cap)
    user_limit_share: float = 1.0  # of the queue's maximum, per user
    submit_acl: Acl = Acl()
    admin_acl: Acl = Acl(users=frozenset())
    preemptible: bool = True
    ordering: str = "backfill"
    levels_gpu_h: tuple[float, ...] = DEFAULT_LEVELS_GPU_H  # las only
    promote_after_s: float | None = DEFAULT_PROMOTE_AFTER_S  # las / srtf; None: never
    promote_factor: float | None = DEFAULT_PROMOTE_FACTOR  # las / srtf; None: no such rule
    reserve_after_s: float | None = DEFAULT_RESERVE_AFTER_S  # not fifo; None: never
    max_pending: int | None = None  # apps waiting in it (and its children) at once; None: no cap
    runtimes: frozenset[str] | None = None  # runtimes its apps may use; None: its parent's
    children: tuple[Queue, ...] = ()

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def walk(self) -> Iterator[Queue]:
        yield self
        for c in self.children:
            yield from c.walk()


@dataclass(frozen=True)
class Limits:
    """A queue's capacities, made absolute for one cluster size."""

    guaranteed: Resources
    maximum: Resources
    # (gpus, cpus, memory): whether the queue is guaranteed some of it. A queue guaranteed
    # {gpus: 50%} only may use CPUs and memory without being over its guarantee; a queue
    # guaranteed 2% of 10 GPUs (rounded to 0) is over it as soon as it holds one.
    guarded: tuple[bool, bool, bool] = (True, True, True)

    def over(self, used: Resources) -> bool:
        """Whether ``used`` is more than the guarantee, on a resource the queue is guaranteed
        some of (with no guarantee at all: as soon as it uses anything)."""
        return self.over_amounts(used.cpus, used.memory_mb, used.gpus)

    def over_amounts(self, cpus: float, memory_mb: float, gpus: float) -> bool:
        """``over`` of a use given as its three amounts."""
        g, (on_gpus, on_cpus, on_memory) = self.guaranteed, self.guarded
        if not (on_gpus or on_cpus or on_memory):
            return gpus > 1e-9 or cpus > 1e-9 or memory_mb > 1e-9
        return bool(
            (on_gpus and gpus > g.gpus + 1e-9)
            or (on_cpus and cpus > g.cpus + 1e-9)
            or (on_memory and memory_mb > g.memory_mb + 1e-9)
        )


@dataclass(frozen=True)
class TypeLimits:
    """A queue's capacities in GPUs of each model, made absolute for one cluster: only the
    models it (or, for maxima, an ancestor) names; others are bound by its GPU capacity only."""

    guaranteed: Mapping[str, float]
    maximum: Mapping[str, float]


@dataclass(frozen=True)
class QueueTree:
    root: Queue
    preemption: bool = False
    preemption_grace_s: float = 30.0
    source: str = "built-in default"
    # a queue under its guarantee may preempt for an app that takes it past its guarantee,
    # from queues left further over theirs (``preemption.past_guarantee``)
    preempt_past_guarantee: bool = True
    _resolved: dict[Resources, dict[str, Limits]] = field(
        default_factory=dict, compare=False, repr=False
    )
    _chains: dict[str, list[str]] = field(default_factory=dict, compare=False, repr=False)

    @cached_property
    def by_path(self) -> dict[str, Queue]:
        return {q.path: q for q in self.root.walk()}

    @cached_property
    def typed(self) -> bool:
        """Whether any queue guarantees or caps GPUs of a model."""
        return any(q.guaranteed.gpu_types or q.maximum.gpu_types for q in self.root.walk())

    def resolve_types(self, totals: Mapping[str, float]) -> dict[str, TypeLimits]:
        """Per queue, its guaranteed and maximum GPUs of each model named in the tree, for a
        cluster with ``totals`` GPUs of each model (models match whatever their case). A
        guarantee is a share (or number) of the parent's guarantee of that model (the root's:
        every GPU of it); a maximum, of the parent's maximum, and never above it."""
        by_fold = {m.casefold(): m for m in totals}

        def named(pairs: tuple[tuple[str, Amount], ...]) -> dict[str, Amount]:
            return {by_fold.get(m.casefold(), m): a for m, a in pairs}

        out: dict[str, TypeLimits] = {}

        def visit(q: Queue, parent: TypeLimits) -> None:
            own_g, own_m = named(q.guaranteed.gpu_types), named(q.maximum.gpu_types)
            g = {m: a.of(parent.guaranteed.get(m, 0.0)) for m, a in own_g.items()}
            m_caps = dict(parent.maximum)
            for m, a in own_m.items():
                cap = a.of(parent.maximum.get(m, totals.get(m, 0.0)))
                m_caps[m] = min(cap, m_caps.get(m, cap))
            for m, amount in g.items():
                if m in m_caps:
                    m_caps[m] = max(m_caps[m], amount)
            out[q.path] = TypeLimits(g, m_caps)
            for c in q.children:
                visit(c, out[q.path])

        everything = {m: float(n) for m, n in totals.items()}
        out[self.root.path] = TypeLimits(everything, {})
        for child in self.root.children:
            visit(child, out[self.root.path])
        return out

    @cached_property
    def leaves(self) -> tuple[Queue, ...]:
        return tuple(q for q in self.root.walk() if q.is_leaf)

    def ancestors(self, path: str) -> list[str]:
        """``root.a.b`` -> ``[root.a.b, root.a, root]`` (the queue itself first)."""
        chain = self._chains.get(path)
        if chain is None:
            parts = path.split(".")
            chain = self._chains[path] = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
        return chain

    def runtimes(self, path: str) -> frozenset[str] | None:
        """The runtimes apps of queue ``path`` may use: the nearest ``runtimes`` set on it or
        an ancestor; None when none is set (any the cluster allows)."""
        for p in self.ancestors(path):
            q = self.by_path.get(p)
            if q is not None and q.runtimes is not None:
                return q.runtimes
        return None

    def leaf(self, name: str) -> Queue:
        """The leaf queue ``name`` refers to: a full path, a path without ``root.``, or a
        unique leaf name. Raises QueueConfigError naming the queues that exist."""
        for candidate in (name, f"{ROOT}.{name}"):
            q = self.by_path.get(candidate)
            if q is not None:
                if not q.is_leaf:
                    raise QueueConfigError(
                        f"queue {q.path} has child queues; submit to one of: "
                        + ", ".join(c.path for c in q.walk() if c.is_leaf)
                    )
                return q
        matches = [q for q in self.leaves if q.name == name]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise QueueConfigError(
                f"queue name {name!r} is ambiguous: " + ", ".join(q.path for q in matches)
            )
        raise QueueConfigError(
            f"no queue {name!r}; queues: " + ", ".join(q.path for q in self.leaves)
        )

    def resolve(self, total: Resources) -> dict[str, Limits]:
        """Absolute guaranteed / maximum capacity of every queue for a cluster of ``total``."""
        cached = self._resolved.get(total)
        if cached is not None:
            return cached
        out: dict[str, Limits] = {}

        def visit(q: Queue, parent: Limits, gpus: int | None) -> None:
            g = q.guaranteed.of(parent.guaranteed)
            if gpus is not None:
                g = Resources(g.cpus, g.memory_mb, gpus)
            m = q.maximum.of(parent.maximum)
            m = Resources(max(m.cpus, g.cpus), max(m.memory_mb, g.memory_mb), max(m.gpus, g.gpus))
            asked = q.guaranteed
            guarded = (_some(asked.gpus), _some(asked.cpus), _some(asked.memory))
            out[q.path] = Limits(g, m, guarded)
            own = out[q.path].guaranteed.gpus
            fair = apportion([c.guaranteed.gpus.of(own) for c in q.children], own)
            for c, share in zip(q.children, fair, strict=True):
                visit(c, out[q.path], share)

        visit(self.root, Limits(total, total), None)
        out[self.root.path] = Limits(total, total)
        self._resolved[total] = out
        return out

    def administers(self, path: str, user: str, groups: frozenset[str] = frozenset()) -> bool:
        """Whether ``user`` is an admin of queue ``path`` or of one of its ancestors."""
        return any(
            p in self.by_path and self.by_path[p].admin_acl.allows(user, groups)
            for p in self.ancestors(path)
        )

    def administered_by(self, user: str, groups: frozenset[str] = frozenset()) -> list[str]:
        """The leaf queues ``user`` administers."""
        return [q.path for q in self.leaves if self.administers(q.path, user, groups)]

    def user_cap(self, path: str, maximum: Resources) -> Resources:
        """What one user may hold at once in leaf ``path``."""
        q = self.by_path[path]
        share = q.user_limit_share
        cap = Resources(
            maximum.cpus * share, int(maximum.memory_mb * share), int(maximum.gpus * share)
        )
        if q.user_limit is not None:
            ul = q.user_limit
            cap = Resources(
                min(cap.cpus, ul.cpus), min(cap.memory_mb, ul.memory_mb), min(cap.gpus, ul.gpus)
            )
        return cap


DEFAULT_TREE = QueueTree(
    root=Queue(
        path=ROOT,
        guaranteed=Capacity(ALL, ALL, ALL),
        maximum=Capacity(ALL, ALL, ALL),
        children=(
            Queue(
                path=f"{ROOT}.default",
                guaranteed=Capacity(ALL, ALL, ALL),
                maximum=Capacity(ALL, ALL, ALL),
            ),
        ),
    )
)


# -- parsing ----------------------------------------------------------------------------------


def parse_tree(data: Any, source: str = "queues.yaml") -> QueueTree:
    """Build and validate a tree from its YAML form; every problem is reported at once."""
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise QueueConfigError(f"{source}: must be a mapping with a 'queues' key")
    unknown = set(data) - {"queues", "preemption"}
    if unknown:
        problems.append(f"unknown top-level key(s) {sorted(unknown)}; valid: preemption, queues")
    pre = data.get("preemption") or {}
    enabled, grace, past = False, 30.0, True
    if not isinstance(pre, Mapping) or set(pre) - {"enabled", "grace_s", "past_guarantee"}:
        problems.append("preemption must be a mapping with keys enabled, grace_s, past_guarantee")
    else:
        enabled = bool(pre.get("enabled", False))
        past = pre.get("past_guarantee", True)
        if not isinstance(past, bool):
            problems.append(f"preemption.past_guarantee must be true or false, not {past!r}")
        try:
            grace = float(pre.get("grace_s", 30.0))
            if grace < 0:
                raise ValueError
        except (TypeError, ValueError):
            problems.append(
                f"preemption.grace_s must be a number of seconds >= 0, not {pre.get('grace_s')!r}"
            )
    queues = data.get("queues")
    if not isinstance(queues, Mapping) or not queues:
        problems.append("queues must map queue names to their settings, with at least one queue")
        raise QueueConfigError(f"{source}: " + "; ".join(problems))
    children = tuple(
        _parse_queue(f"{ROOT}.{name}", spec, problems) for name, spec in queues.items()
    )
    root = Queue(
        path=ROOT,
        guaranteed=Capacity(ALL, ALL, ALL),
        maximum=Capacity(ALL, ALL, ALL),
        children=children,
    )
    _check_sums(root, problems)
    if problems:
        raise QueueConfigError(f"{source}: " + "; ".join(problems))
    return QueueTree(
        root=root,
        preemption=enabled,
        preemption_grace_s=grace,
        source=source,
        preempt_past_guarantee=past,
    )


def _parse_queue(path: str, spec: Any, problems: list[str]) -> Queue:
    name = path.rsplit(".", 1)[-1]
    if not _NAME_RE.match(str(name)):
        problems.append(f"queue name {name!r} must be 1-64 letters, digits, '_' or '-'")
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        problems.append(f"{path}: settings must be a mapping")
        spec = {}
    unknown = set(spec) - set(QUEUE_KEYS)
    if unknown:
        problems.append(
            f"{path}: unknown key(s) {sorted(unknown)}; valid keys: {', '.join(QUEUE_KEYS)}"
        )
    guaranteed = _capacity(path, "guaranteed", spec.get("guaranteed"), NONE, problems)
    maximum = _capacity(path, "maximum", spec.get("maximum"), ALL, problems)
    caps = dict(maximum.gpu_types)
    pairs = [(k, getattr(guaranteed, k), getattr(maximum, k)) for k in RESOURCE_KEYS] + [
        (f"gpu_types.{t}", a, caps[t]) for t, a in guaranteed.gpu_types if t in caps
    ]
    for key, g, m in pairs:
        if g.share is not None and m.share is not None and g.share > m.share:
            problems.append(
                f"{path}: guaranteed {key} {g.describe()} is over its maximum {m.describe()}"
            )
        if g.absolute is not None and m.absolute is not None and g.absolute > m.absolute:
            problems.append(
                f"{path}: guaranteed {key} {g.describe()} is over its maximum {m.describe()}"
            )
    user_limit = None
    if spec.get("user_limit") is not None:
        ul = spec["user_limit"]
        if not isinstance(ul, Mapping) or set(ul) - set(RESOURCE_KEYS):
            problems.append(
                f"{path}: user_limit must map some of {RESOURCE_KEYS} to absolute amounts"
            )
        else:
            big = 1e18
            user_limit = Resources(
                cpus=_absolute(path, "user_limit.cpus", ul.get("cpus"), big, problems),
                memory_mb=int(
                    _absolute(
                        path, "user_limit.memory", ul.get("memory"), big, problems, memory=True
                    )
                ),
                gpus=int(_absolute(path, "user_limit.gpus", ul.get("gpus"), big, problems)),
            )
    share = 1.0
    if spec.get("user_limit_share") is not None:
        amount = _amount(path, "user_limit_share", spec["user_limit_share"], problems)
        if amount.share is None:
            problems.append(f"{path}: user_limit_share must be a share such as 50%")
        else:
            share = amount.share
    ordering = str(spec.get("ordering", "backfill"))
    if ordering not in ORDERINGS:
        problems.append(f"{path}: ordering must be one of {', '.join(ORDERINGS)}, not {ordering!r}")
    levels = _levels(path, spec.get("levels"), problems)
    promote_after = _duration(path, "promote_after", spec, DEFAULT_PROMOTE_AFTER_S, problems)
    promote_factor = _factor(path, spec, problems)
    reserve_after = _duration(path, "reserve_after", spec, DEFAULT_RESERVE_AFTER_S, problems)
    max_pending = spec.get("max_pending")
    if max_pending is not None and (
        isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 0
    ):
        problems.append(f"{path}: max_pending must be a whole number >= 0, not {max_pending!r}")
        max_pending = None
    runtimes = spec.get("runtimes")
    if runtimes is not None and (
        not isinstance(runtimes, list) or not all(isinstance(r, str) for r in runtimes)
    ):
        problems.append(f"{path}: runtimes must be a list such as [docker], not {runtimes!r}")
        runtimes = None
    children_spec = spec.get("children") or {}
    if not isinstance(children_spec, Mapping):
        problems.append(f"{path}: children must map names to queue settings")
        children_spec = {}
    children = tuple(_parse_queue(f"{path}.{n}", s, problems) for n, s in children_spec.items())
    return Queue(
        path=path,
        guaranteed=guaranteed,
        maximum=maximum,
        user_limit=user_limit,
        user_limit_share=share,
        submit_acl=_acl(path, "submit_acl", spec.get("submit_acl"), Acl(), problems),
        admin_acl=_acl(path, "admin_acl", spec.get("admin_acl"), Acl(users=frozenset()), problems),
        preemptible=bool(spec.get("preemptible", True)),
        ordering=ordering,
        levels_gpu_h=levels,
        promote_after_s=promote_after,
        promote_factor=promote_factor,
        reserve_after_s=reserve_after,
        max_pending=max_pending,
        runtimes=None if runtimes is None else frozenset(runtimes),
        children=children,
    )


def _levels(path: str, value: Any, problems: list[str]) -> tuple[float, ...]:
    """``levels: [1, 10]``: attained GPU-hours at which a las job drops a level, increasing."""
    if value is None:
        return DEFAULT_LEVELS_GPU_H
    ok = isinstance(value, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in value
    )
    if not ok or list(value) != sorted(set(value)):
        problems.append(
            f"{path}: levels must be increasing GPU-hour amounts such as [1, 10], not {value!r}"
        )
        return DEFAULT_LEVELS_GPU_H
    return tuple(float(v) for v in value)


def _factor(path: str, spec: Mapping[str, Any], problems: list[str]) -> float | None:
    """``promote_factor: 4`` (a positive number), or ``never``."""
    value = spec.get("promote_factor", DEFAULT_PROMOTE_FACTOR)
    if value is None or value == "never":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        problems.append(f"{path}: promote_factor must be a positive number or never, not {value!r}")
        return DEFAULT_PROMOTE_FACTOR
    return float(value)


def _duration(
    path: str, key: str, spec: Mapping[str, Any], default: float, problems: list[str]
) -> float | None:
    """A duration key (``30m``, ``8h``, seconds); ``never`` (or null) turns it off."""
    if key not in spec:
        return default
    value = spec[key]
    if value is None or value == "never":
        return None
    try:
        return float(parse_duration_s(value))
    except ValueError:
        problems.append(
            f"{path}: {key} must be a duration such as 30m or 8h, or never, not {value!r}"
        )
        return default


def _capacity(path: str, key: str, value: Any, default: Amount, problems: list[str]) -> Capacity:
    if value is None:
        return Capacity(default, default, default)
    if not isinstance(value, Mapping):
        a = _amount(path, key, value, problems)
        return Capacity(a, a, a)
    unknown = set(value) - set(RESOURCE_KEYS) - {"gpu_types"}
    if unknown:
        problems.append(
            f"{path}: {key} has unknown resource(s) {sorted(unknown)}; "
            "valid: gpus, cpus, memory, gpu_types"
        )
    gpus, cpus, memory = (
        _amount(path, f"{key}.{r}", value[r], problems, memory=r == "memory")
        if r in value
        else default
        for r in RESOURCE_KEYS
    )
    return Capacity(gpus, cpus, memory, _gpu_types(path, key, value.get("gpu_types"), problems))


def _gpu_types(
    path: str, key: str, value: Any, problems: list[str]
) -> tuple[tuple[str, Amount], ...]:
    """``gpu_types: {A100: 8, H100: 50%}``: GPUs of each model, a number or a share."""
    if value is None:
        return ()
    if not isinstance(value, Mapping) or not value:
        problems.append(
            f"{path}: {key}.gpu_types must map GPU models to amounts "
            "(such as {A100: 8, H100: 50%})"
        )
        return ()
    out = []
    seen: set[str] = set()
    for model, amount in value.items():
        name = str(model).strip()
        if not _MODEL_RE.match(name):
            problems.append(
                f"{path}: {key}.gpu_types: {model!r} is not a GPU model name (such as A100, H100)"
            )
            continue
        if name.casefold() in seen:
            problems.append(f"{path}: {key}.gpu_types names {name} twice")
            continue
        seen.add(name.casefold())
        out.append((name, _amount(path, f"{key}.gpu_types.{name}", amount, problems)))
    return tuple(sorted(out))


def _amount(path: str, key: str, value: Any, problems: list[str], memory: bool = False) -> Amount:
    text = str(value).strip()
    if text.endswith("%"):
        try:
            share = float(text[:-1]) / 100
        except ValueError:
            share = -1.0
        if not 0 <= share <= 1:
            problems.append(f"{path}: {key} {text!r} must be a share between 0% and 100%")
            return NONE
        return Amount(share=share)
    return Amount(absolute=_absolute(path, key, value, 0.0, problems, memory))


def _absolute(
    path: str, key: str, value: Any, default: float, problems: list[str], memory: bool = False
) -> float:
    if value is None:
        return default
    if memory and not isinstance(value, int | float):
        size = memory_size(str(value))
        if size is not None and size[2] != "I":  # no Kubernetes "Gi" here
            return size[0] * MIB_PER_UNIT[size[1]]
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if number < 0 or isinstance(value, bool):
        problems.append(
            f"{path}: {key} must be a non-negative amount or a share like 50%, not {value!r}"
        )
        return default
    return number


def _acl(path: str, key: str, value: Any, default: Acl, problems: list[str]) -> Acl:
    if value is None:
        return default
    if not isinstance(value, Mapping) or set(value) - {"users", "groups"}:
        problems.append(f"{path}: {key} must be a mapping with users and/or groups lists")
        return default
    users, groups = value.get("users") or [], value.get("groups") or []
    if not isinstance(users, list) or not isinstance(groups, list):
        problems.append(f"{path}: {key} users and groups must be lists")
        return default
    return Acl(users=frozenset(map(str, users)), groups=frozenset(map(str, groups)))


def _check_sums(q: Queue, problems: list[str]) -> None:
    """Children's guaranteed shares must fit in their parent's guarantee."""
    for key in RESOURCE_KEYS:
        shares = [getattr(c.guaranteed, key).share for c in q.children]
        total = sum(s for s in shares if s is not None)
        if total > 1.0 + 1e-9:
            problems.append(
                f"{q.path}: the children's guaranteed {key} add up to {total * 100:g}% (over 100%)"
            )
    by_model: dict[str, float] = {}
    names: dict[str, str] = {}
    for c in q.children:
        for model, amount in c.guaranteed.gpu_types:
            if amount.share is not None:
                name = names.setdefault(model.casefold(), model)
                by_model[name] = by_model.get(name, 0.0) + amount.share
    for model, total in sorted(by_model.items()):
        if total > 1.0 + 1e-9:
            problems.append(
                f"{q.path}: the children's guaranteed {model} GPUs add up to {total * 100:g}% "
                "(over 100%)"
            )
    for c in q.children:
        _check_sums(c, problems)
