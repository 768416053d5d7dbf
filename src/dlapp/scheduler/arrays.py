"""Arrays' running limits (Slurm's ``%N``): which waiting members may go on to ``decide`` this
cycle, and why the others wait. Pure: the loop reads the counts from the store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def array_limit_reason(array_id: str, limit: int) -> str:
    return (
        f"array limit {limit} running: {array_id} has {limit} members running or ahead of "
        "this one in line"
    )


def hold_over_limits(
    pending: Sequence[tuple[str, str | None]],
    running: Mapping[str, int],
    limits: Mapping[str, int],
) -> dict[str, str]:
    """``pending``: (app id, array id or None), in line order; ``running``: members RUNNING per
    array; ``limits``: the running limit of each array that has one. Each array lets on as
    many of its waiting members as it has room for (limit less running), in line order; the
    others wait: app id -> why. Every member let on may be admitted, so the limit holds however
    many of them ``decide`` admits."""
    room = {a: n - running.get(a, 0) for a, n in limits.items()}
    held: dict[str, str] = {}
    for app_id, array_id in pending:
        if array_id is None or array_id not in room:
            continue
        if room[array_id] > 0:
            room[array_id] -= 1
        else:
            held[app_id] = array_limit_reason(array_id, limits[array_id])
    return held
