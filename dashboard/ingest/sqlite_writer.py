"""The SQLite writer process: projects decoded batches into rows and commits them.

Ingest into SQLite runs as two OS processes because one Python process tops out well below the
50k events/s goal (``shared/reference/ingest-write-path.md``). The reading process does the
Redis reads, JSON decoding, validation, grouping by job, folds each job's events of the batch into
one partial row and builds the timeline rows' values; this process keeps job state
(:mod:`.sqlite_state`), deduplicates, merges each partial row into the stored one, builds the
rollup rows, runs ``executemany`` in one transaction per batch, commits, reports the commit and
publishes a change notice; only then does the reading process XACK the batch's stream entries. A crash anywhere before
the XACK leaves the entries pending, and ingest is idempotent, so they are simply applied again.

This process holds an exclusive lock on ``<db>.ingest-lock`` for as long as it writes: a restarted
ingest waits for a dying writer instead of writing beside it, and two ingest processes cannot share
one SQLite file by mistake.
"""

from __future__ import annotations

import fcntl
import gc
import logging
import marshal
import os
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import orjson

from dashboard.procs import die_with_parent
from dashboard.store.tables import jobs

from . import search_index, timeline
from .others import add_counters, apply_others, insert_quarantine, set_workers_lost
from .retention import Pruner
from .rollups import upsert_sql
from .sqlite_state import JobCache, Writes

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
#: Commits between two checkpoints by the checkpoint thread (a 20k-event batch writes ~2,500 pages;
#: the default 50k-event batches, about twice that).
CHECKPOINT_EVERY = 2
#: How long a new writer waits for the previous one (a dying process) to let go of the database.
LOCK_WAIT_S = 30.0

_JOB_COLS = [c.name for c in jobs.columns]
assert _JOB_COLS[0] == "id"
_INSERT_JOBS = f"INSERT INTO jobs ({', '.join(_JOB_COLS)}) VALUES ({', '.join('?' * len(_JOB_COLS))})"
#: Columns an update never changes: the natural key and its hash.
_FIXED = ("id", "jk", "lib", "app", "job_id")
#: Indexed columns that rarely change after a job's first event (its ``state`` changes all the time).
_RARELY = ("task", "created_at")


def _update_sql(skip: tuple[str, ...]) -> str:
    # Numbered parameters, so a row tuple (id first) binds as it is. SQLite rewrites the entry of
    # every index whose column is SET, changed or not (measured with EXPLAIN): leaving out the
    # columns that did not change spares the random ``jk`` index, and the task and time ones.
    sets = ", ".join(f"{c} = ?{i + 1}" for i, c in enumerate(_JOB_COLS) if c not in skip)
    assert _JOB_COLS[-1] not in skip, "the last column sets the statement's parameter count"
    return f"UPDATE jobs SET {sets} WHERE id = ?1"


#: The update of nearly every row; :data:`_UPDATE_MOVED` when ``task`` or ``created_at`` changed too.
UPDATE_SQL = _update_sql(_FIXED + _RARELY)
_UPDATE_MOVED = _update_sql(_FIXED)
_INSERT_EVENTS: dict[int, str] = {}  # by timeline row shape
_UPSERT_MINUTE = upsert_sql("minute")
_UPSERT_HOUR = upsert_sql("hour")


