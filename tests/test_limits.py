"""Limits: upload size (413 before the disk fills), submission rate (429), apps waiting (429)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient

from dlapp.client import DlappClient
from dlapp.config import ServerSettings
from dlapp.errors import PayloadTooLarge
from dlapp.scheduler import Resources
from dlapp.server.limits import FORM_SLACK, BodyLimitMiddleware, BodyTooLarge
from dlapp.server.ratelimit import RateLimiter
from spec_builders import make_spec

from inprocess import add_user, admin_token, bearer, live, serve, submit

MB = 1024 * 1024


def settings(tmp: Path, **kw: Any) -> ServerSettings:
    return ServerSettings(home=tmp / "home", schedule_interval_s=0.05, softkill_grace_s=1, **kw)


def nothing_kept(home: Path) -> bool:
    workspaces = home / "artifacts" / "workspaces"
    return not list(home.glob("*.upload")) and not (
        workspaces.exists() and any(workspaces.iterdir())
    )


SPEC = json.dumps(make_spec("big").build().to_dict())


# -- upload size ------------------------------------------------------------------------------


def test_an_upload_over_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    s = settings(tmp_path, max_upload_mb=1)
    with serve(s) as api:
        alice = bearer(add_user(api, s.home, "alice"))
        resp = api.post(
            "/api/v1/apps",
            headers=alice,
            data={"spec": SPEC},
            files={"workspace": ("w.tar.gz", b"\0" * (3 * MB), "application/gzip")},
        )
        assert resp.status_code == 413, resp.text
        assert resp.json()["error"]["code"] == "too_large"
        assert "1 MiB (max_upload_mb)" in resp.json()["error"]["message"]
        assert "nothing was read" in resp.json()["error"]["message"]
        assert api.get("/api/v1/apps", headers=alice).json()["apps"] == []
        assert nothing_kept(s.home)


def test_an_upload_without_a_length_is_cut_off_past_the_limit(tmp_path: Path) -> None:
    s = settings(tmp_path, max_upload_mb=1)
    body = (
        b'--b\r\nContent-Disposition: form-data; name="spec"\r\n\r\n' + SPEC.encode() + b"\r\n"
        b'--b\r\nContent-Disposition: form-data; name="workspace"; filename="w.tar.gz"\r\n'
        b"Content-Type: application/gzip\r\n\r\n" + b"\0" * (3 * MB) + b"\r\n--b--\r\n"
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        for i in range(0, len(body), 64 * 1024):
            yield body[i : i + 64 * 1024]

    with serve(s) as api:
        alice = bearer(add_user(api, s.home, "alice"))
        resp = api.post(
            "/api/v1/apps",
            headers={**alice, "Content-Type": "multipart/form-data; boundary=b"},
            content=chunks(),
        )
        assert resp.status_code == 413, resp.text
        assert "nothing was kept" in resp.json()["error"]["message"]
        assert api.get("/api/v1/apps", headers=alice).json()["apps"] == []
        assert nothing_kept(s.home)


def test_the_body_limit_stops_reading_at_the_limit() -> None:
    s = ServerSettings(home=Path("/nonexistent"), max_upload_mb=1)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/v1/apps",
        "headers": [],
        "app": SimpleNamespace(state=SimpleNamespace(ctx=SimpleNamespace(settings=s))),
    }
    pulled = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"\0" * (64 * 1024), "more_body": True}

    async def reader(scope: Any, receive: Any, send: Any) -> None:
        while True:  # an app that would read forever, like a form parser spooling to disk
            await receive()

    async def send(message: Any) -> None:
        raise AssertionError("nothing is sent here")

    with pytest.raises(BodyTooLarge):
        anyio.run(BodyLimitMiddleware(reader), scope, receive, send)
    assert pulled * 64 * 1024 <= 1 * MB + FORM_SLACK + 64 * 1024


def test_the_client_gets_a_413_from_a_real_server(tmp_path: Path) -> None:
    s = settings(tmp_path, max_upload_mb=1)
    big = tmp_path / "big.tar.gz"
    big.write_bytes(b"\0" * (8 * MB))
    spec = make_spec("big").build()
    with live(s) as url:
        admin = admin_token(s.home)
        with DlappClient(url, admin) as c, pytest.raises(PayloadTooLarge, match="max_upload_mb"):
            c.submit(spec, big)
        with DlappClient(url, admin) as c:
            assert c.list_apps() == []
    assert nothing_kept(s.home)


def test_other_routes_take_small_bodies_only(api_small: TestClient) -> None:
    resp = api_small.post("/api/v1/admin/users", content=b"{" + b" " * (2 * MB) + b"}")
    assert resp.status_code == 413


@pytest.fixture
def api_small(tmp_path: Path) -> Iterator[TestClient]:
    s = settings(tmp_path)
    with serve(s) as api:
        api.headers.update(bearer(admin_token(s.home)))
        yield api


# -- submission rate and apps waiting ---------------------------------------------------------


def test_the_token_bucket_refills_with_time() -> None:
    now = [0.0]
    limiter = RateLimiter(6, clock=lambda: now[0])  # 6 a minute: one every 10 s, bursts of 6
    assert [limiter.take("alice") for _ in range(6)] == [0.0] * 6
    assert limiter.take("alice") == pytest.approx(10.0)
    assert limiter.take("bob") == 0.0  # each user has their own bucket
    now[0] = 5.0
    assert limiter.take("alice") == pytest.approx(5.0)
    now[0] = 10.0
    assert limiter.take("alice") == 0.0
    assert RateLimiter(0).take("anyone") == 0.0  # 0: no limit


def test_submitting_too_fast_answers_429_with_retry_after(tmp_path: Path) -> None:
    s = settings(tmp_path, submit_rate_per_min=2)
    with serve(s) as api:
        alice = add_user(api, s.home, "alice")
        bob = add_user(api, s.home, "bob")
        for _ in range(2):
            assert submit(api, tmp_path, alice, "true\n").status_code == 201
        refused = submit(api, tmp_path, alice, "true\n")
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert "2 submissions a minute (submit_rate_per_min)" in refused.json()["error"]["message"]
        assert submit(api, tmp_path, bob, "true\n").status_code == 201
        assert len(api.get("/api/v1/apps", headers=bearer(alice)).json()["apps"]) == 2


def test_too_many_apps_waiting_answers_429(tmp_path: Path) -> None:
    s = settings(tmp_path, max_pending_per_user=1)
    with serve(s, Resources(4, 8192, 2)) as api:
        alice = add_user(api, s.home, "alice")
        bob = add_user(api, s.home, "bob")
        gpus2 = {"resources": {"memory": "128M", "gpus": 2}}
        running = submit(api, tmp_path, alice, "sleep 30\n", **gpus2).json()["id"]
        deadline = time.monotonic() + 10
        while (
            api.get(f"/api/v1/apps/{running}", headers=bearer(alice)).json()["state"] != "RUNNING"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        waiting = submit(api, tmp_path, alice, "true\n", **gpus2)
        assert waiting.status_code == 201  # one app waiting is allowed
        refused = submit(api, tmp_path, alice, "true\n", **gpus2)
        assert refused.status_code == 429 and "Retry-After" not in refused.headers
        assert "alice already has 1 apps waiting" in refused.json()["error"]["message"]
        assert submit(api, tmp_path, bob, "true\n", **gpus2).status_code == 201  # bob's own
        admin = bearer(admin_token(s.home))
        for app in api.get("/api/v1/apps", headers=admin).json()["apps"]:
            api.post(f"/api/v1/apps/{app['id']}/kill", headers=admin)


# -- apps waiting per queue -------------------------------------------------------------------

QUEUES_WITH_LIMITS = """
queues:
  research:
    guaranteed: 50%
    max_pending: 3            # all of research's leaves together
    children:
      a: {guaranteed: 50%, max_pending: 1}
      b: {guaranteed: 50%, max_pending: 5}
  other: {guaranteed: 50%}    # no max_pending: max_pending_per_queue
