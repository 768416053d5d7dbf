"""The uid each dlapp user's made Unix account has (``unix_accounts``): one per user, the same
on every node, given once from the admin's range and never given to anyone else.

Kept as one JSON map in ``meta``. Only the leading scheduler gives uids (when it admits an
app), one at a time, in the transaction that admits the app.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dlapp.errors import DlappError
from dlapp.store.models import Meta, User

KEY = "unix_uids"


def uids(session: Session) -> dict[str, int]:
    row = session.get(Meta, KEY)
    return {str(k): int(v) for k, v in json.loads(row.value).items()} if row else {}


def uid_for(
    session: Session,
    user: str,
    first: int,
    last: int,
    usable: Callable[[int], bool] = lambda _uid: True,
    existing: int | None = None,
) -> int:
    """``user``'s uid: the one given before; else ``existing`` (the uid of the user's account
    already on the server's machine, made by a former server or by the admin) when no other
    user has it; else the lowest one in [first, last] given to no other user and ``usable``
    (not held on the server's machine by an account of someone else's)."""
    given = uids(session)
    if user in given:
        return given[user]
    taken = set(given.values())
    uid: int | None
    if existing is not None and existing not in taken:
        uid = existing
    else:
        uid = next((u for u in range(first, last + 1) if u not in taken and usable(u)), None)
    if uid is None:
        raise DlappError(
            f"no free uid left in app_uid_range [{first}, {last}] for user {user!r}: "
            "widen the range"
        )
    given[user] = uid
    row = session.get(Meta, KEY)
    if row is None:
        session.add(Meta(key=KEY, value=json.dumps(given, sort_keys=True)))
    else:
        row.value = json.dumps(given, sort_keys=True)
    return uid


def user_count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(User)) or 0)
