"""The guard: first process of a container started by the ``process`` runtime.

Run as ``python -I -S .../dlapp/runtime/guard.py --parent PID [--user UID:GID] [--cleanup JSON]
-- CMD...`` (``python -m dlapp.runtime.guard`` works too). It leads the container's process
group and:

1. starts CMD in that same group, inheriting stdio, and waits for it; with ``--user``, CMD runs
   as that uid and gid with no supplementary groups and umask 077, while the guard stays the
   node's (the app can neither signal it nor stop it from cleaning up);
2. keeps waiting through SIGTERM and SIGINT: a no-op handler (not SIG_IGN, which an exec'd
   program would inherit) lets a signal sent to the group reach the app while the guard stays;
3. fate-shares with the supervisor: once its parent is no longer PID (the supervisor died and
   the guard was re-parented), it SIGKILLs the whole group, itself included; first it runs
   the ``--cleanup`` command (a JSON argv, e.g. ``["docker", "rm", "-f", NAME]``: a container
   outlives the ``docker run`` client that the group holds);
4. when CMD exits, SIGKILLs whatever is left in the group (background children), then exits
   with CMD's exit code, ``128 + N`` if CMD was killed by signal N, as a shell reports it.

The guard is two processes of the group: a stand-in that the supervisor started, and the
watcher it forks, which does all of the above with the stand-in as its parent. Ray SIGKILLs a
worker's direct children when the worker exits: that reaches the stand-in alone, and the
watcher, seeing its parent gone, kills the whole group. The stand-in watches the supervisor
too, and exits with the watcher's exit code.

Standard library only and no import of the rest of dlapp: it starts fast, and (run with ``-I
-S``) never imports a module from the app's workspace, ``PYTHONPATH`` or site-packages. Once the
app has exited, the guard's two processes end with ``os._exit`` (no interpreter teardown): the
exit reaches the supervisor a few milliseconds after the app's.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from types import FrameType

# Imported only where needed: ``json`` for a ``--cleanup``, ``subprocess`` to run it. The app is
# started by ``_spawn`` (fork and exec), not ``subprocess.Popen``: the guard is on the path
# of every container's start, and importing ``subprocess`` costs about as much as the rest of
# the guard's start.

POLL_S = 0.2  # how often the guard checks that its supervisor is alive
STRAGGLER_ROUNDS = 50  # kill-and-rescan rounds for processes left behind by the app
STRAGGLER_PAUSE_S = 0.02

CLEANUP_TIMEOUT_S = 30.0
MAX_FD = 65536  # descriptors closed in the app's process before its exec: 3 up to this

USAGE = "usage: guard.py --parent PID [--user UID:GID] [--cleanup JSON-ARGV] -- CMD [ARG...]"


def _parse(argv: list[str]) -> tuple[int, tuple[int, int] | None, list[str], list[str]]:
    """(parent PID, (uid, gid) to run CMD as or None, cleanup argv or [], CMD)."""
    if len(argv) < 4 or argv[0] != "--parent" or not argv[1].isdigit():
        raise ValueError(USAGE)
    parent, rest = int(argv[1]), argv[2:]
    user: tuple[int, int] | None = None
    if rest[:1] == ["--user"] and len(rest) >= 2:
        uid, _, gid = rest[1].partition(":")
        if not (uid.isdigit() and gid.isdigit()) or int(uid) == 0 or int(gid) == 0:
            raise ValueError(USAGE)
        user, rest = (int(uid), int(gid)), rest[2:]
    cleanup: list[str] = []
    if rest[:1] == ["--cleanup"] and len(rest) >= 2:
        import json

        try:
            cleanup = json.loads(rest[1])
        except ValueError:
            raise ValueError(USAGE) from None
        if not isinstance(cleanup, list) or not all(isinstance(a, str) for a in cleanup):
            raise ValueError(USAGE)
        rest = rest[2:]
    if len(rest) < 2 or rest[0] != "--":
        raise ValueError(USAGE)
    return parent, user, cleanup, rest[1:]


def _kill_group(cleanup: list[str] | None = None) -> None:
    """Run ``cleanup`` (best effort), then SIGKILL the container's whole process group, the
    guard included."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})  # not for the cleanup command
    if cleanup:
        import subprocess

        try:  # noqa: SIM105 (no contextlib: the guard imports little, to start fast)
            subprocess.run(
                cleanup,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=CLEANUP_TIMEOUT_S,
                start_new_session=True,  # out of the group it is about to kill
            )
        except (OSError, subprocess.SubprocessError):
            pass
    os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(128 + signal.SIGKILL)  # not reached: the guard is in the group


def _live_group_members(pgid: int) -> list[int]:
    """PIDs of the other live (non-zombie) processes whose process group is ``pgid``."""
    me = os.getpid()
    try:
        names = os.listdir("/proc")
    except OSError:  # no procfs: nothing we can find
        return []
    pids = []
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
            state, _ppid, pgrp = stat[stat.rindex(b")") + 2 :].split()[:3]
        except (OSError, ValueError):  # gone meanwhile, or unreadable
            continue
        if int(pgrp) == pgid and state not in (b"Z", b"X"):
            pids.append(int(name))
    return pids


