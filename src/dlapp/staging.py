"""Stage data in and out of an app's workspace, through fsspec stores (see ``stores``).

Inputs (files, directories, globs) are streamed into ``workspace/<path>`` in chunks before the
app starts, each file retried a few times on transient errors; remote files go through the
node-local cache (``cache``). Progress and throughput go to the container's stderr log as
``[dlapp] ...`` lines. Outputs are committed by ``commit`` after the app exits: a reader never
sees half an output (see docs/data.md for what that means on each store).

Submit calls ``check_urls`` and ``check_outputs_writable``; the supervisor calls ``stage_in``
and ``stage_out`` on the node. Both check the URL policy.
"""

from __future__ import annotations

import glob
import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from dlapp import commit
from dlapp.cache import InputCache, Outcome, Tally, version_of
from dlapp.errors import DataError, OutputExistsError
from dlapp.spec import AppSpec, DataBinding
from dlapp.stores import DataConfig, Location, inside_roots, open_location, retrying

Progress = Callable[[str], None]
CHUNK = 4 * 1024 * 1024
REPORT_EVERY_S = 5.0


def check_urls(spec: AppSpec, *, config: DataConfig | None = None) -> None:
    """Refuse at submit what staging could not do, naming the URL and the reason."""
    config = config or DataConfig()
    problems: list[str] = []
    for kind, bindings in (("input", spec.inputs), ("output", spec.outputs)):
        for b in bindings:
            try:
                with closing(open_location(b.url, config)) as loc:
                    if kind == "input" and not _exists(loc):
                        problems.append(f"input {b.url}: nothing exists there")
            except DataError as exc:
                problems.append(f"{kind} {exc}")
            except Exception as exc:  # a store's own error: say which URL
                problems.append(f"{kind} {b.url}: cannot be read: {type(exc).__name__}: {exc}")
    if problems:
        raise DataError("; ".join(problems))


def check_outputs_writable(spec: AppSpec, *, config: DataConfig | None = None) -> None:
    """``overwrite: false`` with an existing output is refused before the app runs."""
    config = config or DataConfig()
    for b in spec.outputs:
        if b.overwrite:
            continue
        with closing(open_location(b.url, config)) as loc:
            exists = loc.fs.exists(loc.path)
        if exists:
            raise OutputExistsError(
                f"output {b.url} already exists and overwrite is false "
                "(set overwrite: true, or choose another url)"
            )


# -- inputs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    path: str  # on the store
    rel: str  # under the binding's workspace path
    info: dict[str, Any]

    @property
    def size(self) -> int:
        return int(self.info.get("size") or 0)


def _exists(loc: Location) -> bool:
    """Something is there, without listing a whole tree (submit waits for this)."""
    if glob.has_magic(loc.path):
        return bool(loc.fs.glob(loc.path))
    return bool(loc.fs.exists(loc.path))


def _matches(loc: Location) -> list[_Source]:
    """Every file an input URL names: a file, a directory's files, or a glob's matches."""
    fs, path = loc.fs, loc.path
    if glob.has_magic(path):
        found: dict[str, dict[str, Any]] = fs.glob(path, detail=True)
        out: list[_Source] = []
        for name, info in sorted(found.items()):
            base = name.rstrip("/").rsplit("/", 1)[-1]
            if info.get("type") == "directory":
                out += _tree(fs, name, base)
            else:
                out.append(_Source(name, base, info))
        return out
    if not fs.exists(path):
        return []
    if fs.isdir(path):
        return _tree(fs, path, "")
    info = fs.info(path)
    return [_Source(path, path.rstrip("/").rsplit("/", 1)[-1], info)]


def _tree(fs: Any, root: str, prefix: str) -> list[_Source]:
    if isinstance(fs, LocalFileSystem):
        return _local_tree(root, prefix)
    found: dict[str, dict[str, Any]] = fs.find(root, detail=True)
    root = root.rstrip("/")
    out = []
    for name, info in sorted(found.items()):
        rel = name[len(root) :].lstrip("/")
        if rel and info.get("type") != "directory":
            out.append(_Source(name, f"{prefix}/{rel}" if prefix else rel, info))
    return out


def _local_tree(root: str, prefix: str) -> list[_Source]:
    """A local directory's files, with ``scandir`` (one ``stat`` each, no more): links to
    files and directories are followed, as a plain copy would."""
    out: list[_Source] = []
    stack = [(root.rstrip("/") or "/", prefix)]
    seen: set[tuple[int, int]] = set()
    while stack:
        path, rel = stack.pop()
        st = os.stat(path)
        if (st.st_dev, st.st_ino) in seen:  # a link loop
            continue
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(path) as entries:
            for e in entries:
                name = f"{rel}/{e.name}" if rel else e.name
                try:
                    if e.is_dir():
                        stack.append((e.path, name))
                    elif e.is_file():
                        out.append(_Source(e.path, name, {"size": e.stat().st_size}))
                except OSError:  # a dangling link
                    continue
    return sorted(out, key=lambda s: s.rel)


