"""Backups of the store and the artifact store, as one tar.gz that restores on any database.

The store's rows are written as JSON, table by table, with the schema revision they were
read at, so a backup of a SQLite store restores into PostgreSQL and the other way round. A
restore goes into an empty store migrated to the same revision; then ``migrate`` brings it up
to date. The artifact store (workspaces, logs, checkpoints) travels beside the rows.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from alembic.migration import MigrationContext
from sqlalchemy import Engine, MetaData, func, insert, select, text

from dlapp.errors import DlappError
from dlapp.store.db import migrate

ROWS = "store.json"
ARTIFACTS = "artifacts"
# parents first
ORDER = ("meta", "users", "tokens", "arrays", "apps", "containers", "events", "audit")


def revision(engine: Engine) -> str | None:
    """The schema revision the store is at (None for an empty database)."""
    with engine.connect() as conn:
        rev: str | None = MigrationContext.configure(conn).get_current_revision()
        return rev


def _tables(engine: Engine) -> MetaData:
    meta = MetaData()
    meta.reflect(engine)
    return meta


def _ordered(meta: MetaData) -> list[str]:
    names = [t for t in meta.tables if t != "alembic_version"]
    return [t for t in ORDER if t in names] + sorted(t for t in names if t not in ORDER)


def backup(engine: Engine, artifacts: Path, dest: Path) -> dict[str, int]:
    """Write the store's rows and the artifact store to ``dest``; returns rows per table."""
    meta = _tables(engine)
    dump: dict[str, Any] = {"revision": revision(engine), "tables": {}}
    counts: dict[str, int] = {}
    with engine.connect() as conn:
        for name in _ordered(meta):
            rows = [dict(r._mapping) for r in conn.execute(select(meta.tables[name]))]
            dump["tables"][name] = rows
            counts[name] = len(rows)
    body = json.dumps(dump, default=str).encode()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            info = tarfile.TarInfo(ROWS)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
            if artifacts.exists():
                tar.add(artifacts, arcname=ARTIFACTS)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return counts


def restore(engine: Engine, artifacts: Path, source: Path) -> dict[str, int]:
    """Load a backup into an EMPTY store (and artifact directory), then migrate it to the
    newest schema. Refuses to overwrite a store that holds apps or users."""
    try:
        tar = tarfile.open(source, "r:gz")  # noqa: SIM115 (closed by the with below)
    except (OSError, tarfile.TarError) as exc:
        raise DlappError(f"{source} is not a dlapp backup: {exc}") from None
    with tar:
        member = tar.extractfile(ROWS)
        if member is None:
            raise DlappError(f"{source} is not a dlapp backup: it has no {ROWS}")
        dump = json.loads(member.read())
        migrate(engine, dump["revision"] or "head")
        meta = _tables(engine)
        with engine.begin() as conn:
            for name in ("apps", "users"):
                if name in meta.tables and conn.scalar(
                    select(func.count()).select_from(meta.tables[name])
                ):
                    raise DlappError(
                        f"the store is not empty (it has {name}); restore into a new one"
                    )
            counts = {}
            for name in _ordered(meta):
                rows = dump["tables"].get(name, [])
                if rows:
                    conn.execute(insert(meta.tables[name]), rows)
                counts[name] = len(rows)
            if engine.dialect.name == "postgresql":
                _advance_sequences(conn, meta, counts)
        artifacts.mkdir(parents=True, exist_ok=True)
        members = [m for m in tar.getmembers() if m.name.startswith(f"{ARTIFACTS}/")]
        for m in members:
            m.name = m.name[len(ARTIFACTS) + 1 :]
        tar.extractall(artifacts, members=members, filter="data")
    migrate(engine)
    return counts


def _advance_sequences(conn: Any, meta: MetaData, counts: dict[str, int]) -> None:
    """PostgreSQL: move each id sequence past the restored rows, so new rows get new ids."""
    for name, count in counts.items():
        if not count or "id" not in meta.tables[name].c:
            continue
        seq = conn.execute(text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": name}).scalar()
        if seq:
            conn.execute(text(f'SELECT setval(:s, (SELECT MAX(id) FROM "{name}"))'), {"s": seq})
