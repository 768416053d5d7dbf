"""An in-process fake runtime for tests of the layers above (supervisor, executor).

    runtime = FakeRuntime(exit_code=0, duration=0.0)   # every container exits 0 at once
    runtime = FakeRuntime(duration=None)                # runs until signalled
    runtime = FakeRuntime(duration=None, term_exit_code=None)  # ignores SIGTERM
    runtime.launched                                    # the LaunchRequests, in order

It goes through ``Runtime.launch`` (so the entry script must exist in the workdir, as for a real
runtime), creates the two log files and appends ``output`` to stdout, and starts nothing.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections.abc import Callable

from dlapp.runtime.base import LaunchRequest, Running, Runtime

_fake_pids = itertools.count(100_000)


class FakeRunning(Running):
    """A scripted container: exits with ``exit_code`` after ``duration`` seconds (None: never)."""

    def __init__(
        self,
        request: LaunchRequest,
        exit_code: int,
        duration: float | None,
        term_exit_code: int | None,
    ) -> None:
        self.request = request
        self.pid = next(_fake_pids)
        self.signals: list[int] = []  # every signal received, in order
        self._exit_code = exit_code
        self._deadline = None if duration is None else time.monotonic() + duration
        self._term_exit_code = term_exit_code
        self._code: int | None = None
        self._cond = threading.Condition()

    def _poll(self) -> int | None:
        if self._code is None and self._deadline is not None and time.monotonic() >= self._deadline:
            self._code = self._exit_code
        return self._code

    def signal(self, sig: int) -> None:
        with self._cond:
            self.signals.append(sig)
            if self._poll() is not None:
                return
            if sig == signal.SIGKILL:
                self._code = 128 + signal.SIGKILL
            elif sig == signal.SIGTERM and self._term_exit_code is not None:
                self._code = self._term_exit_code
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> int | None:
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while (code := self._poll()) is None:
                now = time.monotonic()
                if end is not None and now >= end:
                    return None
                limits = [t - now for t in (end, self._deadline) if t is not None]
                self._cond.wait(min(limits) if limits else None)
            return code


class FakeRuntime(Runtime):
    """Scripted containers; ``term_exit_code=None`` makes them ignore SIGTERM."""

    name = "fake"

    def __init__(
        self,
        exit_code: int | Callable[[LaunchRequest], int] = 0,
        duration: float | None = 0.0,
        term_exit_code: int | None = 128 + signal.SIGTERM,
        output: str = "",
    ) -> None:
        self.exit_code = exit_code
        self.duration = duration
        self.term_exit_code = term_exit_code
        self.output = output
        self.launched: list[LaunchRequest] = []
        self.handles: list[FakeRunning] = []

    def _launch(self, req: LaunchRequest) -> Running:
        for log in (req.stdout, req.stderr):
            log.parent.mkdir(parents=True, exist_ok=True)
            log.touch()
        if self.output:
            with open(req.stdout, "a", encoding="utf-8") as out:
                out.write(self.output)
        code = self.exit_code(req) if callable(self.exit_code) else self.exit_code
        handle = FakeRunning(req, code, self.duration, self.term_exit_code)
        self.launched.append(req)
        self.handles.append(handle)
        return handle
