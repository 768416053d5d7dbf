"""Staging against real servers on loopback: OpenSSH's sshd (sftp://) and moto (s3://)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from dlapp.data import commit, staging
from dlapp.data.cache import InputCache
from dlapp.data.commit import MARKER
from dlapp.data.locations import Profile
from dlapp.errors import DataError
from dlapp.spec import AppSpec, DataBinding

from storage_servers import S3Server, Sshd, config_with, s3_server, sshd

__all__ = ["s3_server", "sshd"]  # fixtures


def workspace_with_output(root: Path, files: dict[str, bytes]) -> Path:
    ws = root / "ws"
    for rel, data in files.items():
        (ws / "output" / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / "output" / rel).write_bytes(data)
    return ws


# -- sftp ---------------------------------------------------------------------------------------


def test_sftp_directory_input_streams_into_the_workspace(sshd: Sshd, tmp_path: Path) -> None:
    src = sshd.root / "in-dir"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "big.bin").write_bytes(b"z" * 3_000_000)
    ws = tmp_path / "ws"
    ws.mkdir()
    lines: list[str] = []
    config = config_with(sshd.profile, cache_dir=tmp_path / "cache")
    n = staging.stage_in(
        [DataBinding(url=sshd.url(src), path="d")], ws, lines.append, config=config
    )
    assert n == 3_000_001
    assert (ws / "d" / "sub" / "big.bin").read_bytes() == b"z" * 3_000_000
    assert "cache: 0 hits, 2 misses" in lines[-1]
    assert str(sshd.key) not in "\n".join(lines)


def test_sftp_glob_input_and_cache_hit_on_the_second_app(sshd: Sshd, tmp_path: Path) -> None:
    for name in ("s1.csv", "s2.csv", "t.txt"):
        (sshd.root / name).write_text(name)
    config = config_with(sshd.profile, cache_dir=tmp_path / "cache")
    binding = DataBinding(url=sshd.url(sshd.root / "s*.csv"), path="d")
    for i in range(2):
        lines: list[str] = []
        (tmp_path / f"ws{i}").mkdir()
        staging.stage_in([binding], tmp_path / f"ws{i}", lines.append, config=config)
        assert sorted(p.name for p in (tmp_path / f"ws{i}" / "d").iterdir()) == [
            "s1.csv",
            "s2.csv",
        ]
    assert lines[-1].endswith("; cache: 2 hits, 0 misses, 0 bypassed, 12 B saved")
    stats = json.loads((tmp_path / "cache" / "stats.json").read_text())
    assert stats["hits"] == 2 and stats["misses"] == 2


def test_sftp_output_is_renamed_into_place_and_overwritten(sshd: Sshd, tmp_path: Path) -> None:
    ws = workspace_with_output(tmp_path, {"m.json": b"{}", "d/w.pt": b"w"})
    target = sshd.root / "results" / "run"
    config = config_with(sshd.profile)
    staging.stage_out([DataBinding(url=sshd.url(target), path="output")], ws, config=config)
    assert (target / "d" / "w.pt").read_bytes() == b"w"
    (ws / "output" / "m.json").write_bytes(b"{2}")
    binding = DataBinding(url=sshd.url(target), path="output", overwrite=True)
    staging.stage_out([binding], ws, config=config)
    assert (target / "m.json").read_bytes() == b"{2}"
    assert sorted(p.name for p in target.parent.iterdir()) == ["run"]


NO_KEYS = {"look_for_keys": False, "allow_agent": False}


def test_sftp_without_a_matching_profile_cannot_log_in(sshd: Sshd, tmp_path: Path) -> None:
    (sshd.root / "x").write_text("x")
    spec = AppSpec.from_dict(
        {
            "name": "t",
            "entry": {"script": "r.sh"},
            "inputs": [{"url": f"sftp://127.0.0.1:{sshd.port}{sshd.root}/x", "path": "d"}],
        }
    )
    with pytest.raises(DataError, match="loopback"):  # no profile names it: refused at once
        staging.check_urls(spec, config=config_with())
    anonymous = Profile("anon", "sftp", (f"sftp://127.0.0.1:{sshd.port}",), NO_KEYS)
    with pytest.raises(DataError, match="cannot connect"):  # named, but without credentials
        staging.check_urls(spec, config=config_with(anonymous))


# -- s3 -----------------------------------------------------------------------------------------


def test_s3_input_prefix_and_check_urls(s3_server: S3Server, tmp_path: Path) -> None:
    fs, bucket = s3_server.filesystem(), s3_server.new_bucket()
    fs.pipe({f"{bucket}/ds/a.bin": b"a" * 10, f"{bucket}/ds/sub/b.bin": b"b" * 20})
    config = config_with(s3_server.profile, cache_dir=tmp_path / "cache")
    spec = AppSpec.from_dict(
        {
            "name": "t",
            "entry": {"script": "r.sh"},
            "inputs": [{"url": f"s3://{bucket}/ds", "path": "data"}],
            "outputs": [{"url": f"s3://{bucket}/out", "path": "output"}],
        }
    )
    staging.check_urls(spec, config=config)
    staging.check_outputs_writable(spec, config=config)
    ws = tmp_path / "ws"
    ws.mkdir()
    assert staging.stage_in(spec.inputs, ws, config=config) == 30
    assert (ws / "data" / "sub" / "b.bin").read_bytes() == b"b" * 20


def test_s3_missing_input_is_refused_at_submit(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    spec = AppSpec.from_dict(
        {
            "name": "t",
            "entry": {"script": "r.sh"},
            "inputs": [{"url": f"s3://{bucket}/nothing/*", "path": "d"}],
        }
    )
    with pytest.raises(DataError, match="nothing exists there"):
        staging.check_urls(spec, config=config_with(s3_server.profile))


def test_s3_output_directory_gets_its_marker_last(s3_server: S3Server, tmp_path: Path) -> None:
    fs, bucket = s3_server.filesystem(), s3_server.new_bucket()
    ws = workspace_with_output(tmp_path, {"m.json": b"{}", "d/w.pt": b"w"})
    config = config_with(s3_server.profile)
    url = f"s3://{bucket}/runs/r1"
    staging.stage_out([DataBinding(url=url, path="output")], ws, config=config)
    assert sorted(fs.find(bucket)) == [
        f"{bucket}/runs/r1/{MARKER}",
        f"{bucket}/runs/r1/d/w.pt",
        f"{bucket}/runs/r1/m.json",
    ]
    (ws / "output" / "d" / "w.pt").unlink()
    staging.stage_out([DataBinding(url=url, path="output", overwrite=True)], ws, config=config)
    fs.invalidate_cache()
    assert sorted(fs.find(bucket)) == [f"{bucket}/runs/r1/{MARKER}", f"{bucket}/runs/r1/m.json"]


def test_s3_single_file_output(s3_server: S3Server, tmp_path: Path) -> None:
    fs, bucket = s3_server.filesystem(), s3_server.new_bucket()
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "model.pt").write_bytes(b"weights")
    url = f"s3://{bucket}/model.pt"
    staging.stage_out(
        [DataBinding(url=url, path="model.pt")], ws, config=config_with(s3_server.profile)
    )
    assert fs.find(bucket) == [f"{bucket}/model.pt"]
    assert fs.cat(f"{bucket}/model.pt") == b"weights"


def test_s3_output_interrupted_mid_upload_leaves_nothing(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, bucket = s3_server.filesystem(), s3_server.new_bucket()
    ws = workspace_with_output(tmp_path, {f"p{i}": b"x" * 100 for i in range(4)})
    real_put = commit.put_file
    calls: list[str] = []

    def put_then_fail(fs_: object, path: Path, remote: str) -> None:
        calls.append(remote)
        if len(calls) == 3:
            raise ConnectionResetError("the network went away")
        real_put(fs_, path, remote)

    monkeypatch.setattr(commit, "put_file", put_then_fail)
    with pytest.raises(ConnectionResetError):
        staging.stage_out(
            [DataBinding(url=f"s3://{bucket}/out", path="output")],
            ws,
            config=config_with(s3_server.profile),
        )
    fs.invalidate_cache()
    assert fs.find(bucket) == []


def test_two_concurrent_stage_ins_share_one_download(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, bucket = s3_server.filesystem(), s3_server.new_bucket()
    fs.pipe({f"{bucket}/shared/data.bin": b"d" * 100_000})
    config = config_with(s3_server.profile, cache_dir=tmp_path / "cache")
    downloads: list[str] = []
    real_stream = staging._stream

    def counting(loc: object, src: str, dest: Path, *rest: Any) -> None:
        downloads.append(src)
        threading.Event().wait(0.3)  # long enough for the other app to arrive
        real_stream(loc, src, dest, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(staging, "_stream", counting)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def app(i: int) -> None:
        ws = tmp_path / f"ws{i}"
        ws.mkdir()
        start.wait()
        try:
            staging.stage_in(
                [DataBinding(url=f"s3://{bucket}/shared", path="d")], ws, config=config
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=app, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert downloads == [f"{bucket}/shared/data.bin"]
    for i in range(2):
        assert (tmp_path / f"ws{i}" / "d" / "data.bin").read_bytes() == b"d" * 100_000
    stats = InputCache(tmp_path / "cache", 1).stats()
    assert (stats["hits"], stats["misses"], stats["bytes_saved"]) == (1, 1, 100_000)
