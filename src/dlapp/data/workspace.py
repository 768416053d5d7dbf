"""Workspace tarballs: pack a user's directory on the client, extract it safely on a node.

The safety rules are a pure core, :func:`check_members`, fed tar headers only: it refuses
anything that could write outside the destination or exhaust the node. ``extract_workspace``
runs it over the whole archive before writing a byte, then extracts with tarfile's ``data``
filter as a second line of defence, and removes what it wrote if anything fails.

Headers are measured before tarfile reads them: tarfile reads a pax extended header or a GNU
long name whole into memory (then parses it into more copies), so any one over
``MAX_EXTENDED_HEADER`` is refused from its size field alone, GNU sparse members (whose maps
tarfile reads into one Python int per number) are refused, and what the headers leave on each
member (name, link target, pax records) counts toward ``max_header_bytes`` in all.

Symlink rule (both sides): a target is relative, its leading ``..`` parts must not climb above
the root, and no ``..`` may follow a name (``a/../b``), since ``a`` could itself be a symlink.
Under this rule every link resolves inside the root, whatever other links exist.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dlapp.errors import WorkspaceError

RATIO_CHECK_MIN_BYTES = 64 * 1024**2  # the ratio guard only applies above this total
MAX_EXTENDED_HEADER = 1024**2  # one pax header or GNU long name/link, read whole by tarfile
MAX_NAME_BYTES = 4096  # a member's name or link target (Linux's PATH_MAX)
_EXTENDED_KINDS = {
    tarfile.XHDTYPE: "pax extended",
    tarfile.SOLARIS_XHDTYPE: "pax extended",
    tarfile.XGLTYPE: "pax global extended",
    tarfile.GNUTYPE_LONGNAME: "GNU long name",
    tarfile.GNUTYPE_LONGLINK: "GNU long link",
}
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


@dataclass(frozen=True)
class WorkspaceLimits:
    max_bytes: int = 2 * 1024**3  # total uncompressed size of regular files
    max_files: int = 100_000  # member count
    max_ratio: int = 200  # uncompressed/compressed, checked when the total > 64 MiB
    max_header_bytes: int = 64 * 1024**2  # names, link targets and pax records of all members


@dataclass(frozen=True)
class PackResult:
    path: Path  # the tar.gz written
    files: int  # regular files
    bytes: int  # uncompressed bytes of regular files
    compressed_bytes: int
    excluded: tuple[str, ...]  # the exclude globs applied


# --- the pure core: decide from headers whether an archive is safe -----------------------


def symlink_problem(link_dir: Sequence[str], target: str) -> str | None:
    """Why a symlink in ``link_dir`` (path parts below the root) to ``target`` is unsafe."""
    if not target:
        return "empty symlink target"
    if "\0" in target:
        return "NUL in symlink target"
    if target.startswith("/"):
        return f"symlink target {target!r} is absolute"
    parts = [p for p in target.split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if ".." in parts[ups:]:
        return f"symlink target {target!r} has '..' after a name"
    if ups > len(link_dir):
        return f"symlink target {target!r} points outside the workspace"
    return None


def header_bytes(m: tarfile.TarInfo) -> int:
    """What the headers of member ``m`` hold in memory: name, link target, pax records."""
    records = sum(len(k) + len(v) for k, v in m.pax_headers.items())
    return len(m.name) + len(m.linkname) + records


def _member_problem(m: tarfile.TarInfo, kinds: dict[str, str]) -> str | None:
    """Why member ``m`` is refused; ``kinds`` maps each path seen so far to its kind."""
    if "\0" in m.name:
        return "NUL in name"
    if max(len(m.name.encode(errors="surrogateescape")), len(m.linkname)) > MAX_NAME_BYTES:
        return f"name or link target longer than {MAX_NAME_BYTES} bytes"
    if m.name.startswith("/"):
        return "absolute path"
    parts = [p for p in m.name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return "'..' in path"
    if m.islnk():
        return f"hard link to {m.linkname!r} (hard links are refused)"
    if m.ischr():
        return "character device"
    if m.isblk():
        return "block device"
    if m.isfifo():
        return "FIFO"
    if not (m.isreg() or m.isdir() or m.issym()):
        return f"unsupported member type {m.type!r}"
    if not parts:
        return None if m.isdir() else "member names the workspace root itself"
    for i in range(1, len(parts)):
        parent = "/".join(parts[:i])
        kind = kinds.setdefault(parent, "directory")
        if kind != "directory":
            return f"path goes through earlier {kind} member {parent!r}"
    key = "/".join(parts)
    kind = "directory" if m.isdir() else "symlink" if m.issym() else "file"
    if key in kinds and not kind == kinds[key] == "directory":
        return f"duplicate member: a {kind} replaces an earlier {kinds[key]}"
    if m.issym():
        problem = symlink_problem(parts[:-1], m.linkname)
        if problem:
            return problem
    kinds[key] = kind
    return None


def check_members(
    members: Iterable[tarfile.TarInfo], limits: WorkspaceLimits, compressed_bytes: int
) -> tuple[int, int]:
    """Return (regular files, their bytes), or raise WorkspaceError at the first bad member."""
    kinds: dict[str, str] = {}
    files = total = headers = 0
    for count, m in enumerate(members, 1):
        problem = _member_problem(m, kinds)
        if problem is None and count > limits.max_files:
            problem = f"archive has more than {limits.max_files} members"
        headers += header_bytes(m)
        if problem is None and headers > limits.max_header_bytes:
            problem = f"extended headers exceed {limits.max_header_bytes} bytes in all"
        if problem is None and m.isreg():
            files += 1
            total += m.size
            if total > limits.max_bytes:
                problem = f"regular files exceed {limits.max_bytes} bytes uncompressed"
            elif total > RATIO_CHECK_MIN_BYTES and total > limits.max_ratio * compressed_bytes:
                problem = (
                    f"{total} bytes uncompressed from {compressed_bytes} compressed exceeds "
                    f"the {limits.max_ratio}:1 ratio (decompression bomb)"
                )
        if problem is not None:
            raise WorkspaceError(f"workspace member {_shown(m.name)} refused: {problem}")
    return files, total


def _shown(name: str, limit: int = 200) -> str:
    """A member name for a message: quoted, and cut if long (a name may be megabytes)."""
    return repr(name) if len(name) <= limit else repr(name[:limit]) + f"... ({len(name)} chars)"


# --- extraction: validate everything, then write, then clean up on failure ---------------


class _MeasuredTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses an oversized extended header, or a sparse member, from the
    header block alone: before tarfile reads what follows it into memory."""

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        kind = _EXTENDED_KINDS.get(self.type)
        if kind is not None and self.size > MAX_EXTENDED_HEADER:
            raise WorkspaceError(
                f"workspace refused: a {kind} header of {self.size} bytes is over the "
                f"{MAX_EXTENDED_HEADER}-byte limit on one extended header"
            )
        if self.type == tarfile.GNUTYPE_SPARSE:
            _refuse_sparse()
        member: tarfile.TarInfo = tarfile.TarInfo._proc_member(self, tar)  # type: ignore[attr-defined]
        return member

    def _proc_gnusparse_10(self, *args: object) -> None:
        _refuse_sparse()  # its map is read from the data, one int a number, before any check


