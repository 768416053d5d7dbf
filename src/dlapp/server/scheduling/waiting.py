"""The waiting apps, kept by the scheduler from one cycle to the next.

Every cycle needs every waiting app's row (``repo.Waiting``); reading them all took ~25 ms at
9,000 waiting, a cycle's largest cost while submissions stream in. What can change in a waiting
app's row is small: an app starts waiting (submitted, or back for another attempt: its
``attempt`` is then new), stops waiting (admitted, killed), or gets a new pending reason, which
only the scheduler holding the lease writes (``write_reasons``). So a cycle reads which apps
wait, with their attempts, from an index alone (``repo.waiting_keys``), and the whole rows only
of those it has not seen with that attempt.

What the kept rows say of the reasons is what this scheduler wrote: a cycle that fails, a lease
lost or taken, forgets them all (``forget``), and the next cycle reads every row again.
"""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy.orm import Session

from dlapp.store import repo


class WaitingSet:
    def __init__(self) -> None:
        self._by_seq: dict[int, repo.Waiting] = {}
        self._seq_of: dict[str, int] = {}  # app id -> seq, of the rows kept

    def read(self, session: Session) -> list[repo.Waiting]:
        """The waiting apps, oldest first, as ``repo.waiting_apps`` reads them."""
        keys = sorted(repo.waiting_keys(session))
        kept = self._by_seq
        missing = [s for s, attempt in keys if (w := kept.get(s)) is None or w.attempt != attempt]
        fresh = {w.seq: w for w in repo.waiting_by_seq(session, missing)} if missing else {}
        rows: dict[int, repo.Waiting] = {}
        for seq, attempt in keys:
            w = fresh.get(seq)
            if w is None:
                w = kept.get(seq)
                if w is None or w.attempt != attempt:  # stopped waiting since the first read
                    continue
            rows[seq] = w
        self._by_seq = rows
        self._seq_of = {w.id: seq for seq, w in rows.items()}
        return list(rows.values())

    def write_reasons(self, session: Session, reasons: dict[str, str]) -> None:
        """Write the waiting apps' new reasons (app id -> reason), and keep them."""
        repo.set_pending_reasons(session, reasons)
        for app_id, reason in reasons.items():
            seq = self._seq_of.get(app_id)
            if seq is not None:
                self._by_seq[seq] = replace(self._by_seq[seq], pending_reason=reason)

    def forget(self) -> None:
        """Keep nothing: the next ``read`` reads every waiting app's row."""
        self._by_seq = {}
        self._seq_of = {}
