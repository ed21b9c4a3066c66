"""The SQLite writer process: turns projected batches into rows, commits them, then acknowledges.

Ingest into SQLite runs as two OS processes because one Python process tops out well below the
50k events/s goal (``shared/reference/ingest-write-path.md``): the projection process (the one
that reads the stream) keeps job state and assigns row ids; this process builds the timeline and
rollup rows, runs ``executemany`` in one transaction per batch, commits, and only then XACKs the
batch's stream entries and publishes a change notice. A crash anywhere before the XACK leaves the
entries pending, and ingest is idempotent, so they are simply applied again.

This process holds an exclusive lock on ``<db>.ingest-lock`` for as long as it writes: a restarted
ingest waits for a dying writer instead of writing beside it, and two ingest processes cannot share
one SQLite file by mistake.
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import logging
import os
import signal
import sqlite3
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import orjson

from dashboard.store.tables import jobs

from . import timeline
from .others import add_counters, apply_others, insert_quarantine, set_workers_lost
from .rollups import Rollups, upsert_sql

__all__ = ["WriteBatch", "writer_main", "WRITER_PRAGMAS", "LOCK_WAIT_S"]

log = logging.getLogger("flowerbed.ingest")

#: Write-path PRAGMAs measured in the reference (20k-event transactions, checkpoint every 10k pages).
WRITER_PRAGMAS: tuple[str, ...] = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=10000",
    "PRAGMA temp_store=MEMORY",
    "PRAGMA cache_size=-131072",
    "PRAGMA wal_autocheckpoint=10000",
)
#: How long a new writer waits for the previous one (a dying process) to let go of the database.
LOCK_WAIT_S = 30.0

_JOB_COLS = [c.name for c in jobs.columns]
_INSERT_JOBS = f"INSERT INTO jobs ({', '.join(_JOB_COLS)}) VALUES ({', '.join('?' * len(_JOB_COLS))})"
_UPDATE_JOBS = f"UPDATE jobs SET {', '.join(c + ' = ?' for c in _JOB_COLS[1:])} WHERE id = ?"
_INSERT_EVENTS = timeline.insert_sql()
_UPSERT_MINUTE = upsert_sql("minute")
_UPSERT_HOUR = upsert_sql("hour")


@dataclass
class WriteBatch:
    """What the projection process sends for one transaction."""

    seq: int
    #: Stream ids to XACK after the commit.
    ids: list[bytes] = field(default_factory=list)
    #: Full ``jobs`` rows (table column order) of jobs seen for the first time, and of changed jobs.
    inserts: list[tuple[Any, ...]] = field(default_factory=list)
    updates: list[tuple[Any, ...]] = field(default_factory=list)
    #: New job events: (jobs.id, event-id hash, raw JSON, lib, app, task, rollup outcome, ms).
    events: list[tuple[Any, ...]] = field(default_factory=list)
    #: Rollup additions that come from no event (jobs marked lost): (ts, lib, app, task, outcome, ms).
    rollups: list[tuple[Any, ...]] = field(default_factory=list)
    #: Worker, schedule and scheduler events.
    others: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[tuple[Any, ...]] = field(default_factory=list)
    #: Workers to mark lost: (lib, app, worker, last_seen_at the decision was based on).
    lost_workers: list[tuple[str, str, str, float]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    #: For the change notice: (lib, app, job_id, state) of up to 200 changed jobs, and the topics.
    notice_jobs: list[tuple[str, str, str, str]] = field(default_factory=list)
    topics: set[str] = field(default_factory=set)


class _Exec:
    """The :class:`~dashboard.ingest.others.Executor` over a sqlite3 cursor."""

    dialect = "sqlite"

    def __init__(self, cur: sqlite3.Cursor) -> None:
        self.cur = cur

    def rows(self, sql: str, params: Any) -> list[Any]:
        return self.cur.execute(sql, params).fetchall()

    def run(self, sql: str, params: Any) -> int:
        return self.cur.execute(sql, params).rowcount


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when the projection process dies (kill -9 included)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: the closed pipe still ends the loop
        pass
    if os.getppid() != parent:
        os._exit(0)


def _lock(db_path: str) -> Any:
    handle = open(db_path + ".ingest-lock", "a")  # noqa: SIM115 - held for the process's life
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"another ingest process is writing {db_path}") from None
            time.sleep(0.05)


def open_db(db_path: str) -> sqlite3.Connection:
    """The writer's connection: autocommit mode, so BEGIN/COMMIT are explicit."""
    db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    for pragma in WRITER_PRAGMAS:
        db.execute(pragma)
    return db


