"""Arrays in the store: migration 0008 over a 0007 store (and back), the bulk insert of an
array's members, their counts by state and a member by its index."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from dlapp.arrays import members
from dlapp.status import AppState, FinalStatus
from dlapp.store import arrays, repo
from dlapp.store.backup import backup, restore
from dlapp.store.db import make_engine, migrate, session_factory
from spec_builders import make_spec

T0 = 1_800_000_000.0


def _old_app(engine: sa.Engine) -> None:
    with engine.begin() as conn:  # as the release of 0007 wrote it
        conn.execute(
            sa.text("INSERT INTO meta (key, value) VALUES ('cluster_timestamp', '1800000000000')")
        )
        conn.execute(
            sa.text(
                'INSERT INTO apps (id, seq, "user", name, queue, state, final_status, '
                "diagnostics, pending_reason, spec, num_containers, cpus, memory_mb, gpus, "
                "workspace, attempt, submit_time) VALUES ('application_1800000000000_0001', 1, "
                "'u', 'old', 'default', 'FINISHED', 'SUCCEEDED', '', '', :spec, 1, 1.0, 512, 0.5,"
                " '/w', 1, 1.0)"
            ),
            {"spec": json.dumps(make_spec("old").build().to_dict())},
        )


def test_0008_upgrades_a_0007_store_whose_apps_belong_to_no_array(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        migrate(engine, "0007_gpu_share")
        assert "arrays" not in sa.inspect(engine).get_table_names()
        _old_app(engine)
        migrate(engine)
        assert "arrays" in sa.inspect(engine).get_table_names()
        with session_factory(engine)() as s:
            old = repo.get_app(s, "application_1800000000000_0001")
            assert (old.array_id, old.array_index, old.array_values) == (None, None, "")
            assert (old.state, old.gpus) == ("FINISHED", 0.5)
            # the upgraded store takes arrays; their members' ids follow the old apps'
            spec = make_spec("arr").build().model_copy(update={"array": "0-2"})
            array_id, seq = arrays.next_array_id(s, T0)
            new = arrays.NewArray("u", spec, members("0-2", None), None, "/ws")
            arrays.add_array(s, new, T0, array_id, seq)
            s.commit()
            assert array_id == "array_1800000000000_0001"
            assert [a.id for a in arrays.members(s, array_id)] == [
                f"application_1800000000000_000{i}" for i in (2, 3, 4)
            ]
    finally:
        engine.dispose()


def test_0008_downgrades_to_0007(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from dlapp.store.db import MIGRATIONS

    engine = make_engine(database_url)
    try:
        migrate(engine)
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as c:
            cfg.attributes["connection"] = c
            command.downgrade(cfg, "0007_gpu_share")
        assert "arrays" not in sa.inspect(engine).get_table_names()
        columns = {col["name"] for col in sa.inspect(engine).get_columns("apps")}
        assert not {"array_id", "array_index", "array_values"} & columns
    finally:
        engine.dispose()


def test_an_arrays_members_are_written_in_bulk_with_their_events(session: Session) -> None:
    spec = make_spec("sw").build().model_copy(update={"sweep": {"lr": (0.1, 0.2), "b": (1, 2)}})
    found = members(None, spec.sweep)
    array_id, seq = arrays.next_array_id(session, T0)
    arrays.add_array(
        session, arrays.NewArray("bob", spec, found, 2, "/ws.tar.gz"), T0, array_id, seq
    )
    session.commit()
    apps = arrays.members(session, array_id)
    assert [a.array_index for a in apps] == [0, 1, 2, 3]
    assert [json.loads(a.array_values) for a in apps] == [
        {"lr": 0.1, "b": 1},
        {"lr": 0.1, "b": 2},
        {"lr": 0.2, "b": 1},
        {"lr": 0.2, "b": 2},
    ]
    assert {a.workspace for a in apps} == {"/ws.tar.gz"}
    assert all(repo.app_spec(a).sweep is None for a in apps)  # a member is one app
    assert [e.to_state for e in repo.events(session, apps[0].id)] == ["ACCEPTED"]
    assert arrays.limits(session, [array_id]) == {array_id: 2}
    repo.transition(session, apps[0], AppState.RUNNING, "placed", T0 + 1)
    repo.transition(session, apps[1], AppState.FINISHED, "x", T0 + 1, FinalStatus.FAILED)
    session.commit()
    assert arrays.running_members(session, [array_id]) == {array_id: 1}
    assert arrays.counts(session, array_id) == {
        "ACCEPTED": 2,
        "RUNNING": 1,
        "SUCCEEDED": 0,
        "FAILED": 1,
        "KILLED": 0,
    }
    found_member = arrays.member(session, array_id, 3)
    assert found_member is not None and found_member.id == apps[3].id
    assert arrays.member(session, array_id, 4) is None


def test_a_backup_with_an_array_restores_its_members_after_it(tmp_path: Path) -> None:
    source = make_engine(f"sqlite:///{tmp_path}/a.db")
    migrate(source)
    with session_factory(source)() as s:
        spec = make_spec("arr").build().model_copy(update={"array": "0-4%2"})
        array_id, seq = arrays.next_array_id(s, T0)
        arrays.add_array(
            s, arrays.NewArray("u", spec, members("0-4", None), 2, "/ws"), T0, array_id, seq
        )
        s.commit()
    backup(source, tmp_path / "artifacts", tmp_path / "b.tar.gz")
    source.dispose()
    target = make_engine(f"sqlite:///{tmp_path}/b.db")
    try:
        counts = restore(target, tmp_path / "restored", tmp_path / "b.tar.gz")
        assert counts["arrays"] == 1 and counts["apps"] == 5
        with session_factory(target)() as s:
            assert [a.array_index for a in arrays.members(s, array_id)] == [0, 1, 2, 3, 4]
            assert arrays.limits(s, [array_id]) == {array_id: 2}
    finally:
        target.dispose()
