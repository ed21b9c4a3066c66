"""Read-side queries shared by the JSON API and the pages (the web layer never writes)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Integer, String, and_, bindparam, func, or_, select
from sqlalchemy import column as sql_column
from sqlalchemy import table as sql_table
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.sql.sqltypes import NullType

from .keys import job_key
from .tables import job_events, jobs, meta, quarantine, workers

__all__ = [
    "JOB_STATES",
    "JobFilters",
    "list_jobs",
    "get_job",
    "list_workers",
    "ingest_counters",
    "recent_quarantine",
    "attempts_from_events",
]

#: Every state a job can be in (DESIGN.md "Job states").
JOB_STATES: tuple[str, ...] = ("queued", "running", "succeeded", "retrying", "failed", "cancelled", "lost")

TERMINAL_EVENTS = {"job-succeeded": "succeeded", "job-cancelled": "cancelled"}

LIST_COLUMNS = (
    jobs.c.id, jobs.c.lib, jobs.c.app, jobs.c.job_id, jobs.c.task, jobs.c.queue, jobs.c.state,
    jobs.c.attempt, jobs.c.max_attempts, jobs.c.enqueued_at, jobs.c.started_at, jobs.c.finished_at,
    jobs.c.created_at, jobs.c.updated_at, jobs.c.duration_ms, jobs.c.worker, jobs.c.exc_type,
    jobs.c.exc_message, jobs.c.args,
)


@dataclass
class JobFilters:
    """What a jobs list is narrowed by; every field is optional."""

    lib: str | None = None
    app: str | None = None
    task: str | None = None
    queue: str | None = None
    states: tuple[str, ...] = ()
    worker: str | None = None
    exc: str | None = None
    args: str | None = None
    job_id: str | None = None
    correlation_id: str | None = None
    text: list[str] = field(default_factory=list)
    since: float | None = None
    until: float | None = None

    def conditions(self) -> list[Any]:
        conds: list[Any] = []
        for column, value in (
            (jobs.c.lib, self.lib), (jobs.c.app, self.app), (jobs.c.task, self.task),
            (jobs.c.queue, self.queue), (jobs.c.worker, self.worker), (jobs.c.job_id, self.job_id),
            (jobs.c.correlation_id, self.correlation_id),
        ):
            if value:
                conds.append(column == value)
        if len(self.states) == 1:
            conds.append(jobs.c.state == self.states[0])
        elif self.states:
            conds.append(jobs.c.state.in_(self.states))
        if self.exc:
            conds.append(TextMatch(self.exc, ("exc_type", "exc_message")))
        if self.args:
            conds.append(TextMatch(self.args, ("args",)))
        for word in self.text:
            conds.append(TextMatch(word, SEARCH_FIELDS))  # the job id is one of the indexed fields
        if self.since is not None:
            conds.append(jobs.c.created_at >= self.since)
        if self.until is not None:
            conds.append(jobs.c.created_at < self.until)
        return conds


#: The columns the full-text index holds (SQLite ``jobs_fts``; PostgreSQL's ``jobs_search`` index).
SEARCH_FIELDS: tuple[str, ...] = ("job_id", "task", "args", "exc_type", "exc_message")
#: The document PostgreSQL's GIN index is built on (migration 0002); a query must repeat it exactly.
PG_DOCUMENT = ("to_tsvector('simple'::regconfig, regexp_replace(jobs.job_id || ' ' || coalesce(jobs.task, '') || ' ' || coalesce(jobs.args, '') "
               "|| ' ' || coalesce(jobs.exc_type, '') || ' ' || coalesce(jobs.exc_message, ''), '[^[:alnum:]]+', ' ', 'g'))")
_TOKEN = re.compile(r"[^\W_]+")


def search_tokens(text: str) -> list[str]:
    """The words of a search term as both indexes split text: runs of letters and digits."""
    return [t.lower() for t in _TOKEN.findall(text)]


class TextMatch(ColumnElement[bool]):
    """Jobs whose indexed ``fields`` hold every word of ``text`` (each as a word prefix).

    SQLite answers from the FTS5 table ``jobs_fts``, PostgreSQL from its tsvector GIN index
    (which covers all four fields, so there a field-restricted search also checks the columns).
    A term without any word matches nothing.
    """

    inherit_cache = False
    type = NullType()  # type: ignore[assignment]  # no "= 1" appended on SQLite (no native boolean)

    def __init__(self, text: str, fields: tuple[str, ...]) -> None:
        self.text = text
        self.fields = fields
        self.tokens = search_tokens(text)


def _fts_query(element: TextMatch) -> str:
    """The FTS5 MATCH expression for one search term."""
    phrase = " AND ".join(f'"{t}"*' for t in element.tokens)
    return phrase if element.fields == SEARCH_FIELDS else f"{{{' '.join(element.fields)}}} : ({phrase})"


@compiles(TextMatch, "sqlite")
def _match_sqlite(element: TextMatch, compiler: Any, **kw: Any) -> str:
    if not element.tokens:
        return "0 = 1"
    query = _fts_query(element)
    param = compiler.process(bindparam(None, query, unique=True, type_=String()), **kw)
    return f"jobs.id IN (SELECT rowid FROM jobs_fts WHERE jobs_fts MATCH {param})"


@compiles(TextMatch, "postgresql")
def _match_postgresql(element: TextMatch, compiler: Any, **kw: Any) -> str:
    if not element.tokens:
        return "false"
    query = " & ".join(f"{t}:*" for t in element.tokens)  # tokens are letters and digits only
    param = compiler.process(bindparam(None, query, unique=True, type_=String()), **kw)
    match = f"{PG_DOCUMENT} @@ to_tsquery('simple'::regconfig, {param})"
    if element.fields != SEARCH_FIELDS:  # the index covers every field: narrow to the asked ones
        doc = " || ' ' || ".join(f"coalesce(jobs.{f}, '')" for f in element.fields)
        match += (f" AND to_tsvector('simple'::regconfig, regexp_replace({doc}, '[^[:alnum:]]+', ' ', 'g')) "
                  f"@@ to_tsquery('simple'::regconfig, {param})")
    # The matching ids first (from the GIN index), then the page: left to itself the planner walks
    # the primary key backwards for "newest 50" and filters every row when the word is rare.
    return f"jobs.id = ANY(ARRAY(SELECT jobs.id FROM jobs WHERE {match}))"


@compiles(TextMatch)
def _match_other(element: TextMatch, compiler: Any, **kw: Any) -> str:
    """Any other database: a case-insensitive substring of one of the fields."""
    pattern = "%" + element.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    clause = or_(*(jobs.c[f].ilike(pattern, escape="\\") for f in element.fields))
    return str(compiler.process(clause, **kw))


async def list_jobs(
    conn: AsyncConnection, filters: JobFilters, limit: int = 50, before_id: int | None = None
) -> tuple[list[dict[str, Any]], int | None]:
    """Newest jobs first (by first sight), keyset-paged by id; returns rows and the next cursor id."""
    conds = filters.conditions()
    stmt = None
    if conn.dialect.name == "sqlite":
        stmt = _sqlite_search_page(conds, limit, before_id)
    if stmt is None:
        if before_id is not None:
            conds.append(jobs.c.id < before_id)
        stmt = select(*LIST_COLUMNS).where(and_(True, *conds)).order_by(jobs.c.id.desc()).limit(limit + 1)
    rows = [dict(r._mapping) for r in await conn.execute(stmt)]
    next_id = rows[limit - 1]["id"] if len(rows) > limit else None
    return rows[:limit], next_id


_FTS = sql_table("jobs_fts", sql_column("rowid", Integer), sql_column("jobs_fts", String))


def _sqlite_search_page(conds: list[Any], limit: int, before_id: int | None) -> Any:
    """A search page driven by the FTS index, newest match first, stopping at the page's end.

    ``id IN (SELECT rowid … MATCH …)`` makes SQLite collect every match (100k for a common word)
    or walk a state index checking each row; walking the index in rowid order stops after a page.
    """
    matches = [c for c in conds if isinstance(c, TextMatch)]
    if not matches or any(not m.tokens for m in matches):
        return None
    rest = [c for c in conds if not isinstance(c, TextMatch)]
    query = " AND ".join(f"({_fts_query(m)})" for m in matches)
    where = [_FTS.c.jobs_fts.op("MATCH")(query), *rest]
    if before_id is not None:
        where.append(_FTS.c.rowid < before_id)
    return (
        select(*LIST_COLUMNS)
        .select_from(_FTS.join(jobs, jobs.c.id == _FTS.c.rowid))
        .where(*where)
        .order_by(_FTS.c.rowid.desc())
        .limit(limit + 1)
    )


async def get_job(conn: AsyncConnection, lib: str, app: str, job_id: str) -> dict[str, Any] | None:
    """One job with its timeline events (oldest first) and its attempts."""
    stmt = select(jobs).where(
        jobs.c.jk == job_key(lib, app, job_id), jobs.c.lib == lib, jobs.c.app == app, jobs.c.job_id == job_id
    )
    row = (await conn.execute(stmt)).first()
    if row is None:
        return None
    job = dict(row._mapping)
    ev_rows = await conn.execute(
        select(job_events).where(job_events.c.job == job["id"]).order_by(job_events.c.ts, job_events.c.id)
    )
    events = []
    for r in ev_rows:
        ev = dict(r._mapping)
        extra = ev.pop("extra", None)
        ev["extra"] = json.loads(extra) if extra else {}
        events.append(ev)
    job["events"] = events
    job["attempts"] = attempts_from_events(events, job)
    return job


def attempts_from_events(events: list[dict[str, Any]], job: dict[str, Any]) -> list[dict[str, Any]]:
    """Fold a job's timeline into one record per attempt: where it ran, how long, how it ended."""
    by_attempt: dict[int, dict[str, Any]] = {}
    for ev in events:
        n = ev.get("attempt") or 1
        att = by_attempt.setdefault(n, {
            "attempt": n, "worker": None, "enqueued_at": None, "started_at": None, "finished_at": None,
            "outcome": "queued", "duration_ms": None, "exc_type": None, "exc_message": None,
            "traceback": None, "retry_in_s": None,
        })
        etype = ev["type"]
        if etype == "job-enqueued":
            att["enqueued_at"] = ev["ts"] if att["enqueued_at"] is None else min(att["enqueued_at"], ev["ts"])
        elif etype == "job-started":
            att["started_at"] = ev["ts"]
            att["worker"] = ev.get("worker") or att["worker"]
            if att["outcome"] == "queued":
                att["outcome"] = "running"
        elif etype in ("job-succeeded", "job-failed", "job-cancelled"):
            att["finished_at"] = ev["ts"]
            att["worker"] = att["worker"] or ev.get("worker")
            att["duration_ms"] = ev.get("duration_ms")
            if etype == "job-failed":
                att["outcome"] = "failed" if ev.get("final") else "retrying"
                att["exc_type"] = ev.get("exc_type")
                att["exc_message"] = ev.get("exc_message")
                att["traceback"] = ev.get("traceback")
                att["retry_in_s"] = ev.get("retry_in_s")
            else:
                att["outcome"] = TERMINAL_EVENTS[etype]
                if etype == "job-cancelled":
                    att["exc_message"] = ev.get("reason")
    if job.get("state") == "lost" and job.get("attempt") in by_attempt:
        current = by_attempt[job["attempt"]]
        if current["outcome"] == "running":
            current["outcome"] = "lost"
    return [by_attempt[k] for k in sorted(by_attempt)]