@dataclass
class WriteBatch:
    """One message from the reading process: a batch to apply, or a request to look for lost workers."""

    seq: int
    #: Stream ids of the batch (the reading process XACKs them when this batch is reported done).
    ids: list[bytes] = field(default_factory=list)
    #: Entries the batch holds (``len(ids)`` on the reading side).
    entries: int = 0
    #: Per (lib, app, job_id): the row its events in this batch fold into (``id`` unset), then per
    #: event, in stream order, three items: the ``job_events`` row without its ``job`` column as
    #: :func:`.timeline.compact_values` gives it (shape, values; the first value is the event-id
    #: hash), and its :func:`.projector.rollup_spec`.
    jobs: dict[tuple[str, str, str], list[Any]] = field(default_factory=dict)
    #: Worker, schedule and scheduler events.
    others: list[dict[str, Any]] = field(default_factory=list)
    quarantine: list[tuple[Any, ...]] = field(default_factory=list)
    #: Valid events read, and valid events of unknown types without a job (counted, ignored).
    valid: int = 0
    ignored: int = 0
    #: (now, lost_after_s): mark workers silent since before ``now - lost_after_s`` lost.
    lost_check: tuple[float, float] | None = None

    def dumps(self) -> bytes:
        """Serialise for the pipe: marshal version 2 (no back-references) of a plain tuple, measured
        at about half the cost of pickling the dataclass, on both ends."""
        return marshal.dumps((self.seq, self.entries or len(self.ids), self.jobs, self.others, self.quarantine,
                              self.valid, self.ignored, self.lost_check), 2)

    @classmethod
    def loads(cls, data: bytes) -> WriteBatch:
        """The inverse of :meth:`dumps` (both ends run the same interpreter)."""
        seq, entries, jobs, others, quarantine, valid, ignored, lost_check = marshal.loads(data)
        return cls(seq, [], entries, jobs, others, quarantine, valid, ignored, lost_check)


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
    die_with_parent(signal.SIGKILL)  # elsewhere than Linux the closed pipe still ends the loop
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


def _null(_value: None) -> None:
    return None


def open_db(db_path: str) -> sqlite3.Connection:
    """The writer's connection: autocommit mode, so BEGIN/COMMIT are explicit."""
    # sqlite3 binds None through its slow adaptation path (two failed attribute lookups per
    # parameter); a registered adapter short-cuts it: measured 4.1 -> 2.7 us per timeline row.
    sqlite3.register_adapter(type(None), _null)
    db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    for pragma in WRITER_PRAGMAS:
        db.execute(pragma)
    return db


def apply(db: sqlite3.Connection, cache: JobCache, wb: WriteBatch) -> Writes:
    """Project and write one batch in one transaction; returns what was written (for the notice)."""
    cur = db.cursor()
    cur.execute("BEGIN")
    try:
        out = Writes()
        cache.project(wb.jobs, out)
        lost = cache.mark_lost(*wb.lost_check, out) if wb.lost_check else []
        if out.inserts:
            cur.executemany(_INSERT_JOBS, out.inserts)
        if out.updates:
            cur.executemany(UPDATE_SQL, out.updates)
        if out.moved:
            cur.executemany(_UPDATE_MOVED, out.moved)
        for shape, rows in out.events.items():
            sql = _INSERT_EVENTS.get(shape)
            if sql is None:
                sql = _INSERT_EVENTS[shape] = timeline.compact_insert_sql(shape)
            cur.executemany(sql, rows)
        if out.fts_del:
            cur.executemany(search_index.DELETE_SQL, out.fts_del)
        if out.fts_add:
            cur.executemany(search_index.INSERT_SQL, out.fts_add)
        if out.rollups:
            cur.executemany(_UPSERT_MINUTE, out.rollups.rows("minute"))
            cur.executemany(_UPSERT_HOUR, out.rollups.rows("hour"))
        ex = _Exec(cur)
        if wb.others:
            out.topics |= apply_others(ex, wb.others)
        if lost:
            set_workers_lost(ex, lost)
        if wb.quarantine:
            insert_quarantine(ex, wb.quarantine)
        dups = wb.valid - wb.ignored - len(wb.others) - out.fresh
        add_counters(ex, {"events_ingested": wb.valid - dups, "quarantined": len(wb.quarantine),
                          "duplicates": dups})
        cur.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            cur.execute("ROLLBACK")
        raise
    if wb.entries or wb.ids or wb.quarantine:
        out.topics.add("status")
    return out


