"""Stage data in and out of an app's workspace.

First cut: local paths and ``file://`` URLs (a shared filesystem), copied with the standard
library; other schemes are refused at submit until fsspec-backed stores land. Inputs (files,
directories, globs) are copied into ``workspace/<path>`` before the app starts. Outputs are
copied from ``workspace/<path>`` after it exits, to a hidden temporary name beside the target,
then renamed into place, so a reader never sees half an output. Symlinks in an output that lead
outside the workspace are never followed.
"""

from __future__ import annotations

import glob
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlparse

from dlapp.errors import DataError, OutputExistsError
from dlapp.spec import AppSpec, DataBinding, url_scheme

SUPPORTED_SCHEMES = ("file",)
Progress = Callable[[str], None]


def local_path(url: str) -> Path:
    return Path(urlparse(url).path if url.startswith("file:") else url)


def check_urls(spec: AppSpec) -> None:
    """Refuse at submit what staging could not do, naming the URL and the reason."""
    problems: list[str] = []
    for kind, bindings in (("input", spec.inputs), ("output", spec.outputs)):
        for b in bindings:
            scheme = url_scheme(b.url)
            if scheme not in SUPPORTED_SCHEMES:
                problems.append(
                    f"{kind} {b.url}: scheme {scheme!r} is not supported yet "
                    f"(supported: {', '.join(SUPPORTED_SCHEMES)})"
                )
            elif kind == "input" and not _input_matches(local_path(b.url)):
                problems.append(f"input {b.url}: nothing exists there")
    if problems:
        raise DataError("; ".join(problems))


def check_outputs_writable(spec: AppSpec) -> None:
    """``overwrite: false`` with an existing output is refused before the app runs."""
    for b in spec.outputs:
        if not b.overwrite and local_path(b.url).exists():
            raise OutputExistsError(
                f"output {b.url} already exists and overwrite is false "
                "(set overwrite: true, or choose another url)"
            )


def _input_matches(path: Path) -> list[str]:
    if glob.has_magic(str(path)):
        return sorted(glob.glob(str(path)))
    return [str(path)] if path.exists() else []


def _inside(root: Path, target: Path) -> bool:
    try:
        target.resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return False
    return True


def stage_in(
    bindings: Sequence[DataBinding], workspace: Path, progress: Progress | None = None
) -> int:
    """Copy every input into ``workspace/<path>``; returns bytes copied."""
    total = 0
    for b in bindings:
        dest = workspace / b.path
        if not _inside(workspace, dest):
            raise DataError(f"input path {b.path!r} leaves the workspace")
        dest.mkdir(parents=True, exist_ok=True)
        src = local_path(b.url)
        matches = _input_matches(src)
        if not matches:
            raise DataError(f"input {b.url}: nothing exists there")
        copied = 0
        for match in matches:
            m = Path(match)
            if m.is_dir() and not glob.has_magic(str(src)):
                shutil.copytree(m, dest, dirs_exist_ok=True, symlinks=False)
            elif m.is_dir():
                shutil.copytree(m, dest / m.name, dirs_exist_ok=True, symlinks=False)
            else:
                shutil.copy2(m, dest / m.name)
        copied = _tree_size(dest)
        total += copied
        if progress:
            progress(f"input {b.url} -> {b.path}: {copied} bytes")
    return total


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def stage_out(
    bindings: Sequence[DataBinding], workspace: Path, progress: Progress | None = None
) -> int:
    """Commit each output atomically; returns bytes written."""
    total = 0
    for b in bindings:
        src = workspace / b.path
        if not src.exists() or not _inside(workspace, src):
            raise DataError(f"output path {b.path!r} was not produced by the app")
        target = local_path(b.url)
        written = commit_output(src, target, b.overwrite, workspace)
        total += written
        if progress:
            progress(f"output {b.path} -> {b.url}: {written} bytes")
    return total


def commit_output(src: Path, target: Path, overwrite: bool, root: Path) -> int:
    """Copy ``src`` to a temporary sibling of ``target``, then rename it into place."""
    if target.exists() and not overwrite:
        raise OutputExistsError(f"output {target} already exists and overwrite is false")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.dlapp-tmp-{uuid.uuid4().hex[:8]}"
    try:
        if src.is_dir():

            def ignore(dirname: str, names: list[str]) -> list[str]:
                return [
                    n
                    for n in names
                    if os.path.islink(os.path.join(dirname, n))
                    and not _inside(root, Path(dirname, n))
                ]

            shutil.copytree(src, tmp, symlinks=False, ignore=ignore)
        elif src.is_symlink() and not _inside(root, src):
            raise DataError(f"output {src.name} is a link that leaves the workspace")
        else:
            shutil.copy2(src, tmp)
        written = _tree_size(tmp)
        if target.exists():
            old = target.parent / f".{target.name}.dlapp-old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            os.replace(tmp, target)
            _remove(old)
        else:
            os.replace(tmp, target)
        return written
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)
