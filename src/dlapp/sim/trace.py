"""Job traces: a CSV of submissions read into jobs, sorted by submit time.

Columns are found by header name (case-insensitive):

- submit time, required: ``submit_time`` / ``submit`` / ``time`` in seconds, or ``timestamp``
  (an ISO date-time such as Philly's ``2017-10-09 07:01:55``); either way the simulator's
  clock starts at the first submission (time 0);
- ``duration``, required: seconds the job runs when it runs uninterrupted;
- ``num_gpus`` (or ``gpus``), required: GPUs of the whole job (a gang is made later, see
  ``dlapp.sim.cluster.split_gang``);
- ``cpus`` and ``memory`` (MiB, or an amount such as ``64G``), optional: the whole job's;
  missing means 0, so that GPUs are the only resource that binds;
- ``queue`` (or Philly's ``cluster``, its virtual cluster), optional, default ``default``;
- ``user``, optional, default ``user``.

Other columns (Philly's ``gpu_time``) are ignored.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from dlapp.errors import DlappError

SUBMIT_COLUMNS = ("submit_time", "submit", "time", "timestamp")
GPU_COLUMNS = ("num_gpus", "gpus")
QUEUE_COLUMNS = ("queue", "cluster")
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_MIB_PER_UNIT = {"": 1.0, "K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0**2}


class SimInputError(DlappError):
    """A trace, cluster description or queue file the simulator cannot use."""

    code = "invalid_sim_input"
    http_status = 400


def parse_memory_mb(value: str | float | int, what: str) -> int:
    """MiB from ``2048``, ``"64G"``, ``"512MiB"``; raises SimInputError naming ``what``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number, unit = float(value), ""
    else:
        match = _MEMORY_RE.match(str(value))
        if match is None:
            raise SimInputError(f"{what}: {value!r} is not an amount of memory (e.g. 2048, 64G)")
        number, unit = float(match.group(1)), match.group(2).upper()
    if not math.isfinite(number) or number < 0:
        raise SimInputError(f"{what}: {value!r} must be a non-negative amount of memory")
    return math.ceil(number * _MIB_PER_UNIT[unit])


@dataclass(frozen=True)
class TraceJob:
    """One job of a trace: what was asked for, when, and for how long it runs."""

    row: int  # 1-based data row in the file: names the job (job-000042)
    submit: float  # seconds since the trace's first submission
    duration: float
    gpus: int
    cpus: float = 0.0
    memory_mb: int = 0
    queue: str = "default"
    user: str = "user"

    @property
    def job_id(self) -> str:
        return f"job-{self.row:06d}"


@dataclass(frozen=True)
class Trace:
    jobs: tuple[TraceJob, ...]  # by submit time, then row
    source: str
    origin: str | None = None  # the timestamp that is time 0, when the trace gave timestamps

    def head(self, n: int) -> Trace:
        """The first ``n`` jobs by submit time (a shorter replay)."""
        return Trace(self.jobs[:n], self.source, self.origin)

    def in_queue(self, queue: str) -> Trace:
        """Every job in ``queue`` (a replay without a queue configuration)."""
        jobs = tuple(replace(j, queue=queue) for j in self.jobs)
        return Trace(jobs, self.source, self.origin)


def _column(fields: list[str], names: tuple[str, ...]) -> str | None:
    lowered = {f.strip().lower(): f for f in fields}
    for name in names:
        if name in lowered:
            return lowered[name]
    return None


def _number(text: str, what: str, row: int) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise SimInputError(f"row {row}: {what} {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise SimInputError(f"row {row}: {what} {text!r} must be a non-negative number")
    return value


def _seconds(text: str, row: int, is_timestamp: bool) -> float:
    if not is_timestamp:
        return _number(text, "submit time", row)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return _number(text, "submit time", row)  # a timestamp column holding seconds
    if when.tzinfo is None:  # naive times are read as UTC: no daylight-saving jumps
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def load_trace(path: Path) -> Trace:
    """Read ``path``; every row is checked, the first bad one is reported with its number."""
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise SimInputError(f"cannot read trace {path}: {exc.strerror or exc}") from None
    with handle:
        reader = csv.DictReader(handle)
        fields = list(reader.fieldnames or [])
        submit = _column(fields, SUBMIT_COLUMNS)
        duration = _column(fields, ("duration",))
        gpus = _column(fields, GPU_COLUMNS)
        missing = [
            f"submit time ({' / '.join(SUBMIT_COLUMNS)})" if submit is None else "",
            "duration" if duration is None else "",
            f"GPUs ({' / '.join(GPU_COLUMNS)})" if gpus is None else "",
        ]
        if submit is None or duration is None or gpus is None:
            raise SimInputError(
                f"trace {path}: missing column(s): {', '.join(m for m in missing if m)}; "
                f"found: {', '.join(fields) or 'no header'}"
            )
        cpus = _column(fields, ("cpus",))
        memory = _column(fields, ("memory", "memory_mb"))
        queue = _column(fields, QUEUE_COLUMNS)
        user = _column(fields, ("user",))
        is_timestamp = submit.strip().lower() == "timestamp"
        raw: list[tuple[float, TraceJob]] = []
        for row, rec in enumerate(reader, 1):
            when = _seconds(rec[submit] or "", row, is_timestamp)
            n_gpus = _number(rec[gpus] or "", "num_gpus", row)
            if not n_gpus.is_integer():
                raise SimInputError(f"row {row}: num_gpus {rec[gpus]!r} must be a whole number")
            job = TraceJob(
                row=row,
                submit=0.0,
                duration=_number(rec[duration] or "", "duration", row),
                gpus=int(n_gpus),
                cpus=_number(rec[cpus] or "0", "cpus", row) if cpus else 0.0,
                memory_mb=parse_memory_mb(rec[memory] or "0", f"row {row}: memory")
                if memory
                else 0,
                queue=(rec[queue] or "").strip() or "default" if queue else "default",
                user=(rec[user] or "").strip() or "user" if user else "user",
            )
            raw.append((when, job))
    if not raw:
        raise SimInputError(f"trace {path} has no jobs")
    start = min(when for when, _ in raw)
    jobs = sorted(
        (
            TraceJob(j.row, when - start, j.duration, j.gpus, j.cpus, j.memory_mb, j.queue, j.user)
            for when, j in raw
        ),
        key=lambda j: (j.submit, j.row),
    )
    origin = datetime.fromtimestamp(start, UTC).isoformat(sep=" ") if is_timestamp else None
    return Trace(tuple(jobs), str(path), origin)
