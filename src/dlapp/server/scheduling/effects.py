"""Executor calls decided inside a cycle's transaction, made only once it has committed.

A server that lost the scheduler lease rolls its transaction back and drops them (fencing):
it never starts or stops anything on a decision that was not written."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dlapp.server.context import Context


class Effects:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._calls: list[Callable[[], None]] = []  # executor calls, once committed
        self._stopping: set[tuple[str, int]] = set()  # (app, attempt) told to stop

    def stop_app(
        self, app_id: str, attempt: int, grace: float, notice: dict[str, Any] | None
    ) -> None:
        """Stop an app's containers once the decision is committed (once per attempt)."""
        if (app_id, attempt) in self._stopping:
            return
        self._stopping.add((app_id, attempt))
        self._calls.append(lambda: self.ctx.executor.stop(app_id, grace, notice))

    def run(self) -> None:
        """The transaction committed: make the calls."""
        calls, self._calls = self._calls, []
        for call in calls:
            call()

    def drop(self) -> None:
        """The transaction was rolled back: forget the calls."""
        self._calls.clear()