def apply(db: sqlite3.Connection, wb: WriteBatch) -> None:
    """Write one batch in one transaction."""
    cur = db.cursor()
    cur.execute("BEGIN")
    try:
        if wb.inserts:
            cur.executemany(_INSERT_JOBS, wb.inserts)
        if wb.updates:
            cur.executemany(_UPDATE_JOBS, [(*row[1:], row[0]) for row in wb.updates])
        rollups = Rollups()
        if wb.events:
            loads, event_row, add = orjson.loads, timeline.event_row, rollups.add
            rows = []
            for job, eid, raw, lib, app, task, outcome, ms in wb.events:
                event = loads(raw)
                rows.append(event_row(job, eid, event))
                if outcome is not None:
                    add(event["ts"], lib, app, task, outcome, ms)
            cur.executemany(_INSERT_EVENTS, rows)
        for ts, lib, app, task, outcome, ms in wb.rollups:
            rollups.add(ts, lib, app, task, outcome, ms)
        if rollups:
            cur.executemany(_UPSERT_MINUTE, rollups.rows("minute"))
            cur.executemany(_UPSERT_HOUR, rollups.rows("hour"))
        ex = _Exec(cur)
        if wb.others:
            wb.topics |= apply_others(ex, wb.others)
        if wb.lost_workers:
            set_workers_lost(ex, wb.lost_workers)
        if wb.quarantine:
            insert_quarantine(ex, wb.quarantine)
        add_counters(ex, wb.counters)
        cur.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            cur.execute("ROLLBACK")
        raise


def _notify(client: Any, channel: str, wb: WriteBatch) -> None:
    if not (wb.events or wb.updates or wb.inserts or wb.others or wb.quarantine or wb.lost_workers):
        return
    notice = {"ts": time.time(), "events": len(wb.ids), "topics": sorted(wb.topics | {"status"}),
              "jobs": [list(j) for j in wb.notice_jobs]}
    client.publish(channel, orjson.dumps(notice))


def writer_main(conn: Connection, parent: int, db_path: str, redis_url: str, stream: str, group: str) -> None:
    """Entry point of the writer process: ready → (batch → commit → XACK → done)* → stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the projection process decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(parent)
    try:
        lock = _lock(db_path)
        db = open_db(db_path)
        max_id = db.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()[0]
    except Exception as exc:
        conn.send(("error", -1, f"{type(exc).__name__}: {exc}"))
        return
    import redis

    client = redis.Redis.from_url(redis_url)
    channel = f"{stream}:changes"
    conn.send(("ready", max_id))
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    try:
        while True:
            try:
                wb = conn.recv()
            except (EOFError, OSError):
                return  # the projection process is gone; nothing uncommitted was acked
            if wb is None:
                return
            t0 = time.perf_counter()
            try:
                apply(db, wb)
            except Exception as exc:
                log.exception("ingest: writing a batch failed")
                conn.send(("error", wb.seq, f"{type(exc).__name__}: {exc}"))
                return
            t1 = time.perf_counter()
            try:
                for i in range(0, len(wb.ids), 10_000):
                    client.xack(stream, group, *wb.ids[i : i + 10_000])
                _notify(client, channel, wb)
            except Exception as exc:  # pending entries are claimed again later: at worst re-applied
                log.warning("ingest: XACK/notify failed after commit: %s", exc)
            conn.send(("done", wb.seq, t1 - t0))
    finally:
        db.close()
        lock.close()
        client.close()


def main(argv: list[str]) -> int:
    """``python -m dashboard.ingest.sqlite_writer FD PARENT_PID DB REDIS_URL STREAM GROUP``."""
    fd, parent, db_path, redis_url, stream, group = argv
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s (writer): %(message)s")
    writer_main(Connection(int(fd)), int(parent), db_path, redis_url, stream, group)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
