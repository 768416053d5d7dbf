"""Failed logins in the audit log: an unknown, revoked, expired or disabled user's token is
recorded (``login.failed``) with the client's address and a fingerprint that cannot log in,
never the token; a flood of bad tokens writes a bounded number of rows and counts the rest;
a forged X-Forwarded-For is not believed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from dlapp.cli import main as cli
from dlapp.config import ServerSettings
from dlapp.server.failed_logins import FailedLogins, Tally
from dlapp.store import users

from inprocess import add_user, admin_token, bearer, serve
from secure_server import live_server

T0 = 1_700_000_000.0
DAY = 86400.0
BAD = "dlapp_" + "B" * 43


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- the limiter (pure) -----------------------------------------------------------------------


def test_one_entry_per_address_per_window_and_the_rest_counted() -> None:
    f = FailedLogins(every_s=10, max_rows=100)
    assert f.admit("10.0.0.1", T0) == Tally(0, 0)
    assert [f.admit("10.0.0.1", T0 + i / 10) for i in range(1, 50)] == [None] * 49
    assert f.admit("10.0.0.2", T0 + 5) == Tally(0, 0)  # another address: its own entry
    assert f.admit("10.0.0.1", T0 + 10) == Tally(49, 0)
    assert f.admit("10.0.0.1", T0 + 20) == Tally(0, 0)


def test_a_flood_from_many_addresses_is_capped_in_all() -> None:
    f = FailedLogins(every_s=10, max_rows=5, max_addresses=1000)
    written = [f.admit(f"10.0.{i // 256}.{i % 256}", T0 + i / 1000) for i in range(500)]
    assert sum(t is not None for t in written) == 5
    tally = f.admit("10.0.0.7", T0 + 10)  # next window: its held refusal comes with it
    assert tally == Tally(1, 0)


def test_the_address_table_is_bounded_and_what_it_drops_is_still_counted() -> None:
    f = FailedLogins(every_s=10, max_rows=1, max_addresses=50)
    f.admit("first", T0)
    for i in range(10_000):
        assert f.admit(f"a{i}", T0 + 1) is None
    assert len(f._held) <= 50 and len(f._last) <= 50
    tally = f.admit("late", T0 + 11)
    assert tally is not None and tally.untracked + 50 >= 10_000 - 50
    assert "from other addresses" in tally.describe()


# -- through the API --------------------------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def api(tmp_path: Path, clock: Clock) -> Iterator[TestClient]:
    with serve(ServerSettings(home=tmp_path / "home", token_lifetime_days=30)) as tc:
        tc.app.state.ctx.clock = clock  # type: ignore[attr-defined]
        yield tc


def failed(api: TestClient, admin: dict[str, str]) -> list[dict[str, str]]:
    resp = api.get("/api/v1/admin/audit", headers=admin, params={"action": "login.failed"})
    entries: list[dict[str, str]] = resp.json()["entries"]
    return entries


def test_unknown_revoked_expired_and_disabled_tokens_are_audited(
    api: TestClient, tmp_path: Path, clock: Clock
) -> None:
    home = tmp_path / "home"
    admin = bearer(admin_token(home))
    carol, erin = (add_user(api, home, n) for n in ("carol", "erin"))
    made = api.post(
        "/api/v1/admin/users", headers=admin, json={"name": "dave", "expires_in_days": 1}
    )
    dave = made.json()["token"]
    api.post("/api/v1/admin/users/carol/token/revoke", headers=admin)
    api.post("/api/v1/admin/users/erin/disable", headers=admin)
    tried = [(BAD, "-", "unknown"), (carol, "carol", "revoked"), (erin, "erin", "disabled")]
    for token, _, _ in tried:
        clock.now += 11  # one entry per address per window: step past it
        assert api.get("/api/v1/apps", headers=bearer(token)).status_code == 401
    clock.now += DAY
    assert api.get("/api/v1/me", headers=bearer(dave)).status_code == 401
    tried.append((dave, "dave", "expired"))
    entries = list(reversed(failed(api, admin)))
    assert [(e["user"], e["detail"].split()[0]) for e in entries] == [
        (user, why) for _, user, why in tried
    ]
    for e, (token, _, _) in zip(entries, tried, strict=True):
        assert e["target"] == "testclient"  # the client's address, as the server saw it
        assert users.fingerprint(token) in e["detail"] and token not in json.dumps(e)
        assert users.hash_token(token)[: users.FINGERPRINT_HEX] in e["detail"]
    assert "GET /api/v1/apps" in entries[0]["detail"]


def test_a_flood_of_bad_tokens_cannot_fill_the_audit_log(
    api: TestClient, tmp_path: Path, clock: Clock
) -> None:
    admin = bearer(admin_token(tmp_path / "home"))
    for i in range(200):
        token = f"dlapp_{i:043d}"
        assert api.get("/api/v1/cluster", headers=bearer(token)).status_code == 401
    assert len(failed(api, admin)) == 1
    clock.now += 11
    assert api.get("/api/v1/cluster", headers=bearer(BAD)).status_code == 401
    newest = failed(api, admin)[0]
    assert "199 more refused from this address since its last entry" in newest["detail"]


def test_the_audit_log_never_holds_a_refused_secret(api: TestClient, tmp_path: Path) -> None:
    """A password pasted as a token is not a dlapp token: no fingerprint, no text of it."""
    admin = bearer(admin_token(tmp_path / "home"))
    assert api.get("/api/v1/apps", headers=bearer("correct-horse-battery")).status_code == 401
    (entry,) = failed(api, admin)
    assert "(not a dlapp token)" in entry["detail"]
    assert "horse" not in json.dumps(entry)


def test_requests_without_a_token_are_not_failed_logins(api: TestClient, tmp_path: Path) -> None:
    admin = bearer(admin_token(tmp_path / "home"))
    assert api.get("/api/v1/apps").status_code == 401
    assert api.get("/api/v1/apps", headers={"Authorization": "Basic eDp5"}).status_code == 401
    assert failed(api, admin) == []


# -- a real server: addresses, proxies, the CLI -------------------------------------------------


def test_a_forged_x_forwarded_for_is_not_believed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    with live_server(ServerSettings(home=home)) as live:
        forged = {**bearer(BAD), "X-Forwarded-For": "203.0.113.9"}
        assert httpx.get(f"{live.url}/api/v1/apps", headers=forged).status_code == 401
        monkeypatch.setenv("DLAPP_SERVER", live.url)
        monkeypatch.setenv("DLAPP_TOKEN", admin_token(home))
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
        assert cli.main(["admin", "audit", "--action", "login.failed", "--json"]) == 0
        (entry,) = json.loads(capsys.readouterr().out)
        assert entry["target"] == "127.0.0.1" and entry["user"] == "-"
        assert cli.main(["admin", "audit", "--action", "login.failed"]) == 0
        assert "login.failed" in capsys.readouterr().out


def test_behind_a_trusted_proxy_the_forwarded_address_is_recorded(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = ServerSettings(home=home, trusted_proxies=("127.0.0.1",))
    with live_server(settings) as live:
        forwarded = {**bearer(BAD), "X-Forwarded-For": "203.0.113.9"}
        assert httpx.get(f"{live.url}/api/v1/apps", headers=forwarded).status_code == 401
        audit = httpx.get(
            f"{live.url}/api/v1/admin/audit",
            headers=bearer(admin_token(home)),
            params={"action": "login.failed"},
        ).json()["entries"]
    assert [e["target"] for e in audit] == ["203.0.113.9"]