@dataclass
class Meter:
    """Bytes moved for one binding; a progress line every ``REPORT_EVERY_S``."""

    label: str
    total: int
    progress: Progress | None
    clock: Callable[[], float] = time.monotonic
    done: int = 0
    started: float = field(init=False)
    _last: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self._last = self.clock()

    def add(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if self.progress and now - self._last >= REPORT_EVERY_S:
            self._last = now
            self.progress(f"{self.label}: {_mb(self.done)}/{_mb(self.total)} ({self.rate()})")

    def rate(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-6)
        return f"{self.done / elapsed / 1e6:.1f} MB/s"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def stage_in(
    bindings: Sequence[DataBinding],
    workspace: Path,
    progress: Progress | None = None,
    *,
    config: DataConfig | None = None,
) -> int:
    """Copy every input into ``workspace/<path>``; returns bytes copied."""
    config = config or DataConfig()
    cache = (
        InputCache(Path(config.cache_dir), config.cache_max_bytes)
        if config.cache_dir and config.cache_max_bytes > 0
        else None
    )
    total = 0
    for b in bindings:
        dest = workspace / b.path
        if not _inside(workspace, dest):
            raise DataError(f"input path {b.path!r} leaves the workspace")
        with closing(open_location(b.url, config)) as loc:
            total += _stage_in_one(b, loc, dest, progress, config, cache)
    return total


def _stage_in_one(
    b: DataBinding,
    loc: Location,
    dest: Path,
    progress: Progress | None,
    config: DataConfig,
    cache: InputCache | None,
) -> int:
    sources = _matches(loc)
    if not sources:
        raise DataError(f"input {b.url}: nothing exists there")
    if loc.is_local:
        sources = _within_roots(sources, config, progress, b.url)
    meter = Meter(f"input {b.url} -> {b.path}", sum(s.size for s in sources), progress)
    if progress:
        progress(f"{meter.label}: {len(sources)} files, {_mb(meter.total)}")
    tally = Tally()
    dest.mkdir(parents=True, exist_ok=True)
    made = {dest}
    for s in sources:
        rel = PurePosixPath(s.rel)
        if rel.is_absolute() or ".." in rel.parts:  # dest itself was checked above
            raise DataError(f"input {b.url}: {s.rel!r} would land outside the workspace")
        target = dest / rel
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        outcome = _fetch_one(loc, s, target, meter, cache)
        tally.add(outcome, s.size)
        if outcome is Outcome.HIT:
            meter.add(s.size)
    if progress:
        took = meter.clock() - meter.started
        summary = f"{_mb(meter.done)} in {took:.1f}s ({meter.rate()})"
        progress(f"{meter.label}: {summary}" + ("" if loc.is_local else f"; {tally}"))
    return meter.done


def _within_roots(
    sources: list[_Source], config: DataConfig, progress: Progress | None, url: str
) -> list[_Source]:
    """Local files reached through links that leave the allowed roots are skipped."""
    if config.file_roots is None:
        return sources
    kept = [s for s in sources if inside_roots(s.path, config.file_roots)]
    if progress and len(kept) < len(sources):
        progress(f"input {url}: skipped {len(sources) - len(kept)} links leading outside")
    return kept


def _fetch_one(
    loc: Location, s: _Source, target: Path, meter: Meter, cache: InputCache | None
) -> Outcome:
    def download(path: Path) -> None:
        retrying(lambda: _stream(loc, s.path, path, meter))

    if loc.is_local or cache is None:
        download(target)
        return Outcome.BYPASSED
    return cache.fetch(f"{loc.protocol}://{s.path}", version_of(s.info), s.size, download, target)


def _stream(loc: Location, src: str, dest: Path, meter: Meter) -> None:
    """Copy one file in chunks; a failed try takes its bytes back from the meter."""
    moved = 0
    try:
        if loc.is_local:
            shutil.copyfile(src, dest)  # sendfile: streamed by the kernel
            moved = os.path.getsize(dest)
            meter.add(moved)
            return
        with loc.fs.open(src, "rb", block_size=CHUNK) as f, dest.open("wb") as out:
            if hasattr(f, "prefetch"):  # paramiko: pipeline the reads
                f.prefetch()
            while chunk := f.read(CHUNK):
                out.write(chunk)
                moved += len(chunk)
                meter.add(len(chunk))
    except BaseException:
        meter.done -= moved
        raise


def _inside(root: Path, target: Path) -> bool:
    try:
        target.resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return False
    return True


# -- outputs ----------------------------------------------------------------------------------


def stage_out(
    bindings: Sequence[DataBinding],
    workspace: Path,
    progress: Progress | None = None,
    *,
    config: DataConfig | None = None,
    failed_app_id: str | None = None,
) -> int:
    """Commit each output; returns bytes written.

    With ``failed_app_id``, the app failed: each output with ``save_on_failure`` goes to
    ``<url>.failed-<app_id>`` (replacing an earlier one), and a missing output is skipped.
    """
    config = config or DataConfig()
    total = 0
    for b in bindings:
        url, overwrite = b.url, b.overwrite
        if failed_app_id is not None:
            if not b.save_on_failure:
                continue
            url, overwrite = failed_url(b.url, failed_app_id), True
        src = workspace / b.path
        if not (src.exists() or src.is_symlink()) or not _inside(workspace, src.parent):
            if failed_app_id is not None:
                continue
            raise DataError(f"output path {b.path!r} was not produced by the app")
        files, skipped = commit.output_files(src, workspace)
        for why in skipped:
            if progress:
                progress(f"output {b.path}: skipped {why}")
        started = time.monotonic()
        with closing(open_location(url, config)) as loc:
            written = commit.commit(loc, files, single=src.is_file(), overwrite=overwrite)
        total += written
        if progress:
            took = max(time.monotonic() - started, 1e-6)
            progress(
                f"output {b.path} -> {url}: {_mb(written)} in {took:.1f}s "
                f"({written / took / 1e6:.1f} MB/s)"
            )
    return total


def failed_url(url: str, app_id: str) -> str:
    return f"{url.rstrip('/')}.failed-{app_id}"
