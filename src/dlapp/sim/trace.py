"""Job traces: a CSV of submissions read into jobs, sorted by submit time.

Columns are found by header name (case-insensitive):

- submit time, required: ``submit_time`` / ``submit`` / ``time`` / ``creation_time`` in
  seconds, or ``timestamp`` (an ISO date-time such as Philly's ``2017-10-09 07:01:55``); either
  way the simulator's clock starts at the first submission (time 0);
- ``duration``, required: seconds the job runs when it runs uninterrupted; or, as Alibaba's
  GPU traces write it, ``deletion_time`` (minus ``scheduled_time`` when given, else minus the
  submit time);
- ``num_gpus`` (or ``gpus``, ``num_gpu``), required: GPUs of the whole job, whole or a fraction
  of one (``0.5``; a gang is made later, see ``dlapp.sim.cluster.split_gang``); with
  ``gpu_milli`` (Alibaba's: thousandths of each GPU), a job of one GPU and ``gpu_milli`` 250
  asks for 0.25 of a GPU;
- ``cpus`` (or ``cpu_milli``, thousandths) and ``memory`` (MiB, or an amount such as ``64G``,
  ``393216Mi``; or ``memory_mib``), optional: the whole job's; missing means 0, so that GPUs
  are the only resource that binds;
- ``gpu_type`` (or Alibaba's ``gpu_spec``), optional: the GPU models the job may run on,
  separated by ``|``, spaces or commas (``V100M16|V100M32``); empty or ``nan``: any;
- ``queue`` (or Philly's ``cluster``, its virtual cluster), optional, default ``default``;
- ``user``, optional, default ``user``.

Other columns (Philly's ``gpu_time``, Alibaba's ``qos``, ``pod_phase``) are ignored.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from dlapp.errors import DlappError
from dlapp.spec import MIB_PER_UNIT, memory_size

SUBMIT_COLUMNS = ("submit_time", "submit", "time", "creation_time", "timestamp")
GPU_COLUMNS = ("num_gpus", "gpus", "num_gpu")
QUEUE_COLUMNS = ("queue", "cluster")
TYPE_COLUMNS = ("gpu_type", "gpu_spec")
GPU_MILLI = 1000
# 2048, 64G, 64GiB, 64GB, and Kubernetes' 393216Mi / 384Gi
_MODEL_SPLIT_RE = re.compile(r"[|,\s]+")


class SimInputError(DlappError):
    """A trace, cluster description or queue file the simulator cannot use."""

    code = "invalid_sim_input"
    http_status = 400


def parse_memory_mb(value: str | float | int, what: str) -> int:
    """MiB from ``2048``, ``"64G"``, ``"512MiB"``, ``"393216Mi"``, ``"384Gi"``; raises
    SimInputError naming ``what``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number, unit = float(value), ""
    else:
        size = memory_size(str(value))
        if size is None:
            raise SimInputError(
                f"{what}: {value!r} is not an amount of memory (e.g. 2048, 64G, 393216Mi)"
            )
        number, unit, _ = size
    if not math.isfinite(number) or number < 0:
        raise SimInputError(f"{what}: {value!r} must be a non-negative amount of memory")
    return math.ceil(number * MIB_PER_UNIT[unit])


@dataclass(frozen=True)
class TraceJob:
    """One job of a trace: what was asked for, when, and for how long it runs."""

    row: int  # 1-based data row in the file: names the job (job-000042)
    submit: float  # seconds since the trace's first submission
    duration: float
    gpus: float  # the whole job's: whole GPUs, or a fraction of one
    cpus: float = 0.0
    memory_mb: int = 0
    queue: str = "default"
    user: str = "user"
    gpu_types: tuple[str, ...] = ()  # GPU models it may run on; empty: any

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


