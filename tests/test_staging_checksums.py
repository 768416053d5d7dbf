"""Checksums and retries of input downloads, against moto's S3-protocol server on loopback.

Damage in transit and a flaky network are injected by wrapping the store's filesystem: its
``open`` hands out files that flip a byte, or fails before any byte.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dlapp.data import checksums, locations, staging
from dlapp.data.cache import InputCache
from dlapp.errors import ChecksumMismatch
from dlapp.spec import DataBinding

from storage_servers import S3Server, config_with, s3_server

__all__ = ["s3_server"]  # fixtures

DATA = bytes(range(256)) * 4096  # 1 MiB


class Flipping(io.RawIOBase):
    """A file whose bytes arrive with one of them changed, as a bad link might deliver it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.first = True

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        chunk: bytes = self.inner.read(n)
        if chunk and self.first:
            self.first = False
            return bytes([chunk[0] ^ 0xFF]) + chunk[1:]
        return chunk

    def close(self) -> None:
        self.inner.close()
        super().close()


class Faulty:
    """A store's filesystem whose first ``opens`` opens go wrong: ``fault(inner)`` says how."""

    def __init__(self, fs: Any, opens: int, fault: Callable[[Any], Any]) -> None:
        self.fs, self.left, self.fault, self.opened = fs, opens, fault, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)

    def open(self, path: str, mode: str = "rb", **kw: Any) -> Any:
        self.opened += 1
        f = self.fs.open(path, mode, **kw)
        if self.left > 0:
            self.left -= 1
            return self.fault(f)
        return f


def refuse(exc: BaseException) -> Callable[[Any], Any]:
    def fault(f: Any) -> Any:
        f.close()
        raise exc

    return fault


@dataclasses.dataclass
class Faults:
    """Faults planned for the next stores staging opens, the ``Faulty`` ones it got, and the
    waits between tries (recorded, not slept)."""

    planned: list[tuple[int, Callable[[Any], Any]]] = dataclasses.field(default_factory=list)
    made: list[Faulty] = dataclasses.field(default_factory=list)
    sleeps: list[float] = dataclasses.field(default_factory=list)

    def plan(self, opens: int, fault: Callable[[Any], Any]) -> None:
        self.planned.append((opens, fault))


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Faults:
    faults = Faults()
    real_open = staging.open_location

    def opening(url: str, config: locations.DataConfig) -> locations.Location:
        loc = real_open(url, config)
        if not faults.planned:
            return loc
        faults.made.append(Faulty(loc.fs, *faults.planned.pop(0)))
        return dataclasses.replace(loc, fs=faults.made[-1])

    monkeypatch.setattr(staging, "open_location", opening)
    monkeypatch.setattr(
        staging, "retrying", functools.partial(locations.retrying, sleep=faults.sleeps.append)
    )
    return faults


def put(s3: S3Server, data: bytes = DATA) -> str:
    fs, bucket = s3.filesystem(), s3.new_bucket()
    fs.pipe({f"{bucket}/ds/a.bin": data})
    return bucket


def test_store_checksums_are_read_where_the_store_gives_them() -> None:
    md5 = hashlib.md5(b"x").hexdigest()
    assert checksums.expected("s3", {"ETag": f'"{md5}"'}) == checksums.Checksum("md5", md5)
    assert checksums.expected("s3", {"ETag": f'"{md5}-3"'}) is None  # multipart: not an MD5
    gcs = {"md5Hash": base64.b64encode(hashlib.md5(b"x").digest()).decode()}
    assert checksums.expected("gs", gcs) == checksums.Checksum("md5", md5)
    assert checksums.expected("gs", {"crc32c": "AAAAAA=="}) is None
    assert checksums.expected("sftp", {"size": 1, "mtime": 2}) is None
    assert checksums.expected("file", {"size": 1}) is None


