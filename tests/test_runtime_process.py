"""The ``process`` runtime with real processes: exit codes, logs, argv, stop, the whole tree,
fate-sharing with the supervisor, and the entry-script checks. Plus ``get_runtime`` and the fake.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dlapp.config import ContainerPolicy
from dlapp.errors import SpecError, WorkspaceError
from dlapp.runtime import FakeRuntime, LaunchRequest, ProcessRuntime, Running, get_runtime

# --- builders and probes ------------------------------------------------------------------


@dataclass
class AppDir:
    """A workspace with one entry script, and the request that launches it."""

    root: Path
    script: str = "run.sh"
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    marker: str = field(default_factory=lambda: f"application_test_{uuid.uuid4().hex}")

    @property
    def workdir(self) -> Path:
        return self.root / "ws"

    def write(self, text: str, name: str | None = None, mode: int = 0o644) -> AppDir:
        path = self.workdir / (name or self.script)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
        return self

    def request(self) -> LaunchRequest:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return LaunchRequest(
            app_id=self.marker,
            index=0,
            workdir=self.workdir,
            script=self.script,
            args=self.args,
            env={"DLAPP_APP_ID": self.marker, "CONTAINER_INDEX": "0", **self.env},
            stdout=self.root / "logs" / "stdout.log",
            stderr=self.root / "logs" / "stderr.log",
        )

    def launch(self) -> Running:
        return ProcessRuntime().launch(self.request())

    def stdout(self) -> str:
        return (self.root / "logs" / "stdout.log").read_text()

    def stderr(self) -> str:
        return (self.root / "logs" / "stderr.log").read_text()


_MARKERS: list[str] = []


def make_app(tmp_path: Path, script: str = "run.sh") -> AppDir:
    app = AppDir(tmp_path, script=script)
    _MARKERS.append(app.marker)
    return app


def _stat(pid: str) -> tuple[bytes, int] | None:
    """(state, pgid) of a process, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    state, _ppid, pgrp = stat[stat.rindex(b")") + 2 :].split()[:3]
    return state, int(pgrp)


def live_pids_with_marker(marker: str) -> list[int]:
    """Live processes whose environment holds DLAPP_APP_ID=<marker>."""
    wanted = f"DLAPP_APP_ID={marker}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            continue
        st = _stat(name)
        if wanted in environ.split(b"\0") and st is not None and st[0] not in (b"Z", b"X"):
            found.append(int(name))
    return found


