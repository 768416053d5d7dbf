"""Users, tokens (stored hashed) and the audit log in the store; the 0002 migration."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from dlapp.errors import BadRequest, ConflictError, NotFoundError
from dlapp.store import audit, users
from dlapp.store.db import make_engine, migrate
from dlapp.store.models import Token

T0 = 1_700_000_000.0


def test_0002_adds_users_tokens_and_audit_to_a_0001_store(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path}/old.db")
    migrate(eng, "0001")
    assert "users" not in sa.inspect(eng).get_table_names()
    migrate(eng)
    assert {"users", "tokens", "audit"} <= set(sa.inspect(eng).get_table_names())
    eng.dispose()


def test_a_token_is_stored_only_as_its_sha256(session: Session) -> None:
    _, token = users.add_user(session, "alice", T0)
    session.commit()
    assert token.startswith("dlapp_") and len(token) > 40
    (row,) = session.scalars(sa.select(Token)).all()
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in repr(row.__dict__)


def test_authenticate_finds_the_user_of_a_live_token(session: Session) -> None:
    _, token = users.add_user(session, "alice", T0, groups=["ml", "vision"])
    user = users.authenticate(session, token, T0 + 1)
    assert user is not None and user.name == "alice"
    assert users.user_groups(session, "alice") == {"ml", "vision"}
    assert users.user_groups(session, "nobody") == set()
    assert users.authenticate(session, token + "x", T0) is None
    assert users.authenticate(session, "not-a-dlapp-token", T0) is None
    assert users.authenticate(session, "dlapp_" + "a" * 1000, T0) is None


def test_rotating_revokes_the_old_token(session: Session) -> None:
    _, old = users.add_user(session, "alice", T0)
    new = users.issue_token(session, "alice", T0 + 5)
    assert new != old
    assert users.authenticate(session, old, T0 + 6) is None
    assert users.authenticate(session, new, T0 + 6) is not None
    assert users.revoke_tokens(session, "alice", T0 + 7) == 1
    assert users.authenticate(session, new, T0 + 8) is None
    assert users.live_token(session, "alice") is None


def test_last_used_is_kept_but_not_written_on_every_request(session: Session) -> None:
    _, token = users.add_user(session, "alice", T0)
    users.authenticate(session, token, T0 + 1)
    live = users.live_token(session, "alice")
    assert live is not None and live.last_used == T0 + 1
    users.authenticate(session, token, T0 + 2)
    assert live.last_used == T0 + 1
    users.authenticate(session, token, T0 + 1 + users.LAST_USED_EVERY_S + 1)
    assert live.last_used == T0 + users.LAST_USED_EVERY_S + 2


def test_names_are_checked_and_unique(session: Session) -> None:
    users.add_user(session, "alice", T0)
    with pytest.raises(ConflictError, match="already exists"):
        users.add_user(session, "alice", T0)
    for bad in ("", "-x", "a b", "a/b", "x" * 65, "é"):
        with pytest.raises(BadRequest, match="invalid user name"):
            users.add_user(session, bad, T0)
    with pytest.raises(BadRequest, match="invalid group name"):
        users.add_user(session, "bob", T0, groups=["ok", "not ok"])
    with pytest.raises(NotFoundError, match="no user carol"):
        users.issue_token(session, "carol", T0)


def test_the_last_enabled_admin_cannot_be_disabled(session: Session) -> None:
    users.add_user(session, "root", T0, is_admin=True)
    with pytest.raises(ConflictError, match="last enabled admin"):
        users.set_disabled(session, "root", True)
    users.add_user(session, "second", T0, is_admin=True)
    assert users.set_disabled(session, "root", True).disabled


def test_audit_entries_newest_first_and_filtered(session: Session) -> None:
    audit.record(session, "alice", "submit", "application_1_0001", T0)
    audit.record(session, "bob", "submit", "application_1_0002", T0 + 1)
    audit.record(session, "alice", "kill", "application_1_0001", T0 + 2, "was RUNNING")
    assert [e.action for e in audit.entries(session)] == ["kill", "submit", "submit"]
    assert [e.target for e in audit.entries(session, user="alice", action="submit")] == [
        "application_1_0001"
    ]
    assert len(audit.entries(session, target="application_1_0001")) == 2
    assert len(audit.entries(session, limit=1)) == 1
