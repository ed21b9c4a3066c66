"""Job state for SQLite ingest: an LRU of recent jobs in front of the ``jobs`` table, in the writer process.

Each cached job keeps its row (a list in ``jobs`` column order) and the hashes of the event ids it
has seen, so deduplication is exact without a UNIQUE index on the timeline. New jobs get
sequential ids here (SQLite has exactly one ingest writer; the lock file enforces it), so the big
B-trees grow at their right edge. A job missing from the LRU is looked up in bulk, per batch,
through its ``jk`` hash on the writer's own connection, which sees every earlier write.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from dashboard.store.tables import job_events, jobs

from .batch import JobKey
from .projector import (
    APP,
    COLUMNS,
    CREATED,
    ID,
    JK,
    JOB_ID,
    LIB,
    STATE,
    TASK,
    WORKER,
    mark_lost,
    merge_rows,
    rollup_resolve,
)
from .rollups import Rollups
from .search_index import terms

__all__ = ["JobCache", "Writes"]

_SELECT_JOBS = f"SELECT {', '.join(COLUMNS)} FROM {jobs.name}"
_CHUNK = 500
_NO_TEXT = (None, None, None, None, None)
#: Most (lib, app, job_id, state) entries in one change notice.
NOTICE_JOBS = 200


class Writes:
    """The rows one transaction writes."""

    __slots__ = ("inserts", "updates", "moved", "events", "rollups", "notice", "topics", "fresh", "fts_add",
                 "fts_del")

    def __init__(self) -> None:
        self.inserts: list[tuple[Any, ...]] = []
        #: Updated rows whose indexed columns other than ``state`` are unchanged (nearly all of them):
        #: they are written without touching those indexes (:data:`.sqlite_writer.UPDATE_SQL`).
        self.updates: list[tuple[Any, ...]] = []
        #: Updated rows whose ``task`` or ``created_at`` changed too.
        self.moved: list[tuple[Any, ...]] = []
        #: Timeline rows ``(job, *values)`` by shape (:func:`.timeline.compact_values`).
        self.events: dict[int, list[tuple[Any, ...]]] = {}
        self.rollups = Rollups()
        self.notice: list[tuple[str, str, str, str]] = []
        self.topics: set[str] = set()
        #: New (not duplicate) job events.
        self.fresh = 0
        #: Full-text index rows to add and to remove: (job id, task, args, exc_type, exc_message).
        self.fts_add: list[tuple[Any, ...]] = []
        self.fts_del: list[tuple[Any, ...]] = []


class JobCache:
    """Recent jobs' rows and seen event ids, backed by the database for the rest."""

    def __init__(self, db: sqlite3.Connection, capacity: int = 100_000) -> None:
        self.db = db
        self.capacity = capacity
        self.lru: OrderedDict[JobKey, tuple[list[Any], set[int]]] = OrderedDict()
        self.next_id = (db.execute(f"SELECT coalesce(max(id), 0) FROM {jobs.name}").fetchone()[0] or 0) + 1
        #: Jobs looked up in the database because they were not cached (for profiling).
        self.misses = 0

    def project(self, groups: Mapping[JobKey, list[Any]], out: Writes) -> None:
        """Merge each job's batch into its row; fills ``out`` with rows, timeline and rollups.

        ``groups`` holds each job's partial row (its events of the batch folded), then per event
        (shape, values, rollup spec) (see :class:`.sqlite_writer.WriteBatch`). Events already seen
        add no timeline row and count in no rollup; merging them again changes nothing, as every
        merge rule is idempotent, so the partial row is merged whole.
        """
        lru = self.lru
        # Each partial row carries its job's ``jk``, hashed on the reading side: no second hash here.
        missing = {items[0][JK]: key for key, items in groups.items() if key not in lru}
        if missing:
            self._load(missing)
        add = out.rollups.add
        inserts, updates, timeline, notice = out.inserts, out.updates, out.events, out.notice
        fts_add, fts_del = out.fts_add, out.fts_del
        fresh_events = 0
        for key, items in groups.items():
            entry = lru.get(key)
            seen: set[int]
            if entry is None:
                row, seen, target, before = None, set(), inserts, None
            else:
                row, seen = entry
                target = updates
                before = (row[TASK], row[CREATED])
                lru.move_to_end(key)
            fresh = []
            for i in range(1, len(items), 3):
                eid = items[i + 1][0]
                if eid not in seen:
                    seen.add(eid)
                    fresh.append(i)
            if not fresh:
                continue
            if row is None:
                row = items[0]
                row[ID] = self.next_id
                self.next_id += 1
                lru[key] = (row, seen)
                indexed = None
            else:
                indexed = terms(row)
                merge_rows(row, items[0])
                if before != (row[TASK], row[CREATED]):
                    target = out.moved
            target.append(tuple(row))
            # The search index changes only when the job's text does (most jobs: once, at insert).
            text = terms(row)
            if text != indexed:
                if indexed is not None and indexed != _NO_TEXT:
                    fts_del.append((row[ID], *indexed))
                if text != _NO_TEXT:
                    fts_add.append((row[ID], *text))
            job, lib, app, task = row[ID], row[LIB], row[APP], row[TASK] or ""
            for i in fresh:
                shape = items[i]
                rows = timeline.get(shape)
                if rows is None:
                    rows = timeline[shape] = []
                rows.append((job, *items[i + 1]))
                spec = items[i + 2]
                if spec is not None:
                    done = spec if len(spec) == 3 else rollup_resolve(row, spec)
                    if done is not None:
                        add(done[0], lib, app, task, done[1], done[2])
            fresh_events += len(fresh)
            if len(notice) < NOTICE_JOBS:
                notice.append((lib, app, row[JOB_ID], row[STATE]))
        out.fresh += fresh_events
        if out.inserts or out.updates or out.moved:
            out.topics.add("jobs")
        while len(lru) > self.capacity:
            lru.popitem(last=False)

    def forget(self, keys: list[JobKey]) -> None:
        """Drop jobs from the cache (retention deleted them: a late event starts them afresh)."""
        for key in keys:
            self.lru.pop(key, None)

    def _load(self, wanted: dict[int, JobKey]) -> None:
        """Bring stored jobs that are not cached (evicted, or from before a restart) into the LRU.

        ``wanted`` maps each job's ``jk`` to its natural key (a hash collision is told apart there).
        """
        hashes = list(wanted)
        loaded: dict[int, list[Any]] = {}
        for i in range(0, len(hashes), _CHUNK):
            part = hashes[i : i + _CHUNK]
            sql = f"{_SELECT_JOBS} WHERE jk IN ({', '.join('?' * len(part))})"
            for found in self.db.execute(sql, part):
                if wanted.get(found[JK]) == (found[LIB], found[APP], found[JOB_ID]):
                    loaded[found[ID]] = list(found)
        if not loaded:
            return
        self.misses += len(loaded)
        seen: dict[int, set[int]] = {job: set() for job in loaded}
        ids = list(loaded)
        for i in range(0, len(ids), _CHUNK):
            part = ids[i : i + _CHUNK]
            sql = f"SELECT job, eid FROM {job_events.name} WHERE job IN ({', '.join('?' * len(part))})"
            for job, eid in self.db.execute(sql, part):
                seen[job].add(eid)
        for job, row in loaded.items():
            self.lru[(row[LIB], row[APP], row[JOB_ID])] = (row, seen[job])

    def mark_lost(self, now: float, lost_after_s: float, out: Writes) -> list[tuple[str, str, str, float]]:
        """Find silent workers; their running jobs become ``lost`` in ``out``. Returns the workers."""
        silent = self.db.execute(
            "SELECT lib, app, worker, last_seen_at FROM workers WHERE state = 'online' AND last_seen_at < ?",
            (now - lost_after_s,),
        ).fetchall()
        for lib, app, worker, _seen in silent:
            sql = f"{_SELECT_JOBS} WHERE state = 'running' AND worker = ? AND lib = ? AND app = ?"
            for found in self.db.execute(sql, (worker, lib, app)).fetchall():
                key = (found[LIB], found[APP], found[JOB_ID])
                entry = self.lru.get(key)
                row = entry[0] if entry is not None else list(found)
                if row[STATE] != "running" or row[WORKER] != worker:
                    continue
                row[:] = mark_lost(row)
                out.updates.append(tuple(row))
                out.rollups.add(now, lib, app, row[TASK] or "", "lost", None)
                if len(out.notice) < NOTICE_JOBS:
                    out.notice.append((lib, app, row[JOB_ID], "lost"))
                out.topics.add("jobs")
        if silent:
            out.topics.add("workers")
        return [tuple(w) for w in silent]
