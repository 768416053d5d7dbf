"""Stage data in and out of an app's workspace, through fsspec stores (see ``locations``).

Inputs (files, directories, globs) are streamed into ``workspace/<path>`` in chunks before the
app starts, checked against the store's checksum where it gives one (``checksums``), each file
retried a few times on transient errors and checksum mismatches; remote files go through the
node-local cache (``cache``). Progress and throughput (``progress``) go to the ``progress``
callback: the supervisor writes them to the container's log and the app's events. Outputs are
committed by ``commit`` after the app exits: a reader never sees half an output (see
docs/data.md for what that means on each store).

Submit calls ``check_urls`` and ``check_outputs_writable``; the supervisor calls ``stage_in``
and ``stage_out`` on the node. Both check the URL policy.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from dlapp.data import checksums, commit
from dlapp.data.cache import InputCache, Outcome, Tally, version_of
from dlapp.data.locations import (
    RETRIES,
    DataConfig,
    Location,
    inside_roots,
    open_location,
    retrying,
    url_problem,
)
from dlapp.data.progress import Progress, TransferMeter, size
from dlapp.errors import ChecksumMismatch, DataError, OutputExistsError
from dlapp.spec import AppSpec, DataBinding

CHUNK = 4 * 1024 * 1024
# stores whose fsspec client may be called from several threads at once (s3fs and gcsfs run
# their requests on their own event loop); paramiko's SFTP client and the HDFS clients may not
# (two threads reading one SFTP channel take each other's answers and wait for ever)
CONCURRENT_PROTOCOLS = frozenset({"file", "local", "s3", "s3a", "gs", "gcs"})


def check_urls(spec: AppSpec, *, config: DataConfig | None = None) -> None:
    """Refuse at submit what staging could not do, naming the URL and the reason; a reason
    shared by several URLs (a scheme this server does not serve) is said once, after them."""
    config = config or DataConfig()
    problems: list[str] = []
    refused: dict[str, list[str]] = {}  # reason -> the URLs it refuses
    for kind, bindings in (("input", spec.inputs), ("output", spec.outputs)):
        for b in bindings:
            why = url_problem(b.url, config)
            if why:
                refused.setdefault(why, []).append(f"{kind} {b.url}")
                continue
            try:
                with closing(open_location(b.url, config)) as loc:
                    if kind == "input" and not _exists(loc):
                        problems.append(f"input {b.url}: nothing exists there")
            except DataError as exc:
                problems.append(f"{kind} {exc}")
            except Exception as exc:  # a store's own error: say which URL
                problems.append(f"{kind} {b.url}: cannot be read: {type(exc).__name__}: {exc}")
    problems[:0] = [f"{', '.join(urls)}: {why}" for why, urls in refused.items()]
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


def _say(progress: Progress | None, line: str | None) -> None:
    if progress is not None and line is not None:
        progress(line)


@dataclass(frozen=True)
class _Input:
    binding: DataBinding
    loc: Location
    dest: Path
    sources: list[_Source]


def stage_in(
    bindings: Sequence[DataBinding],
    workspace: Path,
    progress: Progress | None = None,
    *,
    config: DataConfig | None = None,
) -> int:
    """Copy every input into ``workspace/<path>``; returns bytes copied.

    ``progress`` gets the lines for the app's events: the totals first, then progress at a
    bounded rate, then a summary with throughput, cache use and retries (see ``progress``)."""
    config = config or DataConfig()
    cache = (
        InputCache(Path(config.cache_dir), config.cache_max_bytes)
        if config.cache_dir and config.cache_max_bytes > 0
        else None
    )
    with ExitStack() as stack:
        inputs = [_listed(b, workspace, config, progress, stack) for b in bindings]
        if not inputs:
            return 0
        meter = TransferMeter(
            "in",
            files=sum(len(i.sources) for i in inputs),
            total=sum(s.size for i in inputs for s in i.sources),
        )
        _say(progress, meter.begin())
        tally = Tally()
        if cache is not None:
            stack.callback(cache.finish)
        for i in inputs:
            _say(
                progress,
                f"{meter.label}: {i.binding.url} -> {i.binding.path}: "
                f"{len(i.sources)} files, {size(sum(s.size for s in i.sources))}",
            )
            _stage_in_one(i, meter, tally, progress, config, cache)
        remote = any(not i.loc.is_local for i in inputs)
        _say(progress, meter.summary(str(tally) if remote and cache else ""))
        return meter.done


def _listed(
    b: DataBinding, workspace: Path, config: DataConfig, progress: Progress | None, stack: ExitStack
) -> _Input:
    """Open an input's store and list the files it names (the store stays open in ``stack``)."""
    dest = workspace / b.path
    if not _inside(workspace, dest):
        raise DataError(f"input path {b.path!r} leaves the workspace")
    loc = stack.enter_context(closing(open_location(b.url, config)))
    sources = _matches(loc)
    if not sources:
        raise DataError(f"input {b.url}: nothing exists there")
    if loc.is_local:
        sources = _within_roots(sources, config, progress, b.url)
    return _Input(b, loc, dest, sources)


