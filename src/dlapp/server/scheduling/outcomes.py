"""What becomes of a running app, decided from values: its stop reason and its containers' causes.

Pure: no store, no executor, no clock. ``reconcile`` hands in the app's stop reason (``None``
when nobody stopped it), the containers of its current attempt and those of all its attempts;
``settle`` answers with one ``Ending`` and the sentence that goes with it, and ``ENDINGS`` maps
each ending to the app's next state and final status, in one place::

    ending            next state   final status  stop reason  counts against max_attempts
    PREEMPTED         ACCEPTED     -             spent        no  (preempted or evicted)
    NOT_STARTED       ACCEPTED     -             spent        no  (supervisors never up)
    START_TIMED_OUT   FINISHED     FAILED        spent        -   (... too often)
    NODE_LOST         ACCEPTED     -             spent        no  (an infrastructure failure)
    AGENT_LOST        ACCEPTED     -             spent        no  (... at most twice an app)
    RETRIED           ACCEPTED     -             spent        yes (failed by itself)
    KILLED            FINISHED     KILLED        kept         -
    FAILED            FINISHED     FAILED        kept         -
    SUCCEEDED         FINISHED     SUCCEEDED     kept         -

A container's cause is ``contract.ContainerCause``, recorded with it when it ended; the
diagnostics are only ever shown, never read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from dlapp.contract import ContainerCause
from dlapp.status import AppState, ContainerState, FinalStatus, StopReason
from dlapp.store.models import App, Container

START_TIMEOUT_REQUEUES = 1  # supervisors never up: requeued this often, then FAILED
AGENT_LOSS_REQUEUES = 2  # lost with its node's agent: requeued this often (an app that kills
# its agent, e.g. by exhausting the node's memory, must not loop), then FAILED

BY_REQUEST = frozenset({StopReason.KILL, StopReason.SOFTKILL})  # a person ended it: KILLED
REQUEUES = frozenset({StopReason.PREEMPT, StopReason.EVICT})  # stopped to go back in line
# an infrastructure failure requeues the app unless someone stopped it for another reason
INFRASTRUCTURE_REQUEUES = frozenset({None, StopReason.GANG})


@dataclass(frozen=True)
class Stop:
    """How the leader stops an app that was asked to stop through any server."""

    soft: bool  # SIGTERM, the softkill grace period, SIGKILL; else SIGKILL now
    notice: str | None  # the reason written to the app's notice file (soft stops only)


# stops asked through the API (any server); preemptions and gangs are stopped as decided
ASKED_STOPS: dict[StopReason, Stop] = {
    StopReason.KILL: Stop(soft=False, notice=None),
    StopReason.SOFTKILL: Stop(soft=True, notice="softkill"),
    StopReason.EVICT: Stop(soft=True, notice="evicted"),
}
# after a restart, an app taken over whose containers were being stopped at once
STOP_AGAIN_ON_TAKEOVER = frozenset({StopReason.GANG, StopReason.PREEMPT})


class Ending(StrEnum):
    """What becomes of an app once all the containers of its attempt have ended."""

    PREEMPTED = "preempted"
    NOT_STARTED = "not_started"
    START_TIMED_OUT = "start_timed_out"
    NODE_LOST = "node_lost"
    AGENT_LOST = "agent_lost"
    RETRIED = "retried"
    KILLED = "killed"
    FAILED = "failed"
    SUCCEEDED = "succeeded"


@dataclass(frozen=True)
class Row:
    state: AppState  # ACCEPTED: back to its queue (keeping its place); or FINISHED
    final: FinalStatus
    spends_stop: bool  # the stop reason is cleared: the app may be stopped again later


ENDINGS: dict[Ending, Row] = {
    Ending.PREEMPTED: Row(AppState.ACCEPTED, FinalStatus.UNDEFINED, spends_stop=True),
    Ending.NOT_STARTED: Row(AppState.ACCEPTED, FinalStatus.UNDEFINED, spends_stop=True),
    Ending.START_TIMED_OUT: Row(AppState.FINISHED, FinalStatus.FAILED, spends_stop=True),
    Ending.NODE_LOST: Row(AppState.ACCEPTED, FinalStatus.UNDEFINED, spends_stop=True),
    Ending.AGENT_LOST: Row(AppState.ACCEPTED, FinalStatus.UNDEFINED, spends_stop=True),
    Ending.RETRIED: Row(AppState.ACCEPTED, FinalStatus.UNDEFINED, spends_stop=True),
    Ending.KILLED: Row(AppState.FINISHED, FinalStatus.KILLED, spends_stop=False),
    Ending.FAILED: Row(AppState.FINISHED, FinalStatus.FAILED, spends_stop=False),
    Ending.SUCCEEDED: Row(AppState.FINISHED, FinalStatus.SUCCEEDED, spends_stop=False),
}


@dataclass(frozen=True)
class Settled:
    ending: Ending
    reason: str

    @property
    def row(self) -> Row:
        return ENDINGS[self.ending]


def stop_reason(app: App) -> StopReason | None:
    """The app's stop reason, as kept in the store."""
    return None if app.kill_requested is None else StopReason(app.kill_requested)


def cause(c: Container) -> ContainerCause | None:
    """A container's cause; None while it runs."""
    return ContainerCause(c.cause) if c.cause else None


