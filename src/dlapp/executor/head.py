"""The Ray head (GCS): waiting for it to answer, and noticing when it is gone.

Ray ends a driver whose GCS stays unreachable past ``gcs_rpc_server_reconnect_timeout_s``
(60 s by default), with no chance to clean up; calls to Ray hang until then. ``HeadWatch``
probes the head from a thread of its own and, once it has not answered for ``timeout_s``
(shorter than Ray's limit), calls ``on_lost`` once: the server restarts itself, waits for the
head with ``wait_for_head``, and requeues the apps whose containers went with the cluster.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)
PROBE_EVERY_S = 1.0
PROBE_TIMEOUT_S = 2.0


class HeadWatch:
    """Calls ``on_lost(reason)`` once, when ``probe`` has failed for ``timeout_s``.

    ``probe(timeout)`` raises (or returns False) when the head does not answer in time."""

    def __init__(
        self,
        probe: Callable[[float], object],
        timeout_s: float,
        on_lost: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.probe = probe
        self.timeout_s = timeout_s
        self.on_lost = on_lost
        self.clock = clock
        self.last_answer = clock()
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """Probe once; True (and ``on_lost`` called, the first time) once the head is lost."""
        if self.lost:
            return True
        try:
            answered = self.probe(PROBE_TIMEOUT_S) is not False
        except Exception as exc:  # any error of the client: no answer
            logger.debug("the Ray head did not answer: %s", exc)
            answered = False
        now = self.clock()
        if answered:
            self.last_answer = now
            return False
        silent = now - self.last_answer
        if silent < self.timeout_s:
            logger.warning("the Ray head has not answered for %.0fs", silent)
            return False
        self.lost = True
        self.on_lost(f"the Ray head has not answered for {silent:.0f}s")
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dlapp-head-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(PROBE_EVERY_S):
            if self.check():
                return


def wait_for_head(address: str, log_every_s: float = 10.0) -> None:
    """Block until the head at ``host:port`` accepts connections (it may be restarting)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port ("auto", "ray://..."): let Ray resolve it
    said = 0.0
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S):
                return
        except OSError as exc:
            if time.monotonic() - said > log_every_s:
                logger.warning("waiting for the Ray head at %s: %s", address, exc)
                said = time.monotonic()
            time.sleep(0.5)
