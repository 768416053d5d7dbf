"""Workspace packing and safe extraction, on real files in tmp_path."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from dlapp.data.workspace import (
    WorkspaceLimits,
    check_members,
    extract_workspace,
    inspect_tarball,
    pack_workspace,
)
from dlapp.errors import WorkspaceError

# --- builders ----------------------------------------------------------------------------

Member = tuple[tarfile.TarInfo, bytes | None]


def reg(name: str, data: bytes = b"x", mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def entry(name: str, type_: bytes, linkname: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = type_, linkname
    if type_ in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, None


def sym(name: str, target: str) -> Member:
    return entry(name, tarfile.SYMTYPE, target)


def make_tar(path: Path, *members: Member) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def names(tarball: Path) -> list[str]:
    with tarfile.open(tarball, "r:gz") as tar:
        return tar.getnames()


# --- packing -----------------------------------------------------------------------------


def test_pack_applies_excludes_in_sorted_order_and_reports_progress(tmp_path: Path) -> None:
    src = make_tree(
        tmp_path / "ws",
        {
            "train.py": b"print(1)\n",
            "train.pyc": b"junk",
            "pkg/__pycache__/m.cpython-311.pyc": b"junk",
            "pkg/m.py": b"m" * 100,
            ".git/config": b"[core]",
            "output/run1/log.txt": b"old logs",
            "data/b.bin": b"b" * 1000,
        },
    )
    calls: list[tuple[int, int]] = []
    result = pack_workspace(
        src,
        tmp_path / "ws.tar.gz",
        exclude=["*.pyc", "__pycache__", ".git", "output/*"],
        progress=lambda done, total: calls.append((done, total)),
    )

    assert names(result.path) == [
        "data",
        "data/b.bin",
        "output",
        "pkg",
        "pkg/m.py",
        "train.py",
    ]
    assert (result.files, result.bytes) == (3, 9 + 100 + 1000)
    assert result.compressed_bytes == result.path.stat().st_size > 0
    assert result.excluded == ("*.pyc", "__pycache__", ".git", "output/*")
    assert calls[-1] == (1109, 1109)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_pack_normalises_owner_and_mode(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "ws", {"run.sh": b"#!/bin/sh\n", "f.txt": b"x"})
    os.chmod(src / "run.sh", 0o4775)
    os.chmod(src / "f.txt", 0o666)
    result = pack_workspace(src, tmp_path / "ws.tar.gz")
    with tarfile.open(result.path, "r:gz") as tar:
        modes = {m.name: (m.mode, m.uid, m.gid, m.uname, m.gname) for m in tar}
    assert modes == {"f.txt": (0o644, 0, 0, "", ""), "run.sh": (0o755, 0, 0, "", "")}


def test_pack_refuses_symlink_outside_and_leaves_no_tarball(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "ws", {"a.txt": b"a"})
    (src / "etc").symlink_to("/etc")
    with pytest.raises(WorkspaceError, match=r"'etc'.*outside the workspace"):
        pack_workspace(src, tmp_path / "ws.tar.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ws"]


def test_pack_skips_fifo_and_stores_absolute_inner_link_relative(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "ws", {"data/x.bin": b"x"})
    os.mkfifo(src / "pipe")
    (src / "abs").symlink_to(src / "data" / "x.bin")
    result = pack_workspace(src, tmp_path / "ws.tar.gz")
    with tarfile.open(result.path, "r:gz") as tar:
        members = {m.name: m for m in tar}
    assert "pipe" not in members
    assert members["abs"].issym() and members["abs"].linkname == "data/x.bin"


def test_pack_does_not_include_its_own_tarball(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "ws", {"a.txt": b"a"})
    result = pack_workspace(src, src / "ws.tar.gz")
    assert names(result.path) == ["a.txt"]


# --- round trip --------------------------------------------------------------------------


def test_round_trip_preserves_content_modes_and_inner_symlinks(tmp_path: Path) -> None:
    src = make_tree(
        tmp_path / "ws",
        {"pkg/m.py": b"x = 1\n", "run.sh": b"#!/bin/sh\n", "data/d.bin": b"\0" * 5000},
    )
    os.chmod(src / "run.sh", 0o755)
    (src / "empty").mkdir()
    (src / "pkg" / "data").symlink_to("../data")
    (src / "latest.bin").symlink_to("data/d.bin")
    packed = pack_workspace(src, tmp_path / "ws.tar.gz")

    out = tmp_path / "node" / "ws"
    assert extract_workspace(packed.path, out) == (packed.files, packed.bytes) == (3, 5016)

    assert (out / "pkg/m.py").read_bytes() == b"x = 1\n"
    assert (out / "data/d.bin").read_bytes() == b"\0" * 5000
    assert os.readlink(out / "pkg" / "data") == "../data"
    assert (out / "pkg/data/d.bin").read_bytes() == b"\0" * 5000
    assert os.readlink(out / "latest.bin") == "data/d.bin"
    assert (out / "empty").is_dir()
    assert os.stat(out / "run.sh").st_mode & 0o111


def test_extract_into_existing_empty_dir_but_not_a_full_one(tmp_path: Path) -> None:
    tarball = make_tar(tmp_path / "ws.tar.gz", reg("a.txt", b"hi"))
    (tmp_path / "empty").mkdir()
    assert extract_workspace(tarball, tmp_path / "empty") == (1, 2)
    with pytest.raises(WorkspaceError, match="absent or an empty directory"):
        extract_workspace(tarball, tmp_path / "empty")


# --- refusals ----------------------------------------------------------------------------

REFUSED: list[tuple[str, list[Member], str]] = [
    ("absolute", [reg("/tmp/evil")], r"'/tmp/evil'.*absolute path"),
    ("dotdot", [reg("../x")], r"'\.\./x'.*'\.\.' in path"),
    ("dotdot-inner", [reg("a/../../x")], r"'a/\.\./\.\./x'.*'\.\.' in path"),
    ("symlink-to-etc", [sym("link", "/etc"), reg("link/passwd")], r"'link'.*absolute"),
    (
        "write-through-symlink",
        [entry("sub", tarfile.DIRTYPE), sym("link", "sub"), reg("link/passwd")],
        r"'link/passwd'.*through earlier symlink member 'link'",
    ),
    ("symlink-up", [sym("up", "../../etc")], r"'up'.*outside the workspace"),
    ("symlink-up-nested", [sym("a/b/up", "../../../x")], r"'a/b/up'.*outside"),
    ("symlink-roundabout", [sym("l", "d/../..")], r"'l'.*'\.\.' after a name"),
    ("hardlink", [entry("h", tarfile.LNKTYPE, "/etc/passwd")], r"'h'.*hard link"),
    ("inner-hardlink", [reg("a"), entry("h", tarfile.LNKTYPE, "a")], r"'h'.*hard link"),
    ("fifo", [entry("p", tarfile.FIFOTYPE)], r"'p'.*FIFO"),
    ("char-device", [entry("null", tarfile.CHRTYPE)], r"'null'.*character device"),
    ("block-device", [entry("sda", tarfile.BLKTYPE)], r"'sda'.*block device"),
    (
        "dir-replaced-by-link",
        [entry("d", tarfile.DIRTYPE), sym("d", "x")],
        r"'d'.*symlink replaces an earlier directory",
    ),
    (
        "implicit-dir-replaced-by-link",
        [reg("d/f"), sym("d", "x")],
        r"'d'.*symlink replaces an earlier directory",
    ),
    ("file-under-file", [reg("f"), reg("f/g")], r"'f/g'.*through earlier file member 'f'"),
]


@pytest.mark.parametrize(
    ("members", "message"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_malicious_member_is_refused_and_nothing_written(
    tmp_path: Path, members: list[Member], message: str
) -> None:
    tarball = make_tar(tmp_path / "evil.tar.gz", reg("ok.txt", b"fine"), *members)
    with pytest.raises(WorkspaceError, match=message):
        inspect_tarball(tarball)
    out = tmp_path / "out"
    with pytest.raises(WorkspaceError, match=message):
        extract_workspace(tarball, out)
    assert not out.exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkspaceError, match=message):
        extract_workspace(tarball, tmp_path / "empty")
    assert list((tmp_path / "empty").iterdir()) == []


def test_setuid_file_extracts_without_setuid(tmp_path: Path) -> None:
    tarball = make_tar(tmp_path / "s.tar.gz", reg("suid", b"#!/bin/sh\n", mode=0o6755))
    extract_workspace(tarball, tmp_path / "out")
    mode = os.stat(tmp_path / "out" / "suid").st_mode
    assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX)
    assert mode & stat.S_IXUSR


def test_too_many_members_is_refused(tmp_path: Path) -> None:
    tarball = make_tar(tmp_path / "t.tar.gz", reg("a"), reg("b"), reg("c"), reg("d"))
    assert inspect_tarball(tarball, WorkspaceLimits(max_files=4)) == (4, 4)
    with pytest.raises(WorkspaceError, match=r"'d'.*more than 3 members"):
        extract_workspace(tarball, tmp_path / "out", WorkspaceLimits(max_files=3))
    assert not (tmp_path / "out").exists()


def test_too_many_bytes_is_refused(tmp_path: Path) -> None:
    tarball = make_tar(tmp_path / "t.tar.gz", reg("a", b"x" * 6), reg("b", b"y" * 6))
    with pytest.raises(WorkspaceError, match=r"'b'.*exceed 10 bytes"):
        extract_workspace(tarball, tmp_path / "out", WorkspaceLimits(max_bytes=10))
    assert not (tmp_path / "out").exists()


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    zeros = 70 * 1024**2
    info = tarfile.TarInfo("zeros.bin")
    info.size = zeros
    tarball = tmp_path / "bomb.tar.gz"
    with tarfile.open(tarball, "w:gz", compresslevel=9) as tar:
        tar.addfile(info, io.BytesIO(bytes(zeros)))
    assert tarball.stat().st_size < zeros // 200
    with pytest.raises(WorkspaceError, match=r"'zeros\.bin'.*decompression bomb"):
        extract_workspace(tarball, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # the same archive passes when the guard allows it: only the ratio refused it
    assert inspect_tarball(tarball, WorkspaceLimits(max_ratio=10**6)) == (1, zeros)


@pytest.mark.parametrize("member", [reg("a\0b")[0], sym("n", "a\0b")[0]], ids=["name", "target"])
def test_nul_is_refused(member: tarfile.TarInfo) -> None:
    # tarfile cannot write a NUL into a ustar field, so feed the header to the core directly
    with pytest.raises(WorkspaceError, match="NUL"):
        check_members([member], WorkspaceLimits(), compressed_bytes=100)


def test_small_archives_skip_the_ratio_guard() -> None:
    info = tarfile.TarInfo("zeros.bin")
    info.size = 1024**2
    assert check_members([info], WorkspaceLimits(max_ratio=1), compressed_bytes=1) == (1, 1024**2)


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p.write_bytes(os.urandom(2000)),
        lambda p: p.write_bytes(b""),
        lambda p: p.write_bytes(gzip.compress(b"just some text\n" * 100)),
        lambda p: tarfile.open(p, "w").close(),  # a tar, but not gzip-compressed
    ],
    ids=["random", "empty", "gzip-text", "plain-tar"],
)
def test_not_a_gzip_tar_is_refused(tmp_path: Path, make: Callable[[Path], object]) -> None:
    tarball = tmp_path / "x.tar.gz"
    make(tarball)
    with pytest.raises(WorkspaceError, match="not a gzip-compressed tar archive"):
        extract_workspace(tarball, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failure_midway_removes_what_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tarball = make_tar(tmp_path / "t.tar.gz", reg("a/one", b"1"), reg("a/two", b"2"))
    real_makefile = tarfile.TarFile.makefile

    def makefile_then_fail(self: tarfile.TarFile, tarinfo: tarfile.TarInfo, target: str) -> None:
        if tarinfo.name == "a/two":
            raise OSError("disk full")
        real_makefile(self, tarinfo, target)

    monkeypatch.setattr(tarfile.TarFile, "makefile", makefile_then_fail)
    with pytest.raises(WorkspaceError, match="disk full"):
        extract_workspace(tarball, tmp_path / "out")
    assert not (tmp_path / "out").exists()
