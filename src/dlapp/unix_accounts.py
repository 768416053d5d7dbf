"""The Unix accounts apps act as: one per dlapp user, never the server's own.

On a multi-user server (docs/security.md) an app, and the staging of its local data, act as
an unprivileged Unix account that belongs to the app's dlapp user, as YARN's
LinuxContainerExecutor and Slurm do. The server decides which (an ``AccountPlan`` in each
container's plan); the node resolves the plan to an ``Account`` here:

1. an existing account named as the dlapp user, when ``map_existing`` and its uid and gid are
   at least ``min_uid`` (never root, never a system account);
2. else ``<prefix><user>`` with the uid the store gave the user: that of the account of this
   name already on the server's machine (a former server's: adopted), else one from the
   admin's range; created on the node the first time it is needed (``groupadd`` +
   ``useradd``: no home, no login shell, no password), the same uid on every node.

Then ``hand_over`` and ``private_dir`` give the app its directories, and ``run_as`` runs a
function as the account in a forked child (staging of local files), with no supplementary
groups and umask 077.
Switching accounts needs the node to run as root; ``AccountError`` says so otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import os
import pwd
import struct
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dlapp import errors
from dlapp.errors import DlappError

T = TypeVar("T")
NO_SHELL = "/usr/sbin/nologin"
NO_HOME = "/nonexistent"
LOCK_FILE = "/run/lock/dlapp-accounts.lock"  # one node's account creations, one at a time
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class AccountError(DlappError):
    """An app's Unix account cannot be found, made or switched to on this node."""


