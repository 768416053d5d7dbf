"""Hostile workspace tarballs whose headers, not their files, are the payload: a pax extended
header or a GNU long name of many megabytes (tarfile reads each into memory whole, then parses
it into more copies), many headers each under the cap, and GNU sparse maps.

The tarballs are generated and streamed to disk; each is a few kilobytes compressed. Memory is
measured with tracemalloc (Python's own allocations: tarfile's buffers and strings).
"""

from __future__ import annotations

import gzip
import tarfile
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dlapp.data.workspace import (
    MAX_EXTENDED_HEADER,
    WorkspaceLimits,
    extract_workspace,
    inspect_tarball,
    pack_workspace,
)
from dlapp.errors import WorkspaceError

BLOCK = 512
MiB = 1024**2


def pax_length(key: str, value_bytes: int) -> int:
    """The length of the pax record ``"<len> <key>=<value>\\n"``, which it starts with."""
    body = len(key) + value_bytes + 3  # " ", "=", "\n"
    length = body + len(str(body))
    return body + len(str(length))


def pax_record(key: str, value_bytes: int, fill: bytes = b"a") -> Iterator[bytes]:
    """One pax record with a value of ``value_bytes``, in chunks."""
    yield f"{pax_length(key, value_bytes)} {key}=".encode()
    left = value_bytes
    while left:
        n = min(left, MiB)
        yield fill * n
        left -= n
    yield b"\n"


def header(name: str, type_: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode = type_, size, 0o644
    return info.tobuf(tarfile.USTAR_FORMAT)


def write_tar(path: Path, *members: tuple[bytes, Callable[[], Iterator[bytes]]]) -> Path:
    """A tar.gz of raw members: (header block, its data in chunks), each padded to a block."""
    with gzip.open(path, "wb", compresslevel=6) as out:
        for head, data in members:
            out.write(head)
            written = 0
            for chunk in data():
                out.write(chunk)
                written += len(chunk)
            out.write(b"\0" * (-written % BLOCK))
        out.write(b"\0" * (2 * BLOCK))
    return path


def extended(
    type_: bytes, size: int, chunks: Callable[[], Iterator[bytes]]
) -> tuple[bytes, Callable[[], Iterator[bytes]]]:
    name = (
        "././@LongLink" if type_ in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK) else "pax"
    )
    return header(name, type_, size), chunks


def a_file(
    name: str = "train.py", data: bytes = b"print(1)\n"
) -> tuple[bytes, Callable[[], Iterator[bytes]]]:
    return header(name, tarfile.REGTYPE, len(data)), lambda: iter([data])


def pax_bomb(path: Path, value_bytes: int, type_: bytes = tarfile.XHDTYPE) -> Path:
    size = pax_length("comment", value_bytes)
    return write_tar(
        path, extended(type_, size, lambda: pax_record("comment", value_bytes)), a_file()
    )


def long_name_bomb(path: Path, name_bytes: int) -> Path:
    def chunks() -> Iterator[bytes]:
        left = name_bytes
        while left:
            n = min(left, MiB)
            yield b"a" * n
            left -= n
        yield b"\0"

    return write_tar(path, extended(tarfile.GNUTYPE_LONGNAME, name_bytes + 1, chunks), a_file())