class Checkpointer:
    """Copies the WAL into the database from a thread of its own, off the committing thread.

    With ``wal_autocheckpoint`` the commit that crosses the threshold does the checkpoint itself,
    on the writer's critical path. SQLite releases the GIL while it checkpoints, and the reading
    process leaves the second core partly idle, so here a PASSIVE checkpoint (which never blocks
    the writer) runs on its own connection every :data:`CHECKPOINT_EVERY` commits.
    """

    def __init__(self, db_path: str) -> None:
        self.db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.commits = 0
        self.wake = threading.Event()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="flowerbed-checkpoint", daemon=True)
        self.thread.start()

    def committed(self) -> None:
        """Count one commit; every few, wake the thread."""
        self.commits += 1
        if self.commits % CHECKPOINT_EVERY == 0:
            self.wake.set()

    def _run(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            if self.stopping:
                return
            try:
                self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # the next one tries again; the writer's own autocheckpoint is off
                log.warning("ingest: checkpoint failed: %s", exc)

    def close(self) -> None:
        self.stopping = True
        self.wake.set()
        self.thread.join(30)
        self.db.close()


def _notify(client: Any, channel: str, wb: WriteBatch, out: Writes) -> None:
    if not out.topics:
        return
    # Events, not entries: an entry of rows holds many (the live pages' events/s comes from this).
    notice = {"ts": time.time(), "events": wb.valid + len(wb.quarantine), "topics": sorted(out.topics),
              "jobs": [list(j) for j in out.notice]}
    client.publish(channel, orjson.dumps(notice))


def writer_main(conn: Connection, parent: int, db_path: str, redis_url: str, stream: str, group: str,
                retention_days: float = 0.0) -> None:
    """Entry point of the writer process: ready → (batch → commit → XACK → done)* → stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the projection process decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(parent)
    try:
        lock = _lock(db_path)
        db = open_db(db_path)
        cache = JobCache(db)
        pruner = Pruner(db, retention_days, forget=cache.forget)
        db.execute("PRAGMA wal_autocheckpoint=0")  # the checkpoint thread does it
        checkpointer = Checkpointer(db_path)
    except Exception as exc:
        conn.send(("error", -1, f"{type(exc).__name__}: {exc}"))
        return
    import redis

    client = redis.Redis.from_url(redis_url)
    channel = f"{stream}:changes"
    conn.send(("ready", cache.next_id))
    gc.collect()
    gc.freeze()
    # A batch unpickles ~10 containers per event: at 100k, gen-0 collections doubled the cost of
    # receiving it (measured 1.9 -> 0.8 us per event at 1M). Nothing on the hot path makes cycles.
    gc.set_threshold(1_000_000, 50, 100)
    try:
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                return  # the reading process is gone; nothing uncommitted was acked
            if not data:
                return
            wb = WriteBatch.loads(data)
            t0 = time.perf_counter()
            try:
                out = apply(db, cache, wb)
            except Exception as exc:
                log.exception("ingest: writing a batch failed")
                conn.send(("error", wb.seq, f"{type(exc).__name__}: {exc}"))
                return
            t1 = time.perf_counter()
            checkpointer.committed()
            conn.send(("done", wb.seq, t1 - t0))  # the reading process XACKs the batch's entries
            try:
                _notify(client, channel, wb, out)
            except Exception as exc:
                log.warning("ingest: change notice failed after commit: %s", exc)
            if pruner.due():
                # Retention between batches, in steps about the size of what the batch added, so
                # pruning keeps up with ingest without ever holding it up for long.
                try:
                    pruner.step(limit=max(500, min(10_000, 2 * len(out.inserts))))
                except Exception as exc:
                    log.exception("ingest: pruning failed")
                    conn.send(("error", wb.seq, f"pruning: {type(exc).__name__}: {exc}"))
                    return
    finally:
        checkpointer.close()
        db.close()
        lock.close()
        client.close()


def main(argv: list[str]) -> int:
    """``python -m dashboard.ingest.sqlite_writer FD PARENT_PID DB REDIS_URL STREAM GROUP RETENTION_DAYS``."""
    fd, parent, db_path, redis_url, stream, group, retention_days = argv
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s (writer): %(message)s")
    args = (Connection(int(fd)), int(parent), db_path, redis_url, stream, group, float(retention_days))
    profile = os.environ.get("FLOWERBED_PROFILE_WRITER")  # a path: where the time goes, for benchmarks
    if profile:
        import cProfile

        cProfile.runctx("writer_main(*args)", globals(), {"args": args}, profile)
    else:
        writer_main(*args)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
