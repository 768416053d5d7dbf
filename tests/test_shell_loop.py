"""The reference system's dlapp-shell -> dlapp-run loop: ``dlapp shell SPEC`` opens the app's
image on a pseudo terminal, the user edits the workspace there and types ``dlapp run``, and the
app runs on the cluster. Real docker, the real embedded cluster (the session's, with Ray), the
CLI as a user runs it; plus the shell's GPUs on a machine whose GPUs are only declared."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dlapp.cli import main as cli
from dlapp.cli.relay import Relay, RelayRefused, ShellPlace, host_argv, prepare, shim_path
from dlapp.client import DlappClient
from dlapp.credentials import ADMIN_TOKEN_FILE
from dlapp.runtime.gpus import count_gpus
from docker_support import MINIMAL, require_docker

APP_ID = re.compile(r"submitted: (application_\d+_\d+)")


class Terminal:
    """A command on a pseudo terminal: what it prints, and lines typed into it."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.fd, secondary = pty.openpty()
        self.proc = subprocess.Popen(
            argv, stdin=secondary, stdout=secondary, stderr=secondary, env=env
        )
        os.close(secondary)
        self.output = ""

    def type(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\r")

    def read_until(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.output)
            if found:
                return found
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    self.output += os.read(self.fd, 65536).decode(errors="replace")
                except OSError:  # the terminal closed: the shell ended
                    break
            elif self.proc.poll() is not None:
                break
        raise AssertionError(f"no {pattern!r} on the terminal; it shows:\n{self.output}")

    def close(self) -> int:
        try:
            return self.proc.wait(30)
        finally:
            self.proc.kill()
            os.close(self.fd)


def _project(tmp_path: Path, **resources: object) -> Path:
    ws = tmp_path / "project"
    ws.mkdir()
    (ws / "run.sh").write_text("echo first version\n")
    spec = {
        "name": "shell-loop",
        "runtime": "docker",
        "image": MINIMAL,
        "workspace": {"path": "project"},
        "entry": {"script": "run.sh"},
        "resources": {"cpus": 1, "memory": "256M", "gpus": 0, **resources},
    }
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _shell(spec: Path, env: dict[str, str]) -> Terminal:
    cmd = "import sys; from dlapp.cli.main import main; sys.exit(main())"
    term = Terminal([sys.executable, "-c", cmd, "shell", str(spec)], env)
    for _ in range(30):  # the container is up once the shell answers
        term.type("echo shell-$((6*7))")
        try:
            term.read_until(r"shell-42", timeout=2)
            return term
        except AssertionError:
            continue
    raise AssertionError(f"the shell did not answer:\n{term.output}")


def _edit_and_run(term: Terminal, run: str = "dlapp run") -> str:
    """In the shell: change the entry script, then ``RUN --wait``; what the terminal showed."""
    term.type("touch /workspace/made-in-the-shell; echo touch-rc=$?")
    term.read_until(r"touch-rc=(\d)")
    term.type("echo tokens=$(env | grep -c TOKEN) server=${DLAPP_SERVER:-none}")
    term.type(f"echo 'echo edited in the shell' > run.sh; {run} --wait")
    term.type("echo run-rc=$?")
    term.read_until(r"run-rc=\d+", timeout=180)
    term.type("exit")
    assert term.close() == 0, term.output
    return term.output


@pytest.mark.cluster
def test_dlapp_run_in_the_shell_runs_the_edited_workspace_on_the_embedded_cluster(
    server_home: Path, tmp_path: Path
) -> None:
    """No server configured: the CLI uses the embedded cluster (and its admin.token), on
    127.0.0.1, which the shell's bridge network cannot reach: `dlapp run` there goes through
    the `dlapp shell` process, and neither the token nor the server enters the container."""
    require_docker()
    spec = _project(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLAPP_")}
    env |= {"DLAPP_HOME": str(server_home), "XDG_CONFIG_HOME": str(tmp_path / "no-config")}
    output = _edit_and_run(_shell(spec, env))

    assert "touch-rc=0" in output  # the workspace is writable by the shell's user
    assert (tmp_path / "project" / "made-in-the-shell").stat().st_uid == os.getuid()
    assert "FINISHED SUCCEEDED" in output and "run-rc=0" in output, output
    app_id = APP_ID.search(output)
    assert app_id, output
    admin = (server_home / ADMIN_TOKEN_FILE).read_text().strip()
    with DlappClient(_url(server_home), admin) as client:
        app = client.get(app_id.group(1))
        assert app["final_status"] == "SUCCEEDED" and app["name"] == "shell-loop"
        assert client.logs(app["id"]) == "edited in the shell\n"
    assert admin not in output and "tokens=0 server=none" in output


@pytest.mark.cluster
def test_dlapp_run_in_the_shell_submits_with_the_users_own_server_and_token(
    server_url: str, tokens: dict[str, str], tmp_path: Path
) -> None:
    """A server saved by `dlapp login` (here DLAPP_SERVER / DLAPP_TOKEN, as alice): the app is
    alice's, and her token is nowhere in the container."""
    require_docker()
    spec = _project(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLAPP_")}
    env |= {"DLAPP_SERVER": server_url, "DLAPP_TOKEN": tokens["alice"]}
    env |= {"XDG_CONFIG_HOME": str(tmp_path / "no-config"), "DLAPP_HOME": str(tmp_path / "h")}
    output = _edit_and_run(_shell(spec, env), run="dlapp-run")  # the reference system's name

    assert "run-rc=0" in output, output
    app_id = APP_ID.search(output)
    assert app_id, output
    with DlappClient(server_url, tokens["alice"]) as client:
        app = client.get(app_id.group(1))
    assert app["user"] == "alice" and app["final_status"] == "SUCCEEDED"
    assert tokens["alice"] not in output
    assert "tokens=0 server=none" in output  # neither reaches the container


def _url(home: Path) -> str:
    from dlapp import embedded

    info = embedded.running(home)
    assert info is not None
    return info.url


# -- what `dlapp ARGS` typed in the shell runs on the host -------------------------------------

PLACE = ShellPlace(Path("/home/ann/app.yaml"), Path("/home/ann/project"), "/workspace")


@pytest.mark.parametrize(
    ("typed", "cwd", "runs"),
    [
        (["run"], "/workspace", ["launch", "/home/ann/app.yaml"]),
        (
            ["run", "--wait", "--follow"],
            "/",
            ["launch", "/home/ann/app.yaml", "--wait", "--follow"],
        ),
        (["run", "exp/b.yaml"], "/workspace", ["launch", "/home/ann/project/exp/b.yaml"]),
        (["run", "../b.yaml"], "/workspace/exp", ["launch", "/home/ann/project/b.yaml"]),
        (["status", "application_1_0001"], "/", ["status", "application_1_0001"]),
        (["logs", "application_1_0001", "-f"], "/", ["logs", "application_1_0001", "-f"]),
    ],
)
def test_a_command_typed_in_the_shell_runs_on_the_host_as(
    typed: list[str], cwd: str, runs: list[str]
) -> None:
    assert host_argv(typed, cwd, PLACE) == runs


@pytest.mark.parametrize(
    ("typed", "problem"),
    [
        (["admin", "user", "add", "eve"], "dlapp admin: not available inside a dlapp shell"),
        (["login", "http://x"], "dlapp login: not available"),
        (["run", "/etc/app.yaml"], "only a spec file in the workspace"),
        (["run", "../../app.yaml"], "only a spec file in the workspace"),
        (["run", "--detach"], "unknown option"),
    ],
)
def test_the_shell_refuses_what_it_does_not_relay(typed: list[str], problem: str) -> None:
    with pytest.raises(RelayRefused, match=problem):
        host_argv(typed, "/workspace", PLACE)


# -- the relay itself: its script run by the host's sh, the relay in this process --------------


def _shim(relay_dir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["sh", str(shim_path(relay_dir)), *args],
        env={**os.environ, "DLAPP_RELAY": str(relay_dir)},
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_the_shells_dlapp_prints_what_the_host_ran_and_exits_with_its_status(
    tmp_path: Path,
) -> None:
    relay_dir = tmp_path / "relay"
    prepare(relay_dir, os.getuid(), os.getgid())
    program = ["sh", "-c", 'echo "host ran: $*"; exit 3', "sh"]
    with Relay(relay_dir, os.getuid(), PLACE, program):
        ran = _shim(relay_dir, "run", "--wait")
        assert ran.communicate(timeout=30) == ("host ran: launch /home/ann/app.yaml --wait\n", None)
        assert ran.returncode == 3
        (tmp_path / "dlapp-run").symlink_to(shim_path(relay_dir))  # the reference name
        with subprocess.Popen(
            ["sh", str(tmp_path / "dlapp-run"), "--follow"],
            env={**os.environ, "DLAPP_RELAY": str(relay_dir)},
            stdout=subprocess.PIPE,
            text=True,
        ) as reference:
            assert reference.communicate(timeout=30)[0] == (
                "host ran: launch /home/ann/app.yaml --follow\n"
            )
        shown = _shim(relay_dir, "--help")
        assert "dlapp run [--wait]" in shown.communicate(timeout=30)[0]
        assert shown.returncode == 0
        refused = _shim(relay_dir, "admin", "user", "add", "eve")
        assert "not available inside a dlapp shell" in refused.communicate(timeout=30)[0]
        assert refused.returncode == 2


# A shell and a terminal start with SIGINT's default action; a test process may have been
# started with it ignored (a background job), which sh could then not trap nor sleep obey.
DEFAULT_SIGINT = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execvp(sys.argv[1], sys.argv[1:])",
]


def test_ctrl_c_in_the_shell_interrupts_the_command_on_the_host(tmp_path: Path) -> None:
    relay_dir = tmp_path / "relay"
    prepare(relay_dir, os.getuid(), os.getgid())
    program = [*DEFAULT_SIGINT, "sh", "-c", 'echo "following $*"; exec sleep 60', "sh"]
    with (
        Relay(relay_dir, os.getuid(), PLACE, program),
        subprocess.Popen(
            [*DEFAULT_SIGINT, "sh", str(shim_path(relay_dir)), "run", "--follow"],
            env={**os.environ, "DLAPP_RELAY": str(relay_dir)},
            cwd="/",
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as shim,
    ):
        assert shim.stdout is not None
        ready, _, _ = select.select([shim.stdout], [], [], 30)
        assert ready and shim.stdout.readline().startswith("following launch")
        shim.send_signal(signal.SIGINT)  # Ctrl-C in the shell
        # the host's command was interrupted (well before its 60 s sleep ends)
        assert shim.wait(30) == 128 + signal.SIGINT


def test_a_request_not_from_the_shells_user_is_ignored(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a file of another user needs root")
    relay_dir = tmp_path / "relay"
    prepare(relay_dir, 4242, 4242)  # the shell's user; the relay directory is theirs
    assert relay_dir.stat().st_uid == 4242 and relay_dir.stat().st_mode & 0o777 == 0o700
    planted = relay_dir / "req.planted"
    planted.write_text("/\nkill\napplication_1_0001\n")  # made by root, not the shell's user
    with Relay(relay_dir, 4242, PLACE, ["sh", "-c", "echo ran", "sh"]):
        deadline = time.monotonic() + 10
        while planted.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    assert not planted.exists() and not (relay_dir / "out.planted").exists()


def test_a_request_that_is_a_link_is_not_followed(tmp_path: Path) -> None:
    """The shell's user may swap a request for a link to a file only the host user reads:
    the relay never reads through it (its text would come back as an error message)."""
    relay_dir = tmp_path / "relay"
    prepare(relay_dir, os.getuid(), os.getgid())
    secret = tmp_path / "secret"
    secret.write_text("/\nstatus\nthe-host-users-secret\n")
    link = relay_dir / "req.linked"
    link.symlink_to(secret)
    with Relay(relay_dir, os.getuid(), PLACE, ["sh", "-c", 'echo "ran $*"', "sh"]):
        deadline = time.monotonic() + 10
        while link.is_symlink() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    assert not link.is_symlink() and not (relay_dir / "out.linked").exists()


# -- the shell's GPUs where the machine has none ---------------------------------------------


@pytest.fixture
def no_gpus_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    if count_gpus() > 0:
        pytest.skip("this machine has GPUs: these tests are of one without any")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DLAPP_HOME", str(home))
    monkeypatch.delenv("DLAPP_GPUS", raising=False)
    return home


def test_the_shell_holds_declared_gpus_without_asking_docker_for_devices(
    no_gpus_here: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dlapp up --gpus 2` declared in server.yaml, the default container policy: the shell
    holds a declared GPU, and requests no device (docker would refuse: no GPU driver)."""
    (no_gpus_here / "server.yaml").write_text(yaml.safe_dump({"gpus": 2}))
    spec = _project(tmp_path, gpus=1)
    assert cli.main(["shell", str(spec), "--print-command"]) == 0, capsys.readouterr().err
    argv = capsys.readouterr().out.splitlines()
    assert "--gpus" not in argv and not any(a.startswith("nvidia.com/gpu") for a in argv)
    assert "CUDA_VISIBLE_DEVICES=0" in argv


def test_a_shell_on_a_machine_without_gpus_says_so(
    no_gpus_here: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _project(tmp_path, gpus=1)
    assert cli.main(["shell", str(spec), "--print-command"]) == 0
    captured = capsys.readouterr()
    assert "this machine has no GPUs" in captured.err and "other shells" not in captured.err
    assert "CUDA_VISIBLE_DEVICES=" in captured.out.splitlines()
    assert cli.main(["shell", str(spec), "--gpus", "2", "--print-command"]) == 1
    err = capsys.readouterr().err
    assert "needs 2 GPU(s) and this machine has none" in err and "other shells" not in err
