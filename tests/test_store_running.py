"""The running apps the scheduling cycle looks at: those asked to stop, and those whose current
attempt may have ended. Each is what filtering every running app in Python gives, on SQLite
and PostgreSQL, for random attempts, container states and stop requests."""

from __future__ import annotations

import random

import pytest
from sqlalchemy.orm import Session

import spec_builders
from dlapp.status import AppState, ContainerState, StopReason
from dlapp.store import repo
from dlapp.store.models import App

T0 = 1_700_000_000.0


def _store(session: Session, rng: random.Random) -> None:
    for _ in range(40):
        app_id, seq = repo.next_app_id(session, T0)
        new = repo.NewApp("ann", spec_builders.make_spec(f"a{seq}").build(), "ws")
        app = repo.add_app(session, new, T0, app_id, seq)
        if rng.random() < 0.15:
            continue  # still waiting
        for attempt in range(1, rng.randint(1, 3) + 1):  # earlier attempts, then this one
            app.attempt = attempt
            if rng.random() < 0.9:  # (now and then none: a running app without containers)
                repo.add_containers(session, app, [("n", "n")] * rng.randint(1, 3))
            for c in repo.current_containers(session, app):
                c.state = rng.choice(list(ContainerState)).value
        repo.transition(session, app, AppState.RUNNING, "admitted", T0)
        if rng.random() < 0.3:
            app.kill_requested = rng.choice(list(StopReason)).value
        if rng.random() < 0.1:
            repo.transition(session, app, AppState.FINISHED, "done", T0)
    session.commit()


def _may_settle(session: Session, app: App) -> bool:
    current = repo.current_containers(session, app)
    return not current or any(ContainerState(c.state).is_terminal() for c in current)


@pytest.mark.parametrize("seed", range(3))
def test_the_running_apps_a_cycle_looks_at_are_those_a_whole_filter_finds(
    session: Session, seed: int
) -> None:
    _store(session, random.Random(seed))
    running = repo.running_apps(session)
    assert len(running) > 10
    assert [a.id for a in repo.running_to_stop(session)] == [
        a.id for a in running if a.kill_requested is not None
    ]
    settle = [a.id for a in running if _may_settle(session, a)]
    assert [a.id for a in repo.running_may_settle(session)] == settle
    assert 0 < len(settle) < len(running)  # both kinds are there
    assert repo.running_ids(session) == {a.id for a in running}
