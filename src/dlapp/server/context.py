"""What the server's services share: settings, sessions, the executor and the clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from dlapp.config import ServerSettings
from dlapp.executor import Executor, NodeInfo


@dataclass
class Context:
    settings: ServerSettings
    sessions: sessionmaker[Session]
    executor: Executor
    clock: Callable[[], float] = time.time
    _nodes: list[NodeInfo] = field(default_factory=list)
    _nodes_at: float = 0.0

    def nodes(self, max_age_s: float = 2.0) -> list[NodeInfo]:
        """The executor's node list, cached for a moment (it is asked on every cycle)."""
        now = time.monotonic()
        if not self._nodes or now - self._nodes_at > max_age_s:
            self._nodes = self.executor.nodes()
            self._nodes_at = now
        return self._nodes