def _stage_in_one(
    i: _Input,
    meter: TransferMeter,
    tally: Tally,
    progress: Progress | None,
    config: DataConfig,
    cache: InputCache | None,
) -> None:
    i.dest.mkdir(parents=True, exist_ok=True)
    made = {i.dest}
    jobs: list[tuple[_Source, Path]] = []
    for s in i.sources:  # every target checked and its folder made before any copy
        rel = PurePosixPath(s.rel)
        if rel.is_absolute() or ".." in rel.parts:  # dest itself was checked above
            raise DataError(f"input {i.binding.url}: {s.rel!r} would land outside the workspace")
        target = i.dest / rel
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        jobs.append((s, target))
    say = _serialized(progress)
    lock = threading.Lock()

    def one(s: _Source, target: Path) -> None:
        if i.loc.is_local:  # the kernel copies (sendfile); a local error is not transient
            moved = _copy_local(s.path, target)
            _say(say, meter.add(moved, files=1))
            return
        want = checksums.expected(i.loc.protocol, s.info) if config.verify_checksums else None
        outcome = _fetch_one(i.loc, s, target, _Copy(meter, say, want), cache)
        with lock:
            tally.add(outcome, s.size)
        _say(say, meter.add(s.size if outcome is Outcome.HIT else 0, files=1))

    _each(one, jobs, config.transfers if i.loc.protocol in CONCURRENT_PROTOCOLS else 1)


def _copy_local(src: str, dest: Path) -> int:
    """``src`` to ``dest`` by ``sendfile``; the bytes copied. The per-file work of a plain
    copy and no more: an input of many small files is one ``open`` pair each."""
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        moved, infd, outfd = 0, fin.fileno(), fout.fileno()
        while moved < size:
            try:
                sent = os.sendfile(outfd, infd, moved, max(size - moved, CHUNK))
            except OSError as exc:
                if moved or exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                shutil.copyfileobj(fin, fout, CHUNK)  # a filesystem without sendfile
                return fout.tell()
            if sent == 0:
                break
            moved += sent
        return moved


def _serialized(progress: Progress | None) -> Progress | None:
    """``progress`` callable from several transfer threads, one line at a time."""
    if progress is None:
        return None
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            progress(line)

    return say


def _each(
    fn: Callable[[_Source, Path], None], jobs: list[tuple[_Source, Path]], transfers: int
) -> None:
    """``fn`` on every job, ``transfers`` at a time (small files are mostly latency: a round
    trip to the store, an ``open``); the first failure cancels the jobs not yet begun and is
    raised once those running have ended."""
    if transfers <= 1 or len(jobs) <= 1:
        for s, target in jobs:
            fn(s, target)
        return
    with ThreadPoolExecutor(min(transfers, len(jobs)), thread_name_prefix="stage") as pool:
        futures = [pool.submit(fn, s, target) for s, target in jobs]
        wait(futures, return_when=FIRST_EXCEPTION)
        for f in futures:
            f.cancel()  # those not begun: the others run to their end
        wait(futures)
        for f in futures:  # the first failure in the input's order
            if not f.cancelled() and f.exception() is not None:
                f.result()


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


