"""The executor's map of node agents, as threads share it (no Ray: ``agent_on`` stands in).

Stop 23's CI failure: the scheduler thread, asking Ray for a node's agent, stored its handle
after another thread had stored one for the same node, and overwrote it.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from dlapp.executor import ray as ray_executor


def _executor() -> Any:
    executor = ray_executor.RayExecutor.__new__(ray_executor.RayExecutor)
    executor._agents = {}
    return executor


def test_an_agent_stored_while_another_thread_asked_ray_for_one_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked, answer = threading.Event(), threading.Event()

    def slow_agent_on(node_id: str, namespace: str) -> str:
        asked.set()
        assert answer.wait(10)
        return f"made for {node_id}"

    monkeypatch.setattr(ray_executor, "agent_on", slow_agent_on)
    executor = _executor()
    scheduler = threading.Thread(target=executor._keep_agents, args=({"n1"},))
    scheduler.start()
    assert asked.wait(10)
    executor._agents["n1"] = "stored meanwhile"  # by another thread, as Ray was being asked
    answer.set()
    scheduler.join(10)
    assert executor._agents == {"n1": "stored meanwhile"}


def test_agents_of_nodes_gone_are_dropped_and_new_nodes_get_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ray_executor, "agent_on", lambda node_id, _ns: f"agent of {node_id}")
    executor = _executor()
    executor._agents = {"gone": "old", "kept": "kept's"}
    executor._keep_agents({"kept", "new"})
    assert executor._agents == {"kept": "kept's", "new": "agent of new"}
    assert executor._agent("other") == "agent of other"
    assert executor._agent("kept") == "kept's"
