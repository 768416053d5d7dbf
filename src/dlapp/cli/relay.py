"""``dlapp`` inside a dev shell: a relay to the ``dlapp shell`` process on the host.

The shell's image need not hold dlapp (nor Python), reach the server, or hold a token. ``dlapp
shell`` mounts ``SHIM`` (POSIX sh: busybox, dash and bash run it) at ``/dlapp/bin/dlapp`` and
``/dlapp/bin/dlapp-run`` (the reference system's name of ``dlapp run``), first on the shell's
PATH, and a relay directory at ``/dlapp/relay``. Typed in the shell, ``dlapp ARGS``
drops a request there (its working directory and ARGS, one a line); the ``dlapp shell`` process
on the host, which waits for the container anyway, runs the command as its user with their own
client configuration (the server saved by ``dlapp login``, ``DLAPP_SERVER``/``DLAPP_TOKEN``, or
the embedded cluster and its ``admin.token``) and hands its output and exit status back through
files the script prints. So no token, no server address and no route to the server enter the
container, and the shell keeps the network the app would have.

Relayed: ``run`` (``launch`` of the shell's spec, or of a spec file in the workspace), ``status``,
``list``, ``logs``, ``kill``, ``softkill``, ``queues``, ``gpus``; anything else is refused with
that list. Only requests owned by the shell's user are read; Ctrl-C in the shell interrupts the
command on the host (``run --follow`` stops following, the app runs on).

Files in the relay directory, per request ``ID``: ``req.ID`` (the shell's), ``out.ID`` (the
command's stdout and stderr), ``cancel.ID`` (the shell's Ctrl-C), ``rc.ID`` (the exit status,
written last).
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from dlapp.errors import DlappError
from dlapp.runtime.base import exit_code_from_returncode

logger = logging.getLogger(__name__)

RELAY_IN_CONTAINER = "/dlapp/relay"
SHIM_IN_CONTAINER = "/dlapp/bin/dlapp"
RUN_SHIM_IN_CONTAINER = "/dlapp/bin/dlapp-run"  # the same script: ``dlapp run``
RELAYED = ("run", "status", "list", "logs", "kill", "softkill", "queues", "gpus")
MAX_REQUEST_BYTES = 64 * 1024
POLL_S = 0.1
EXIT_REFUSED = 2

SHIM = r"""#!/bin/sh
# dlapp inside a dlapp shell: hands the command to `dlapp shell` on the host (dlapp.cli.relay)
relay=${DLAPP_RELAY:-/dlapp/relay}
case ${0##*/} in dlapp-run) set -- run "$@" ;; esac  # the reference system's name
if [ ! -d "$relay" ]; then
  echo "dlapp: not in a dlapp shell (no $relay)" >&2
  exit 1
fi
for arg in "$@"; do
  case $arg in *'
'*) echo "dlapp: an argument with a line break cannot be relayed" >&2; exit 2 ;; esac
done
new=$(mktemp "$relay/new.XXXXXX") || exit 1
id=${new##*/new.}
{ pwd; if [ $# -gt 0 ]; then printf '%s\n' "$@"; fi; } > "$new" || exit 1
chmod 644 "$new" && mv "$new" "$relay/req.$id" || exit 1
out=$relay/out.$id
rc=$relay/rc.$id
trap ': > "$relay/cancel.$id"' INT TERM HUP
waited=0
while [ ! -f "$out" ]; do
  waited=$((waited + 1))
  if [ "$waited" -gt 100 ]; then
    rm -f "$relay/req.$id"
    echo "dlapp: no dlapp shell on the host answers (relay $relay)" >&2
    exit 1
  fi
  sleep 0.1
done
shown=0
finished=
while :; do
  if [ -f "$rc" ]; then finished=1; fi
  size=$(wc -c < "$out")
  if [ "$size" -gt "$shown" ]; then
    tail -c +$((shown + 1)) "$out" | head -c $((size - shown))
    shown=$size
  fi
  if [ -n "$finished" ]; then break; fi
  sleep 0.2
done
exit "$(cat "$rc")"
"""


class RelayRefused(DlappError):
    """A command typed in the shell that the relay does not run (exit status 2)."""


@dataclass(frozen=True)
class ShellPlace:
    """Where the shell's spec and workspace are on the host, and where the shell sees them."""

    spec_file: Path  # the spec ``dlapp shell`` was given, absolute
    workspace: Path  # its workspace on the host, absolute
    mounted_at: str  # the workspace in the shell (the policy's workspace_path)


def help_text() -> str:
    return (
        "dlapp inside a dlapp shell runs on the host, as you, with your own server and token:\n"
        "  dlapp run [--wait] [--follow] [SPEC_FILE]  submit this shell's spec (or SPEC_FILE,\n"
        "                                              a spec in the workspace) and workspace\n"
        "  dlapp status|list|logs|kill|softkill|queues|gpus ...   as outside the shell\n"
    )


def wants_help(args: Sequence[str]) -> bool:
    return not args or args[0] in ("-h", "--help", "help")


def host_argv(args: Sequence[str], cwd: str, place: ShellPlace) -> list[str]:
    """The ``dlapp`` argv to run on the host for ``dlapp ARGS`` typed in the shell in ``cwd``;
    RelayRefused for what is not relayed. Pure."""
    if wants_help(args):
        raise RelayRefused(help_text())
    command, rest = args[0], list(args[1:])
    if command not in RELAYED:
        raise RelayRefused(
            f"dlapp {command}: not available inside a dlapp shell; these are: {', '.join(RELAYED)}"
        )
    if command != "run":
        return [command, *rest]
    flags = [a for a in rest if a.startswith("-")]
    unknown = sorted(set(flags) - {"--wait", "--follow"})
    if unknown:
        raise RelayRefused(
            f"dlapp run: unknown option(s) {', '.join(unknown)}; use --wait, --follow"
        )
    specs = [a for a in rest if not a.startswith("-")]
    if len(specs) > 1:
        raise RelayRefused("dlapp run: give at most one SPEC_FILE")
    spec = place.spec_file if not specs else _on_host(specs[0], cwd, place)
    return ["launch", str(spec), *dict.fromkeys(flags)]


def _on_host(path: str, cwd: str, place: ShellPlace) -> Path:
    """A path typed in the shell as the host sees it: only inside the mounted workspace."""
    inside = posixpath.normpath(posixpath.join(cwd, path))
    rel = posixpath.relpath(inside, place.mounted_at)
    if rel == ".." or rel.startswith("../"):
        raise RelayRefused(
            f"dlapp run {path}: only a spec file in the workspace ({place.mounted_at}) can be "
            "run from the shell"
        )
    return place.workspace / rel


def parse_request(text: str) -> tuple[str, list[str]]:
    """(working directory, args) of a request file's text: the directory, then one argument a
    line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise RelayRefused("an empty request")
    return lines[0], lines[1:]


class Relay:
    """Serves the shell's requests from ``directory`` (mounted at ``/dlapp/relay``) while the
    shell runs: ``with Relay(...):``. Requests not owned by ``uid`` (the shell's user) are
    ignored; each runs as ``python -m dlapp.cli.main ...`` in a thread of its own."""

    def __init__(
        self,
        directory: Path,
        uid: int,
        place: ShellPlace,
        program: Sequence[str] = (sys.executable, "-m", "dlapp.cli.main"),
    ) -> None:
        self.directory = directory
        self.uid = uid
        self.place = place
        self.program = list(program)  # what runs the host argv: this dlapp
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[str, subprocess.Popen[bytes]] = {}
        self._threads: list[threading.Thread] = []
        self._poller = threading.Thread(target=self._poll, name="dlapp-shell-relay", daemon=True)

    def __enter__(self) -> Relay:
        self._poller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._poller.join(5)
        with self._lock:
            procs = list(self._running.values())
        for proc in procs:  # the shell ended: stop waiting (the apps run on)
            _interrupt(proc)
        for thread in self._threads:
            thread.join(10)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                names = sorted(os.listdir(self.directory))
            except OSError:
                continue
            for name in names:
                if name.startswith("req."):
                    self._take(name.removeprefix("req."))
                elif name.startswith("cancel."):
                    self._cancel(name.removeprefix("cancel."))

    def _take(self, rid: str) -> None:
        path = self.directory / f"req.{rid}"
        try:
            text = _read_request(path, self.uid)
        except OSError:  # a link (ELOOP), gone, unreadable
            text = None
        with contextlib.suppress(OSError):
            path.unlink()
        if text is None or not rid.isalnum():
            logger.warning("dlapp shell relay: ignored request %r (not the shell user's file)", rid)
            return
        thread = threading.Thread(target=self._serve, args=(rid, text), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _cancel(self, rid: str) -> None:
        path = self.directory / f"cancel.{rid}"
        try:
            mine = path.lstat().st_uid == self.uid
            path.unlink()
        except OSError:
            return
        if not mine:
            return
        with self._lock:
            proc = self._running.get(rid)
        if proc is not None:
            _interrupt(proc)

    def _serve(self, rid: str, text: str) -> None:
        with _new_file(self.directory / f"out.{rid}") as sink:
            code = self._answer(rid, text, sink)
        tmp = self.directory / f".rc.{rid}"
        with _new_file(tmp) as f:
            f.write(f"{code}\n".encode())
        os.replace(tmp, self.directory / f"rc.{rid}")

    def _answer(self, rid: str, text: str, sink: IO[bytes]) -> int:
        """Run one request with its output to ``sink``; its exit status."""
        try:
            cwd, args = parse_request(text)
            if wants_help(args):
                sink.write(help_text().encode())
                return 0
            argv = host_argv(args, cwd, self.place)
        except RelayRefused as exc:
            sink.write(f"{exc.message}\n".encode())
            return EXIT_REFUSED
        return self._run(rid, argv, sink)

    def _run(self, rid: str, argv: list[str], sink: IO[bytes]) -> int:
        with self._lock:
            if self._stop.is_set():
                return 130
            proc = subprocess.Popen(
                [*self.program, *argv],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the host terminal's signals are the container's
            )
            self._running[rid] = proc
        try:
            return exit_code_from_returncode(proc.wait())
        finally:
            with self._lock:
                self._running.pop(rid, None)


def _interrupt(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, as a terminal gives it: SIGINT to the command's process group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGINT)


def _read_request(path: Path, uid: int) -> str | None:
    """The text of a request file, or None unless it is a small regular file of ``uid``'s,
    opened without following a link (whoever made it may swap it for one at any moment)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != uid or st.st_size > MAX_REQUEST_BYTES:
            return None
        data = os.read(fd, MAX_REQUEST_BYTES + 1)
    finally:
        os.close(fd)
    try:
        return data.decode() if len(data) <= MAX_REQUEST_BYTES else None
    except UnicodeDecodeError:
        return None


@contextlib.contextmanager
def _new_file(path: Path) -> Iterator[IO[bytes]]:
    """A new file, readable by the shell's user (mode 0644), never written through a link."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb", buffering=0) as f:
        yield f


def prepare(directory: Path, uid: int, gid: int) -> None:
    """Make the relay directory (and the shim beside it, ``<directory>.sh``) for a shell run as
    ``uid:gid``: the directory is that user's alone (mode 0700, given to them when this is
    root); where neither can be (a non-root host user, a shell user of another uid), it is
    sticky and world-writable, and ``Relay`` reads only the shell user's requests."""
    directory.mkdir(mode=0o700)
    if os.geteuid() == 0 and uid != 0:
        os.chown(directory, uid, gid)
    elif uid != os.geteuid():
        directory.chmod(0o1777)
    shim = shim_path(directory)
    shim.write_text(SHIM)
    shim.chmod(0o755)


def shim_path(directory: Path) -> Path:
    return directory.with_name(directory.name + ".sh")
