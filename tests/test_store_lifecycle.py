"""The store over releases and machines: migrating an old store in place, and a backup that
restores into another database (SQLite <-> PostgreSQL) with every app, event and log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from databases import fresh_database
from dlapp.cli import main as cli
from dlapp.errors import DlappError
from dlapp.status import AppState, FinalStatus
from dlapp.store import repo
from dlapp.store.backup import backup, restore, revision
from dlapp.store.db import make_engine, migrate, session_factory
from spec_builders import make_spec

T0 = 1_800_000_000.0


def _old_store(url: str) -> sa.Engine:
    """A store as the first release made it (schema 0001), with an app, events, a container."""
    engine = make_engine(url)
    migrate(engine, "0001")
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO meta (key, value) VALUES ('cluster_timestamp', '1800000000000')")
        )
        conn.execute(
            sa.text(
                'INSERT INTO apps (id, seq, "user", name, queue, state, final_status, diagnostics, '
                "pending_reason, spec, num_containers, cpus, memory_mb, gpus, workspace, attempt, "
                "submit_time, start_time, finish_time) VALUES "
                "('application_1800000000000_0001', 1, 'alice', 'old', 'default', 'FINISHED', "
                "'SUCCEEDED', 'ok', '', :spec, 1, 1.0, 512, 1, 'ws.tar.gz', 1, 1.0, 2.0, 3.0)"
            ),
            {"spec": json.dumps({"name": "old", "entry": {"script": "run.sh"}})},
        )
        conn.execute(
            sa.text(
                'INSERT INTO containers (app_id, attempt, "index", state, node_id, node_name, '
                "gpu_ids, exit_code, log_location, diagnostics) VALUES "
                "('application_1800000000000_0001', 1, 0, 'EXITED', 'n1', '10.0.0.1', '0', 0, "
                "'/artifacts/logs/x/1/0', '')"
            )
        )
        for reason in ("submitted", "admitted", "SUCCEEDED: ok"):
            conn.execute(
                sa.text(
                    "INSERT INTO events (app_id, time, kind, reason) VALUES "
                    "('application_1800000000000_0001', 1.0, 'state', :r)"
                ),
                {"r": reason},
            )
    return engine


def test_an_old_store_is_upgraded_in_place_with_nothing_lost(database_url: str) -> None:
    engine = _old_store(database_url)
    assert revision(engine) == "0001"
    migrate(engine)
    assert revision(engine) != "0001"
    with session_factory(engine)() as s:
        app = repo.get_app(s, "application_1800000000000_0001")
        assert (app.state, app.final_status, app.user) == ("FINISHED", "SUCCEEDED", "alice")
        assert [e.reason for e in repo.events(s, app.id)] == [
            "submitted",
            "admitted",
            "SUCCEEDED: ok",
        ]
        (c,) = repo.current_containers(s, app)
        assert c.log_location == "/artifacts/logs/x/1/0" and c.gpu_ids == "0"
        # the upgraded store goes on: the next app id follows the old ones
        assert repo.next_app_id(s, T0)[0] == "application_1800000000000_0002"
    engine.dispose()


def _fill(url: str) -> None:
    engine = make_engine(url)
    migrate(engine)
    with session_factory(engine)() as s:
        for i in range(3):
            app_id, seq = repo.next_app_id(s, T0)
            spec = make_spec(f"a{i}").build()
            app = repo.add_app(s, repo.NewApp("bob", spec, "ws.tar.gz"), T0, app_id, seq)
            repo.transition(s, app, AppState.RUNNING, "placed", T0 + 1)
            repo.add_containers(s, app, [("n1", "10.0.0.1")])
            repo.transition(s, app, AppState.FINISHED, "done", T0 + 2, FinalStatus.SUCCEEDED)
            s.commit()
    engine.dispose()


@pytest.mark.parametrize("direction", ["sqlite->postgresql", "postgresql->sqlite"])
def test_backup_restores_into_the_other_database(
    direction: str, postgres: str, tmp_path: Path
) -> None:
    sqlite_url = f"sqlite:///{tmp_path}/a.db"
    pg_url = fresh_database(postgres)
    source, target = (
        (sqlite_url, pg_url) if direction.startswith("sqlite") else (pg_url, sqlite_url)
    )
    _fill(source)
    artifacts = tmp_path / "artifacts"
    (artifacts / "logs" / "x").mkdir(parents=True)
    (artifacts / "logs" / "x" / "stdout").write_text("kept log\n")
    source_engine = make_engine(source)
    counts = backup(source_engine, artifacts, tmp_path / "b.tar.gz")
    source_engine.dispose()
    assert counts["apps"] == 3 and counts["events"] >= 9
    restored = tmp_path / "restored"
    engine = make_engine(target)
    assert restore(engine, restored, tmp_path / "b.tar.gz")["apps"] == 3
    assert (restored / "logs" / "x" / "stdout").read_text() == "kept log\n"
    with session_factory(engine)() as s:
        apps = repo.list_apps(s)
        assert sorted(a.name for a in apps) == ["a0", "a1", "a2"]
        assert all(a.final_status == "SUCCEEDED" for a in apps)
        assert sum(len(repo.events(s, a.id)) for a in apps) == counts["events"]
        # new rows get new ids after a restore
        repo.add_event(s, apps[0].id, "info", "after restore", T0 + 9)
        s.commit()
    with pytest.raises(DlappError, match="not empty"):
        restore(engine, restored, tmp_path / "b.tar.gz")
    engine.dispose()


def test_server_migrate_backup_restore_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    _old_store(f"sqlite:///{home}/dlapp.db").dispose()
    assert cli.main(["server", "--home", str(home), "migrate"]) == 0
    assert "store schema: 0001 ->" in capsys.readouterr().out
    assert cli.main(["server", "--home", str(home), "backup", str(tmp_path / "b.tgz")]) == 0
    assert "1 apps" in capsys.readouterr().out
    other = tmp_path / "other"
    assert cli.main(["server", "--home", str(other), "restore", str(tmp_path / "b.tgz")]) == 0
    assert "1 apps" in capsys.readouterr().out
    engine = make_engine(f"sqlite:///{other}/dlapp.db")
    with session_factory(engine)() as s:
        assert repo.get_app(s, "application_1800000000000_0001").name == "old"
    engine.dispose()
