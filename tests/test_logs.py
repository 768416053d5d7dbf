"""A container's log through a live in-process server (LocalExecutor: real supervisor and process
runtime) and the CLI: its end by default, in whole lines, with a notice of what was left out;
the first lines; the whole log as a file; an earlier attempt's log; and the kept log growing
in the artifact store while the app runs (what a lost node leaves behind)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlapp.cli import main as cli
from dlapp.cli.common import human_size
from dlapp.config import ServerSettings
from dlapp.contract import log_dir
from dlapp.data.workspace import pack_workspace
from dlapp.spec import AppSpec

from conftest import wait_for
from inprocess import admin_token, bearer, live

LINES = 20_000
# line i: "line 00001 " and i % 70 x's: lines of many lengths, about 900 KB in all
WRITER = f'awk \'BEGIN {{ for (i = 1; i <= {LINES}; i++) {{ s = ""; \
for (j = 0; j < i % 70; j++) s = s "x"; printf "line %05d %s\\n", i, s }} }}\'\n'


def expected_log() -> bytes:
    return b"".join(b"line %05d %s\n" % (i, b"x" * (i % 70)) for i in range(1, LINES + 1))


@dataclass
class Site:
    url: str
    home: Path
    tmp: Path
    http: httpx.Client

    def submit(self, script: str, **spec: Any) -> str:
        ws = self.tmp / f"ws{time.monotonic_ns()}"
        ws.mkdir()
        (ws / "run.sh").write_text(script)
        data = {"name": "logs", "entry": {"script": "run.sh"}, "resources": {"memory": "128M"}}
        tarball = pack_workspace(ws, self.tmp / f"{ws.name}.tar.gz").path
        resp = self.http.post(
            "/api/v1/apps",
            data={"spec": json.dumps(AppSpec.from_dict({**data, **spec}).to_dict())},
            files={"workspace": ("w.tar.gz", tarball.read_bytes(), "application/gzip")},
        )
        assert resp.status_code == 201, resp.text
        app_id: str = resp.json()["id"]
        return app_id

    def app(self, app_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self.http.get(f"/api/v1/apps/{app_id}").json()
        return body

    def finish(self, app_id: str) -> dict[str, Any]:
        return wait_for(  # type: ignore[no-any-return]
            lambda: (a := self.app(app_id))["state"] == "FINISHED" and a, 60, f"{app_id} to end"
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("logs")
    home = tmp / "home"
    settings = ServerSettings(
        home=home, schedule_interval_s=0.05, log_ship_interval_s=0.1, tenancy="single"
    )
    with live(settings) as url:
        with httpx.Client(base_url=url, headers=bearer(admin_token(home))) as admin:
            token = admin.post("/api/v1/admin/users", json={"name": "lena"}).json()["token"]
        with httpx.Client(base_url=url, headers=bearer(token), timeout=30) as http:
            yield Site(url, home, tmp, http)


@pytest.fixture(scope="module")
def long_app(site: Site) -> str:
    """An app that wrote 20,000 lines of many lengths, and ended."""
    app_id = site.submit(WRITER)
    assert site.finish(app_id)["final_status"] == "SUCCEEDED"
    return app_id


@pytest.fixture
def as_lena(site: Site, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The CLI pointed at the site, with lena's token."""
    token = site.http.headers["Authorization"].removeprefix("Bearer ")
    monkeypatch.setenv("DLAPP_SERVER", site.url)
    monkeypatch.setenv("DLAPP_TOKEN", token)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-client-config"))


def test_the_last_lines_are_whole_and_say_where_they_lie(site: Site, long_app: str) -> None:
    log = expected_log()
    lines = log.splitlines(keepends=True)
    url = f"/api/v1/apps/{long_app}/logs"

    tail = site.http.get(url, params={"tail": 10})
    assert tail.content == b"".join(lines[-10:])
    assert int(tail.headers["X-Dlapp-Size"]) == len(log)
    assert int(tail.headers["X-Dlapp-Offset"]) == len(log) - len(tail.content)
    assert int(tail.headers["X-Dlapp-Next-Offset"]) == len(log)
    assert tail.headers["X-Dlapp-Complete"] == "true"

    # more lines than fit in `length` bytes: as many whole lines as fit, never half of one
    capped = site.http.get(url, params={"tail": 1000, "length": 4096})
    assert 0 < len(capped.content) <= 4096
    assert capped.content.startswith(b"line ") and log.endswith(capped.content)
    start = int(capped.headers["X-Dlapp-Offset"])
    assert log[start - 1 : start] == b"\n"

    head = site.http.get(url, params={"head": 3})
    assert head.content == b"".join(lines[:3])
    assert int(head.headers["X-Dlapp-Offset"]) == 0
    assert int(head.headers["X-Dlapp-Next-Offset"]) == len(head.content)
    assert head.headers["X-Dlapp-Complete"] == "false"  # there is more after it

    both = site.http.get(url, params={"tail": 3, "head": 3})
    assert both.status_code == 400
    assert "tail and head cannot be asked together" in both.json()["error"]["message"]
    later = site.http.get(url, params={"tail": 3, "attempt": 2})
    assert later.status_code == 404
    assert later.json()["error"]["message"] == f"{long_app} has attempts 1..1, not 2"


