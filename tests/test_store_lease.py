"""The scheduler lease and its fencing, on SQLite and on a real PostgreSQL server: concurrent
servers (threads, each with its own connection) race for it, and a holder whose lease was
taken over writes nothing. On PostgreSQL the compare-and-set is an UPDATE under READ
COMMITTED: a racing server's UPDATE waits on the holder's row lock, then matches no row."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from dlapp.store import lease
from dlapp.store.db import session_factory
from dlapp.store.models import Meta

TTL = 10.0


def _race(engine: Engine, n: int, attempt: Callable[[Session, int], object]) -> list[object]:
    """``attempt(session, i)`` from ``n`` threads at once, each on its own connection."""
    sessions = session_factory(engine)
    barrier = threading.Barrier(n)

    def one(i: int) -> object:
        with sessions() as session:
            barrier.wait()
            return attempt(session, i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_of_servers_racing_for_a_fresh_store_exactly_one_leads(engine: Engine) -> None:
    won = _race(engine, 6, lambda s, i: lease.acquire(s, f"server{i}", 100.0, TTL))
    leaders = [w for w in won if w is not None]
    assert len(leaders) == 1
    with session_factory(engine)() as session:
        assert lease.current(session) == leaders[0]
        assert leaders[0].epoch == 1  # type: ignore[attr-defined]


def test_of_servers_racing_for_an_expired_lease_exactly_one_takes_it(engine: Engine) -> None:
    with session_factory(engine)() as session:
        assert lease.acquire(session, "old", 100.0, TTL) is not None
    won = _race(engine, 6, lambda s, i: lease.acquire(s, f"server{i}", 100.0 + TTL + 1, TTL))
    leaders = [w for w in won if w is not None]
    assert len(leaders) == 1
    assert leaders[0].epoch == 2  # type: ignore[attr-defined]


def test_a_holder_whose_lease_was_taken_over_writes_nothing(engine: Engine) -> None:
    sessions = session_factory(engine)
    with sessions() as session:
        stale = lease.acquire(session, "a", 100.0, TTL)
    assert stale is not None
    # "a" stalls past its lease; "b" takes it over and writes
    with sessions() as session:
        taken = lease.acquire(session, "b", 100.0 + TTL + 1, TTL)
        assert taken is not None and taken.epoch == stale.epoch + 1
        session.add(Meta(key="written-by", value="b"))
        assert lease.renew(session, taken, 100.0 + TTL + 2, TTL) is not None
        session.commit()
    # "a" wakes up mid-cycle: its write and its renewal share one transaction, rolled back
    with sessions() as session:
        session.merge(Meta(key="written-by", value="a"))
        assert lease.renew(session, stale, 100.0 + TTL + 3, TTL) is None
        session.rollback()
    with sessions() as session:
        assert session.get(Meta, "written-by").value == "b"  # type: ignore[union-attr]
        assert lease.current(session) == lease.Lease("b", taken.epoch, 100.0 + TTL + 2 + TTL)


def test_a_takeover_racing_a_live_renewal_waits_for_it_and_loses(engine: Engine) -> None:
    """The holder renews (the row is locked until its commit) while another server, whose
    clock says the lease ran out, tries to take it: that server's compare-and-set sees the
    renewed row once the holder commits, and fails; the holder keeps leading."""
    sessions = session_factory(engine)
    with sessions() as session:
        held = lease.acquire(session, "holder", 100.0, TTL)
    assert held is not None
    holder = sessions()
    renewed = lease.renew(holder, held, 105.0, TTL)  # not committed yet: the row is locked
    assert renewed is not None
    outcome: list[object] = []
    rival = threading.Thread(
        target=lambda: outcome.append(_acquire(sessions, "rival", 100.0 + TTL + 1))
    )
    rival.start()
    time.sleep(0.5)
    holder.commit()
    holder.close()
    rival.join(30)
    assert not rival.is_alive() and outcome == [None]
    with sessions() as session:
        assert lease.current(session) == renewed


def _acquire(sessions: Callable[[], Session], holder: str, now: float) -> object:
    with sessions() as session:
        return lease.acquire(session, holder, now, TTL)
