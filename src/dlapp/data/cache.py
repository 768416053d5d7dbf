"""The node-local input cache: each remote input file downloaded once per node and version.

An entry is keyed by the file's URL and its store's version of it (the etag, else size and
modification time; a file with neither is not cached). Layout under the cache directory::

    objects/<key>      the cached bytes (mtime: last use, for least-recently-used eviction)
    locks/<key>        flock per entry: one download at a time, even across processes
    locks/.index       flock for eviction and the statistics file
    stats.json         hits, misses, bypassed, bytes_saved, bytes_downloaded, evictions

Apps on one node that want the same entry at the same moment serialise on its lock: the first
downloads it, the others find it there. A reader opens the entry before it lets go of the lock,
so an eviction that unlinks it afterwards does not disturb the copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from dlapp.data.progress import size

STATS_KEYS = ("hits", "misses", "bypassed", "bytes_saved", "bytes_downloaded", "evictions")


class Outcome(Enum):
    HIT = "hit"
    MISS = "miss"
    BYPASSED = "bypassed"  # too large for the cache, or no version to key it by


@dataclass
class Tally:
    """One app's cache use, for its log lines."""

    hits: int = 0
    misses: int = 0
    bypassed: int = 0
    bytes_saved: int = 0

    def add(self, outcome: Outcome, size: int) -> None:
        if outcome is Outcome.HIT:
            self.hits += 1
            self.bytes_saved += size
        elif outcome is Outcome.MISS:
            self.misses += 1
        else:
            self.bypassed += 1

    def __str__(self) -> str:
        return (
            f"cache: {self.hits} hits, {self.misses} misses, {self.bypassed} bypassed, "
            f"{size(self.bytes_saved)} saved"
        )


def version_of(info: dict[str, object]) -> str | None:
    """The store's version of a file: its etag, else size and modification time."""
    for key in ("ETag", "etag", "md5Hash", "crc32c"):
        if info.get(key):
            return f"{key}:{info[key]}"
    for key in ("mtime", "LastModified", "last_modified", "updated", "modificationTime"):
        if info.get(key):
            return f"size:{info.get('size')};mtime:{info[key]}"
    return None


class InputCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.objects = root / "objects"
        self.locks = root / "locks"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.locks.mkdir(parents=True, exist_ok=True)
        # eviction scans the whole cache: run it once this many bytes were added, not per file
        self.evict_every = max(max_bytes // 20, 1)
        self._added = 0
        self._pending: dict[str, int] = dict.fromkeys(STATS_KEYS, 0)  # counts not yet written
        self._lock = threading.Lock()  # transfer threads share one cache object

    def fetch(
        self,
        url: str,
        version: str | None,
        size: int,
        download: Callable[[Path], None],
        dest: Path,
    ) -> Outcome:
        """Put the file ``url`` at ``dest``: from the cache, or through ``download(path)``."""
        if version is None or size > self.max_bytes:
            download(dest)
            self._count(bypassed=1, bytes_downloaded=size)
            return Outcome.BYPASSED
        key = hashlib.sha256(f"{url}\0{version}".encode()).hexdigest()
        entry = self.objects / key
        with _locked(self.locks / key):
            hit = entry.exists()
            if not hit:
                tmp = self.objects / f".{key}.{uuid.uuid4().hex[:8]}.part"
                try:
                    download(tmp)
                    os.replace(tmp, entry)
                finally:
                    tmp.unlink(missing_ok=True)
            else:
                os.utime(entry)  # last use, for LRU
            src = entry.open("rb")
        with src, dest.open("wb") as out:
            shutil.copyfileobj(src, out, 1024 * 1024)
        if hit:
            self._count(hits=1, bytes_saved=size)
            return Outcome.HIT
        self._count(misses=1, bytes_downloaded=size)
        with self._lock:
            self._added += size
            due = self._added >= self.evict_every
            if due:
                self._added = 0
        if due:
            self.evict()
        return Outcome.MISS

    def evict(self) -> int:
        """Remove least recently used entries until the cache fits; returns how many."""
        removed = 0
        with _locked(self.locks / ".index"):
            entries = []
            for p in self.objects.iterdir():
                if p.name.startswith("."):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = p.stat()
                    entries.append((st.st_mtime, st.st_size, p))
            total = sum(size for _, size, _ in entries)
            for _, size, p in sorted(entries):
                if total <= self.max_bytes:
                    break
                with _try_locked(self.locks / p.name) as got:
                    if got:  # an entry being filled or opened is left alone
                        p.unlink(missing_ok=True)
                        total -= size
                        removed += 1
            self._count(evictions=removed)
            self._flush_locked()
        return removed

    def stats(self) -> dict[str, int]:
        """The node's counts: those written by every app, and this object's not yet written."""
        with self._lock:
            pending = dict(self._pending)
        written = self._written()
        return {k: written[k] + pending[k] for k in STATS_KEYS}

    def finish(self) -> None:
        """After a staging: evict if it added anything since the last eviction, and write
        this object's counts to the node's (once per staging, not once per file)."""
        with self._lock:
            added, self._added = self._added, 0
        if added:
            self.evict()
        else:
            with _locked(self.locks / ".index"):
                self._flush_locked()

    def _written(self) -> dict[str, int]:
        try:
            data = json.loads((self.root / "stats.json").read_text())
        except (OSError, ValueError):
            data = {}
        return {k: int(data.get(k, 0)) for k in STATS_KEYS}

    def _count(self, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                self._pending[k] += v

    def _flush_locked(self) -> None:
        with self._lock:
            counts, self._pending = self._pending, dict.fromkeys(STATS_KEYS, 0)
        if any(counts.values()):
            self._update_stats(counts)

    def _update_stats(self, counts: dict[str, int]) -> None:
        stats = self._written()
        for k, v in counts.items():
            stats[k] += v
        path = self.root / "stats.json"
        tmp = path.with_name(f".stats.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(stats, indent=1))
        os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _try_locked(path: Path) -> Iterator[bool]:
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