def test_the_whole_log_downloads_as_a_file(site: Site, long_app: str) -> None:
    resp = site.http.get(f"/api/v1/apps/{long_app}/logs/download", params={"stream": "stdout"})
    assert resp.status_code == 200
    assert resp.content == expected_log()
    assert resp.headers["Content-Disposition"] == (
        f'attachment; filename="{long_app}.attempt-1.container-0.stdout.log"'
    )


def test_dlapp_logs_shows_the_end_and_says_what_it_left_out(
    site: Site, long_app: str, as_lena: None, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = expected_log().decode().splitlines(keepends=True)
    assert cli.main(["logs", long_app]) == 0
    got = capsys.readouterr()
    assert got.out == "".join(lines[-100:])
    size = human_size(len(expected_log()))
    assert f"[dlapp] the last 100 lines of {size}:" in got.err
    assert "before them left out (--tail N for more, --head N for the start, --all" in got.err

    assert cli.main(["logs", long_app, "--head", "2"]) == 0
    got = capsys.readouterr()
    assert got.out == "".join(lines[:2])
    assert f"[dlapp] the first 2 lines of {size}:" in got.err and "after them left out" in got.err

    assert cli.main(["logs", long_app, "-n", "3"]) == 0
    assert capsys.readouterr().out == "".join(lines[-3:])
    assert cli.main(["logs", long_app, "--all"]) == 0
    assert capsys.readouterr().out == "".join(lines)

    assert cli.main(["logs", long_app, "--tail", "5", "--head", "5"]) == 1
    assert "--tail and --head cannot be used together" in capsys.readouterr().err
    assert cli.main(["logs", long_app, "--follow", "--all"]) == 1
    assert "--follow reads on from the end: not with --all" in capsys.readouterr().err
    assert cli.main(["logs", long_app, "--attempt", "3"]) == 1
    assert f"{long_app} has attempts 1..1, not 3" in capsys.readouterr().err

    short = site.submit("echo just-one\n")
    site.finish(short)
    assert cli.main(["logs", short]) == 0
    got = capsys.readouterr()
    assert got.out == "just-one\n" and got.err == ""  # nothing left out: nothing said


def test_an_earlier_attempts_log_stays_readable(
    site: Site, as_lena: None, capsys: pytest.CaptureFixture[str]
) -> None:
    script = (
        'if [ -f "$DLAPP_CHECKPOINT_DIR/tried" ]; then echo second-attempt; exit 0; fi\n'
        'touch "$DLAPP_CHECKPOINT_DIR/tried"; echo first-attempt; exit 3\n'
    )
    app_id = site.submit(script, max_attempts=2)
    done = site.finish(app_id)
    assert done["final_status"] == "SUCCEEDED" and done["attempt"] == 2
    url = f"/api/v1/apps/{app_id}/logs"
    assert site.http.get(url, params={"attempt": 1}).text == "first-attempt\n"
    assert site.http.get(url).text == "second-attempt\n"
    assert cli.main(["logs", app_id, "--attempt", "1"]) == 0
    assert capsys.readouterr().out == "first-attempt\n"
    assert cli.main(["logs", app_id]) == 0
    got = capsys.readouterr()
    assert got.out == "second-attempt\n"
    assert "[dlapp] attempt 2's log; the earlier ones: --attempt 1" in got.err


def test_the_kept_log_grows_while_the_app_runs(site: Site) -> None:
    """What a lost node leaves: the log so far is in the artifact store before the app ends."""
    app_id = site.submit("echo early-line; echo early-err >&2; sleep 60\n")
    kept = log_dir(str(site.home / "artifacts"), app_id, 1, 0)
    try:
        wait_for(
            lambda: (kept / "stdout").exists() and (kept / "stdout").read_text() == "early-line\n",
            20,
            "the log so far to be kept",
        )
        assert site.app(app_id)["state"] == "RUNNING"
        assert "early-err\n" in (kept / "stderr").read_text()
    finally:
        site.http.post(f"/api/v1/apps/{app_id}/kill")
    site.finish(app_id)


def test_follow_from_the_last_lines(site: Site) -> None:
    app_id = site.submit("for i in 1 2 3 4 5; do echo n$i; done; sleep 1; echo n6\n")
    wait_for(lambda: "n5" in site.http.get(f"/api/v1/apps/{app_id}/logs").text, 20, "n5")
    params = {"follow": "true", "tail": 2}
    with site.http.stream("GET", f"/api/v1/apps/{app_id}/logs", params=params) as resp:
        text = "".join(resp.iter_text())
    assert text == "n4\nn5\nn6\n"
    refused = site.http.get(f"/api/v1/apps/{app_id}/logs", params={"follow": "true", "head": 2})
    assert refused.status_code == 400


def test_another_users_log_is_not_found(site: Site, long_app: str) -> None:
    """The download route answers as the logs route does: another user's app is not found."""
    bob = add_user_http(site, "bob")
    with httpx.Client(base_url=site.url, headers=bearer(bob)) as other:
        resp = other.get(f"/api/v1/apps/{long_app}/logs/download")
    assert resp.status_code == 404
    assert resp.json()["error"]["message"] == f"no app {long_app}"


def add_user_http(site: Site, name: str) -> str:
    with httpx.Client(base_url=site.url, headers=bearer(admin_token(site.home))) as admin:
        resp = admin.post("/api/v1/admin/users", json={"name": name})
    assert resp.status_code == 201, resp.text
    token: str = resp.json()["token"]
    return token
