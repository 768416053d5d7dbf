"""Engine and sessions: SQLite in WAL mode by default, any SQLAlchemy URL otherwise.

The server sizes the connection pool from its worker threads (``pool_for_threads``): every
thread that runs store work finds a connection without waiting, so a flood of requests is
refused at admission (``server.admission``), never by a pool that ran dry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"
BACKGROUND_CONNECTIONS = 8  # the scheduler, its lease, the usage monitor: outside the API's pool


@dataclass(frozen=True)
class PoolSize:
    """Connections kept open, more opened under load, and how long a checkout may wait."""

    kept: int = 5
    overflow: int = 10
    timeout_s: float = 30.0

    def options(self) -> dict[str, Any]:
        return {
            "pool_size": self.kept,
            "max_overflow": self.overflow,
            "pool_timeout": self.timeout_s,
        }


def pool_for_threads(threads: int, requests: int) -> PoolSize:
    """A pool for ``threads`` workers serving ``requests`` requests at once: one connection for
    each running thread, one for each request whose session outlives its thread hop (a route's
    session is closed on another thread), and the background's."""
    return PoolSize(kept=threads + BACKGROUND_CONNECTIONS, overflow=requests, timeout_s=10.0)


def make_engine(url: str, pool: PoolSize | None = None) -> Engine:
    """An engine for ``url``; ``pool`` sizes its connection pool (SQLAlchemy's default when
    None; an in-memory SQLite store has one connection and no pool to size)."""
    options = pool.options() if pool is not None else {}
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        if make_url(url).database in (None, "", ":memory:"):
            options = {}  # one connection, kept: nothing to size
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **options
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            # FULL: a commit (an acknowledged submission, a kill) is on disk before the answer,
            # power loss included; in WAL mode it costs one fsync of the log per commit
            # (~0.3 ms on the development VM), where NORMAL may lose the last commits
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    if url.startswith(("postgresql://", "postgres://")):
        # PostgreSQL through psycopg 3 (the driver dlapp ships with)
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return create_engine(url, pool_pre_ping=True, **options)


def migrate(engine: Engine, revision: str = "head") -> None:
    """Apply Alembic migrations up to ``revision`` (the store's schema is only made this way)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        if sqlite:
            # SQLite alters a column by copying its table and dropping the old one: with
            # foreign keys on, that drop would cascade to every row that refers to it (an
            # app's containers and events). The pragma holds outside a transaction only.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            with conn.begin():
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"the store's migration broke references: {broken}")
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
