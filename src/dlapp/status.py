"""App states as YARN prints them, and the one transition table.

``ACCEPTED`` (queued) -> ``RUNNING`` -> ``FINISHED``; a finished app carries a final status
``SUCCEEDED | FAILED | KILLED``. ``RUNNING -> ACCEPTED`` is a requeue (lost node, preemption).
A terminal state is never left.
"""

from __future__ import annotations

from enum import StrEnum

from dlapp.errors import InvalidTransition


class AppState(StrEnum):
    ACCEPTED = "ACCEPTED"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"

    def is_terminal(self) -> bool:
        return self is AppState.FINISHED


class FinalStatus(StrEnum):
    UNDEFINED = "UNDEFINED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    KILLED = "KILLED"


class StopReason(StrEnum):
    """Why dlapp stops a running app; kept with the app (``kill_requested``) until its
    containers have ended, when ``server.scheduling.outcomes`` decides what becomes of it."""

    KILL = "kill"  # its user or an admin, at once
    SOFTKILL = "softkill"  # its user or an admin: SIGTERM, the grace period, SIGKILL
    EVICT = "evict"  # its node was cordoned: stopped with notice, then requeued
    PREEMPT = "preempt"  # a starved queue takes its guarantee back: notice, then requeued
    GANG = "gang"  # one of its containers failed: the others are stopped


class ContainerState(StrEnum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    EXITED = "EXITED"
    LOST = "LOST"

    def is_terminal(self) -> bool:
        return self in (ContainerState.EXITED, ContainerState.LOST)


TRANSITIONS: dict[AppState, frozenset[AppState]] = {
    AppState.ACCEPTED: frozenset({AppState.RUNNING, AppState.FINISHED}),
    AppState.RUNNING: frozenset({AppState.FINISHED, AppState.ACCEPTED}),
    AppState.FINISHED: frozenset(),
}


def check_transition(current: AppState, new: AppState) -> None:
    """Raise InvalidTransition unless ``current -> new`` is in the table."""
    if new not in TRANSITIONS[current]:
        raise InvalidTransition(f"an app cannot go from {current} to {new}")


def final_status_is_valid(state: AppState, final: FinalStatus) -> bool:
    """A finished app has a decided final status; an unfinished one has none yet."""
    return (state is AppState.FINISHED) == (final is not FinalStatus.UNDEFINED)