"""


def test_too_many_apps_waiting_in_a_queue_answers_429_naming_it(tmp_path: Path) -> None:
    s = settings(tmp_path, max_pending_per_queue=1)
    s.home.mkdir(parents=True)
    (s.home / "queues.yaml").write_text(QUEUES_WITH_LIMITS)
    with serve(s, Resources(4, 8192, 2)) as api:
        alice = add_user(api, s.home, "alice")
        bob = add_user(api, s.home, "bob")
        gpus2 = {"resources": {"memory": "128M", "gpus": 2}}
        hog = submit(api, tmp_path, bob, "sleep 30\n", queue="other", **gpus2).json()["id"]
        deadline = time.monotonic() + 10
        while api.get(f"/api/v1/apps/{hog}", headers=bearer(bob)).json()["state"] != "RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.05)

        def refusal(queue: str, token: str = alice) -> str | None:
            resp = submit(api, tmp_path, token, "true\n", queue=queue, **gpus2)
            if resp.status_code == 201:
                return None
            assert resp.status_code == 429 and "Retry-After" not in resp.headers, resp.text
            message: str = resp.json()["error"]["message"]
            return message

        # a leaf's own max_pending, whoever submits
        assert refusal("a") is None
        assert refusal("a", bob) == (
            "queue root.research.a already has 1 apps waiting, its limit of 1 "
            "(max_pending of root.research.a in queues.yaml); wait until some start, "
            "or use another queue"
        )
        # a parent's max_pending counts its leaves together: a's 1 and b's 2
        assert refusal("b") is None and refusal("b", bob) is None
        message = refusal("b")
        assert message is not None
        assert "queue root.research already has 3 apps waiting, its limit of 3" in message
        assert "(max_pending of root.research in queues.yaml)" in message
        # a leaf without max_pending: the server-wide default (the running app does not count)
        assert refusal("other") is None
        message = refusal("other")
        assert message is not None
        assert "root.other already has 1 apps waiting, its limit of 1" in message
        assert "(max_pending_per_queue)" in message
        admin = bearer(admin_token(s.home))
        # the queue view shows each queue's limit beside what it holds waiting
        view = {q["path"]: q for q in api.get("/api/v1/queues", headers=admin).json()["queues"]}
        limits = {p: (q["pending_apps"], q["max_pending_apps"]) for p, q in view.items()}
        assert limits["root.research"] == (3, 3)
        assert limits["root.research.a"] == (1, 1)
        assert limits["root.other"] == (1, 1)
        assert limits["root"][1] == 0  # no cap of its own
        for app in api.get("/api/v1/apps", headers=admin).json()["apps"]:
            api.post(f"/api/v1/apps/{app['id']}/kill", headers=admin)


@pytest.mark.parametrize("bad", [-1, "ten", True, 2.5])
def test_max_pending_must_be_a_whole_number(bad: object) -> None:
    from dlapp.scheduler.queues import QueueConfigError, parse_tree

    with pytest.raises(QueueConfigError, match=r"root\.a: max_pending must be a whole number >= 0"):
        parse_tree({"queues": {"a": {"max_pending": bad}}})


def test_max_pending_zero_means_no_limit() -> None:
    from dlapp.scheduler.queues import parse_tree
    from dlapp.server.limits import pending_limit

    tree = parse_tree({"queues": {"a": {"max_pending": 0}, "b": {}}})
    s = ServerSettings(max_pending_per_queue=7)
    assert pending_limit(tree, "root.a", "root.a", s) == (
        0,
        "max_pending of root.a in queues.yaml",
    )
    assert pending_limit(tree, "root.b", "root.b", s) == (7, "max_pending_per_queue")
    assert pending_limit(tree, "root", "root.b", s) == (0, "")