def _refuse_sparse() -> None:
    raise WorkspaceError("workspace refused: sparse files (GNU sparse members) are not supported")


def _open(tarball: Path) -> tarfile.TarFile:
    if not tarball.is_file():
        raise WorkspaceError(f"workspace tarball {str(tarball)!r} does not exist")
    try:
        return tarfile.open(tarball, "r:gz", tarinfo=_MeasuredTarInfo)
    except _READ_ERRORS as e:
        raise WorkspaceError(f"{tarball.name}: not a gzip-compressed tar archive ({e})") from e


def _check(tar: tarfile.TarFile, tarball: Path, limits: WorkspaceLimits) -> tuple[int, int]:
    try:
        return check_members(tar, limits, tarball.stat().st_size)
    except _READ_ERRORS as e:
        raise WorkspaceError(f"{tarball.name}: corrupt or truncated archive ({e})") from e


def inspect_tarball(
    tarball: Path, limits: WorkspaceLimits = WorkspaceLimits(), entry: str | None = None
) -> tuple[int, int]:
    """(regular files, bytes) of a workspace tarball; WorkspaceError if it would be refused,
    or if ``entry`` (the app's entry script) is not a file in it that the runtime can start."""
    with _open(tarball) as tar:
        counts = _check(tar, tarball, limits)
        if entry is not None:
            found = {_key(m.name): (m.type, m.mode, m.linkname) for m in tar.getmembers()}
            problem = entry_script_problem(found.get, entry)
            if problem:
                raise WorkspaceError(problem)
        return counts


# --- the entry script: is it in the workspace, and can the runtime start it? ---------------

Member = tuple[bytes, int, str]  # tar type, mode, link target
Lookup = Callable[[str], Member | None]  # a path below the root -> its member, if packed
_MAX_LINK_HOPS = 40  # as the kernel's ELOOP limit


