"""PostgreSQL ingest: each batch is merged against the rows as stored, under row locks, in one transaction.

Several dashboard processes may share one PostgreSQL, each a consumer of the same group, so one
job's events can reach two processes: nothing is cached between batches. A batch locks the rows of
its jobs (``SELECT … FOR UPDATE``, in id order), reads the event-id hashes they already have, folds
only the new events with the same pure projector as SQLite, and writes. New jobs take ids from the
``jobs_id_seq`` sequence and are inserted with ``ON CONFLICT (lib, app, job_id) DO NOTHING``; a job
another process inserted meanwhile is locked and merged on the next round. A deadlock or
serialisation failure retries the whole transaction; the XACK follows the commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson
from sqlalchemy import bindparam, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from dashboard.store.db import create_engine
from dashboard.store.tables import job_events, jobs

from . import timeline
from .batch import Batch, JobKey
from .others import add_counters, apply_others, insert_quarantine
from .projector import (
    APP,
    COLUMNS,
    ID,
    JOB_ID,
    LIB,
    STATE,
    TASK,
    WORKER,
    mark_lost,
    merge_into,
    new_row,
    rollup_outcome,
)
from .rollups import Rollups, row_names, upsert_sql

__all__ = ["PostgresBackend"]

log = logging.getLogger("flowerbed.ingest")

_SELECT = f"SELECT {', '.join(COLUMNS)} FROM {jobs.name}"
# The SET clause comes from the parameter names: every column but ``id``.
_UPDATE = update(jobs).where(jobs.c.id == bindparam("_id"))
_INSERT = pg_insert(jobs).on_conflict_do_nothing(index_elements=["lib", "app", "job_id"]).returning(jobs.c.id)
_INSERT_EVENTS = pg_insert(job_events).on_conflict_do_nothing(index_elements=["job", "eid"])
_RETRY_CODES = {"40P01", "40001"}  # deadlock detected, serialization failure


class _Exec:
    """The :class:`~dashboard.ingest.others.Executor` over SQLAlchemy's sync facade."""

    dialect = "postgresql"

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def rows(self, sql: str, params: Mapping[str, Any]) -> list[Any]:
        return list(self.conn.execute(text(sql), dict(params)).fetchall())

    def run(self, sql: str, params: Mapping[str, Any]) -> int:
        return int(self.conn.execute(text(sql), dict(params)).rowcount)


class _Result:
    def __init__(self) -> None:
        self.notice: list[tuple[str, str, str, str]] = []
        self.topics: set[str] = set()
        self.fresh = 0


def _apply_jobs(conn: Connection, groups: Mapping[JobKey, list[tuple[int, dict[str, Any]]]],
                rollups: Rollups, res: _Result) -> None:
    todo = dict(groups)
    while todo:
        by_hash: dict[int, list[JobKey]] = {}
        for key in todo:
            by_hash.setdefault(_jk(key), []).append(key)
        stored: dict[JobKey, list[Any]] = {}
        found = conn.execute(text(f"{_SELECT} WHERE jk = ANY(:jks) ORDER BY id FOR UPDATE"),
                             {"jks": list(by_hash)}).fetchall()
        for r in found:
            key = (r[LIB], r[APP], r[JOB_ID])
            if key in todo:
                stored[key] = list(r)
        seen: dict[int, set[int]] = {row[ID]: set() for row in stored.values()}
        if seen:
            for job, eid in conn.execute(text("SELECT job, eid FROM job_events WHERE job = ANY(:ids)"),
                                         {"ids": list(seen)}):
                seen[job].add(eid)
        new_keys = [k for k in todo if k not in stored]
        ids = [r[0] for r in conn.execute(text("SELECT nextval('jobs_id_seq') FROM generate_series(1, :n)"),
                                          {"n": len(new_keys)})] if new_keys else []
        inserts, updates, events = [], [], []
        retry: dict[JobKey, list[tuple[int, dict[str, Any]]]] = {}
        for key, items in todo.items():
            row = stored.get(key)
            have = seen[row[ID]] if row is not None else set()
            fresh = []
            for item in items:
                if item[0] not in have:
                    have.add(item[0])
                    fresh.append(item)
            if not fresh:
                continue
            if row is None:
                row = new_row(*key, fresh[0][1]["ts"])
                row[ID] = ids.pop()
                inserts.append((key, row, fresh))
            else:
                updates.append((key, row, fresh))
            for eid, event in fresh:
                merge_into(row, eid, event)
        if inserts:
            params = [dict(zip(COLUMNS, row)) for _k, row, _f in inserts]
            made = {r[0] for r in conn.execute(_INSERT, params)}
            for key, row, _fresh in inserts:
                if row[ID] not in made:  # another process inserted it first: merge into theirs
                    retry[key] = todo[key]
            inserts = [i for i in inserts if i[1][ID] in made]
        if updates:
            conn.execute(_UPDATE, [{"_id": row[ID], **dict(zip(COLUMNS[1:], row[1:]))} for _k, row, _f in updates])
        for _key, row, fresh in inserts + updates:
            task = row[TASK] or ""
            for eid, event in fresh:
                events.append(dict(zip(timeline.COLUMNS, timeline.event_row(row[ID], eid, event))))
                outcome = rollup_outcome(row, event)
                if outcome is not None:
                    rollups.add(event["ts"], row[LIB], row[APP], task, outcome[0], outcome[1])
            if len(res.notice) < 200:
                res.notice.append((row[LIB], row[APP], row[JOB_ID], row[STATE]))
            res.topics.add("jobs")
        if events:
            conn.execute(_INSERT_EVENTS, events)
            res.fresh += len(events)
        todo = retry