def _gpus(text: str | None, milli: str | None, row: int) -> float:
    """The job's GPUs: whole, or a fraction of one (``0.5``, or one GPU at ``gpu_milli``)."""
    n = _number(text or "", "num_gpus", row)
    if milli is not None and (milli or "").strip() and n > 0:
        per_gpu = _number(milli, "gpu_milli", row)
        if not 0 < per_gpu <= GPU_MILLI:
            raise SimInputError(f"row {row}: gpu_milli {milli!r} must be from 1 to {GPU_MILLI}")
        if per_gpu < GPU_MILLI:
            if n != 1:
                raise SimInputError(
                    f"row {row}: gpu_milli {milli!r} with {text} GPUs: a fraction is of one GPU"
                )
            return round(per_gpu / GPU_MILLI, 3)
    if n > 1 and not n.is_integer():
        raise SimInputError(
            f"row {row}: num_gpus {text!r}: a fraction must be below 1 (one shared GPU); "
            "more than one GPU must be a whole number"
        )
    if 0 < n < 1:
        if abs(n * GPU_MILLI - round(n * GPU_MILLI)) > 1e-6:
            raise SimInputError(
                f"row {row}: num_gpus {text!r}: a fraction of a GPU is given in thousandths"
            )
        return round(n, 3)
    return int(n)


def _cpus(rec: dict[str, str], cpus: str | None, cpu_milli: str | None, row: int) -> float:
    if cpus:
        return _number(rec[cpus] or "0", "cpus", row)
    if cpu_milli:
        return _number(rec[cpu_milli] or "0", "cpu_milli", row) / 1000
    return 0.0


def _models(text: str | None) -> tuple[str, ...]:
    """``V100M16|V100M32`` -> (V100M16, V100M32); empty or ``nan``: any model."""
    words = [w for w in _MODEL_SPLIT_RE.split((text or "").strip()) if w]
    if not words or [w.lower() for w in words] == ["nan"]:
        return ()
    return tuple(words)


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
        deletion = _column(fields, ("deletion_time",))
        scheduled = _column(fields, ("scheduled_time",))
        gpus = _column(fields, GPU_COLUMNS)
        missing = [
            f"submit time ({' / '.join(SUBMIT_COLUMNS)})" if submit is None else "",
            "duration (or deletion_time)" if duration is None and deletion is None else "",
            f"GPUs ({' / '.join(GPU_COLUMNS)})" if gpus is None else "",
        ]
        if submit is None or (duration is None and deletion is None) or gpus is None:
            raise SimInputError(
                f"trace {path}: missing column(s): {', '.join(m for m in missing if m)}; "
                f"found: {', '.join(fields) or 'no header'}"
            )
        cpus = _column(fields, ("cpus",))
        cpu_milli = _column(fields, ("cpu_milli",))
        memory = _column(fields, ("memory", "memory_mb", "memory_mib"))
        gpu_milli = _column(fields, ("gpu_milli",))
        types = _column(fields, TYPE_COLUMNS)
        queue = _column(fields, QUEUE_COLUMNS)
        user = _column(fields, ("user",))
        is_timestamp = submit.strip().lower() == "timestamp"
        raw: list[tuple[float, TraceJob]] = []
        for row, rec in enumerate(reader, 1):
            when = _seconds(rec[submit] or "", row, is_timestamp)
            if duration is not None:
                runs = _number(rec[duration] or "", "duration", row)
            else:
                start = when if scheduled is None else _number(rec[scheduled] or "", "start", row)
                end = _number(rec[deletion or ""] or "", "deletion_time", row)
                runs = max(0.0, end - start)
            job = TraceJob(
                row=row,
                submit=0.0,
                duration=runs,
                gpus=_gpus(rec[gpus], rec[gpu_milli] if gpu_milli else None, row),
                cpus=_cpus(rec, cpus, cpu_milli, row),
                memory_mb=parse_memory_mb(rec[memory] or "0", f"row {row}: memory")
                if memory
                else 0,
                queue=(rec[queue] or "").strip() or "default" if queue else "default",
                user=(rec[user] or "").strip() or "user" if user else "user",
                gpu_types=_models(rec[types]) if types else (),
            )
            raw.append((when, job))
    if not raw:
        raise SimInputError(f"trace {path} has no jobs")
    start = min(when for when, _ in raw)
    jobs = sorted(
        (replace(j, submit=when - start) for when, j in raw), key=lambda j: (j.submit, j.row)
    )
    origin = datetime.fromtimestamp(start, UTC).isoformat(sep=" ") if is_timestamp else None
    return Trace(tuple(jobs), str(path), origin)
