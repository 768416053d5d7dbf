"""The one table of what becomes of an app: stop reason + containers' causes -> its ending."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from dlapp.contract import ContainerCause
from dlapp.server.scheduling.outcomes import ENDINGS, Ending, settle
from dlapp.status import AppState, ContainerState, FinalStatus, StopReason
from dlapp.store.db import make_engine, migrate
from dlapp.store.models import Container

EXITED, LOST = ContainerState.EXITED.value, ContainerState.LOST.value


def ended(
    index: int,
    state: str,
    code: int | None,
    cause: ContainerCause,
    diagnostics: str = "",
    attempt: int = 1,
) -> Container:
    return Container(
        app_id="a",
        attempt=attempt,
        index=index,
        state=state,
        node_id="n",
        exit_code=code,
        end_time=100.0 + index,
        diagnostics=diagnostics,
        cause=cause.value,
    )


OK = ended(0, EXITED, 0, ContainerCause.EXITED)
FAILED = ended(0, EXITED, 3, ContainerCause.EXITED, "exited with code 3")
KILLED = ended(0, EXITED, 137, ContainerCause.KILLED, "killed by request")
NODE = ended(0, LOST, None, ContainerCause.NODE_LOST, "node lost: b")
NOT_UP = ended(0, LOST, None, ContainerCause.NOT_STARTED, "did not start within 9s: x")
DIED = ended(0, LOST, None, ContainerCause.LOST, "its supervisor died: x")
AGENT = ended(0, LOST, None, ContainerCause.AGENT_LOST, "its node's agent died: x")


@pytest.mark.parametrize(
    ("stop", "current", "history", "attempts", "ending"),
    [
        (None, [OK], [OK], 1, Ending.SUCCEEDED),
        (None, [FAILED], [FAILED], 1, Ending.FAILED),
        (None, [FAILED], [FAILED], 2, Ending.RETRIED),
        (None, [DIED], [DIED], 2, Ending.FAILED),  # not its own failure: no retry
        (StopReason.KILL, [KILLED], [KILLED], 2, Ending.KILLED),
        (StopReason.SOFTKILL, [OK], [OK], 1, Ending.KILLED),
        (StopReason.PREEMPT, [KILLED], [KILLED], 1, Ending.PREEMPTED),
        (StopReason.EVICT, [FAILED], [FAILED], 1, Ending.PREEMPTED),
        (None, [NODE], [NODE], 1, Ending.NODE_LOST),
        (StopReason.GANG, [FAILED, NODE], [FAILED, NODE], 1, Ending.NODE_LOST),
        (StopReason.KILL, [NODE], [NODE], 1, Ending.KILLED),
        (None, [NOT_UP], [NOT_UP], 1, Ending.NOT_STARTED),
        (None, [AGENT], [AGENT], 1, Ending.AGENT_LOST),
        (StopReason.GANG, [FAILED, AGENT], [FAILED, AGENT], 1, Ending.AGENT_LOST),
        (StopReason.KILL, [AGENT], [AGENT], 1, Ending.KILLED),
        (  # a third loss with its agent: the app is the likely cause, it ends FAILED
            None,
            [AGENT],
            [AGENT, *(ended(0, LOST, None, ContainerCause.AGENT_LOST, attempt=a) for a in (2, 3))],
            5,
            Ending.FAILED,
        ),
        (
            None,
            [NOT_UP],
            [NOT_UP, ended(0, LOST, None, ContainerCause.NOT_STARTED, attempt=2)],
            1,
            Ending.START_TIMED_OUT,
        ),
    ],
)
def test_each_ending_from_values(
    stop: StopReason | None,
    current: list[Container],
    history: list[Container],
    attempts: int,
    ending: Ending,
) -> None:
    settled = settle(stop, current, history, attempts)
    assert settled is not None and settled.ending is ending


def test_the_table_has_a_row_for_every_ending_and_only_requeues_leave_a_final_status_open() -> None:
    assert set(ENDINGS) == set(Ending)
    for row in ENDINGS.values():
        assert (row.state is AppState.ACCEPTED) == (row.final is FinalStatus.UNDEFINED)


def test_the_diagnostics_text_is_never_read() -> None:
    liar = ended(0, EXITED, 1, ContainerCause.EXITED, "node lost: printed by the app")
    settled = settle(None, [liar], [liar], 1)
    assert settled is not None and settled.ending is Ending.FAILED
    assert settled.reason == "container 0 node lost: printed by the app"


def test_nothing_is_settled_while_a_container_runs() -> None:
    running = ended(1, ContainerState.RUNNING.value, None, ContainerCause.EXITED)
    assert settle(None, [OK, running], [OK, running], 1) is None


def test_migration_0006_gives_earlier_containers_their_cause(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        migrate(engine, "0005_token_expiry")
        with engine.begin() as conn:  # as that release wrote it (the models are the newest's)
            conn.execute(
                sa.text(
                    'INSERT INTO apps (id, seq, "user", name, queue, state, final_status, '
                    "diagnostics, pending_reason, spec, num_containers, cpus, memory_mb, gpus, "
                    "workspace, attempt, submit_time) VALUES ('a', 1, 'u', 'old', 'default', "
                    "'ACCEPTED', 'UNDEFINED', '', '', '{}', 1, 1.0, 512, 0, '/w', 0, 1.0)"
                )
            )
        rows = {
            1: ("LOST", "node lost: 10.0.0.2"),
            2: ("LOST", "did not start within 60s: its supervisor actor was never created"),
            3: ("LOST", "its supervisor died: x"),
            4: ("EXITED", "killed by request"),
            5: ("EXITED", "exited with code 3"),
            6: ("RUNNING", ""),
        }
        with engine.begin() as conn:
            for attempt, (state, diagnostics) in rows.items():
                conn.execute(
                    sa.text(
                        'INSERT INTO containers (app_id, attempt, "index", state, node_id, '
                        "node_name, gpu_ids, diagnostics) VALUES ('a', :attempt, 0, :state, "
                        "'n', 'n', '', :diagnostics)"
                    ),
                    {"attempt": attempt, "state": state, "diagnostics": diagnostics},
                )
        migrate(engine)
        with engine.connect() as conn:
            found = dict(conn.execute(sa.text("SELECT attempt, cause FROM containers")).all())
        assert found == {
            1: "node_lost",
            2: "not_started",
            3: "lost",
            4: "killed",
            5: "exited",
            6: "",
        }
    finally:
        engine.dispose()