def _key(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _resolve(lookup: Lookup, path: str) -> str | None:
    """``path`` with every symlink in it followed, inside the workspace; None if it leaves
    the workspace or loops."""
    todo = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if not done:
                return None
            done.pop()
            continue
        done.append(part)
        found = lookup("/".join(done))
        if found is not None and found[0] == tarfile.SYMTYPE:
            hops += 1
            if hops > _MAX_LINK_HOPS or found[2].startswith("/"):
                return None
            done.pop()
            todo = [p for p in found[2].split("/") if p not in ("", ".")] + todo
    return "/".join(done)


def entry_script_problem(lookup: Lookup, script: str) -> str | None:
    """Why the workspace whose members ``lookup`` finds cannot start ``script``, or None.

    The script must be a regular file (or a link to one inside the workspace); one not named
    ``*.sh`` or ``*.py`` is run as a program, so it must be executable (the runtimes' rule)."""
    key = _resolve(lookup, script)
    if key is None:
        return f"entry script {script!r} links outside the workspace, or in a loop"
    found = lookup(key)
    if found is None:
        return f"entry script {script!r} is not in the workspace"
    kind, mode, _ = found
    if kind == tarfile.DIRTYPE:
        return f"entry script {script!r} is a directory, not a file"
    if kind not in (tarfile.REGTYPE, tarfile.AREGTYPE):
        return f"entry script {script!r} is not a regular file"
    if not script.endswith((".sh", ".py")) and not mode & 0o100:
        return (
            f"entry script {script!r} is not executable: make it executable "
            f"(chmod +x {script}) or name it *.sh or *.py"
        )
    return None


# --- writing the extracted workspace ------------------------------------------------------


def _extract_filter(member: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo | None:
    """Strip setuid/setgid/sticky, then tarfile's ``data`` filter (which also drops the owner,
    so extraction never chowns, and re-checks paths and links)."""
    if member.mode is not None:
        member = member.replace(mode=member.mode & 0o777, deep=False)
    return tarfile.data_filter(member, dest_path)


def _remove_written(dest: Path, keep_dir: bool) -> None:
    if not keep_dir:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def extract_workspace(
    tarball: Path, dest: Path, limits: WorkspaceLimits = WorkspaceLimits()
) -> tuple[int, int]:
    """Extract a workspace tarball into ``dest`` (absent or empty); return (files, bytes)."""
    existed = dest.exists()
    if existed and (not dest.is_dir() or any(dest.iterdir())):
        raise WorkspaceError(
            f"extraction target {str(dest)!r} must be absent or an empty directory"
        )
    with _open(tarball) as tar:
        counts = _check(tar, tarball, limits)  # 1. every member, before writing anything
        dest.mkdir(parents=True, exist_ok=True)  # 2. write (GzipFile streams from disk)
        try:
            tar.extractall(dest, filter=_extract_filter)
        except BaseException as e:  # 3. on any failure, leave nothing behind
            _remove_written(dest, keep_dir=existed)
            if isinstance(e, tarfile.FilterError):
                name = _shown(e.tarinfo.name)
                raise WorkspaceError(f"workspace member {name} refused: {e}") from e
            if isinstance(e, _READ_ERRORS):
                raise WorkspaceError(f"extracting {tarball.name} failed: {e}") from e
            raise
    return counts


# --- packing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    rel: str  # POSIX path below the root
    type: bytes  # tarfile.REGTYPE / DIRTYPE / SYMTYPE
    mode: int
    mtime: float
    size: int = 0
    target: str = ""


def _excluded(rel: str, patterns: Sequence[str]) -> bool:
    parts = rel.split("/")
    return any(
        fnmatch.fnmatchcase(rel, p) or any(fnmatch.fnmatchcase(part, p) for part in parts)
        for p in patterns
    )


def _inside(path: str, root: Path) -> bool:
    return os.path.commonpath([path, str(root)]) == str(root)


def _packed_link_target(root: Path, link: Path, rel: str) -> str:
    raw = os.readlink(link)
    real = os.path.realpath(link)
    if not _inside(real, root):
        raise WorkspaceError(
            f"symlink {rel!r} -> {raw!r} points outside the workspace; "
            "copy the target in or exclude the link"
        )
    if symlink_problem(rel.split("/")[:-1], raw) is None:
        return raw
    return os.path.relpath(real, link.parent)  # absolute or roundabout: store it relative


def _scan(root: Path, patterns: Sequence[str], skip: set[Path]) -> Iterator[_Entry]:
    """Walk ``root`` in sorted order; sockets, FIFOs and devices are skipped silently."""

    def walk(directory: Path, prefix: str) -> Iterator[_Entry]:
        with os.scandir(directory) as it:
            items = sorted(it, key=lambda d: d.name)
        for d in items:
            rel, path = prefix + d.name, Path(d.path)
            if _excluded(rel, patterns) or path in skip:
                continue
            st = d.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                target = _packed_link_target(root, path, rel)
                yield _Entry(rel, tarfile.SYMTYPE, 0o777, st.st_mtime, target=target)
            elif stat.S_ISDIR(st.st_mode):
                yield _Entry(rel, tarfile.DIRTYPE, 0o755, st.st_mtime)
                yield from walk(path, rel + "/")
            elif stat.S_ISREG(st.st_mode):
                mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
                yield _Entry(rel, tarfile.REGTYPE, mode, st.st_mtime, size=st.st_size)

    return walk(root, "")


def _add(
    tar: tarfile.TarFile, root: Path, entry: _Entry, read: Callable[[int], None] | None = None
) -> None:
    """Add ``entry``; ``read`` is told the bytes of a file as they are read (a large file's
    progress)."""
    info = tarfile.TarInfo(entry.rel)
    info.type, info.mode, info.mtime = entry.type, entry.mode, entry.mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.linkname = entry.target
    if entry.type != tarfile.REGTYPE:
        tar.addfile(info)
        return
    info.size = entry.size
    with open(root / entry.rel, "rb") as f:
        if os.fstat(f.fileno()).st_size != entry.size:
            raise WorkspaceError(f"workspace file {entry.rel!r} changed size while packing")
        tar.addfile(info, _Counted(f, read) if read else f)


class _Counted:
    """A file whose reads are told to ``read`` (tarfile reads it in 16 KiB chunks)."""

    def __init__(self, f: BinaryIO, read: Callable[[int], None]) -> None:
        self.f, self.told = f, read

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.told(len(data))
        return data


def check_entry_script(src: Path, exclude: Sequence[str], script: str) -> None:
    """A WorkspaceError unless ``src`` as ``pack_workspace`` would pack it (``exclude``
    applied) can start ``script`` (``entry_script_problem``). Looks only along the script's
    path: as quick for a huge workspace as for a small one."""
    root = src.resolve()
    if not root.is_dir():
        raise WorkspaceError(f"workspace {str(src)!r} is not a directory")
    patterns = _patterns(exclude)

    def packed(rel: str) -> Member | None:
        parts = rel.split("/")
        if any(_excluded("/".join(parts[:i]), patterns) for i in range(1, len(parts) + 1)):
            return None
        path = root / rel
        try:
            st = path.lstat()
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return tarfile.SYMTYPE, 0o777, _packed_link_target(root, path, rel)
        if stat.S_ISDIR(st.st_mode):
            return tarfile.DIRTYPE, 0o755, ""
        if stat.S_ISREG(st.st_mode):
            return tarfile.REGTYPE, 0o755 if st.st_mode & stat.S_IXUSR else 0o644, ""
        return None  # sockets, FIFOs, devices: never packed

    problem = entry_script_problem(packed, script)
    if problem is None:
        return
    hit = [p for p in patterns if _excluded(_key(script), [p])]
    if hit and (root / script).exists():
        problem = f"entry script {script!r} is left out by the exclude list ({', '.join(hit)})"
    raise WorkspaceError(f"{problem} (workspace {src})")


def _patterns(exclude: Sequence[str]) -> list[str]:
    return [p.rstrip("/").removeprefix("./") for p in exclude]


def pack_workspace(
    src: Path,
    dest: Path,
    exclude: Sequence[str] = (),
    progress: Callable[[int, int], None] | None = None,
) -> PackResult:
    """Pack ``src`` into the tar.gz ``dest``, skipping paths that match an ``exclude`` glob."""
    root = src.resolve()
    if not root.is_dir():
        raise WorkspaceError(f"workspace {str(src)!r} is not a directory")
    patterns = _patterns(exclude)
    dest = dest.absolute()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            # 1. list everything first, so the total is known and bad links fail early
            entries = list(_scan(root, patterns, skip={tmp.resolve(), dest.resolve()}))
            total = sum(e.size for e in entries)
            done, files = [0], 0
            read: Callable[[int], None] | None = None
            if progress:
                progress(0, total)

                def read(n: int) -> None:  # progress inside each file, not only after it
                    done[0] += n
                    progress(done[0], total)

            # 2. stream each file into the archive
            with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6) as tar:
                for entry in entries:
                    _add(tar, root, entry, read)
                    if entry.type == tarfile.REGTYPE:
                        files += 1
        os.replace(tmp, dest)  # 3. only a complete tarball ever appears at dest
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return PackResult(dest, files, total, dest.stat().st_size, tuple(exclude))
