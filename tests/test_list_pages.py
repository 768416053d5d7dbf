"""Listing apps a page at a time: the store's pages and counts, the indexes that keep them fast
(migration 0004), ``GET /api/v1/apps?limit=&before=``, ``DlappClient.iter_apps`` and
``dlapp list --limit``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from dlapp.cli import main as cli
from dlapp.client import DlappClient
from dlapp.config import ServerSettings
from dlapp.status import AppState
from dlapp.store import repo
from dlapp.store.db import MIGRATIONS, make_engine, migrate
from dlapp.store.models import App
from spec_builders import make_spec

from inprocess import add_user, admin_token, bearer, live, serve, submit

T0 = 1_700_000_000.0


def add(session: Session, user: str = "alice", queue: str = "root.default") -> App:
    app_id, seq = repo.next_app_id(session, T0)
    spec = make_spec("t").queue(queue).build()
    return repo.add_app(session, repo.NewApp(user, spec, "ws.tar.gz"), T0, app_id, seq)


def pages(session: Session, where: repo.AppFilter, limit: int) -> list[list[str]]:
    found, before = [], None
    while True:
        page = repo.apps_page(session, where, limit, before)
        found.append([a.id for a in page.apps])
        if page.next_before is None:
            return found
        before = page.next_before


# -- the store ---------------------------------------------------------------------------------


def test_pages_hold_every_app_once_newest_first(session: Session) -> None:
    ids = [add(session).id for _ in range(7)]
    newest = ids[::-1]
    assert pages(session, repo.AppFilter(), 3) == [newest[:3], newest[3:6], newest[6:]]
    assert pages(session, repo.AppFilter(), 7) == [newest]  # no empty page after a full one
    with pytest.raises(ValueError, match="at least one app"):
        repo.apps_page(session, repo.AppFilter(), 0)


def test_filters_hold_on_every_page(session: Session) -> None:
    mine = [add(session, user=u).id for u in ("alice", "bob") * 4][::2]
    add(session, user="alice", queue="root.other")
    where = repo.AppFilter(user="alice", queue="root.default")
    assert pages(session, where, 2) == [mine[::-1][:2], mine[::-1][2:]]
    running = add(session, user="bob")
    repo.transition(session, running, AppState.RUNNING, "admitted", T0)
    assert pages(session, repo.AppFilter(states=[AppState.RUNNING]), 2) == [[running.id]]


def test_visible_to_is_the_owner_or_the_queues_administered(session: Session) -> None:
    own = add(session, user="carol", queue="root.default").id
    team = add(session, user="alice", queue="root.team").id
    add(session, user="alice", queue="root.default")
    where = repo.AppFilter(visible_to=("carol", ["root.team"]))
    assert pages(session, where, 1) == [[team], [own]]
    assert pages(session, repo.AppFilter(visible_to=("dan", [])), 5) == [[]]


def test_counts_by_state_load_no_rows(session: Session) -> None:
    for _ in range(3):
        add(session)
    repo.transition(session, add(session), AppState.RUNNING, "admitted", T0)
    counts = repo.count_apps(session, (AppState.ACCEPTED, AppState.RUNNING, AppState.FINISHED))
    assert counts == {AppState.ACCEPTED: 3, AppState.RUNNING: 1, AppState.FINISHED: 0}


def _app_indexes(engine: Engine) -> dict[str, list[str]]:
    found = sa.inspect(engine).get_indexes("apps")
    return {i["name"]: list(i["column_names"]) for i in found if i["name"].startswith("ix_")}


def test_migration_0004_swaps_single_column_indexes_for_composite_ones(
    database_url: str,
) -> None:
    engine = make_engine(database_url)
    try:
        migrate(engine)
        assert _app_indexes(engine) == {
            "ix_apps_user_seq": ["user", "seq"],
            "ix_apps_queue_seq": ["queue", "seq"],
            "ix_apps_state_user": ["state", "user"],
            "ix_apps_array_index": ["array_id", "array_index"],  # 0008: an array's members
            # 0009: a queue's waiting apps counted, and which apps wait read, from the index
            "ix_apps_state_queue": ["state", "queue", "seq", "attempt"],
        }
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0003_gpu_usage")
        assert _app_indexes(engine) == {
            "ix_apps_user": ["user"],
            "ix_apps_queue": ["queue"],
            "ix_apps_state": ["state"],
        }
        migrate(engine)  # and up again
        assert {"ix_apps_user_seq", "ix_apps_state_queue"} <= set(_app_indexes(engine))
    finally:
        engine.dispose()


# -- the API -----------------------------------------------------------------------------------

QUEUES = {
    "queues": {
        "default": {"guaranteed": "50%"},
        "team": {"guaranteed": "50%", "admin_acl": {"users": ["carol"]}},
    }
}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    home = tmp_path / "home"
    home.mkdir()
    (home / "queues.yaml").write_text(yaml.safe_dump(QUEUES))
    with serve(ServerSettings(home=home, schedule_interval_s=0.05)) as tc:
        yield tc, {name: add_user(tc, home, name) for name in ("alice", "bob", "carol")}


def _walk(tc: TestClient, token: str, limit: int) -> list[list[str]]:
    found, params = [], {"limit": limit}
    while True:
        body = tc.get("/api/v1/apps", params=params, headers=bearer(token)).json()
        found.append([a["id"] for a in body["apps"]])
        if body["next"] is None:
            return found
        params = {"limit": limit, "before": body["next"]}


def test_api_pages_follow_next_to_the_end(
    api: tuple[TestClient, dict[str, str]], tmp_path: Path
) -> None:
    tc, tokens = api
    ids = [submit(tc, tmp_path, tokens["alice"]).json()["id"] for _ in range(5)]
    submit(tc, tmp_path, tokens["bob"])
    assert _walk(tc, tokens["alice"], 2) == [ids[4:2:-1], ids[2:0:-1], ids[:1]]
    bad = tc.get("/api/v1/apps", params={"before": 0}, headers=bearer(tokens["alice"]))
    assert bad.status_code == 422 and "before" in bad.text


def test_a_queue_admins_pages_are_full(
    api: tuple[TestClient, dict[str, str]], tmp_path: Path
) -> None:
    """Visibility is part of the query: a page is never cut short by filtering after it."""
    tc, tokens = api
    team = []
    for _ in range(3):
        team.append(submit(tc, tmp_path, tokens["alice"], queue="team").json()["id"])
        submit(tc, tmp_path, tokens["alice"], queue="default")
    own = submit(tc, tmp_path, tokens["carol"], queue="default").json()["id"]
    assert _walk(tc, tokens["carol"], 2) == [[own, team[2]], [team[1], team[0]]]


# -- the client and the CLI --------------------------------------------------------------------


def test_client_iterates_pages_and_cli_list_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    with live(ServerSettings(home=home, schedule_interval_s=0.05)) as url:
        ws = tmp_path / "ws"
        ws.mkdir()
        (ws / "run.sh").write_text("exit 0\n")
        spec = tmp_path / "app.yaml"
        spec.write_text(
            yaml.safe_dump(
                {
                    "name": "t",
                    "workspace": {"path": str(ws)},
                    "entry": {"script": "run.sh"},
                    "resources": {"memory": "64M"},
                }
            )
        )
        monkeypatch.setenv("DLAPP_SERVER", url)
        monkeypatch.setenv("DLAPP_TOKEN", admin_token(home))
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
        for _ in range(4):
            assert cli.main(["launch", str(spec)]) == 0
        capsys.readouterr()
        with DlappClient(url, admin_token(home)) as client:
            every = [a["id"] for a in client.list_apps()]
            assert len(every) == 4
            assert [a["id"] for a in client.iter_apps(page_size=3)] == every
            first, after = client.list_page(limit=3)
            assert [a["id"] for a in first] == every[:3] and after is not None
            rest, end = client.list_page(limit=3, before=after)
            assert [a["id"] for a in rest] == every[3:] and end is None
        assert cli.main(["list", "--all", "--limit", "3"]) == 0
        out = capsys.readouterr().out
        assert all(i in out for i in every[:3]) and every[3] not in out
        assert "the newest 3 shown; there are more" in out
        assert cli.main(["list", "--all", "--limit", "0", "--json"]) == 0
        assert [a["id"] for a in yaml.safe_load(capsys.readouterr().out)] == every
        assert cli.main(["list", "--limit", "-1"]) == 1
        assert "--limit must be 0 (every app) or more, not -1" in capsys.readouterr().err
