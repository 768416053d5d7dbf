"""Reconcile: what the executor reports becomes the store's truth, and ended apps move on.

- ``record``: a report (started, exited, lost) updates its container, with its cause;
- ``apply_kills``: kills, softkills and evictions asked through any server are carried out;
- ``finish_ended``: an app whose containers have all ended is requeued or finished, as
  ``outcomes.settle`` decides; a gang with a failed container has the others stopped;
- ``recover``: after a restart, running apps this server does not hold are taken over, or
  requeued (or finished, when a person had killed them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.orm import Session

from dlapp.contract import LINE_PREFIXES, ContainerCause, Shipment
from dlapp.executor import Report
from dlapp.executor.base import UsageKey
from dlapp.server import logs
from dlapp.server.context import Context
from dlapp.server.scheduling.effects import Effects
from dlapp.server.scheduling.outcomes import (
    ASKED_STOPS,
    BY_REQUEST,
    STOP_AGAIN_ON_TAKEOVER,
    Ending,
    gang_failure,
    settle,
    stop_reason,
)
from dlapp.server.usage_monitor import store_report
from dlapp.spec import AppSpec
from dlapp.status import AppState, ContainerState, FinalStatus, StopReason
from dlapp.store import repo
from dlapp.store.models import App

FAILED_OUTPUT_EVENT = "failed-output"  # its reason: where a failed app's output was saved


class Reconciler:
    def __init__(
        self,
        ctx: Context,
        effects: Effects,
        spec_of: Callable[[App], AppSpec],
        claims: dict[str, str],
    ) -> None:
        self.ctx = ctx
        self.effects = effects
        self.spec_of = spec_of
        self.claims = claims  # preempted app -> the queue its resources go to (admit's too)

    def record(self, session: Session, report: Report) -> None:
        app = session.get(App, report.app_id)
        if app is None or app.attempt != report.attempt:
            return
        now = self.ctx.clock()
        c = repo.get_container(session, app, report.index)
        if report.kind == "started":
            if report.info is None:
                return  # taken over, and it never started: its exit report says why
            if report.diagnostics:
                repo.add_event(
                    session,
                    app.id,
                    "container",
                    f"container {c.index} could not start: {report.diagnostics}",
                    now,
                )
                return
            info = report.info
            if c.state != ContainerState.RUNNING.value:  # not a taken-over one's again
                _add_notes(session, app.id, c.index, info.get("notes", ()))
            repo.update_container(
                session,
                c,
                now,
                state=ContainerState.RUNNING.value,
                node_name=str(info.get("node_name", c.node_name)),
                gpu_ids=",".join(str(g) for g in info.get("gpu_ids", [])),
                pid=info.get("pid"),
                start_time=float(info.get("start_time", now)),
            )
        elif report.kind == "exited" and report.result is not None:
            r = report.result
            _add_notes(session, app.id, c.index, r.notes)
            if r.usage is not None:  # its last GPU report: final in the commit that ends it
                store_report(session, c, r.usage, now)
            for url in r.failed_outputs:  # `dlapp status` says where a failed app's output is
                repo.add_event(session, app.id, FAILED_OUTPUT_EVENT, url, r.end_time)
            repo.update_container(
                session,
                c,
                now,
                state=ContainerState.EXITED.value,
                exit_code=r.exit_code,
                end_time=r.end_time,
                log_location=r.log_location,
                diagnostics=r.diagnostics,
                cause=r.cause,
            )
        else:
            repo.update_container(
                session,
                c,
                now,
                state=ContainerState.LOST.value,
                end_time=now,
                diagnostics=report.diagnostics or "lost",
                cause=report.cause,
            )

    def keep(self, session: Session, key: UsageKey, shipment: Shipment) -> None:
        """A supervisor's shipment: its log bytes go to the kept logs (``server.logs.keep``),
        its notes (staging progress, live) become the app's events now."""
        app_id, _, index = key
        logs.keep(self.ctx.settings.artifacts, key, shipment)
        if shipment.notes and session.get(App, app_id) is not None:
            _add_notes(session, app_id, index, shipment.notes)

    def apply_kills(self, session: Session) -> None:
        """Kills, softkills and evictions asked through any server, carried out by the leader."""
        for app in repo.running_to_stop(session):
            stop = stop_reason(app)
            how = None if stop is None else ASKED_STOPS.get(stop)
            if how is None:
                continue
            grace = self.ctx.settings.softkill_grace_s if how.soft else 0.0
            now = self.ctx.clock()
            notice = {"reason": how.notice, "deadline": now + grace} if how.soft else None
            self.effects.stop_app(app.id, app.attempt, grace, notice)

    def finish_ended(self, session: Session) -> None:
        now = self.ctx.clock()
        for app in repo.running_may_settle(session):  # the rest still run every container
            containers = repo.current_containers(session, app)
            stop = stop_reason(app)
            failure = gang_failure(stop, containers)
            if failure is not None:  # gang: one container failing ends the others
                app.kill_requested = StopReason.GANG
                why = failure.diagnostics or f"exited with code {failure.exit_code}"
                repo.add_event(
                    session,
                    app.id,
                    "info",
                    f"container {failure.index} failed ({why}); stopping the others",
                    now,
                )
                notice = {
                    "reason": "gang",
                    "detail": f"container {failure.index} failed ({why})",
                    "deadline": now,
                }
                self.effects.stop_app(app.id, app.attempt, 0.0, notice)
                continue
            settled = settle(
                stop,
                containers,
                repo.all_containers(session, app),
                self.spec_of(app).max_attempts,
            )
            if settled is None:
                continue
            row = settled.row
            if row.spends_stop:
                app.kill_requested = None
            if settled.ending is Ending.PREEMPTED:
                self.claims.pop(app.id, None)
            repo.transition(session, app, row.state, settled.reason, now, row.final)

    def recover(self, session: Session) -> None:
        """RUNNING apps this executor does not hold (a restart) go back to their queue."""
        now = self.ctx.clock()
        executor = self.ctx.executor
        for app in repo.running_apps(session):
            if executor.holds(app.id):
                continue
            stop = stop_reason(app)
            nodes = [c.node_id for c in repo.current_containers(session, app)]
            if nodes and executor.adopt(app.id, app.attempt, nodes):
                repo.add_event(session, app.id, "info", "taken over by a restarted server", now)
                if stop in STOP_AGAIN_ON_TAKEOVER:
                    self.effects.stop_app(app.id, app.attempt, 0.0, None)  # asked before
                continue
            for c in repo.current_containers(session, app):
                if not ContainerState(c.state).is_terminal():
                    repo.update_container(
                        session,
                        c,
                        now,
                        state=ContainerState.LOST.value,
                        end_time=now,
                        diagnostics="lost when the server restarted",
                        cause=ContainerCause.LOST,
                    )
            if stop in BY_REQUEST:
                repo.transition(session, app, AppState.FINISHED, "killed", now, FinalStatus.KILLED)
            else:
                repo.transition(
                    session,
                    app,
                    AppState.ACCEPTED,
                    "requeued: its containers were lost when the server restarted",
                    now,
                )


def _add_notes(session: Session, app_id: str, index: int, notes: Sequence[Sequence[Any]]) -> None:
    """A supervisor's lines (staging totals, progress and summaries; stops) as the app's
    events, at the times the node wrote them."""
    for at, line in notes:
        kind = "staging" if str(line).startswith(LINE_PREFIXES) else "container"
        repo.add_event(session, app_id, kind, f"container {index}: {line}", float(at))