def live_pids_in_group(pgid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        st = _stat(name) if name.isdigit() else None
        if st is not None and st[1] == pgid and st[0] not in (b"Z", b"X"):
            found.append(int(name))
    return found


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def record_signals(running: Running, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sent: list[int] = []
    real = running.signal

    def spy(sig: int) -> None:
        sent.append(sig)
        real(sig)

    monkeypatch.setattr(running, "signal", spy)
    return sent


@pytest.fixture(autouse=True)
def _kill_leftovers() -> Iterator[None]:
    """A test that fails midway must not leave its app running: kill by marker after it."""
    yield
    for marker in _MARKERS:
        for pid in live_pids_with_marker(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    _MARKERS.clear()


# --- exit codes, logs, argv, cwd, env ------------------------------------------------------


def test_exit_code_is_the_scripts(tmp_path: Path) -> None:
    app = make_app(tmp_path).write("exit 3\n")
    assert app.launch().wait(10) == 3


def test_app_killed_by_a_signal_exits_128_plus_n(tmp_path: Path) -> None:
    app = make_app(tmp_path).write("kill -KILL $$\n")
    assert app.launch().wait(10) == 128 + signal.SIGKILL


def test_stdout_and_stderr_are_appended_to_their_files(tmp_path: Path) -> None:
    app = make_app(tmp_path).write("echo to-out\necho to-err >&2\n")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "stdout.log").write_text("earlier\n")
    assert app.launch().wait(10) == 0
    assert app.stdout() == "earlier\nto-out\n"
    assert app.stderr() == "to-err\n"


def test_python_app_gets_argv_cwd_env_and_this_interpreter(tmp_path: Path) -> None:
    app = make_app(tmp_path, script="sub/train.py")
    app.args = ("two words", "-x", "--lr=0.1 0.2", "$HOME", "a;b", "")
    app.env = {"USER_VAR": "v 1"}
    app.write(
        "import json, os, shutil, sys\n"
        "print(json.dumps({'argv': sys.argv, 'cwd': os.getcwd(), 'exe': sys.executable,\n"
        "    'env': [os.environ.get(k) for k in ('DLAPP_APP_ID', 'USER_VAR')],\n"
        "    'python3': shutil.which('python3') or shutil.which('python')}))\n"
    )
    assert app.launch().wait(10) == 0, app.stderr()
    got = json.loads(app.stdout())
    assert got["argv"] == ["sub/train.py", *app.args]
    assert Path(got["cwd"]).resolve() == app.workdir.resolve()
    assert got["exe"] == sys.executable
    assert got["env"] == [app.marker, "v 1"]
    assert Path(got["python3"]).parent == Path(sys.executable).parent


def test_shell_app_gets_argv_without_a_shell_in_between(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    app.args = ("two words", "-n", "$(echo no)", "*")
    app.write('printf "<%s>\\n" "$@"; pwd\n')
    assert app.launch().wait(10) == 0
    lines = app.stdout().splitlines()
    assert lines[:4] == ["<two words>", "<-n>", "<$(echo no)>", "<*>"]
    assert Path(lines[4]).resolve() == app.workdir.resolve()


def test_other_scripts_are_executed_directly(tmp_path: Path) -> None:
    app = make_app(tmp_path, script="bin/run").write(
        "#!/bin/sh\necho direct $1\nexit 5\n", mode=0o755
    )
    app.args = ("ok",)
    assert app.launch().wait(10) == 5
    assert app.stdout() == "direct ok\n"


def test_a_non_executable_script_without_known_suffix_is_refused(tmp_path: Path) -> None:
    app = make_app(tmp_path, script="run").write("#!/bin/sh\nexit 0\n", mode=0o644)
    with pytest.raises(WorkspaceError, match="not executable"):
        app.launch()


def test_the_guard_never_imports_from_the_workspace(tmp_path: Path) -> None:
    # The guard's cwd is the workspace; a workspace module named like a stdlib one, or a
    # PYTHONPATH pointing at it, must not break the guard.
    app = make_app(tmp_path).write("exit 0\n")
    app.write("raise SystemExit(99)\n", name="subprocess.py")
    app.write("raise SystemExit(98)\n", name="dlapp/__init__.py")
    app.env = {"PYTHONPATH": str(app.workdir)}
    assert app.launch().wait(10) == 0, app.stderr()


def test_wait_returns_none_while_running(tmp_path: Path) -> None:
    app = make_app(tmp_path).write("sleep 60\n")
    running = app.launch()
    try:
        assert running.wait(0.2) is None
    finally:
        assert running.stop(grace=0) == 128 + signal.SIGKILL


def test_the_container_leads_a_session_and_process_group_of_its_own(tmp_path: Path) -> None:
    app = make_app(tmp_path).write("touch ready\nsleep 60\n")
    running = app.launch()
    try:
        assert eventually(lambda: (app.workdir / "ready").exists())
        fields = Path(f"/proc/{running.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
        assert (int(fields[2]), int(fields[3])) == (running.pid, running.pid)  # pgrp, session
        assert len(live_pids_in_group(running.pid)) >= 3  # guard, bash, sleep
        assert os.getpgrp() != running.pid
    finally:
        running.stop(grace=0)


# --- stop: SIGTERM, grace, SIGKILL ---------------------------------------------------------

TRAP_TERM = """trap 'echo got TERM; exit 7' TERM
touch ready
sleep 60 &
wait $!
"""

IGNORE_TERM_TREE = """trap '' TERM
sleep 300 &
bash -c 'sleep 300 & wait' &
touch ready
wait
"""


def test_stop_sends_sigterm_first_and_the_app_exits_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(tmp_path).write(TRAP_TERM)
    running = app.launch()
    assert eventually(lambda: (app.workdir / "ready").exists())
    sent = record_signals(running, monkeypatch)
    terms: list[float] = []
    started = time.monotonic()
    assert running.stop(grace=5, on_term=lambda: terms.append(time.monotonic())) == 7
    assert time.monotonic() - started < 4
    assert sent == [signal.SIGTERM]  # no SIGKILL was needed
    assert len(terms) == 1
    assert "got TERM" in app.stdout()


def test_stop_sigkills_after_the_grace_an_app_that_ignores_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(tmp_path).write(IGNORE_TERM_TREE)
    running = app.launch()
    assert eventually(lambda: (app.workdir / "ready").exists())
    assert eventually(lambda: len(live_pids_with_marker(app.marker)) >= 5)  # guard, 2 bash, 2 sleep
    sent = record_signals(running, monkeypatch)
    started = time.monotonic()
    assert running.stop(grace=1) == 128 + signal.SIGKILL
    assert time.monotonic() - started >= 1
    assert sent == [signal.SIGTERM, signal.SIGKILL]
    assert eventually(lambda: not live_pids_with_marker(app.marker), 3)
    assert live_pids_in_group(running.pid) == []


def test_stop_with_no_grace_kills_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(tmp_path).write(TRAP_TERM)
    running = app.launch()
    assert eventually(lambda: (app.workdir / "ready").exists())
    sent = record_signals(running, monkeypatch)
    assert running.stop(grace=0) == 128 + signal.SIGKILL
    assert sent == [signal.SIGKILL]
    assert "got TERM" not in app.stdout()


def test_signalling_a_finished_container_is_harmless(tmp_path: Path) -> None:
    app = make_app(tmp_path).write("exit 4\n")
    running = app.launch()
    assert running.wait(10) == 4
    running.signal(signal.SIGTERM)
    assert running.stop(grace=1) == 4


def test_stop_from_another_thread_while_one_waits(tmp_path: Path) -> None:
    # The supervisor waits in one thread and a kill request stops the container from another.
    app = make_app(tmp_path).write(TRAP_TERM)
    running = app.launch()
    assert eventually(lambda: (app.workdir / "ready").exists())
    codes: list[int | None] = []
    waiter = threading.Thread(target=lambda: codes.append(running.wait()))
    waiter.start()
    assert running.stop(grace=5) == 7
    waiter.join(5)
    assert codes == [7]


# --- the whole tree ------------------------------------------------------------------------


def test_stop_kills_children_and_grandchildren(tmp_path: Path) -> None:
    app = make_app(tmp_path).write(
        "sleep 300 &\nbash -c 'sleep 300 & sleep 300 & wait' &\ntouch ready\nwait\n"
    )
    running = app.launch()
    assert eventually(lambda: (app.workdir / "ready").exists())
    assert eventually(lambda: len(live_pids_with_marker(app.marker)) >= 6)
    assert len(live_pids_in_group(running.pid)) >= 6
    running.stop(grace=5)
    assert eventually(lambda: not live_pids_with_marker(app.marker), 3)
    assert live_pids_in_group(running.pid) == []


def test_background_children_die_when_the_app_exits(tmp_path: Path) -> None:
    # The app exits 0 at once, leaving an orphaned child and an orphaned grandchild behind.
    app = make_app(tmp_path).write(
        "sleep 300 &\necho $! > pids\nbash -c 'sleep 300 & echo $! >> pids'\nexit 0\n"
    )
    running = app.launch()
    assert running.wait(10) == 0
    pids = [int(p) for p in (app.workdir / "pids").read_text().split()]
    assert len(pids) == 2
    assert eventually(lambda: not live_pids_with_marker(app.marker), 3)
    for pid in pids:
        st = _stat(str(pid))
        assert st is None or st[0] == b"Z", f"pid {pid} outlived its app"


SUPERVISOR = """
import sys, time
from pathlib import Path
from dlapp.runtime import LaunchRequest, ProcessRuntime

workdir, marker = Path(sys.argv[1]), sys.argv[2]
ProcessRuntime().launch(LaunchRequest(
    app_id=marker, index=0, workdir=workdir, script="run.sh", args=(),
    env={"DLAPP_APP_ID": marker}, stdout=workdir / "out.log", stderr=workdir / "err.log",
))
time.sleep(300)
"""


def test_the_container_dies_with_its_supervisor(tmp_path: Path) -> None:
    app = make_app(tmp_path).write("sleep 300 &\nbash -c 'sleep 300 & wait' &\ntouch ready\nwait\n")
    app.request()  # creates the workspace
    (tmp_path / "supervisor.py").write_text(SUPERVISOR)
    supervisor = subprocess.Popen(
        [sys.executable, str(tmp_path / "supervisor.py"), str(app.workdir), app.marker]
    )
    try:
        assert eventually(lambda: (app.workdir / "ready").exists(), 10)
        assert eventually(lambda: len(live_pids_with_marker(app.marker)) >= 5)
    finally:
        supervisor.kill()
        supervisor.wait()
    assert eventually(lambda: not live_pids_with_marker(app.marker), 3)


# --- entry-script checks -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("../outside.sh", "outside the workspace"),
        ("sub/../../outside.sh", "outside the workspace"),
        ("link.sh", "outside the workspace"),
        ("/bin/sh", "relative to the workspace"),
        ("", "relative to the workspace"),
        ("missing.sh", "not found"),
        ("sub", "not found"),
    ],
)
def test_entry_script_must_be_a_file_in_the_workspace(
    tmp_path: Path, script: str, message: str
) -> None:
    app = make_app(tmp_path, script=script)
    app.workdir.mkdir()
    (app.workdir / "sub").mkdir()
    (tmp_path / "outside.sh").write_text("exit 0\n")
    (app.workdir / "link.sh").symlink_to(tmp_path / "outside.sh")
    with pytest.raises(WorkspaceError, match=message) as err:
        app.launch()
    assert repr(script) in str(err.value)
    assert not (tmp_path / "logs").exists()  # nothing was started


def test_a_missing_workspace_is_refused(tmp_path: Path) -> None:
    req = make_app(tmp_path).request()
    app_req = LaunchRequest(**{**req.__dict__, "workdir": tmp_path / "nope"})
    with pytest.raises(WorkspaceError, match="does not exist"):
        ProcessRuntime().launch(app_req)


# --- get_runtime and the fake --------------------------------------------------------------


def test_get_runtime_knows_process_docker_and_podman() -> None:
    assert isinstance(get_runtime("process"), ProcessRuntime)
    with pytest.raises(SpecError, match=r"runtime 'podman' is not available here: no '/no/pod'"):
        get_runtime("podman", ContainerPolicy(podman="/no/pod"))
    with pytest.raises(SpecError, match=r"runtime 'docker' is not available here: no '/no/docker'"):
        get_runtime("docker", ContainerPolicy(docker="/no/docker"))
    with pytest.raises(SpecError, match="unknown runtime 'lxc'; available: process, docker, pod"):
        get_runtime("lxc")


def test_fake_runtime_records_requests_and_scripts_exit_codes(tmp_path: Path) -> None:
    app = make_app(tmp_path).write("exit 0\n")
    runtime = FakeRuntime(exit_code=lambda req: 10 + req.index, output="hello\n")
    running = runtime.launch(app.request())
    assert running.wait(0) == 10
    assert runtime.launched == [app.request()]
    assert app.stdout() == "hello\n"


def test_fake_runtime_stop_follows_the_term_script(tmp_path: Path) -> None:
    app = make_app(tmp_path).write("exit 0\n")
    stubborn = FakeRuntime(duration=None, term_exit_code=None).launch(app.request())
    assert stubborn.wait(0.01) is None
    assert stubborn.stop(grace=0.05) == 137
    polite = FakeRuntime(duration=None).launch(app.request())
    assert polite.stop(grace=5) == 143


def test_the_container_dies_when_ray_kills_only_the_supervisors_direct_child(
    tmp_path: Path,
) -> None:
    # Ray SIGKILLs a worker's direct children when the worker exits: the guard's stand-in. The
    # app, its children and the watcher (its grandchildren) must not outlive it: found by the
    # head-loss test, where the first attempt's app ran on after the Ray head was gone.
    app = make_app(tmp_path).write("sleep 300 &\ntouch ready\nwait\n")
    running = app.launch()
    assert eventually(lambda: (app.workdir / "ready").exists())
    assert eventually(lambda: len(live_pids_in_group(running.pid)) >= 4)  # 2 guards, bash, sleep
    os.kill(running.pid, signal.SIGKILL)  # the stand-in alone, as Ray does
    assert running.wait(10) == 128 + signal.SIGKILL
    assert eventually(lambda: not live_pids_with_marker(app.marker), 3)
    assert live_pids_in_group(running.pid) == []
