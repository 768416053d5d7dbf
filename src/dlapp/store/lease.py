"""The scheduler lease: of all servers sharing a store, exactly one schedules at a time.

The lease is one row (``meta.scheduler_lease``): holder, epoch, expiry. A server takes it when
it is free or expired, bumping the epoch; the holder renews it with a compare-and-set on
(holder, epoch) inside the same transaction as every scheduling write. A holder that stalls
past its lease (SIGSTOP, a long GC, a network partition) and wakes up finds the row changed:
its renewal matches no row, its transaction is rolled back, and it writes nothing — the
epoch is its fencing token.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from sqlalchemy import update
from sqlalchemy.orm import Session

from dlapp.store.models import Meta

KEY = "scheduler_lease"


@dataclass(frozen=True)
class Lease:
    holder: str
    epoch: int
    expires: float

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def current(session: Session) -> Lease | None:
    row = session.get(Meta, KEY)
    return Lease(**json.loads(row.value)) if row else None


def _swap(session: Session, old: str | None, new: Lease) -> bool:
    """Compare-and-set the lease row from ``old`` to ``new``."""
    if old is None:
        if session.get(Meta, KEY) is not None:
            return False
        session.add(Meta(key=KEY, value=new.encode()))
        session.flush()
        return True
    result = session.execute(
        update(Meta).where(Meta.key == KEY, Meta.value == old).values(value=new.encode())
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def acquire(session: Session, holder: str, now: float, ttl: float) -> Lease | None:
    """Take the lease if it is free, expired or already ours; commits. None if another
    server holds it."""
    row = session.get(Meta, KEY)
    old = row.value if row else None
    held = Lease(**json.loads(old)) if old else None
    if held is not None and held.holder != holder and held.expires > now:
        session.rollback()
        return None
    epoch = (
        held.epoch
        if held is not None and held.holder == holder
        else (held.epoch + 1 if held else 1)
    )
    lease = Lease(holder, epoch, now + ttl)
    try:
        ok = _swap(session, old, lease)
        if ok:
            session.commit()
        else:
            session.rollback()
    except Exception:  # a racing insert of the first lease: the other server won
        session.rollback()
        return None
    return lease if ok else None


def renew(session: Session, lease: Lease, now: float, ttl: float) -> Lease | None:
    """Extend ``lease`` inside the caller's transaction (no commit); None when it was lost —
    the caller must then roll back what it was about to write."""
    new = Lease(lease.holder, lease.epoch, now + ttl)
    return new if _swap(session, lease.encode(), new) else None
