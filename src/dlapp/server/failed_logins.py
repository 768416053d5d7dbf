"""Which refused logins go into the audit log: enough to see an attack, never enough to fill
the store.

A refused token from a source address is written at once; after that, at most one entry per
address every ``every_s``, and at most ``max_rows`` entries every ``every_s`` from all
addresses together. The refusals not written are counted: an address's count goes into its next
entry, and what a full table of addresses could not hold (``max_addresses``) goes, as
``untracked``, into the next entry written. Pure: the caller gives the time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

EVERY_S = 10.0
MAX_ROWS = 30
MAX_ADDRESSES = 4096


@dataclass(frozen=True)
class Tally:
    """The refusals an entry about to be written stands for, besides its own."""

    since_last: int  # from the same address, since its last entry
    untracked: int  # from addresses no longer tracked

    def describe(self) -> str:
        parts = []
        if self.since_last:
            parts.append(f"{self.since_last} more refused from this address since its last entry")
        if self.untracked:
            parts.append(f"{self.untracked} more from other addresses without an entry")
        return "; ".join(parts)


class FailedLogins:
    def __init__(
        self, every_s: float = EVERY_S, max_rows: int = MAX_ROWS, max_addresses: int = MAX_ADDRESSES
    ) -> None:
        self.every_s = every_s
        self.max_rows = max_rows
        self.max_addresses = max_addresses
        self._last: dict[str, float] = {}  # address -> when its last entry was written
        self._held: dict[str, int] = {}  # address -> refusals since, not written
        self._untracked = 0
        self._window_start = float("-inf")
        self._window_rows = 0
        self._lock = threading.Lock()

    def admit(self, address: str, now: float) -> Tally | None:
        """A refusal from ``address`` at ``now``: the tally to write with it, or None when it is
        only counted."""
        with self._lock:
            if now - self._window_start >= self.every_s:
                self._window_start, self._window_rows = now, 0
            last = self._last.get(address)
            if (last is not None and now - last < self.every_s) or (
                self._window_rows >= self.max_rows
            ):
                self._hold(address, now)
                return None
            self._window_rows += 1
            self._last[address] = now
            tally = Tally(self._held.pop(address, 0), self._untracked)
            self._untracked = 0
            self._prune(now)
            return tally

    def _hold(self, address: str, now: float) -> None:
        if address not in self._held and len(self._held) >= self.max_addresses:
            self._prune(now)
            if len(self._held) >= self.max_addresses:
                self._untracked += 1
                return
        self._held[address] = self._held.get(address, 0) + 1

    def _prune(self, now: float) -> None:
        """Forget addresses whose last entry is older than ``every_s`` once the table is full;
        what they held becomes untracked."""
        if len(self._last) < self.max_addresses and len(self._held) < self.max_addresses:
            return
        for address, at in list(self._last.items()):
            if now - at >= self.every_s:
                del self._last[address]
                self._untracked += self._held.pop(address, 0)
        if len(self._held) >= self.max_addresses:  # held by the overall cap, never written
            for address in [a for a in self._held if a not in self._last]:
                self._untracked += self._held.pop(address)
