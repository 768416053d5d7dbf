"""What a user sees while an app waits and when it ends, through a live in-process server
(LocalExecutor: real supervisor, staging and process runtime) and the CLI: staging progress in
``dlapp status`` while it stages, the staging lines in ``launch --follow``, a large workspace's
packing and upload progress, where a failed app's output was kept, a softkilled container's
diagnostics and its notice file, the gang peers a failed container stopped."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from dlapp.cli import main as cli
from dlapp.config import ServerSettings
from dlapp.data import staging
from dlapp.data.workspace import pack_workspace
from dlapp.spec import AppSpec

from conftest import wait_for
from inprocess import admin_token, bearer, live


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
        data = {"name": "w", "entry": {"script": "run.sh"}, "resources": {"memory": "128M"}}
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

    def events(self, app_id: str) -> list[dict[str, Any]]:
        body: list[dict[str, Any]] = self.http.get(f"/api/v1/apps/{app_id}/events").json()["events"]
        return body

    def finish(self, app_id: str) -> dict[str, Any]:
        return wait_for(  # type: ignore[no-any-return]
            lambda: (a := self.app(app_id))["state"] == "FINISHED" and a, 60, f"{app_id} to end"
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("waiting")
    home = tmp / "home"
    settings = ServerSettings(
        home=home,
        schedule_interval_s=0.05,
        log_ship_interval_s=0.1,
        softkill_grace_s=20,
        tenancy="single",
    )
    with live(settings) as url:
        with httpx.Client(base_url=url, headers=bearer(admin_token(home))) as admin:
            token = admin.post("/api/v1/admin/users", json={"name": "wes"}).json()["token"]
        with httpx.Client(base_url=url, headers=bearer(token), timeout=30) as http:
            yield Site(url, home, tmp, http)


@pytest.fixture
def as_wes(site: Site, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    token = site.http.headers["Authorization"].removeprefix("Bearer ")
    monkeypatch.setenv("DLAPP_SERVER", site.url)
    monkeypatch.setenv("DLAPP_TOKEN", token)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-client-config"))


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[Path, threading.Event]]:
    """Inputs under the returned folder stage in only once the event is set: a stage-in that
    lasts as long as the test needs (the supervisors run in this process)."""
    held = tmp_path / "held-inputs"
    held.mkdir()
    go = threading.Event()
    copy = staging._copy_local

    def gated(src: str, dest: Path) -> int:
        if src.startswith(str(held)):
            assert go.wait(60), "the gate was never opened"
        return copy(src, dest)

    monkeypatch.setattr(staging, "_copy_local", gated)
    yield held, go
    go.set()


def test_status_shows_staging_while_it_stages(
    site: Site,
    as_wes: None,
    gate: tuple[Path, threading.Event],
    capsys: pytest.CaptureFixture[str],
) -> None:
    held, go = gate
    (held / "big.bin").write_bytes(b"x" * 100_000)
    app_id = site.submit("ls data\n", inputs=[{"url": str(held), "path": "data"}])
    staged = wait_for(
        lambda: [e["reason"] for e in site.events(app_id) if e["kind"] == "staging"],
        20,
        "a staging line while the inputs stage in",
    )
    assert staged[0] == "container 0: staging in: 1 files, 97.7 KiB"
    assert site.app(app_id)["containers"][0]["state"] == "STARTING"  # still staging in
    assert cli.main(["status", app_id]) == 0
    out = capsys.readouterr().out
    assert "State          : RUNNING (starting: staging in; container 0 not started yet)" in out
    assert f"Staging        : container 0: staging in: {held} -> data: 1 files, 97.7 KiB" in out
    go.set()
    assert site.finish(app_id)["final_status"] == "SUCCEEDED"
    assert cli.main(["status", app_id]) == 0
    out = capsys.readouterr().out
    assert "Staging        : container 0: staging in done: 1 files" in out
    assert "starting: staging in" not in out


def test_launch_follow_shows_the_staging_lines(
    site: Site, as_wes: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.txt").write_text("x")
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "run.sh").write_text("echo app-output\n")
    spec = tmp_path / "app.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "follow",
                "entry": {"script": "run.sh"},
                "workspace": {"path": str(ws)},
                "resources": {"memory": "128M"},
                "inputs": [{"url": str(tmp_path / "in"), "path": "data"}],
            }
        )
    )
    assert cli.main(["launch", str(spec), "--follow"]) == 0
    out = capsys.readouterr().out
    assert out.index("[dlapp] container 0: staging in: 1 files, 1 B") < out.index("app-output")
    assert "[dlapp] container 0: staging in done: 1 files" in out
    assert out.index("app-output") < out.index("FINISHED SUCCEEDED")


def test_a_large_workspace_shows_its_packing_and_upload_going(
    site: Site, as_wes: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "run.sh").write_text("ls -l weights.bin\n")
    (ws / "weights.bin").write_bytes(os.urandom(24 * 1024 * 1024))  # one big file: no gzip gain
    spec = tmp_path / "big.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "big",
                "entry": {"script": "run.sh"},
                "workspace": {"path": str(ws)},
                "resources": {"memory": "128M"},
            }
        )
    )
    assert cli.main(["launch", str(spec)]) == 0
    err = capsys.readouterr().err

    def percents(what: str) -> list[int]:
        return [int(p) for p in re.findall(rf"{what}: (\d+)% \(", err)]

    packing, uploading = percents("packing workspace"), percents("uploading workspace")
    assert any(0 < p < 100 for p in packing), err  # inside the one big file, not 0% then 100%
    assert any(0 < p < 100 for p in uploading), err
    assert packing[-1] == 100 and uploading[-1] == 100
    assert packing.count(100) == 1 and uploading.count(100) == 1


def test_status_of_a_failed_app_says_where_its_output_was_kept(
    site: Site, as_wes: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_url = tmp_path / "results"
    app_id = site.submit(
        "mkdir -p output && echo partial > output/p.txt\nexit 5\n",
        outputs=[{"url": str(out_url), "path": "output"}],
    )
    assert site.finish(app_id)["final_status"] == "FAILED"
    kept = f"{out_url}.failed-{app_id}"
    assert (Path(kept) / "p.txt").read_text() == "partial\n"
    assert cli.main(["status", app_id]) == 0
    out = capsys.readouterr().out
    assert f"Output kept at : {kept}" in out, out


def test_a_softkilled_container_says_so_and_its_notice_has_an_iso_deadline(
    site: Site,
) -> None:
    script = (
        'on_term() { cat "$DLAPP_NOTICE_FILE"; echo; exit 0; }\n'
        "trap on_term TERM\necho up\nwhile true; do sleep 0.1; done\n"
    )
    app_id = site.submit(script)
    wait_for(lambda: "up" in site.http.get(f"/api/v1/apps/{app_id}/logs").text, 20, "up")
    asked = time.time()
    assert site.http.post(f"/api/v1/apps/{app_id}/softkill").status_code == 200
    done = site.finish(app_id)
    assert done["final_status"] == "KILLED"
    assert done["containers"][0]["diagnostics"] == "softkilled by request"
    log = site.http.get(f"/api/v1/apps/{app_id}/logs").text
    notice = json.loads(log.splitlines()[1])
    assert notice["reason"] == "softkill"
    assert asked + 19 < notice["deadline"] < time.time() + 20  # the 20 s grace
    iso = datetime.fromisoformat(notice["deadline_iso"])
    assert iso.utcoffset() is not None and iso.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs(iso.timestamp() - notice["deadline"]) < 0.001


def test_the_containers_a_failed_gang_peer_stops_say_so(site: Site) -> None:
    script = (
        'on_term() { cat "$DLAPP_NOTICE_FILE"; echo; exit 0; }\ntrap on_term TERM\n'
        'if [ "$CONTAINER_INDEX" = 0 ]; then sleep 1; exit 3; fi\n'
        "while true; do sleep 0.1; done\n"
    )
    app_id = site.submit(script, num_containers=2)
    done = site.finish(app_id)
    assert done["final_status"] == "FAILED"
    assert done["diagnostics"] == "container 0 exited with code 3"
    peer = done["containers"][1]
    assert peer["diagnostics"] == "stopped with its gang: container 0 failed (exited with code 3)"
