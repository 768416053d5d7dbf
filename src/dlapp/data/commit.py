"""Commit an app's output to its store, so that a reader never sees half of it.

Two ways, by store (``stores.RENAME_STORES``):

- **rename** (local paths, sftp, hdfs, webhdfs): upload to a hidden sibling
  ``.<name>.dlapp-tmp-<hex>``, then rename it into place. An existing output (with
  ``overwrite``) is first renamed to ``.<name>.dlapp-old-<hex>`` and removed after. A reader
  sees the old output, then the whole new one; for an instant, between the two renames, none.
- **marker** (s3, gs and other object stores, where a rename is a copy): upload to the hidden
  prefix ``.<name>.dlapp-tmp-<hex>``, then copy each object to its place (each object appears
  whole), then write ``<url>/_DLAPP_SUCCESS`` last, for a directory. An interrupted upload leaves
  nothing under the URL; an interrupted copy leaves some objects and no marker, so readers of a
  directory output wait for the marker. With ``overwrite``, the old objects are removed before
  the copy.

What is uploaded: regular files of the output, and links that stay inside the workspace.
Links leading out of the workspace, links to directories, hard links shared with files
outside the output, and other special files are skipped (and named in the app's log).
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dlapp.data.locations import Location, retrying
from dlapp.errors import DataError, OutputExistsError

MARKER = "_DLAPP_SUCCESS"
File = tuple[Path, str]  # (path in the workspace, relative name in the output)


def output_files(src: Path, workspace: Path) -> tuple[list[File], list[str]]:
    """The files of the output at ``src`` that may leave the node, and why others may not."""
    root = workspace.resolve()
    if not src.is_dir() or src.is_symlink():
        why = _unsafe(src, root, Counter())
        if why:
            raise DataError(f"output {src.name} is {why}")
        return [(src, src.name)], []
    entries: list[Path] = []
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                skipped.append(f"{_rel(src, Path(dirpath, d))}: a link to a directory")
        entries += [Path(dirpath, f) for f in filenames]
    counts: Counter[tuple[int, int]] = Counter()
    for p in entries:
        st = p.lstat()
        if stat.S_ISREG(st.st_mode):
            counts[(st.st_dev, st.st_ino)] += 1
    files: list[File] = []
    for p in sorted(entries):
        why = _unsafe(p, root, counts)
        if why:
            skipped.append(f"{_rel(src, p)}: {why}")
        else:
            files.append((p, _rel(src, p)))
    return files, skipped


def _rel(src: Path, p: Path) -> str:
    return p.relative_to(src).as_posix()


def _unsafe(p: Path, root: Path, counts: Counter[tuple[int, int]]) -> str | None:
    if p.is_symlink():
        real = p.resolve()
        try:
            real.relative_to(root)
        except ValueError:
            return "a link that leaves the workspace"
        if not real.is_file():
            return "a link to something other than a file"
        st = real.stat()
    else:
        st = p.lstat()
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
    if st.st_nlink > max(1, counts[(st.st_dev, st.st_ino)]):
        return "a hard link shared with a file outside the output"
    return None


def commit(
    loc: Location,
    files: Sequence[File],
    single: bool,
    overwrite: bool,
    uploaded: Callable[[int], None] | None = None,
) -> int:
    """Upload ``files`` to ``loc`` and make them visible at once; returns bytes written.
    ``uploaded(size)`` hears of each file once it is uploaded (not yet visible)."""
    fs = loc.fs
    target = loc.path.rstrip("/") or loc.path
    parent, _, name = target.rpartition("/")
    tag = uuid.uuid4().hex[:8]
    tmp = f"{parent}/.{name}.dlapp-tmp-{tag}"
    if not overwrite and fs.exists(target):
        raise OutputExistsError(f"output {loc.url} already exists and overwrite is false")
    if parent and loc.renames_atomically:
        fs.makedirs(parent, exist_ok=True)
    try:
        written = _upload(fs, files, tmp, single, uploaded)
        if loc.renames_atomically:
            _swap_in(fs, tmp, target, f"{parent}/.{name}.dlapp-old-{tag}", overwrite, loc.url)
        else:
            _copy_in(fs, tmp, target, [rel for _, rel in files], single, overwrite, loc.url)
        return written
    finally:
        _remove(fs, tmp)


def _upload(
    fs: Any,
    files: Sequence[File],
    dest: str,
    single: bool,
    uploaded: Callable[[int], None] | None = None,
) -> int:
    written = 0
    if not single:
        fs.makedirs(dest, exist_ok=True)
    for path, rel in files:
        remote = dest if single else f"{dest}/{rel}"
        if not single and "/" in rel:
            fs.makedirs(remote.rpartition("/")[0], exist_ok=True)
        put_file(fs, path, remote)
        n = path.stat().st_size
        written += n
        if uploaded is not None:
            uploaded(n)
    return written


def put_file(fs: Any, path: Path, remote: str) -> None:
    """One file to the store, streamed by the store's client, retried on transient errors."""
    retrying(lambda: fs.put_file(str(path), remote))


def _swap_in(fs: Any, tmp: str, target: str, old: str, overwrite: bool, url: str) -> None:
    if fs.exists(target):
        if not overwrite:
            raise OutputExistsError(f"output {url} already exists and overwrite is false")
        fs.mv(target, old)
        fs.mv(tmp, target)
        _remove(fs, old)
    else:
        fs.mv(tmp, target)


def _copy_in(
    fs: Any, tmp: str, target: str, rels: Sequence[str], single: bool, overwrite: bool, url: str
) -> None:
    if fs.exists(target):
        if not overwrite:
            raise OutputExistsError(f"output {url} already exists and overwrite is false")
        if not single:
            _remove(fs, f"{target}/{MARKER}")
            fs.rm(target, recursive=True)
    if single:
        retrying(lambda: fs.copy(tmp, target))
        return
    for rel in rels:
        retrying(lambda rel=rel: fs.copy(f"{tmp}/{rel}", f"{target}/{rel}"))  # type: ignore[misc]
    marker = json.dumps({"files": len(rels)}).encode()
    retrying(lambda: fs.pipe_file(f"{target}/{MARKER}", marker))


def _remove(fs: Any, path: str) -> None:
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except OSError:
        pass
    fs.invalidate_cache()
