"""The store (engine, migrations, repository functions) and the app-state transition table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.orm import Session

import spec_builders
from dlapp.errors import InvalidTransition, NotFoundError
from dlapp.spec import AppSpec
from dlapp.status import (
    TRANSITIONS,
    AppState,
    ContainerState,
    FinalStatus,
    check_transition,
    final_status_is_valid,
)
from dlapp.store import repo
from dlapp.store.db import make_engine, migrate, session_factory
from dlapp.store.models import App

T0 = 1_700_000_000.0  # a fixed clock: 13-digit millisecond timestamps


def make_spec(name: str = "t", queue: str = "default") -> AppSpec:
    return spec_builders.make_spec(name).queue(queue).build()


def submit(session: Session, user: str = "alice", queue: str = "default", now: float = T0) -> App:
    app_id, seq = repo.next_app_id(session, now)
    new = repo.NewApp(user=user, spec=make_spec(queue=queue), workspace="ws.tar.gz")
    return repo.add_app(session, new, now, app_id, seq)


def running(session: Session, user: str = "alice") -> App:
    app = submit(session, user=user)
    repo.transition(session, app, AppState.RUNNING, "placed", T0 + 1)
    return app


# --- engine and migrations ---------------------------------------------------------------


def test_migrate_creates_the_tables(engine: Engine) -> None:
    tables = set(sa.inspect(engine).get_table_names())
    assert {"meta", "apps", "containers", "events", "alembic_version"} <= tables


def test_migrate_creates_the_indexes(engine: Engine) -> None:
    names = {ix["name"] for ix in sa.inspect(engine).get_indexes("containers")}
    assert "ix_containers_app_attempt" in names


def test_sqlite_runs_in_wal_mode(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        assert engine.dialect.name == "postgresql" and engine.driver == "psycopg"
        return
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        # acknowledged means durable: each commit is synced (2 = FULL), not left to a checkpoint
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2


def test_schema_version_is_the_newest_migration(engine: Engine) -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from dlapp.store.db import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == head


def test_migrating_twice_is_a_no_op(engine: Engine) -> None:
    with session_factory(engine)() as s, s.begin():
        submit(s)
    migrate(engine)
    assert {"meta", "apps", "containers", "events"} <= set(sa.inspect(engine).get_table_names())
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1
        assert conn.exec_driver_sql("SELECT count(*) FROM apps").scalar() == 1


def test_make_engine_creates_the_database_directory(tmp_path: Path) -> None:
    eng = make_engine(f"sqlite:///{tmp_path}/deep/er/x.db")
    migrate(eng)
    eng.dispose()
    assert (tmp_path / "deep" / "er" / "x.db").is_file()


# --- application ids ---------------------------------------------------------------------


def test_first_app_id_is_yarn_shaped(session: Session) -> None:
    app_id, seq = repo.next_app_id(session, T0)
    assert re.fullmatch(r"application_\d{13}_0001", app_id)
    assert app_id == "application_1700000000000_0001"
    assert seq == 1


def test_app_ids_count_up(session: Session) -> None:
    submit(session)
    app_id, seq = repo.next_app_id(session, T0 + 5)
    assert app_id == "application_1700000000000_0002"
    assert seq == 2


def test_cluster_timestamp_is_fixed_across_calls(session: Session) -> None:
    first = repo.cluster_timestamp(session, T0)
    assert repo.cluster_timestamp(session, T0 + 3600) == first == 1_700_000_000_000


def test_cluster_timestamp_is_fixed_across_sessions(engine: Engine) -> None:
    factory = session_factory(engine)
    with factory() as s, s.begin():
        submit(s)
    with factory() as s:
        app_id, _ = repo.next_app_id(s, T0 + 86400)
    assert app_id == "application_1700000000000_0002"


# --- adding, getting and listing apps ----------------------------------------------------


def test_add_app_stores_the_request_and_an_accepted_event(session: Session) -> None:
    app = submit(session, user="bob")
    stored = repo.get_app(session, app.id)
    assert (stored.user, stored.state, stored.final_status) == ("bob", "ACCEPTED", "UNDEFINED")
    assert repo.app_spec(stored) == make_spec()
    (event,) = repo.events(session, app.id)
    assert (event.from_state, event.to_state) == (None, "ACCEPTED")
    assert "submitted by bob" in event.reason


def test_get_app_of_an_unknown_id_raises_not_found(session: Session) -> None:
    with pytest.raises(NotFoundError, match="application_0_0009"):
        repo.get_app(session, "application_0_0009")


def test_list_apps_filters_by_user(session: Session) -> None:
    a = submit(session, user="alice")
    submit(session, user="bob")
    assert [x.id for x in repo.list_apps(session, user="alice")] == [a.id]


def test_list_apps_filters_by_queue(session: Session) -> None:
    submit(session, queue="a")
    b = submit(session, queue="b")
    assert [x.id for x in repo.list_apps(session, queue="b")] == [b.id]


def test_list_apps_filters_by_state(session: Session) -> None:
    submit(session)
    r = running(session)
    assert [x.id for x in repo.list_apps(session, states=[AppState.RUNNING])] == [r.id]
    both = repo.list_apps(session, states=[AppState.RUNNING, AppState.ACCEPTED])
    assert len(both) == 2


def test_list_apps_shows_newest_first(session: Session) -> None:
    ids = [submit(session).id for _ in range(3)]
    assert [x.id for x in repo.list_apps(session)] == ids[::-1]
    assert len(repo.list_apps(session, limit=2)) == 2


# --- transitions -------------------------------------------------------------------------


def test_accepted_to_running_sets_start_time(session: Session) -> None:
    app = submit(session)
    repo.transition(session, app, AppState.RUNNING, "placed on n1", T0 + 7)
    assert app.state == "RUNNING"
    assert app.start_time == T0 + 7
    assert app.pending_reason == ""


def test_running_to_finished_records_the_outcome(session: Session) -> None:
    app = running(session)
    repo.transition(session, app, AppState.FINISHED, "exit 0", T0 + 60, FinalStatus.SUCCEEDED)
    assert (app.state, app.final_status) == ("FINISHED", "SUCCEEDED")
    assert app.finish_time == T0 + 60
    assert app.diagnostics == "exit 0"


def test_finished_to_running_is_refused_and_changes_nothing(session: Session) -> None:
    app = running(session)
    repo.transition(session, app, AppState.FINISHED, "killed", T0 + 9, FinalStatus.KILLED)
    before = len(repo.events(session, app.id))
    with pytest.raises(InvalidTransition, match="FINISHED to RUNNING"):
        repo.transition(session, app, AppState.RUNNING, "again", T0 + 10)
    assert (app.state, app.final_status, app.start_time) == ("FINISHED", "KILLED", T0 + 1)
    assert len(repo.events(session, app.id)) == before


def test_every_transition_writes_a_state_event(session: Session) -> None:
    app = running(session)
    repo.transition(session, app, AppState.ACCEPTED, "node lost", T0 + 2)
    repo.transition(session, app, AppState.RUNNING, "placed again", T0 + 3)
    repo.transition(session, app, AppState.FINISHED, "exit 1", T0 + 4, FinalStatus.FAILED)
    moves = [(e.kind, e.from_state, e.to_state, e.reason) for e in repo.events(session, app.id)]
    assert moves[1:] == [
        ("state", "ACCEPTED", "RUNNING", "placed"),
        ("state", "RUNNING", "ACCEPTED", "node lost"),
        ("state", "ACCEPTED", "RUNNING", "placed again"),
        ("state", "RUNNING", "FINISHED", "FAILED: exit 1"),
    ]


def test_requeue_keeps_the_reason_as_pending_reason(session: Session) -> None:
    app = running(session)
    repo.transition(session, app, AppState.ACCEPTED, "preempted", T0 + 2)
    assert app.pending_reason == "preempted"


# --- containers --------------------------------------------------------------------------


def test_add_containers_makes_one_starting_row_per_node(session: Session) -> None:
    app = running(session)
    repo.add_containers(session, app, [("n1", "host1"), ("n2", "host2")])
    containers = repo.current_containers(session, app)
    assert [(c.index, c.node_id, c.state) for c in containers] == [
        (0, "n1", "STARTING"),
        (1, "n2", "STARTING"),
    ]
    assert repo.get_container(session, app, 1).node_name == "host2"


def test_get_container_of_an_unknown_index_raises_not_found(session: Session) -> None:
    app = running(session)
    repo.add_containers(session, app, [("n1", "host1")])
    with pytest.raises(NotFoundError):
        repo.get_container(session, app, 5)


def test_update_container_writes_a_container_event(session: Session) -> None:
    app = running(session)
    repo.add_containers(session, app, [("n1", "host1")])
    (c,) = repo.current_containers(session, app)
    repo.update_container(
        session, c, T0 + 5, state=ContainerState.EXITED.value, exit_code=3, diagnostics="oom"
    )
    assert (c.state, c.exit_code) == ("EXITED", 3)
    last = repo.events(session, app.id)[-1]
    assert last.kind == "container"
    assert last.reason == "container 0 EXITED on host1: oom"


def test_update_container_without_a_state_writes_no_event(session: Session) -> None:
    app = running(session)
    repo.add_containers(session, app, [("n1", "host1")])
    (c,) = repo.current_containers(session, app)
    before = len(repo.events(session, app.id))
    repo.update_container(session, c, T0 + 5, pid=4242)
    assert c.pid == 4242
    assert len(repo.events(session, app.id)) == before


def test_current_containers_are_those_of_the_current_attempt(session: Session) -> None:
    app = running(session)
    repo.add_containers(session, app, [("n1", "host1")])
    app.attempt = 1
    repo.add_containers(session, app, [("n2", "host2")])
    assert [c.node_id for c in repo.current_containers(session, app)] == ["n2"]


def test_allocations_are_current_containers_of_running_apps(session: Session) -> None:
    live = running(session)
    repo.add_containers(session, live, [("old", "old")])
    live.attempt = 1
    repo.add_containers(session, live, [("n1", "h1"), ("n2", "h2")])
    queued = submit(session)
    repo.add_containers(session, queued, [("q", "q")])
    done = running(session)
    repo.add_containers(session, done, [("d", "d")])
    repo.transition(session, done, AppState.FINISHED, "exit 0", T0 + 9, FinalStatus.SUCCEEDED)
    session.flush()
    held = [(a.id, c.node_id) for a, c in repo.allocations(session)]
    assert held == [(live.id, "n1"), (live.id, "n2")]


# --- the status table --------------------------------------------------------------------


def test_finished_is_terminal_with_no_exits() -> None:
    assert AppState.FINISHED.is_terminal()
    assert TRANSITIONS[AppState.FINISHED] == frozenset()


def test_unfinished_states_are_not_terminal() -> None:
    assert not AppState.ACCEPTED.is_terminal()
    assert not AppState.RUNNING.is_terminal()


def test_every_state_has_a_row_in_the_table() -> None:
    assert set(TRANSITIONS) == set(AppState)


def test_container_terminal_states() -> None:
    assert {s for s in ContainerState if s.is_terminal()} == {
        ContainerState.EXITED,
        ContainerState.LOST,
    }


def test_check_transition_allows_the_table_moves() -> None:
    check_transition(AppState.ACCEPTED, AppState.RUNNING)
    check_transition(AppState.ACCEPTED, AppState.FINISHED)
    check_transition(AppState.RUNNING, AppState.ACCEPTED)
    check_transition(AppState.RUNNING, AppState.FINISHED)


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (AppState.FINISHED, AppState.RUNNING),
        (AppState.FINISHED, AppState.FINISHED),
        (AppState.RUNNING, AppState.RUNNING),
    ],
)
def test_check_transition_refuses_other_moves(current: AppState, new: AppState) -> None:
    with pytest.raises(InvalidTransition):
        check_transition(current, new)


def test_final_status_is_decided_only_when_finished() -> None:
    assert final_status_is_valid(AppState.FINISHED, FinalStatus.SUCCEEDED)
    assert final_status_is_valid(AppState.RUNNING, FinalStatus.UNDEFINED)
    assert not final_status_is_valid(AppState.FINISHED, FinalStatus.UNDEFINED)
    assert not final_status_is_valid(AppState.ACCEPTED, FinalStatus.KILLED)


def test_oldest_waiting_is_each_queues_first_waiting_app(session: Session) -> None:
    submit(session, queue="a", now=T0 + 5)
    submit(session, queue="a", now=T0 + 3)
    started = submit(session, queue="b", now=T0)  # started: no longer waiting
    repo.transition(session, started, AppState.RUNNING, "placed", T0 + 1)
    submit(session, queue="b", now=T0 + 7)
    session.commit()
    assert repo.oldest_waiting(session) == {"a": T0 + 3, "b": T0 + 7}


def test_live_apps_are_the_queued_and_running_newest_first(session: Session) -> None:
    first = running(session, user="ann")
    second = submit(session, user="bob", queue="b")
    done = submit(session)
    repo.transition(session, done, AppState.FINISHED, "killed", T0 + 2, FinalStatus.KILLED)
    session.commit()
    rows = repo.live_apps(session)
    assert [(r.user, r.queue, r.state) for r in rows] == [
        (second.user, second.queue, "ACCEPTED"),
        (first.user, first.queue, "RUNNING"),
    ]
    assert (rows[1].cpus, rows[1].memory_mb, rows[1].gpus) == (
        first.cpus,
        first.memory_mb,
        first.gpus,
    )
