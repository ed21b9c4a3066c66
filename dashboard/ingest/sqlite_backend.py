"""SQLite ingest, projection side: job state in an LRU, row ids, and the writer process it feeds.

The reading process folds each batch's job events into rows it keeps in memory (an LRU of recent
jobs with the hashes of the event ids they have seen, for exact deduplication), assigns new jobs
sequential ids, and sends the rows to the writer process (:mod:`.sqlite_writer`), with at most
``in_flight`` batches not yet committed. A job that is not in the LRU is looked up in the database,
in bulk per batch, through its ``jk`` hash; entries of batches not yet committed are never evicted,
so the database always has what the LRU does not.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections import OrderedDict
from multiprocessing.connection import Connection
from typing import Any

from dashboard.store.tables import job_events, jobs

from .batch import Batch, JobKey
from .keys import job_key
from .projector import APP, COLUMNS, ID, JOB_ID, LIB, STATE, TASK, WORKER, mark_lost, merge_into, new_row, rollup_outcome
from .sqlite_writer import WriteBatch

__all__ = ["SqliteBackend", "WriterFailed"]

log = logging.getLogger("flowerbed.ingest")

_SELECT_JOBS = f"SELECT {', '.join(COLUMNS)} FROM {jobs.name}"
_CHUNK = 500


class WriterFailed(RuntimeError):
    """The writer process reported an error or died; the session restarts from the pending entries."""


class SqliteBackend:
    """Projects batches in this process and commits them in a writer process."""

    def __init__(self, db_path: str, redis_url: str, stream: str, group: str,
                 cache_jobs: int = 100_000, in_flight: int = 2) -> None:
        self.db_path = db_path
        self.redis_url, self.stream, self.group = redis_url, stream, group
        self.cache_jobs = cache_jobs
        self.in_flight = in_flight
        self.lru: OrderedDict[JobKey, list[Any]] = OrderedDict()  # key -> [row, seen eids, seq]
        self.seq = 0
        self.committed = 0
        self.next_id = 1
        self.proc: Any = None
        self.conn: Any = None
        self.db: sqlite3.Connection | None = None
        #: Seconds the writer spent in transactions (for profiling).
        self.write_s = 0.0

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer process and wait until it holds the database.

        The writer is a fresh interpreter (``python -m dashboard.ingest.sqlite_writer``) rather than a
        multiprocessing child, so it works whatever the caller's ``__main__`` is; the two ends talk
        through a socket pair wrapped in :class:`multiprocessing.connection.Connection`.
        """
        here, there = socket.socketpair()
        cmd = [sys.executable, "-m", "dashboard.ingest.sqlite_writer", str(there.fileno()), str(os.getpid()),
               self.db_path, self.redis_url, self.stream, self.group]
        try:
            self.proc = subprocess.Popen(cmd, pass_fds=(there.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            there.close()
        self.conn = Connection(here.detach())
        kind, value, *rest = self._recv(timeout=60.0)
        if kind != "ready":
            raise WriterFailed(f"the ingest writer did not start: {rest[0] if rest else value}")
        self.next_id = value + 1
        self.db = sqlite3.connect(self.db_path, check_same_thread=False)
        self.db.execute("PRAGMA cache_size=-32768")

    def close(self) -> None:
        """Wait for every batch in flight, then stop the writer."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.drain()
                self.conn.send(None)
        except (WriterFailed, OSError, EOFError):
            pass
        finally:
            if self.proc is not None:
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            if self.conn is not None:
                self.conn.close()
            if self.db is not None:
                self.db.close()
            self.proc = self.conn = self.db = None

    def pids(self) -> list[int]:
        """Process ids of the writer (for RSS measurements)."""
        return [self.proc.pid] if self.proc is not None and self.proc.pid else []

    # --- the pipeline ---------------------------------------------------------------------

    def _recv(self, timeout: float | None = None) -> tuple[Any, ...]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.conn.poll(0.5):
            if self.proc.poll() is not None:
                raise WriterFailed(f"the ingest writer exited with code {self.proc.returncode}")
            if deadline is not None and time.monotonic() > deadline:
                raise WriterFailed("the ingest writer did not answer")
        try:
            msg = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise WriterFailed(f"the ingest writer went away: {exc}") from None
        if msg[0] == "error":
            raise WriterFailed(f"the ingest writer failed: {msg[2]}")
        return msg  # type: ignore[no-any-return]

    def _wait_done(self, limit: int) -> None:
        while self.seq - self.committed > limit:
            _kind, seq, took = self._recv()
            self.committed = seq
            self.write_s += took
            self._evict()

    def drain(self) -> None:
        """Block until everything sent is committed and acknowledged."""
        self._wait_done(0)

    def _send(self, wb: WriteBatch) -> None:
        self._wait_done(self.in_flight - 1)
        self.conn.send(wb)

    def submit(self, batch: Batch) -> None:
        """Project a batch and hand it to the writer (blocks while ``in_flight`` batches are uncommitted)."""
        self.seq += 1
        wb = WriteBatch(seq=self.seq, ids=batch.ids, others=batch.others, quarantine=batch.quarantine)
        self._project(batch, wb)
        dups = batch.valid - batch.ignored - len(batch.others) - len(wb.events)
        wb.counters = {"events_ingested": batch.valid - dups, "quarantined": len(batch.quarantine),
                       "duplicates": dups}
        self._send(wb)

    def _project(self, batch: Batch, wb: WriteBatch) -> None:
        lru, seq = self.lru, self.seq
        missing = [key for key in batch.jobs if key not in lru]
        if missing:
            self._load(missing)
        events, inserts, updates, notice = wb.events, wb.inserts, wb.updates, wb.notice_jobs
        for key, items in batch.jobs.items():
            entry = lru.get(key)
            fresh = []
            if entry is None:
                seen: set[int] = set()
                for item in items:
                    if item[0] not in seen:
                        seen.add(item[0])
                        fresh.append(item)
                first = fresh[0][1]
                row = new_row(key[0], key[1], key[2], first["ts"])
                row[ID] = self.next_id
                self.next_id += 1
                lru[key] = entry = [row, seen, seq]
                out = inserts
            else:
                row, seen = entry[0], entry[1]
                for item in items:
                    if item[0] not in seen:
                        seen.add(item[0])
                        fresh.append(item)
                if not fresh:
                    continue
                lru.move_to_end(key)
                entry[2] = seq
                out = updates
            for eid, event, _raw in fresh:
                merge_into(row, eid, event)
            out.append(tuple(row))
            job, lib, app, task = row[ID], row[LIB], row[APP], row[TASK] or ""
            for eid, event, raw in fresh:
                outcome = rollup_outcome(row, event)
                if outcome is None:
                    events.append((job, eid, raw, lib, app, task, None, None))
                else:
                    events.append((job, eid, raw, lib, app, task, outcome[0], outcome[1]))
            if len(notice) < 200:
                notice.append((lib, app, row[JOB_ID], row[STATE]))
        if inserts or updates:
            wb.topics.add("jobs")
        self._evict()

    def _evict(self) -> None:
        lru, committed = self.lru, self.committed
        while len(lru) > self.cache_jobs:
            key = next(iter(lru))
            if lru[key][2] > committed:
                break  # its batch is still in flight: the database does not have it yet
            del lru[key]

    def _load(self, keys: list[JobKey]) -> None:
        """Bring stored jobs that fell out of the LRU (or came before a restart) back into it."""
        assert self.db is not None
        wanted = {job_key(*k): k for k in keys}
        hashes = list(wanted)
        loaded: dict[int, list[Any]] = {}
        for i in range(0, len(hashes), _CHUNK):
            part = hashes[i : i + _CHUNK]
            sql = f"{_SELECT_JOBS} WHERE jk IN ({', '.join('?' * len(part))})"
            for found in self.db.execute(sql, part):
                key = (found[LIB], found[APP], found[JOB_ID])
                if wanted.get(found[1]) == key:
                    loaded[found[ID]] = list(found)
        if not loaded:
            return
        seen: dict[int, set[int]] = {job: set() for job in loaded}
        ids = list(loaded)
        for i in range(0, len(ids), _CHUNK):
            part = ids[i : i + _CHUNK]
            sql = f"SELECT job, eid FROM {job_events.name} WHERE job IN ({', '.join('?' * len(part))})"
            for job, eid in self.db.execute(sql, part):
                seen[job].add(eid)
        for job, row in loaded.items():
            self.lru[(row[LIB], row[APP], row[JOB_ID])] = [row, seen[job], 0]

    # --- lost workers ---------------------------------------------------------------------

    def mark_lost(self, now: float, lost_after_s: float) -> int:
        """Mark silent workers, and the jobs running on them, ``lost``; returns how many jobs."""
        assert self.db is not None
        self.drain()  # the database and the LRU agree only when nothing is in flight
        silent = self.db.execute(
            "SELECT lib, app, worker, last_seen_at FROM workers WHERE state = 'online' AND last_seen_at < ?",
            (now - lost_after_s,),
        ).fetchall()
        if not silent:
            return 0
        self.seq += 1
        wb = WriteBatch(seq=self.seq, lost_workers=[tuple(w) for w in silent], topics={"workers"})
        for lib, app, worker, _seen in silent:
            sql = f"{_SELECT_JOBS} WHERE state = 'running' AND worker = ? AND lib = ? AND app = ?"
            for found in self.db.execute(sql, (worker, lib, app)):
                key = (found[LIB], found[APP], found[JOB_ID])
                entry = self.lru.get(key)
                row = entry[0] if entry is not None else list(found)
                if row[STATE] != "running" or row[WORKER] != worker:
                    continue
                row = mark_lost(row)
                if entry is not None:
                    entry[0], entry[2] = row, self.seq
                wb.updates.append(tuple(row))
                wb.rollups.append((now, lib, app, row[TASK] or "", "lost", None))
                if len(wb.notice_jobs) < 200:
                    wb.notice_jobs.append((lib, app, row[JOB_ID], "lost"))
        if wb.updates:
            wb.topics.add("jobs")
        self._send(wb)
        self.drain()  # rows read from the database above must not be read again before this commits
        return len(wb.updates)