async def list_workers(
    conn: AsyncConnection, now: float, lost_after_s: float, lib: str | None = None, app: str | None = None
) -> list[dict[str, Any]]:
    """Every known worker, newest first; an online worker silent past ``lost_after_s`` reads as lost."""
    stmt = select(workers).order_by(workers.c.last_seen_at.desc())
    if lib:
        stmt = stmt.where(workers.c.lib == lib)
    if app:
        stmt = stmt.where(workers.c.app == app)
    out = []
    for r in await conn.execute(stmt):
        w = dict(r._mapping)
        if w["state"] == "online" and now - w["last_seen_at"] > lost_after_s:
            w["state"] = "lost"
        w["queues"] = json.loads(w["queues"]) if w.get("queues") else []
        out.append(w)
    return out


async def ingest_counters(conn: AsyncConnection) -> dict[str, int]:
    """Counters ingest keeps in ``meta`` (events_ingested, quarantined, duplicates…)."""
    rows = await conn.execute(select(meta.c.key, meta.c.value))
    counters = {k: int(v) for k, v in rows}
    if "quarantined" not in counters:
        counters["quarantined"] = int((await conn.execute(select(func.count()).select_from(quarantine))).scalar() or 0)
    return counters


async def recent_quarantine(conn: AsyncConnection, limit: int = 20) -> list[dict[str, Any]]:
    """The newest quarantined entries with their reasons."""
    stmt = select(quarantine).order_by(quarantine.c.id.desc()).limit(limit)
    return [dict(r._mapping) for r in await conn.execute(stmt)]
