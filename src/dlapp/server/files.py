"""The server's files at rest: only the server's user may read them.

At start ``dlapp server`` sets its umask to 077 (what it and its embedded Ray's workers write,
a store, a tarball, a kept log, is 0600 and each new directory 0700) and the server narrows
what an older version left open: the data dir and its directories 0700, its files 0600.
Apps never need the data dir: their workspaces live under the work root
(``ServerSettings.work``), which their accounts may pass through (0711) but never list.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from dlapp.config import ServerSettings

UMASK = 0o077


def private_umask() -> None:
    """What the server process (and the Ray it starts) writes from now on: 0600 / 0700. Set by
    ``dlapp server`` at start (not by ``create_app``, which tests run in their own process)."""
    os.umask(UMASK)


def harden(settings: ServerSettings) -> list[Path]:
    """The data dir and the directories the server keeps 0700, and the data dir's own files
    0600; returns what was narrowed."""
    changed: list[Path] = []
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    for d in (home, settings.artifacts, settings.cache):
        if d == home or _inside(d, home) or d.exists():
            d.mkdir(parents=True, exist_ok=True)
            _narrow(d, 0o700, changed)
    with contextlib.suppress(OSError):
        for entry in home.iterdir():
            _narrow(entry, 0o700 if entry.is_dir() and not entry.is_symlink() else 0o600, changed)
    return changed


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _narrow(path: Path, mode: int, changed: list[Path]) -> None:
    """``path`` to ``mode`` at most (a file keeps no more than it had), if it is the server's."""
    with contextlib.suppress(OSError):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid():
            return
        now = stat.S_IMODE(st.st_mode)
        want = mode if stat.S_ISDIR(st.st_mode) else now & mode
        if now != want:
            os.chmod(path, want)
            changed.append(path)