# -- containers ---------------------------------------------------------------------------------


def failed(c: Container) -> bool:
    """Lost, or exited with a code other than 0 (for whatever reason)."""
    return ContainerState(c.state) is ContainerState.LOST or (
        c.state == ContainerState.EXITED.value and c.exit_code != 0
    )


def own_failure(c: Container) -> bool:
    """Failed by the app's own doing: exited non-zero (or could not start) and not stopped by
    dlapp; a lost node or a preemption is never the app's failure."""
    return (
        c.state == ContainerState.EXITED.value
        and c.exit_code != 0
        and cause(c) is not ContainerCause.KILLED
    )


def lost_with_node(c: Container) -> bool:
    return c.state == ContainerState.LOST.value and cause(c) is ContainerCause.NODE_LOST


def lost_with_agent(c: Container) -> bool:
    return c.state == ContainerState.LOST.value and cause(c) is ContainerCause.AGENT_LOST


def not_started(c: Container) -> bool:
    return c.state == ContainerState.LOST.value and cause(c) is ContainerCause.NOT_STARTED


def ended(containers: Sequence[Container]) -> bool:
    return all(ContainerState(c.state).is_terminal() for c in containers)


def gang_failure(stop: StopReason | None, containers: Sequence[Container]) -> Container | None:
    """The failed container that ends the rest of a gang still running (none once stopped)."""
    if stop is not None or ended(containers):
        return None
    return next((c for c in containers if failed(c)), None)


def own_failures(history: Sequence[Container]) -> int:
    """Attempts that failed by the app's own doing (``own_failure``)."""
    return len({c.attempt for c in history if own_failure(c)})


def agent_losses(history: Sequence[Container]) -> int:
    """Attempts that ended because their node's agent died."""
    return len({c.attempt for c in history if lost_with_agent(c)})


def start_timeouts(history: Sequence[Container]) -> int:
    """Attempts whose supervisors did not come up within start_timeout_s."""
    return len({c.attempt for c in history if not_started(c)})


# -- the app ------------------------------------------------------------------------------------


def outcome(stop: StopReason | None, containers: Sequence[Container]) -> tuple[FinalStatus, str]:
    """The final status of an attempt that ends here, and why."""
    if stop in BY_REQUEST:
        return FinalStatus.KILLED, f"{stop}ed by request"
    failures = [c for c in containers if failed(c)]
    if not failures:
        return FinalStatus.SUCCEEDED, "all containers exited with code 0"
    first = min(failures, key=lambda c: (c.end_time or 0, c.index))
    why = first.diagnostics or f"exited with code {first.exit_code}"
    if not why.startswith("container"):  # shown: "container 1 exited with code 3"
        why = f"container {first.index} {why}"
    return FinalStatus.FAILED, why


def settle(
    stop: StopReason | None,
    containers: Sequence[Container],
    history: Sequence[Container],
    max_attempts: int,
) -> Settled | None:
    """What becomes of the app whose current attempt is ``containers`` (all its attempts:
    ``history``); None while one of them still runs."""
    if not ended(containers):
        return None
    if stop in REQUEUES:  # back to its queue, keeping its place (seq); no failure
        return Settled(Ending.PREEMPTED, "requeued after preemption")
    not_up = next((c for c in containers if not_started(c)), None)
    if not_up is not None and stop in INFRASTRUCTURE_REQUEUES:
        # never came up: the cluster's fault, so requeued, but a placement that never works
        # must not loop for ever
        times = start_timeouts(history)
        if times <= START_TIMEOUT_REQUEUES:
            return Settled(
                Ending.NOT_STARTED,
                f"requeued: container {not_up.index} {not_up.diagnostics}; "
                "not counted against max_attempts",
            )
        return Settled(
            Ending.START_TIMED_OUT,
            f"container {not_up.index} {not_up.diagnostics} ({times} attempts)",
        )
    lost = next((c for c in containers if lost_with_node(c)), None)
    if lost is not None and stop in INFRASTRUCTURE_REQUEUES:
        return Settled(
            Ending.NODE_LOST,
            f"requeued: container {lost.index} was lost with its node "
            f"({lost.diagnostics}); not counted against max_attempts",
        )
    with_agent = next((c for c in containers if lost_with_agent(c)), None)
    if (
        with_agent is not None
        and stop in INFRASTRUCTURE_REQUEUES
        and agent_losses(history) <= AGENT_LOSS_REQUEUES
    ):
        return Settled(
            Ending.AGENT_LOST,
            f"requeued: container {with_agent.index} was lost with its node's agent "
            f"({with_agent.diagnostics}); not counted against max_attempts",
        )
    final, why = outcome(stop, containers)
    if (
        final is FinalStatus.FAILED
        and stop not in BY_REQUEST
        and any(own_failure(c) for c in containers)  # e.g. its supervisor died: no retry
        and (failures := own_failures(history)) < max_attempts
    ):
        return Settled(
            Ending.RETRIED, f"retrying: attempt {failures} of {max_attempts} failed ({why})"
        )
    ending = {
        FinalStatus.KILLED: Ending.KILLED,
        FinalStatus.FAILED: Ending.FAILED,
        FinalStatus.SUCCEEDED: Ending.SUCCEEDED,
    }[final]
    return Settled(ending, why)
