"""The node-local input cache: one download per version, LRU eviction, statistics."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from dlapp.data.cache import InputCache, Outcome, version_of


def downloader(data: bytes, calls: list[str], delay: float = 0.0):  # type: ignore[no-untyped-def]
    def download(path: Path) -> None:
        calls.append(str(path))
        time.sleep(delay)
        path.write_bytes(data)

    return download


def test_second_fetch_of_the_same_version_is_a_hit(tmp_path: Path) -> None:
    cache = InputCache(tmp_path / "c", 1024)
    calls: list[str] = []
    out1, out2 = tmp_path / "a", tmp_path / "b"
    assert cache.fetch("s3://b/k", "etag:1", 3, downloader(b"abc", calls), out1) is Outcome.MISS
    assert cache.fetch("s3://b/k", "etag:1", 3, downloader(b"abc", calls), out2) is Outcome.HIT
    assert len(calls) == 1
    assert out2.read_bytes() == b"abc"
    assert cache.stats()["hits"] == 1
    assert cache.stats()["bytes_saved"] == 3


def test_a_new_version_is_downloaded_again(tmp_path: Path) -> None:
    cache = InputCache(tmp_path / "c", 1024)
    calls: list[str] = []
    cache.fetch("s3://b/k", "etag:1", 3, downloader(b"old", calls), tmp_path / "a")
    cache.fetch("s3://b/k", "etag:2", 3, downloader(b"new", calls), tmp_path / "b")
    assert len(calls) == 2
    assert (tmp_path / "b").read_bytes() == b"new"


def test_concurrent_fetches_of_one_input_download_it_once(tmp_path: Path) -> None:
    cache = InputCache(tmp_path / "c", 1024)
    calls: list[str] = []
    outcomes: list[Outcome] = []
    start = threading.Barrier(2)

    def app(i: int) -> None:
        start.wait()
        download = downloader(b"shared", calls, delay=0.3)
        outcomes.append(cache.fetch("sftp://h/d", "v", 6, download, tmp_path / f"out{i}"))

    threads = [threading.Thread(target=app, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(o.value for o in outcomes) == ["hit", "miss"]
    assert (tmp_path / "out0").read_bytes() == (tmp_path / "out1").read_bytes() == b"shared"


def test_least_recently_used_entries_are_evicted_to_fit(tmp_path: Path) -> None:
    cache = InputCache(tmp_path / "c", 25)
    calls: list[str] = []
    for i, name in enumerate(("a", "b")):
        cache.fetch(f"s3://b/{name}", "v", 10, downloader(b"x" * 10, calls), tmp_path / name)
        key = hashlib.sha256(f"s3://b/{name}\0v".encode()).hexdigest()
        os.utime(tmp_path / "c" / "objects" / key, (1000 + i, 1000 + i))  # a used before b
    cache.fetch("s3://b/a", "v", 10, downloader(b"x" * 10, calls), tmp_path / "a2")  # a: hit
    cache.fetch("s3://b/c", "v", 10, downloader(b"x" * 10, calls), tmp_path / "c2")  # evicts b
    assert len(calls) == 3
    assert cache.stats()["evictions"] == 1
    cache.fetch("s3://b/a", "v", 10, downloader(b"x" * 10, calls), tmp_path / "a3")
    assert len(calls) == 3  # a stayed
    cache.fetch("s3://b/b", "v", 10, downloader(b"x" * 10, calls), tmp_path / "b3")
    assert len(calls) == 4  # b was gone


def test_files_too_large_or_without_a_version_bypass_the_cache(tmp_path: Path) -> None:
    cache = InputCache(tmp_path / "c", 5)
    calls: list[str] = []
    assert cache.fetch("s3://b/big", "v", 10, downloader(b"x", calls), tmp_path / "a") is (
        Outcome.BYPASSED
    )
    assert cache.fetch("s3://b/nov", None, 1, downloader(b"x", calls), tmp_path / "b") is (
        Outcome.BYPASSED
    )
    assert list((tmp_path / "c" / "objects").iterdir()) == []
    assert cache.stats()["bypassed"] == 2


def test_version_is_the_etag_else_size_and_mtime() -> None:
    assert version_of({"ETag": '"abc"', "size": 3}) == 'ETag:"abc"'
    assert version_of({"size": 3, "mtime": 12.5}) == "size:3;mtime:12.5"
    assert version_of({"size": 3}) is None


def test_many_small_files_scan_the_cache_once_a_twentieth_not_once_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = InputCache(tmp_path / "c", 1000)  # scans once 50 bytes were added
    scans: list[int] = []
    real = cache.evict

    def counted() -> int:
        scans.append(1)
        return real()

    monkeypatch.setattr(cache, "evict", counted)
    for i in range(12):
        cache.fetch(f"s3://b/{i}", "v", 10, downloader(b"x" * 10, []), tmp_path / f"o{i}")
    assert len(scans) == 2  # at 50 and 100 bytes
    # the counts are written with each scan, not with each file
    assert InputCache(tmp_path / "c", 1000).stats()["misses"] == 10
    assert cache.stats()["misses"] == 12
    cache.finish()  # the staging's end: scans for the last 20 bytes and writes the counts
    assert len(scans) == 3
    assert InputCache(tmp_path / "c", 1000).stats()["misses"] == 12
