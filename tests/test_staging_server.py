"""End to end through the in-process server (LocalExecutor, real supervisor and process runtime):
an app reads an sftp input and writes an s3 output, with the server's storage profiles."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from dlapp.config import ServerSettings, StorageProfile
from dlapp.data.commit import MARKER

from inprocess import add_user, bearer, serve, submit, wait_finished
from storage_servers import S3Server, Sshd, s3_server, sshd

__all__ = ["s3_server", "sshd"]  # fixtures

COPY = "set -e\nmkdir -p output\ncp data/in.txt output/copy.txt\necho done\n"


def settings(home: Path, sshd: Sshd, s3: S3Server) -> ServerSettings:
    profiles = {
        p.name: StorageProfile(protocol=p.protocol, urls=p.urls, options=dict(p.options))
        for p in (sshd.profile, s3.profile)
    }
    return ServerSettings(home=home, schedule_interval_s=0.05, storage_profiles=profiles)


def stderr(api: TestClient, token: str, app_id: str) -> str:
    url = f"/api/v1/apps/{app_id}/logs?container=0&stream=stderr"
    return api.get(url, headers=bearer(token)).text


def test_app_with_sftp_input_and_s3_output(sshd: Sshd, s3_server: S3Server, tmp_path: Path) -> None:
    (sshd.root / "in.txt").write_text("from sftp")
    fs, bucket = s3_server.filesystem(), s3_server.new_bucket()
    home = tmp_path / "home"
    with serve(settings(home, sshd, s3_server)) as api:
        token = add_user(api, home, "ada")
        resp = submit(
            api,
            tmp_path,
            token,
            script=COPY,
            inputs=[{"url": sshd.url(sshd.root / "in.txt"), "path": "data"}],
            outputs=[{"url": f"s3://{bucket}/runs/r1", "path": "output"}],
        )
        assert resp.status_code == 201, resp.text
        app = wait_finished(api, resp.json()["id"], token, timeout=60)
        log = stderr(api, token, app["id"])
        events = api.get(f"/api/v1/apps/{app['id']}/events", headers=bearer(token)).json()
    assert app["final_status"] == "SUCCEEDED", (app, log)
    assert fs.cat(f"{bucket}/runs/r1/copy.txt") == b"from sftp"
    assert fs.exists(f"{bucket}/runs/r1/{MARKER}")
    assert "[dlapp] staging in: sftp://" in log and "[dlapp] staging out done: 1 files" in log
    staged = [e["reason"] for e in events["events"] if e["kind"] == "staging"]
    assert staged[0] == "container 0: staging in: 1 files, 9 B"
    assert staged[2].startswith("container 0: staging in done: 1 files, 9 B in ")
    assert "; cache: 0 hits, 1 misses" in staged[2]
    assert staged[-1].startswith("container 0: staging out done: 1 files, 9 B in ")
    assert staged[-1].endswith("/s")
    secret = s3_server.options["secret"]
    assert secret not in log and secret not in resp.text and secret not in str(app)


def test_a_failed_apps_output_is_saved_beside_the_url(
    sshd: Sshd, s3_server: S3Server, tmp_path: Path
) -> None:
    fs, bucket = s3_server.filesystem(), s3_server.new_bucket()
    home = tmp_path / "home"
    with serve(settings(home, sshd, s3_server)) as api:
        token = add_user(api, home, "bea")
        resp = submit(
            api,
            tmp_path,
            token,
            script="mkdir -p output\necho half > output/part.txt\nexit 2\n",
            outputs=[{"url": f"s3://{bucket}/r", "path": "output"}],
        )
        app = wait_finished(api, resp.json()["id"], token, timeout=60)
    assert app["final_status"] == "FAILED"
    assert fs.cat(f"{bucket}/r.failed-{app['id']}/part.txt") == b"half\n"
    assert not fs.exists(f"{bucket}/r")


def test_a_metadata_address_is_refused_at_submit(
    sshd: Sshd, s3_server: S3Server, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    with serve(settings(home, sshd, s3_server)) as api:
        token = add_user(api, home, "cy")
        resp = submit(
            api, tmp_path, token, inputs=[{"url": "sftp://169.254.169.254/x", "path": "d"}]
        )
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "bad_data_url"
    assert "link-local or metadata" in resp.json()["error"]["message"]