def peak_while(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        action()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def refused(action: Callable[[], object], match: str) -> int:
    """Peak bytes allocated while ``action`` ran and was refused with ``match``."""

    def run() -> None:
        with pytest.raises(WorkspaceError, match=match):
            action()

    return peak_while(run)


@pytest.mark.parametrize("type_", [tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE])
def test_a_pax_header_bomb_is_refused_before_it_is_read(tmp_path: Path, type_: bytes) -> None:
    tarball = pax_bomb(tmp_path / "ws.tar.gz", 24 * MiB, type_)
    assert tarball.stat().st_size < 200 * 1024  # small upload, big header
    peak = refused(lambda: inspect_tarball(tarball), "extended header of .* bytes")
    assert peak < 4 * MiB, f"{peak} bytes allocated while refusing it"
    dest = tmp_path / "out"
    peak = refused(lambda: extract_workspace(tarball, dest), "over the 1048576-byte limit")
    assert peak < 4 * MiB
    assert not dest.exists()  # nothing written


def test_a_gnu_long_name_bomb_is_refused_before_it_is_read(tmp_path: Path) -> None:
    tarball = long_name_bomb(tmp_path / "ws.tar.gz", 24 * MiB)
    peak = refused(lambda: inspect_tarball(tarball), "GNU long name header of .* bytes")
    assert peak < 4 * MiB


def test_an_extended_header_just_under_the_cap_is_read_but_its_long_name_refused(
    tmp_path: Path,
) -> None:
    tarball = long_name_bomb(tmp_path / "ws.tar.gz", MAX_EXTENDED_HEADER - 1)
    with pytest.raises(WorkspaceError, match="longer than 4096 bytes") as info:
        inspect_tarball(tarball)
    assert len(str(info.value)) < 500  # the name is cut in the message


def test_many_headers_each_under_the_cap_count_toward_a_total(tmp_path: Path) -> None:
    value = MAX_EXTENDED_HEADER - 64
    size = pax_length("comment", value)
    members = []
    for i in range(8):
        members += [
            extended(tarfile.XHDTYPE, size, lambda: pax_record("comment", value)),
            a_file(f"f{i}"),
        ]
    tarball = write_tar(tmp_path / "ws.tar.gz", *members)
    limits = WorkspaceLimits(max_header_bytes=4 * MiB)
    peak = refused(
        lambda: inspect_tarball(tarball, limits), "extended headers exceed 4194304 bytes"
    )
    assert peak < 12 * MiB


def test_a_gnu_sparse_member_is_refused(tmp_path: Path) -> None:
    tarball = write_tar(
        tmp_path / "ws.tar.gz", (header("s", tarfile.GNUTYPE_SPARSE, 0), lambda: iter([b""]))
    )
    with pytest.raises(WorkspaceError, match="sparse"):
        inspect_tarball(tarball)


def test_a_pax_sparse_map_bomb_is_refused_before_it_is_read(tmp_path: Path) -> None:
    # GNU sparse 1.0: the map of (offset, size) numbers is read from the member's data, one
    # Python int per number, before any check sees the member
    records = b"".join(
        b"".join(pax_record(k, 0)).replace(b"=\n", f"={v}\n".encode())
        for k, v in (("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"))
    )
    records = _fix_lengths(records)
    numbers = 2_000_000

    def sparse_map() -> Iterator[bytes]:
        yield f"{numbers // 2}\n".encode()
        for _ in range(numbers // 100_000):
            yield b"1\n" * 100_000

    data_size = len(f"{numbers // 2}\n") + 2 * numbers
    tarball = write_tar(
        tmp_path / "ws.tar.gz",
        (header("pax", tarfile.XHDTYPE, len(records)), lambda: iter([records])),
        (header("sparse", tarfile.REGTYPE, data_size), sparse_map),
    )
    peak = refused(lambda: inspect_tarball(tarball), "sparse")
    assert peak < 4 * MiB


def _fix_lengths(records: bytes) -> bytes:
    """Recompute each pax record's length prefix after its value was edited."""
    out = []
    for line in records.split(b"\n")[:-1]:
        _, rest = line.split(b" ", 1)
        body = len(rest) + 2
        length = body + len(str(body))
        length = body + len(str(length))
        out.append(f"{length} ".encode() + rest + b"\n")
    return b"".join(out)


def test_a_workspace_with_long_names_and_pax_mtimes_still_passes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    deep = src / ("d" * 120) / ("é" * 60)
    deep.mkdir(parents=True)
    (deep / ("f" * 200 + ".py")).write_text("print(1)\n")
    packed = pack_workspace(src, tmp_path / "ws.tar.gz")
    assert inspect_tarball(packed.path) == (1, 9)
    assert extract_workspace(packed.path, tmp_path / "out") == (1, 9)
