"""What the server's services share: settings, sessions, the executor, the clock, limiters."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from dlapp.config import ServerSettings
from dlapp.executor import Executor, NodeInfo
from dlapp.server.queue_config import QueueConfig
from dlapp.server.ratelimit import RateLimiter, Slots


@dataclass
class Context:
    settings: ServerSettings
    sessions: sessionmaker[Session]
    executor: Executor
    queues: QueueConfig
    clock: Callable[[], float] = time.time
    submit_limiter: RateLimiter = field(init=False)  # per user, from submit_rate_per_min
    follows: Slots = field(init=False)  # log follows open per user, max_follows_per_user
    _nodes: list[NodeInfo] = field(default_factory=list)
    _nodes_at: float = 0.0

    def __post_init__(self) -> None:
        self.submit_limiter = RateLimiter(self.settings.submit_rate_per_min)
        self.follows = Slots(self.settings.max_follows_per_user)

    def nodes(self, max_age_s: float = 2.0) -> list[NodeInfo]:
        """The executor's node list, cached for a moment (it is asked on every cycle)."""
        now = time.monotonic()
        if not self._nodes or now - self._nodes_at > max_age_s:
            self._nodes = self.executor.nodes()
            self._nodes_at = now
        return self._nodes
