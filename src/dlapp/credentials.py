"""Secrets on disk: files that only their owner may read.

The server writes the first admin's token to ``<home>/admin.token``; a client keeps its token in
``~/.config/dlapp/client.yaml``. Both are written with mode 0600, and a token is read from a
file only when the file belongs to the caller and no one else can read or write it.
Like ``errors``, this module imports nothing else of the package.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from dlapp.errors import DlappError

ADMIN_TOKEN_FILE = "admin.token"
SECRET_ENV = frozenset({"DLAPP_TOKEN"})  # never passed on to the server or to apps


def without_secrets(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in SECRET_ENV}


def check_private(path: Path, what: str = "a token") -> None:
    """Refuse a file that others may read or write, or that another user owns."""
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise DlappError(
            f"refusing to read {what} from {path}: other users can read or write it "
            f"(mode {mode:04o}); run `chmod 600 {path}`"
        )
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise DlappError(f"refusing to read {what} from {path}: it belongs to another user")


def read_private(path: Path, what: str = "a token") -> str:
    try:
        check_private(path, what)
        return path.read_text().strip()
    except FileNotFoundError:
        raise DlappError(f"cannot read {what}: {path} does not exist") from None
    except OSError as exc:
        raise DlappError(f"cannot read {what} from {path}: {exc.strerror}") from None


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 (its directory 0700 if it is made now)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