@dataclass(frozen=True)
class AccountPlan:
    """What the server decided: whose app this is, and how to find its account on a node."""

    user: str  # the dlapp user
    uid: int  # the uid the store gave the user, for an account made from the range
    prefix: str = "dlapp-"
    map_existing: bool = True
    min_uid: int = 1000

    @property
    def made_name(self) -> str:
        """The name of the account made from the range (useradd allows 32 characters)."""
        return f"{self.prefix}{self.user}"[:32]

    def to_dict(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "uid": self.uid,
            "prefix": self.prefix,
            "map_existing": self.map_existing,
            "min_uid": self.min_uid,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AccountPlan:
        return cls(
            user=str(data["user"]),
            uid=int(data["uid"]),
            prefix=str(data.get("prefix", "dlapp-")),
            map_existing=bool(data.get("map_existing", True)),
            min_uid=int(data.get("min_uid", 1000)),
        )


@dataclass(frozen=True)
class Account:
    """A Unix account an app runs as."""

    name: str
    uid: int
    gid: int

    def env(self, home: Path) -> dict[str, str]:
        """The login variables of a fresh session of this account, with ``home`` as HOME."""
        return {
            "HOME": str(home),
            "USER": self.name,
            "LOGNAME": self.name,
            "SHELL": "/bin/sh",
            "PATH": SYSTEM_PATH,
            "TMPDIR": str(home / "tmp"),
        }


def resolve(plan: AccountPlan, create: bool = True) -> Account:
    """The account ``plan`` names on this node, made from the range if it is not there yet."""
    if plan.map_existing:
        with contextlib.suppress(KeyError):
            pw = pwd.getpwnam(plan.user)
            if pw.pw_uid >= plan.min_uid and pw.pw_gid >= plan.min_uid:
                return Account(pw.pw_name, pw.pw_uid, pw.pw_gid)
    if plan.uid < plan.min_uid:
        raise AccountError(f"uid {plan.uid} for user {plan.user!r} is below {plan.min_uid}")
    try:
        found = _made(plan)
    except AccountError:  # read while another container of this node was making it: again,
        found = (
            None  # under the lock that creation holds (a name and uid that disagree stay refused)
        )
        if not create:
            found = _made(plan)
    if found is None and create:
        with _creation_lock():
            found = _made(plan)  # another container of the node may have made it meanwhile
            if found is None:
                _create(plan.made_name, plan.uid)
                found = _made(plan)
    if found is None:
        raise AccountError(f"no Unix account {plan.made_name!r} (uid {plan.uid}) on this node")
    return found


def _made(plan: AccountPlan) -> Account | None:
    """The range account of ``plan`` if it exists; AccountError if its name or uid is taken
    by something else (never run an app as an account that is not its user's)."""
    name = plan.made_name
    by_name = _get(pwd.getpwnam, name)
    by_uid = _get(pwd.getpwuid, plan.uid)
    if by_name is None and by_uid is None:
        return None
    if by_name is None or by_uid is None or by_name.pw_uid != by_uid.pw_uid:
        taken = f"uid {plan.uid} belongs to {by_uid.pw_name!r}" if by_uid else f"{name!r} exists"
        raise AccountError(
            f"cannot run {plan.user!r}'s apps as {name!r} with uid {plan.uid}: {taken} "
            "(give dlapp a uid range of its own: app_uid_range)"
        )
    if by_name.pw_gid < plan.min_uid:
        raise AccountError(f"account {name!r} has the system group {by_name.pw_gid}")
    return Account(by_name.pw_name, by_name.pw_uid, by_name.pw_gid)


def uid_free_for(name: str, uid: int) -> bool:
    """Whether ``uid`` may be given to the account ``name`` on this machine: no other account
    or group holds it (one left by a former server on the same machine, say)."""
    holder = _get(pwd.getpwuid, uid)
    if holder is not None and holder.pw_name != name:
        return False
    try:
        group = grp.getgrgid(uid)
    except KeyError:
        return True
    return group.gr_name == name


def adoptable_uid(name: str, min_uid: int = 1000) -> int | None:
    """The uid of the range account ``name`` if this machine has it already (a former server,
    or the admin, made it), its uid and group both at least ``min_uid``: the uid its user
    keeps, so that the account is used again instead of refused as taken."""
    account = _get(pwd.getpwnam, name)
    if account is None or min(account.pw_uid, account.pw_gid) < min_uid:
        return None
    return account.pw_uid


def _get(fn: Callable[[Any], pwd.struct_passwd], key: Any) -> pwd.struct_passwd | None:
    try:
        return fn(key)
    except KeyError:
        return None


@contextlib.contextmanager
def _creation_lock() -> Iterator[None]:
    path = Path(LOCK_FILE)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError:  # no lock directory: useradd's own lock still serialises the files
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _create(name: str, uid: int) -> None:
    if os.geteuid() != 0:
        raise AccountError(
            f"cannot make the Unix account {name!r}: this node does not run as root "
            "(make the account, or run the node as root)"
        )
    steps = [
        ["groupadd", "--gid", str(uid), name],
        [
            "useradd",
            *("--uid", str(uid), "--gid", str(uid), "--no-create-home"),
            *("--home-dir", NO_HOME, "--shell", NO_SHELL, "--no-user-group"),
            name,
        ],
    ]
    for argv in steps:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0 and not (argv[0] == "groupadd" and done.returncode == 9):
            raise AccountError(
                f"cannot make the Unix account {name!r}: {argv[0]} said: "
                f"{done.stderr.strip() or done.returncode}"
            )


def can_switch() -> bool:
    """Whether this process may act as another account (it runs as root)."""
    return os.geteuid() == 0


# -- directories ------------------------------------------------------------------------------


def give(path: Path, account: Account, mode: int) -> None:
    """``path`` (not a link) to ``account``, with ``mode``."""
    os.lchown(path, account.uid, account.gid)
    os.chmod(path, mode)


def chown_tree(root: Path, uid: int, gid: int) -> None:
    """As root: ``root`` and every entry under it (links themselves, never their targets) to
    ``uid:gid``; nothing when ``root`` does not exist."""
    if not root.exists():
        return
    os.lchown(root, uid, gid)
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lchown(os.path.join(base, name), uid, gid)


def hand_over(root: Path, account: Account) -> None:
    """A tree the node filled (a workspace, a kept checkpoint directory) to ``account``, its
    top only the account may enter (0700)."""
    chown_tree(root, account.uid, account.gid)
    os.chmod(root, 0o700)


def private_dir(path: Path, account: Account) -> Path:
    """A fresh directory only ``account`` may enter."""
    path.mkdir(parents=True, exist_ok=True)
    give(path, account, 0o700)
    return path


def make_passable(path: Path) -> None:
    """Make ``path`` if missing, each directory made on the way 0711 (whatever the umask)."""
    missing = [p for p in [path, *path.parents] if not p.exists()]
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another container made it meanwhile
            p.mkdir()
            os.chmod(p, 0o711)


def passable(path: Path, top: Path) -> None:
    """``path`` and its parents up to ``top`` may be passed through (0711), never listed."""
    for p in [path, *path.parents]:
        st = p.stat()
        os.chmod(p, (st.st_mode & 0o700) | 0o011)
        if p == top:
            break


# -- running as the account -------------------------------------------------------------------

_HEADER = struct.Struct("!I")


def run_as(
    account: Account, fn: Callable[[Callable[[str], None]], T], say: Callable[[str], None]
) -> T:
    """``fn(say)`` in a forked child acting as ``account`` (no supplementary groups, umask
    077); its return value (JSON-able), or its error raised again here. The lines it says come back
    through a pipe, in order, as it goes."""
    if not can_switch():
        raise AccountError("cannot act as another account: this node does not run as root")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the account, run, report, never return
        os.close(read_fd)
        status = 0
        try:
            os.setgroups([])
            os.setgid(account.gid)
            os.setuid(account.uid)
            os.umask(0o077)

            def child_say(line: str) -> None:
                _send(write_fd, ("line", line))

            _send(write_fd, ("done", fn(child_say)))
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                _send(write_fd, ("error", (type(exc).__name__, str(exc))))
            status = 1
        finally:
            os._exit(status)
    os.close(write_fd)
    try:
        result: Any = None
        failure: tuple[str, str] | None = ("ChildDied", "the staging helper died")
        with os.fdopen(read_fd, "rb") as pipe:
            for kind, value in _messages(pipe):
                if kind == "line":
                    say(value)
                elif kind == "done":
                    result, failure = value, None
                else:
                    failure = (str(value[0]), str(value[1]))
    finally:
        os.waitpid(pid, 0)
    if failure is not None:
        raise _rebuilt(*failure)
    return result  # type: ignore[no-any-return]


def _send(fd: int, message: tuple[str, Any]) -> None:
    data = json.dumps(message).encode()
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _messages(pipe: Any) -> Iterator[tuple[str, Any]]:
    while header := pipe.read(_HEADER.size):
        if len(header) < _HEADER.size:
            return
        body = pipe.read(_HEADER.unpack(header)[0])
        kind, value = json.loads(body)  # JSON, not pickle: the child acted as the user
        yield str(kind), value


def _rebuilt(name: str, message: str) -> Exception:
    """The child's error as one of dlapp's own (a DataError for any other kind)."""
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, DlappError):
        with contextlib.suppress(Exception):
            return cls(message)
    if name in ("PermissionError", "FileNotFoundError", "IsADirectoryError", "OSError"):
        return errors.DataError(f"{message} ({name}, as the app's account)")
    return errors.DataError(f"{name}: {message}" if message else name)