def test_a_clean_s3_download_is_verified_against_its_etag(
    s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = put(s3_server)
    info = s3_server.filesystem().info(f"{bucket}/ds/a.bin")
    assert checksums.expected("s3", info) == checksums.Checksum(
        "md5", hashlib.md5(DATA).hexdigest()
    )
    lines: list[str] = []
    n = staging.stage_in(
        [DataBinding(url=f"s3://{bucket}/ds", path="d")],
        tmp_path,
        lines.append,
        config=config_with(s3_server.profile),
    )
    assert n == len(DATA) and (tmp_path / "d" / "a.bin").read_bytes() == DATA
    assert "retr" not in lines[-1]


def test_bytes_damaged_in_transit_are_fetched_again(
    s3_server: S3Server, tmp_path: Path, faults: Faults
) -> None:
    bucket = put(s3_server)
    faults.plan(1, Flipping)
    lines: list[str] = []
    config = config_with(s3_server.profile, cache_dir=tmp_path / "cache")
    staging.stage_in(
        [DataBinding(url=f"s3://{bucket}/ds", path="d")],
        tmp_path / "ws",
        lines.append,
        config=config,
    )
    assert (tmp_path / "ws" / "d" / "a.bin").read_bytes() == DATA
    assert faults.made[0].opened == 2 and faults.sleeps == [1.0]
    retry = next(line for line in lines if "try 1 of 3 failed" in line)
    assert f"s3://{bucket}/ds/a.bin" in retry and "checksum mismatch" in retry
    assert lines[-1].startswith("staging in done: 1 files, 1.0 MiB") and "; 1 retry" in lines[-1]
    assert len(list((tmp_path / "cache" / "objects").iterdir())) == 1  # the good bytes


def test_bytes_damaged_every_time_fail_the_staging_naming_the_file(
    s3_server: S3Server, tmp_path: Path, faults: Faults
) -> None:
    bucket = put(s3_server)
    faults.plan(99, Flipping)
    config = config_with(s3_server.profile, cache_dir=tmp_path / "cache")
    with pytest.raises(ChecksumMismatch) as err:
        staging.stage_in(
            [DataBinding(url=f"s3://{bucket}/ds", path="d")], tmp_path / "ws", config=config
        )
    message = str(err.value)
    assert f"s3://{bucket}/ds/a.bin: checksum mismatch" in message and "(3 tries)" in message
    assert f"the store says md5 {hashlib.md5(DATA).hexdigest()}" in message
    assert faults.sleeps == [1.0, 2.0]
    assert list((tmp_path / "cache" / "objects").iterdir()) == []  # nothing damaged is cached
    assert InputCache(tmp_path / "cache", 1).stats()["misses"] == 0


def test_verification_can_be_turned_off_for_stores_whose_etags_are_not_md5s(
    s3_server: S3Server, tmp_path: Path, faults: Faults
) -> None:
    bucket = put(s3_server)
    faults.plan(99, Flipping)
    config = dataclasses.replace(config_with(s3_server.profile), verify_checksums=False)
    staging.stage_in([DataBinding(url=f"s3://{bucket}/ds", path="d")], tmp_path, config=config)
    assert (tmp_path / "d" / "a.bin").read_bytes()[1:] == DATA[1:]
    assert locations.DataConfig.from_dict(config.to_dict()).verify_checksums is False


def test_a_flaky_connection_is_retried_with_backoff(
    s3_server: S3Server, tmp_path: Path, faults: Faults
) -> None:
    bucket = put(s3_server)
    faults.plan(2, refuse(ConnectionResetError("reset by peer")))
    lines: list[str] = []
    staging.stage_in(
        [DataBinding(url=f"s3://{bucket}/ds", path="d")],
        tmp_path,
        lines.append,
        config=config_with(s3_server.profile),
    )
    assert (tmp_path / "d" / "a.bin").read_bytes() == DATA
    assert faults.made[0].opened == 3 and faults.sleeps == [1.0, 2.0]
    assert "; 2 retries" in lines[-1]


def test_a_refusal_is_not_retried(s3_server: S3Server, tmp_path: Path, faults: Faults) -> None:
    bucket = put(s3_server)
    faults.plan(9, refuse(PermissionError("access denied")))
    with pytest.raises(PermissionError, match="access denied"):
        staging.stage_in(
            [DataBinding(url=f"s3://{bucket}/ds", path="d")],
            tmp_path,
            config=config_with(s3_server.profile),
        )
    assert faults.made[0].opened == 1 and faults.sleeps == []