@dataclass(frozen=True)
class _Copy:
    """How one file is copied: counted by ``meter``, checked against ``want``."""

    meter: TransferMeter
    progress: Progress | None
    want: checksums.Checksum | None


def _fetch_one(
    loc: Location, s: _Source, target: Path, copy: _Copy, cache: InputCache | None
) -> Outcome:
    name = s.path if loc.is_local else f"{loc.protocol}://{s.path}"

    def retried(exc: BaseException, attempt: int) -> None:
        copy.meter.retried()
        _say(
            copy.progress,
            f"{copy.meter.label}: {name}: try {attempt} of {RETRIES} failed "
            f"({type(exc).__name__}: {exc}); trying again",
        )

    def download(path: Path) -> None:
        try:
            retrying(lambda: _stream(loc, s.path, path, copy, name), on_retry=retried)
        except ChecksumMismatch as exc:
            raise ChecksumMismatch(f"input {loc.url}: {exc} ({RETRIES} tries)") from None

    if loc.is_local or cache is None:
        download(target)
        return Outcome.BYPASSED
    return cache.fetch(f"{loc.protocol}://{s.path}", version_of(s.info), s.size, download, target)


def _stream(loc: Location, src: str, dest: Path, copy: _Copy, name: str) -> None:
    """Copy one file in chunks, hashing them when the store gave a checksum; a failed try
    takes its bytes back from the meter."""
    meter, moved = copy.meter, 0
    try:
        if loc.is_local:
            shutil.copyfile(src, dest)  # sendfile: streamed by the kernel
            moved = os.path.getsize(dest)
            _say(copy.progress, meter.add(moved))
            return
        verifier = checksums.Verifier(copy.want) if copy.want else None
        with loc.fs.open(src, "rb", block_size=CHUNK) as f, dest.open("wb") as out:
            if hasattr(f, "prefetch"):  # paramiko: pipeline the reads
                f.prefetch()
            while chunk := f.read(CHUNK):
                out.write(chunk)
                if verifier:
                    verifier.update(chunk)
                moved += len(chunk)
                _say(copy.progress, meter.add(len(chunk)))
        if verifier:
            verifier.check(name)
    except BaseException:
        meter.take_back(moved)
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
    """Commit each output; returns bytes written. ``progress`` gets lines as ``stage_in``'s.

    With ``failed_app_id``, the app failed: each output with ``save_on_failure`` goes to
    ``<url>.failed-<app_id>`` (replacing an earlier one), and a missing output is skipped.
    """
    config = config or DataConfig()
    outputs: list[tuple[str, bool, Path, list[commit.File]]] = []
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
            _say(progress, f"output {b.path}: skipped {why}")
        outputs.append((url, overwrite, src, files))
    if not outputs:
        return 0
    meter = TransferMeter(
        "out",
        files=sum(len(files) for *_, files in outputs),
        total=sum(p.stat().st_size for *_, files in outputs for p, _ in files),
    )
    _say(progress, meter.begin())
    for url, overwrite, src, files in outputs:
        _say(progress, f"{meter.label}: {src.relative_to(workspace)} -> {url}: {len(files)} files")
        with closing(open_location(url, config)) as loc:
            commit.commit(
                loc,
                files,
                single=src.is_file(),
                overwrite=overwrite,
                uploaded=lambda n: _say(progress, meter.add(n, files=1)),
            )
    _say(progress, meter.summary())
    return meter.done


def failed_url(url: str, app_id: str) -> str:
    return f"{url.rstrip('/')}.failed-{app_id}"
