"""Database URLs, engines and migrations for the two supported stores: SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = ["async_url", "sqlite_path", "is_sqlite", "create_engine", "migrate", "SQLITE_PRAGMAS"]

MIGRATIONS = Path(__file__).parent / "migrations"

#: Applied to every SQLite connection; the write-path ones are measured in
#: shared/reference/ingest-write-path.md (WAL + synchronous=NORMAL keeps commits crash-safe).
SQLITE_PRAGMAS: tuple[str, ...] = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=10000",
    "PRAGMA temp_store=MEMORY",
    "PRAGMA foreign_keys=OFF",
)


def is_sqlite(url: str) -> bool:
    """True when the URL names a SQLite database."""
    return make_url(url).get_backend_name() == "sqlite"


def async_url(url: str) -> str:
    """Return the URL with an async driver: aiosqlite for SQLite, asyncpg for PostgreSQL."""
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        return u.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    if backend == "postgresql":
        return u.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database URL {url!r}: use sqlite:///path or postgresql://…")


def sqlite_path(url: str) -> str:
    """The file path of a SQLite URL (``:memory:`` is refused: ingest and web are separate connections)."""
    database = make_url(url).database
    if not database or database == ":memory:":
        raise ValueError("an in-memory SQLite database cannot be shared; give a file path")
    return database


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    for pragma in SQLITE_PRAGMAS:
        cur.execute(pragma)
    cur.close()


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url`` with the store's connection settings applied."""
    engine = create_async_engine(async_url(url), **kwargs)
    if is_sqlite(url):
        path = Path(sqlite_path(url))
        path.parent.mkdir(parents=True, exist_ok=True)
        event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
    return engine


def _upgrade(sync_conn: Any) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest alembic revision (run at every start; a no-op when current)."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)
