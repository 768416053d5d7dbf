"""An app's logs as the API serves them: a byte range, the first or the last lines, the whole
log, a follow; and the kept logs, appended to while the app runs.

A container's log is read from its supervisor while it runs (``Executor.read_log``), then from
the artifact store (``contract.log_dir``). The kept log grows while the container runs: the
supervisors' shipments (``Supervisor.ship``, taken by the scheduler loop every
``log_ship_interval_s``) are appended to it, and the supervisor copies the log whole when the
container ends. A node lost mid-run thus keeps what its containers wrote up to their last
shipment, and the logs of earlier attempts (before a preemption or a requeue) stay under their
attempt's number.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
from sqlalchemy.orm import Session

from dlapp.contract import STREAMS, Shipment, log_dir
from dlapp.errors import NotFoundError
from dlapp.executor.base import UsageKey
from dlapp.server.context import Context
from dlapp.status import AppState, ContainerState
from dlapp.store import repo
from dlapp.store.models import App

logger = logging.getLogger(__name__)
STEP = 64 * 1024  # the first window read from either end when looking for whole lines
CHUNK = 1024 * 1024  # a download's or a follow's reads


@dataclass(frozen=True)
class LogChunk:
    data: bytes
    offset: int  # where ``data`` starts in the log
    next_offset: int  # where it ends
    size: int | None  # the log's size when it was read (None: not asked)
    complete: bool  # the container has ended and nothing is left after ``next_offset``


class LogSource:
    """One stream of one container of one attempt: live from its supervisor while it runs,
    else (and for an earlier attempt, always) the kept log."""

    def __init__(
        self, ctx: Context, app: App, attempt: int, index: int, stream: str, ended: bool
    ) -> None:
        self.ctx = ctx
        self.app_id, self.attempt, self.index, self.stream = app.id, attempt, index, stream
        self.ended = ended
        self.live = not ended and attempt == app.attempt
        self.kept = log_dir(str(ctx.settings.artifacts), app.id, attempt, index) / stream

    @property
    def filename(self) -> str:
        return f"{self.app_id}.attempt-{self.attempt}.container-{self.index}.{self.stream}.log"

    def read(self, offset: int, length: int) -> bytes:
        if self.live:
            data = self.ctx.executor.read_log(self.app_id, self.index, self.stream, offset, length)
            if data is not None:
                return data
        try:
            with self.kept.open("rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            return b""

    def size(self) -> int:
        if self.live:
            size = self.ctx.executor.log_size(self.app_id, self.index, self.stream)
            if size is not None:
                return size
        try:
            return self.kept.stat().st_size
        except FileNotFoundError:
            return 0


def open_log(
    ctx: Context, session: Session, app: App, index: int, stream: str, attempt: int | None = None
) -> LogSource:
    """The log of container ``index`` of ``attempt`` (the current one when None); refuses, with
    what there is, a stream, a container or an attempt the app does not have."""
    if stream not in STREAMS:
        raise NotFoundError(f"no log stream {stream!r}; use one of {', '.join(STREAMS)}")
    if not 0 <= index < app.num_containers:
        raise NotFoundError(f"{app.id} has containers 0..{app.num_containers - 1}, not {index}")
    if attempt is not None and not 1 <= attempt <= app.attempt:
        if app.attempt == 0:
            raise NotFoundError(f"{app.id} has not run yet: it has no attempt {attempt}")
        raise NotFoundError(f"{app.id} has attempts 1..{app.attempt}, not {attempt}")
    if attempt is None or attempt == app.attempt:
        containers = {c.index: c for c in repo.current_containers(session, app)}
        container = containers.get(index)
        ended = AppState(app.state).is_terminal() or (
            container is not None and ContainerState(container.state).is_terminal()
        )
        return LogSource(ctx, app, app.attempt, index, stream, ended)
    return LogSource(ctx, app, attempt, index, stream, ended=True)  # an earlier attempt


def read_range(src: LogSource, offset: int, length: int, sized: bool = False) -> LogChunk:
    """``length`` bytes from ``offset``, as they are (``sized``: with the log's size)."""
    data = src.read(offset, length)
    size = src.size() if sized else None
    return LogChunk(data, offset, offset + len(data), size, src.ended and len(data) < length)


def tail(src: LogSource, lines: int, max_bytes: int) -> LogChunk:
    """The last ``lines`` lines, whole: from a line's start to the end of the log (a last line
    still being written included), in at most ``max_bytes``. A single line longer than
    ``max_bytes`` is the one thing cut inside a line."""
    size = src.size()
    window = min(size, STEP, max_bytes)
    while True:
        start = size - window
        data = src.read(start, window)
        begin = _tail_start(data, lines, whole=start == 0)
        if begin is not None or window >= min(size, max_bytes):
            break
        window = min(size, max_bytes, window * 4)
    if begin is None:  # fewer lines than asked fit: from the first line starting in the window
        first = data.find(b"\n")
        begin = first + 1 if 0 <= first < len(data) - 1 else 0
    end = start + len(data)
    return LogChunk(data[begin:], start + begin, end, size, src.ended and end >= size)


def head(src: LogSource, lines: int, max_bytes: int) -> LogChunk:
    """The first ``lines`` lines, whole, in at most ``max_bytes`` (a single longer line is cut
    at ``max_bytes``)."""
    size = src.size()
    window = min(size, STEP, max_bytes)
    while True:
        data = src.read(0, window)
        end = _head_end(data, lines)
        if end is not None or window >= min(size, max_bytes):
            break
        window = min(size, max_bytes, window * 4)
    if end is None:  # the whole log is shorter, or its lines longer: up to the last line's end
        last = data.rfind(b"\n")
        end = len(data) if len(data) >= size or last < 0 else last + 1
    return LogChunk(data[:end], 0, end, size, src.ended and end >= size)


def _tail_start(data: bytes, lines: int, whole: bool) -> int | None:
    """Where the last ``lines`` lines of ``data`` start; None when ``data`` does not hold that
    many whole lines (and is not the whole log)."""
    pos = len(data) - 1 if data.endswith(b"\n") else len(data)
    for _ in range(lines):
        newline = data.rfind(b"\n", 0, pos)
        if newline < 0:
            return 0 if whole else None
        pos = newline
    return pos + 1


def _head_end(data: bytes, lines: int) -> int | None:
    """Where the first ``lines`` lines of ``data`` end; None when it holds fewer whole ones."""
    pos = -1
    for _ in range(lines):
        pos = data.find(b"\n", pos + 1)
        if pos < 0:
            return None
    return pos + 1


async def download(src: LogSource) -> AsyncIterator[bytes]:
    """The whole log as it is now (a running container's up to its size when asked)."""
    size = await anyio.to_thread.run_sync(src.size)
    offset = 0
    while offset < size:
        data = await anyio.to_thread.run_sync(src.read, offset, min(CHUNK, size - offset))
        if not data:
            return
        yield data
        offset += len(data)


async def follow(
    ctx: Context,
    app_id: str,
    index: int,
    stream: str,
    offset: int,
    attempt: int | None = None,
    poll_s: float = 0.3,
) -> AsyncIterator[bytes]:
    """Yield log bytes as they appear until the container has ended and all was read. Each
    read takes a worker thread for a moment; between reads the follower holds none. Without
    ``attempt``, the app's current attempt at each read (a launch follows its first one)."""
    while True:
        chunk = await anyio.to_thread.run_sync(
            _read_next, ctx, app_id, index, stream, offset, attempt
        )
        if chunk.data:
            yield chunk.data
            offset = chunk.next_offset
        if chunk.complete:
            return
        if not chunk.data:
            await anyio.sleep(poll_s)


def _read_next(
    ctx: Context, app_id: str, index: int, stream: str, offset: int, attempt: int | None
) -> LogChunk:
    with ctx.sessions() as session:
        app = repo.get_app(session, app_id)
        return read_range(open_log(ctx, session, app, index, stream, attempt), offset, CHUNK // 4)


# -- kept logs, while the app runs ---------------------------------------------------------------


def keep(artifacts: Path, key: UsageKey, shipment: Shipment) -> None:
    """Append a shipment's log bytes to the kept logs of its container, each at its offset (a
    shipment written twice, or after the supervisor's own copy, writes the same bytes)."""
    app_id, attempt, index = key
    where = log_dir(str(artifacts), app_id, attempt, index)
    for stream, (offset, data) in shipment.logs.items():
        if stream not in STREAMS:
            continue
        path = where / stream
        try:
            where.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < offset:  # an earlier shipment was lost: no hole
                    logger.warning("%s: kept log is short of offset %d; skipped", path, offset)
                    continue
                os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
        except OSError:
            logger.exception("could not keep the log %s", path)