def _jk(key: JobKey) -> int:
    from dashboard.store.keys import job_key

    return job_key(*key)


def _write_rollups(conn: Connection, rollups: Rollups) -> None:
    for which in ("minute", "hour"):
        rows = rollups.rows(which, ordered=True)
        if rows:
            names = row_names(which)
            conn.execute(text(upsert_sql(which, "named")), [dict(zip(names, r)) for r in rows])


def _apply_batch(conn: Connection, batch: Batch, res: _Result) -> None:
    rollups = Rollups()
    _apply_jobs(conn, batch.jobs, rollups, res)
    _write_rollups(conn, rollups)
    ex = _Exec(conn)
    if batch.others:
        res.topics |= apply_others(ex, batch.others)
    if batch.quarantine:
        insert_quarantine(ex, batch.quarantine)
    dups = batch.valid - batch.ignored - len(batch.others) - res.fresh
    add_counters(ex, {"events_ingested": batch.valid - dups, "quarantined": len(batch.quarantine),
                      "duplicates": dups})


def _mark_lost(conn: Connection, cutoff: float, now: float, res: _Result) -> None:
    silent = conn.execute(text(
        "UPDATE workers SET state = 'lost' WHERE state = 'online' AND last_seen_at < :cut "
        "RETURNING lib, app, worker"), {"cut": cutoff}).fetchall()
    if not silent:
        return
    res.topics.add("workers")
    rollups = Rollups()
    for lib, app, worker in silent:
        found = conn.execute(text(f"{_SELECT} WHERE state = 'running' AND worker = :w AND lib = :l AND app = :a "
                                  "ORDER BY id FOR UPDATE"), {"w": worker, "l": lib, "a": app}).fetchall()
        for r in found:
            row = mark_lost(r)
            conn.execute(_UPDATE, [{"_id": row[ID], **dict(zip(COLUMNS[1:], row[1:]))}])
            rollups.add(now, lib, app, row[TASK] or "", "lost", None)
            if len(res.notice) < 200:
                res.notice.append((lib, app, row[JOB_ID], "lost"))
            res.topics.add("jobs")
            assert row[WORKER] == worker and row[STATE] == "lost"
    _write_rollups(conn, rollups)


class PostgresBackend:
    """Applies each batch in one PostgreSQL transaction, then acknowledges it."""

    def __init__(self, url: str, redis_url: str, stream: str, group: str) -> None:
        self.url, self.redis_url, self.stream, self.group = url, redis_url, stream, group
        self.runner: asyncio.Runner | None = None
        self.engine: Any = None
        self.client: Any = None
        self.write_s = 0.0

    def start(self) -> None:
        """Open the engine (its own event loop: ingest itself is synchronous) and the Redis client."""
        import redis

        self.runner = asyncio.Runner()
        self.engine = self.runner.run(self._make_engine())
        self.client = redis.Redis.from_url(self.redis_url)

    async def _make_engine(self) -> Any:
        return create_engine(self.url, pool_size=1, max_overflow=0)

    def close(self) -> None:
        """Dispose of the engine and the loop."""
        if self.runner is not None:
            if self.engine is not None:
                self.runner.run(self.engine.dispose())
            self.runner.close()
        if self.client is not None:
            self.client.close()
        self.runner = self.engine = self.client = None

    def pids(self) -> list[int]:
        return []

    def drain(self) -> None:
        """Nothing is in flight between calls."""

    def settle(self) -> None:
        """Nothing is in flight between calls: each batch is acknowledged after its commit."""

    async def _transaction(self, fn: Any, *args: Any) -> _Result:
        for attempt in range(8):
            res = _Result()
            try:
                async with self.engine.begin() as conn:
                    await conn.run_sync(fn, *args, res)
                return res
            except DBAPIError as exc:
                code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
                if code not in _RETRY_CODES or attempt == 7:
                    raise
                log.info("ingest: transaction retried after %s", code)
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def _after_commit(self, ids: list[bytes], res: _Result, events: int) -> None:
        for i in range(0, len(ids), 10_000):
            self.client.xack(self.stream, self.group, *ids[i : i + 10_000])
        if events or res.topics:
            notice = {"ts": time.time(), "events": events, "topics": sorted(res.topics | {"status"}),
                      "jobs": [list(j) for j in res.notice]}
            self.client.publish(f"{self.stream}:changes", orjson.dumps(notice))

    def submit(self, batch: Batch) -> None:
        """Apply, commit, then XACK and notify."""
        assert self.runner is not None
        t0 = time.perf_counter()
        res = self.runner.run(self._transaction(_apply_batch, batch))
        self.write_s += time.perf_counter() - t0
        self._after_commit(batch.ids, res, batch.valid + len(batch.quarantine))  # events, not entries

    def mark_lost(self, now: float, lost_after_s: float) -> int:
        """Mark silent workers and their running jobs ``lost``; returns how many jobs."""
        assert self.runner is not None
        res = self.runner.run(self._transaction(_mark_lost, now - lost_after_s, now))
        self._after_commit([], res, 0)
        return sum(1 for j in res.notice if j[3] == "lost")
