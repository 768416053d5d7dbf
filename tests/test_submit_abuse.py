"""Submissions that try to dodge the limits or make the server talk (issue 14, low findings).

The submission rate is taken before the upload is read or its spec checked, so an invalid spec
counts and a throttled sender's upload is never read; refusals never name the server's
temporary files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dlapp.config import ServerSettings

from inprocess import add_user, bearer, serve, submit

MB = 1024 * 1024
SPEC = {"name": "t", "entry": {"script": "run.sh"}, "resources": {"memory": "128M"}}


def settings(tmp: Path, **kw: Any) -> ServerSettings:
    return ServerSettings(home=tmp / "home", schedule_interval_s=0.05, **kw)


def multipart(spec: str, workspace: bytes) -> tuple[dict[str, str], bytes]:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="spec"\r\n\r\n' + spec.encode() + b"\r\n"
        b'--b\r\nContent-Disposition: form-data; name="workspace"; filename="w.tar.gz"\r\n'
        b"Content-Type: application/gzip\r\n\r\n" + workspace + b"\r\n--b--\r\n"
    )
    return {"Content-Type": "multipart/form-data; boundary=b"}, body


def test_invalid_specs_take_a_submission_token(tmp_path: Path) -> None:
    s = settings(tmp_path, submit_rate_per_min=2)
    with serve(s) as api:
        alice = add_user(api, s.home, "alice")
        for _ in range(2):
            bad = api.post(
                "/api/v1/apps",
                headers=bearer(alice),
                data={"spec": json.dumps({**SPEC, "gpus": 1})},  # an unknown key
                files={"workspace": ("w.tar.gz", b"", "application/gzip")},
            )
            assert bad.status_code == 400, bad.text
        refused = submit(api, tmp_path, alice, "true\n")
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert "(submit_rate_per_min)" in refused.json()["error"]["message"]
        assert api.get("/api/v1/apps", headers=bearer(alice)).json()["apps"] == []


def test_a_throttled_senders_upload_is_refused_before_it_is_read(tmp_path: Path) -> None:
    s = settings(tmp_path, submit_rate_per_min=1)
    pulled = 0

    def chunks(body: bytes) -> Iterator[bytes]:
        nonlocal pulled
        for i in range(0, len(body), 64 * 1024):
            pulled += 1
            yield body[i : i + 64 * 1024]

    with serve(s) as api:
        alice = add_user(api, s.home, "alice")
        assert submit(api, tmp_path, alice, "true\n").status_code == 201
        headers, body = multipart("{not json", b"\0" * (50 * MB))  # invalid spec, 50 MiB
        resp = api.post("/api/v1/apps", headers={**bearer(alice), **headers}, content=chunks(body))
        assert resp.status_code == 429, resp.text
        assert pulled == 0  # not one byte of the upload was read
        assert not list(s.home.rglob("*.upload"))


def test_a_refused_workspace_does_not_name_the_servers_temporary_file(tmp_path: Path) -> None:
    s = settings(tmp_path)
    with serve(s) as api:
        alice = add_user(api, s.home, "alice")
        resp = api.post(
            "/api/v1/apps",
            headers=bearer(alice),
            data={"spec": json.dumps(SPEC)},
            files={"workspace": ("w.tar.gz", b"this is not a tarball", "application/gzip")},
        )
    assert resp.status_code == 400, resp.text
    message = resp.json()["error"]["message"]
    assert "not a gzip-compressed tar archive" in message
    for leak in (str(s.home), ".upload", "tmp"):
        assert leak not in message, message