def _kill_stragglers(spare: int) -> None:
    """SIGKILL the rest of the group (the app's background children) until none is left,
    sparing ``spare`` (the stand-in, which is waiting for this process's exit code)."""
    pgid = os.getpgrp()
    for _ in range(STRAGGLER_ROUNDS):
        pids = [p for p in _live_group_members(pgid) if p != spare]
        if not pids:
            return
        for pid in pids:
            try:  # noqa: SIM105
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # exited meanwhile
                pass
        time.sleep(STRAGGLER_PAUSE_S)


def main(argv: list[str] | None = None) -> int:
    try:
        parent, user, cleanup, cmd = _parse(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"dlapp guard: {exc}", file=sys.stderr)
        return 2

    received: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if os.getpgrp() != os.getpid():  # started without a session of its own: lead a group
        os.setpgid(0, 0)

    # 0. The stand-in stays the supervisor's child; the watcher goes on as its child.
    if os.getppid() != parent:
        _kill_group(cleanup)
    watcher = os.fork()
    if watcher:
        return _stand_in(watcher, parent, cleanup)
    parent = os.getppid()  # the stand-in

    # 1. Start the app, unless the stand-in is already gone or the stop came first.
    if os.getppid() != parent:
        _kill_group(cleanup)
    if received:
        return 128 + received[0]
    try:
        child = _spawn(cmd, user)
    except OSError as exc:
        print(f"dlapp guard: cannot start {cmd[0]!r}: {exc}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126

    # 2. Wait for it, fate-sharing with the supervisor. SIGCHLD is blocked (only now: the app
    # must not inherit the mask) and waited for, so that its exit is seen at once.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid == child:
            returncode = os.waitstatus_to_exitcode(status)
            break
        if os.getppid() != parent:
            _kill_group(cleanup)
        signal.sigtimedwait({signal.SIGCHLD}, POLL_S)

    # 3. Nothing of the container outlives its main process.
    _kill_stragglers(spare=parent)
    return 128 - returncode if returncode < 0 else returncode


def _spawn(cmd: list[str], user: tuple[int, int] | None) -> int:
    """Start ``cmd`` in this process group, inheriting stdio (and nothing else: every other
    descriptor is closed), as ``subprocess.Popen`` would with ``restore_signals``; with
    ``user``, as that uid and gid with no supplementary groups and umask 077. Its PID; an
    ``OSError`` (with the errno of the failed exec) where it cannot be started."""
    # the paths to try, found here: the child, once it is the app's user, may not be able to
    # import a module (``os.execvp`` imports some) from the node's Python installation
    if os.path.dirname(cmd[0]):
        candidates = [cmd[0]]
    else:
        path = os.environ.get("PATH", os.defpath).split(os.pathsep)
        candidates = [os.path.join(d, cmd[0]) for d in path]
    read_end, write_end = os.pipe()  # close-on-exec: the child's exec closes its end
    pid = os.fork()
    if pid == 0:  # the child: nothing but system calls until the exec, then _exit
        try:
            os.close(read_end)
            os.closerange(3, write_end)
            os.closerange(write_end + 1, MAX_FD)
            for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ"):  # Python ignores them: not the app
                if hasattr(signal, name):
                    signal.signal(getattr(signal, name), signal.SIG_DFL)
            if user is not None:
                os.umask(0o077)
                os.setgroups([])
                os.setregid(user[1], user[1])
                os.setreuid(user[0], user[0])
            _exec(candidates, cmd)
        except OSError as exc:
            code = exc.errno or errno.EPERM
            try:
                os.write(write_end, f"{code}:{exc.strerror or exc}".encode())
            finally:
                os._exit(255)
        except BaseException:
            os._exit(255)
        os._exit(255)  # not reached: an exec returns only by raising
    os.close(write_end)
    try:
        failure = b""
        while chunk := os.read(read_end, 4096):
            failure += chunk
    finally:
        os.close(read_end)
    if not failure:
        return pid
    os.waitpid(pid, 0)
    number, _, message = failure.decode(errors="replace").partition(":")
    raise OSError(int(number) if number.isdigit() else errno.EPERM, message)


def _exec(candidates: list[str], cmd: list[str]) -> None:
    """Exec the first of ``candidates`` that runs, as ``os.execvp`` does with a PATH: raise
    the first error that is not "no such file", else the last one."""
    saved: OSError | None = None
    last: OSError = FileNotFoundError(errno.ENOENT, "No such file or directory")
    for path in candidates:
        try:
            os.execv(path, cmd)
        except (FileNotFoundError, NotADirectoryError) as exc:
            last = exc
        except OSError as exc:
            last = exc
            saved = saved or exc
    raise saved or last


def _stand_in(watcher: int, supervisor: int, cleanup: list[str]) -> int:
    """Wait for the watcher and give its exit code; kill the group if the supervisor goes.
    SIGCHLD is blocked here and waited for, so the exit code comes as soon as it is there."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    while True:
        try:
            pid, status = os.waitpid(watcher, os.WNOHANG)
        except ChildProcessError:  # reaped already: nothing left to report
            return 128 + signal.SIGKILL
        if pid == watcher:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code
        if os.getppid() != supervisor:
            _kill_group(cleanup)
        signal.sigtimedwait({signal.SIGCHLD}, POLL_S)


def _exit(code: int) -> None:
    """Exit with ``code`` at once: no interpreter teardown (milliseconds between the app's exit
    and its report, twice: the watcher's and the stand-in's), and none of the stand-in's state
    run again in the watcher, its fork."""
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105
            stream.flush()
        except Exception:
            pass
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
