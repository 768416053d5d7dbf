"""Token expiry: a token's own expiry (``--expires-in``) and the server's
``token_lifetime_days``, the shorter winning; an expired token gets 401 "token expired" with
what to do; listings show the expiry; the 0005 migration. Store tests run on SQLite and
PostgreSQL."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from dlapp.cli import main as cli
from dlapp.config import ServerSettings
from dlapp.errors import BadRequest
from dlapp.store import users
from dlapp.store.db import make_engine, migrate, session_factory
from dlapp.store.models import Token
from dlapp.store.users import Refusal

from inprocess import add_user, admin_token, bearer, serve
from secure_server import live_server

T0 = 1_700_000_000.0
DAY = 86400.0
TOKEN = re.compile(r"^dlapp_[A-Za-z0-9_-]{40,}$", re.MULTILINE)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- the store --------------------------------------------------------------------------------


def test_a_token_with_an_expiry_of_its_own_stops_at_it(session: Session) -> None:
    _, token = users.add_user(session, "alice", T0, expires=T0 + DAY)
    assert users.check_token(session, token, T0 + DAY - 1).refusal is None
    check = users.check_token(session, token, T0 + DAY)
    assert check.refusal is Refusal.EXPIRED and check.expires == T0 + DAY
    assert check.user is not None and check.user.name == "alice"
    assert users.authenticate(session, token, T0 + DAY) is None


def test_the_server_lifetime_applies_to_every_token_and_the_shorter_wins(
    session: Session,
) -> None:
    _, forever = users.add_user(session, "alice", T0)
    _, own = users.add_user(session, "bob", T0, expires=T0 + 2 * DAY)
    assert users.check_token(session, forever, T0 + 1000 * DAY).refusal is None  # no lifetime
    for token, ends in ((forever, T0 + 7 * DAY), (own, T0 + 2 * DAY)):
        assert users.check_token(session, token, ends - 1, 7 * DAY).refusal is None
        check = users.check_token(session, token, ends, 7 * DAY)
        assert (check.refusal, check.expires) == (Refusal.EXPIRED, ends)
    assert users.check_token(session, own, T0 + DAY, lifetime_s=DAY / 2).expires == T0 + DAY / 2


def test_why_a_token_is_refused(session: Session) -> None:
    _, old = users.add_user(session, "alice", T0)
    new = users.issue_token(session, "alice", T0 + 1)
    users.add_user(session, "root", T0, is_admin=True)
    users.set_disabled(session, "alice", True)
    assert users.check_token(session, "hunter2", T0).refusal is Refusal.MALFORMED
    assert users.check_token(session, "dlapp_" + "A" * 43, T0).refusal is Refusal.UNKNOWN
    assert users.check_token(session, old, T0 + 2).refusal is Refusal.REVOKED
    assert users.check_token(session, new, T0 + 2).refusal is Refusal.DISABLED
    assert users.authenticate(session, new, T0 + 2) is not None  # the old contract: check it


def test_an_expiry_in_the_past_is_refused(session: Session) -> None:
    users.add_user(session, "alice", T0)
    with pytest.raises(BadRequest, match="expire in the future"):
        users.issue_token(session, "alice", T0, expires=T0)


def test_0005_adds_the_expiry_and_keeps_every_token(database_url: str) -> None:
    url = database_url
    eng = make_engine(url)
    migrate(eng, "0004_app_list_indexes")
    assert "expires" not in {c["name"] for c in sa.inspect(eng).get_columns("tokens")}
    with eng.begin() as c:
        c.execute(sa.text("INSERT INTO users VALUES ('alice', false, '', false, :t)"), {"t": T0})
        c.execute(
            sa.text("INSERT INTO tokens (\"user\", token_hash, created) VALUES ('alice', :h, :t)"),
            {"h": users.hash_token("dlapp_old"), "t": T0},
        )
    migrate(eng)
    with session_factory(eng)() as s:
        (row,) = s.scalars(sa.select(Token)).all()
        assert row.expires is None and row.created == T0
        assert users.check_token(s, "dlapp_old", T0 + 1).refusal is None
        assert users.check_token(s, "dlapp_old", T0 + 2 * DAY, DAY).refusal is Refusal.EXPIRED
    eng.dispose()


def test_0005_downgrades_too(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from dlapp.store.db import MIGRATIONS

    eng = make_engine(database_url)
    migrate(eng)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with eng.begin() as c:
        cfg.attributes["connection"] = c
        command.downgrade(cfg, "0004_app_list_indexes")
    assert "expires" not in {col["name"] for col in sa.inspect(eng).get_columns("tokens")}
    eng.dispose()


# -- the API ----------------------------------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def api(tmp_path: Path, clock: Clock) -> Iterator[TestClient]:
    settings = ServerSettings(home=tmp_path / "home", token_lifetime_days=30)
    with serve(settings) as tc:
        tc.app.state.ctx.clock = clock  # type: ignore[attr-defined]
        yield tc


def test_an_expired_token_gets_401_token_expired_with_a_hint(
    api: TestClient, tmp_path: Path, clock: Clock
) -> None:
    home = tmp_path / "home"
    carol = add_user(api, home, "carol")
    assert api.get("/api/v1/me", headers=bearer(carol)).status_code == 200
    clock.now += 30 * DAY
    resp = api.get("/api/v1/me", headers=bearer(carol))
    assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
    message = resp.json()["error"]["message"]
    assert message.startswith("token expired at ") and "dlapp admin token rotate" in message
    assert api.get("/api/v1/apps", headers=bearer(carol)).status_code == 401  # every route


def test_an_admin_gives_a_token_a_shorter_life_and_the_listing_shows_it(
    api: TestClient, tmp_path: Path, clock: Clock
) -> None:
    admin = bearer(admin_token(tmp_path / "home"))
    made = api.post(
        "/api/v1/admin/users", headers=admin, json={"name": "dave", "expires_in_days": 2}
    ).json()
    assert made["user"]["token_expires"].startswith("2023-11-16T22:13:20")
    assert not made["user"]["token_expired"]
    assert api.get("/api/v1/me", headers=bearer(made["token"])).status_code == 200
    clock.now += 2 * DAY
    assert api.get("/api/v1/me", headers=bearer(made["token"])).status_code == 401
    listed = api.get("/api/v1/admin/users", headers=admin).json()["users"]
    dave = next(u for u in listed if u["name"] == "dave")
    assert dave["token_expired"]
    rotated = api.post(
        "/api/v1/admin/users/dave/token", headers=admin, params={"expires_in_days": 1}
    ).json()
    assert rotated["token_expires"].startswith("2023-11-17T22:13:20")
    assert api.get("/api/v1/me", headers=bearer(rotated["token"])).status_code == 200
    refused = api.post(
        "/api/v1/admin/users", headers=admin, json={"name": "e", "expires_in_days": 0}
    )
    assert refused.status_code == 422


# -- the CLI ----------------------------------------------------------------------------------


def test_the_cli_sets_and_shows_token_expiry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    with live_server(ServerSettings(home=home, token_lifetime_days=90)) as live:
        monkeypatch.setenv("DLAPP_SERVER", live.url)
        monkeypatch.setenv("DLAPP_TOKEN", admin_token(home))
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
        assert cli.main(["admin", "user", "add", "carol", "--expires-in", "7"]) == 0
        out = capsys.readouterr().out
        assert TOKEN.search(out) and "it expires at " in out
        assert cli.main(["admin", "token", "rotate", "carol", "--expires-in", "0.5"]) == 0
        assert "it expires at " in capsys.readouterr().out
        assert cli.main(["admin", "user", "add", "x", "--expires-in", "0"]) == 2
        capsys.readouterr()
        assert cli.main(["admin", "user", "list", "--json"]) == 0
        listed = {u["name"]: u for u in json.loads(capsys.readouterr().out)}
        assert listed["carol"]["token_expires"] < listed[_admin(listed)]["token_expires"]
        assert cli.main(["admin", "user", "list"]) == 0
        assert "expires" in capsys.readouterr().out


def _admin(listed: dict[str, dict[str, object]]) -> str:
    return next(name for name, u in listed.items() if u["is_admin"])
