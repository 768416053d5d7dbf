"""The scheduler's waiting apps kept between cycles (``scheduling.waiting.WaitingSet``): what a
cycle reads is always what a whole read of the store gives, on SQLite and PostgreSQL, while it
reads the rows only of the apps it has not seen; a failed cycle or a new lease forgets them."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from sqlalchemy.orm import Session

import spec_builders
from dlapp.server.scheduling import waiting as waiting_module
from dlapp.server.scheduling.waiting import WaitingSet
from dlapp.status import AppState, FinalStatus
from dlapp.store import repo
from dlapp.store.models import App
from test_scheduling_cycle import Cluster, cluster  # noqa: F401  (the fixture)

T0 = 1_700_000_000.0


def submit(session: Session, rng: random.Random, now: float) -> App:
    app_id, seq = repo.next_app_id(session, now)
    spec = spec_builders.make_spec(f"a{seq}").queue(rng.choice(["default", "other"])).build()
    new = repo.NewApp(rng.choice(["ann", "bob"]), spec, "ws")
    return repo.add_app(session, new, now, app_id, seq)


class Spy:
    """Counts the rows ``repo.waiting_by_seq`` is asked for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.asked: list[int] = []
        real = repo.waiting_by_seq

        def spy(session: Session, seqs: Sequence[int]) -> list[repo.Waiting]:
            self.asked.extend(seqs)
            return real(session, seqs)

        monkeypatch.setattr(waiting_module.repo, "waiting_by_seq", spy)

    def take(self) -> list[int]:
        out, self.asked = self.asked, []
        return out


@pytest.mark.parametrize("seed", range(4))
def test_what_is_kept_is_what_a_whole_read_gives(session: Session, seed: int) -> None:
    """Random submissions, admissions (a new attempt), requeues (also of an app admitted since
    the last read), kills of waiting apps and reasons written, each committed: after every step
    the kept rows equal the store's."""
    rng = random.Random(seed)
    kept = WaitingSet()
    now = T0
    for _ in range(60):
        now += 1
        apps = list(session.query(App))
        waiting = [a for a in apps if a.state == AppState.ACCEPTED.value]
        running = [a for a in apps if a.state == AppState.RUNNING.value]
        step = rng.choice(["submit", "submit", "admit", "requeue", "bounce", "kill", "reasons"])
        if step == "submit" or not apps:
            for _ in range(rng.randint(1, 4)):
                submit(session, rng, now)
        elif step == "admit" and waiting:
            app = rng.choice(waiting)
            app.attempt += 1
            repo.transition(session, app, AppState.RUNNING, "admitted", now)
        elif step == "requeue" and running:
            repo.transition(session, rng.choice(running), AppState.ACCEPTED, f"back {now}", now)
        elif step == "bounce" and waiting:  # admitted, then back at once (its node lost)
            app = rng.choice(waiting)
            app.attempt += 1
            repo.transition(session, app, AppState.RUNNING, "admitted", now)
            repo.transition(session, app, AppState.ACCEPTED, f"node lost {now}", now)
        elif step == "kill" and waiting:
            app = rng.choice(waiting)
            repo.transition(session, app, AppState.FINISHED, "killed", now, FinalStatus.KILLED)
        elif step == "reasons" and waiting:
            chosen = rng.sample(waiting, k=rng.randint(1, len(waiting)))
            kept.write_reasons(session, {a.id: f"reason {now} {a.id}" for a in chosen})
        session.commit()
        assert kept.read(session) == repo.waiting_apps(session)
        session.commit()


def test_a_cycle_reads_only_the_rows_it_has_not_seen(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    rng = random.Random(1)
    kept = WaitingSet()
    apps = [submit(session, rng, T0) for _ in range(5)]
    session.commit()
    assert len(kept.read(session)) == 5
    assert sorted(spy.take()) == sorted(a.seq for a in apps)
    kept.read(session)
    assert spy.take() == []  # nothing new: no row read
    new = submit(session, rng, T0 + 1)
    back = apps[0]
    back.attempt += 1
    repo.transition(session, back, AppState.RUNNING, "admitted", T0 + 1)
    session.commit()
    assert [w.id for w in kept.read(session)] == [a.id for a in apps[1:]] + [new.id]
    assert spy.take() == [new.seq]
    repo.transition(session, back, AppState.ACCEPTED, "requeued", T0 + 2)  # attempt 1 now
    session.commit()
    assert kept.read(session)[0].id == back.id
    assert spy.take() == [back.seq]  # its row again: another attempt, another reason


def test_forgetting_reads_every_row_again(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reasons written by someone else (another leader, a rolled-back cycle) are read again
    once forgotten."""
    spy = Spy(monkeypatch)
    rng = random.Random(2)
    kept = WaitingSet()
    apps = [submit(session, rng, T0) for _ in range(3)]
    session.commit()
    kept.read(session)
    repo.set_pending_reasons(session, {apps[1].id: "written by another leader"})
    session.commit()
    spy.take()
    kept.forget()
    assert kept.read(session) == repo.waiting_apps(session)
    assert sorted(spy.take()) == sorted(a.seq for a in apps)


def three_whole_node_apps(cluster: Cluster) -> None:  # noqa: F811
    """On the cluster's one node of 2 GPUs: one is admitted, two wait."""
    for i in range(3):
        cluster.submit(spec_builders.make_spec(f"big{i}").gpus(2).build())


def test_a_failed_cycle_forgets_the_kept_rows(
    cluster: Cluster,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spy = Spy(monkeypatch)
    three_whole_node_apps(cluster)
    cluster.cycle()  # one admitted, two wait
    assert len(spy.take()) == 3
    cluster.cycle()
    assert spy.take() == []  # kept

    def fail(*args: object) -> None:
        raise RuntimeError("the policy failed")

    monkeypatch.setattr("dlapp.server.scheduling.loop.decide", fail)
    with pytest.raises(RuntimeError):
        cluster.cycle()
    monkeypatch.undo()
    spy = Spy(monkeypatch)
    cluster.cycle()
    assert len(spy.take()) == 2  # every waiting row read again


def test_taking_the_lease_forgets_the_kept_rows(
    cluster: Cluster,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spy = Spy(monkeypatch)
    three_whole_node_apps(cluster)
    cluster.cycle()
    cluster.cycle()
    spy.take()
    cluster.scheduler.lease = None  # as after a lost lease: the next step takes it again
    cluster.cycle()
    assert len(spy.take()) == 2
