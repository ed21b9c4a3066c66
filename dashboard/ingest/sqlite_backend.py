"""SQLite ingest, reading side: feeds decoded batches to the writer process and waits for its commits.

The writer (:mod:`.sqlite_writer`) is a separate interpreter that owns the database: job state,
row ids, every write. This side sends it each batch as soon as it is decoded, with at most
``in_flight`` batches not yet committed, which keeps both CPU cores busy: one reads and decodes
while the other writes.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from dashboard.store.keys import job_key

from .batch import Batch
from .projector import merge_into, new_row, rollup_spec
from .sqlite_writer import WriteBatch
from .timeline import compact_values

__all__ = ["SqliteBackend", "WriterFailed"]

log = logging.getLogger("flowerbed.ingest")



class WriterFailed(RuntimeError):
    """The writer process reported an error or died; the session restarts from the pending entries."""


class SqliteBackend:
    """Decoded batches in, committed and acknowledged batches out, through a writer process."""

    def __init__(self, db_path: str, redis_url: str, stream: str, group: str,
                 in_flight: int = 2, retention_days: float = 0.0) -> None:
        self.db_path = db_path
        self.retention_days = retention_days
        self.redis_url, self.stream, self.group = redis_url, stream, group
        self.in_flight = in_flight
        self.seq = 0
        self.committed = 0
        self.proc: Any = None
        self.conn: Any = None
        self.client: Any = None
        #: Stream ids of each batch sent and not yet committed, by sequence number.
        self.unacked: dict[int, list[bytes]] = {}
        #: Seconds the writer spent in transactions (for profiling).
        self.write_s = 0.0

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer process and wait until it holds the database.

        The writer is a fresh interpreter (``python -m dashboard.ingest.sqlite_writer``) rather than a
        multiprocessing child, so it works whatever the caller's ``__main__`` is; the two ends talk
        through a socket pair wrapped in :class:`multiprocessing.connection.Connection`.
        """
        import redis

        # XACK is sent from here, once the writer reports the commit: it balances the two processes.
        self.client = redis.Redis.from_url(self.redis_url, socket_timeout=30, socket_connect_timeout=5)
        here, there = socket.socketpair()
        cmd = [sys.executable, "-m", "dashboard.ingest.sqlite_writer", str(there.fileno()), str(os.getpid()),
               self.db_path, self.redis_url, self.stream, self.group, repr(float(self.retention_days))]
        try:
            self.proc = subprocess.Popen(cmd, pass_fds=(there.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            there.close()
        self.conn = Connection(here.detach())
        kind, value, *rest = self._recv(timeout=60.0)
        if kind != "ready":
            raise WriterFailed(f"the ingest writer did not start: {rest[0] if rest else value}")

    def close(self) -> None:
        """Wait for every batch in flight, then stop the writer."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.drain()
                self.conn.send_bytes(b"")
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
            if self.client is not None:
                self.client.close()
            self.proc = self.conn = self.client = None

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
            ids = self.unacked.pop(seq, None)
            if ids:
                self._ack(ids)

    def _ack(self, ids: list[bytes]) -> None:
        """XACK a committed batch; on failure its entries stay pending and are applied again later."""
        try:
            for i in range(0, len(ids), 10_000):
                self.client.xack(self.stream, self.group, *ids[i : i + 10_000])
        except Exception as exc:  # redis errors, or a broken connection
            log.warning("ingest: XACK failed after commit: %s", exc)

    def drain(self) -> None:
        """Block until everything sent is committed and acknowledged."""
        self._wait_done(0)

    def settle(self) -> None:
        """Acknowledge the batches the writer has committed so far, without waiting for the rest.

        The loop otherwise acknowledges a batch only when it sends another: with the stream
        caught up, the last one's entries stayed pending until the next lost-worker check (up to
        5 s), and looked unfinished to anyone watching the consumer group.
        """
        while self.seq > self.committed and self.conn.poll(0):
            self._wait_done(self.seq - self.committed - 1)

    def _send(self, wb: WriteBatch) -> None:
        data = wb.dumps()  # while the writer is still busy with the previous batch
        self._wait_done(self.in_flight - 1)
        self.conn.send_bytes(data)

    def submit(self, batch: Batch) -> None:
        """Hand a batch to the writer (blocks while ``in_flight`` batches are uncommitted)."""
        self.seq += 1
        self.unacked[self.seq] = batch.ids
        # Each job's events are folded here, where they are already decoded, into one partial row
        # that the writer merges once (projector.merge_rows): the merge and a second JSON parse
        # left the writer, the busier process. The timeline rows and rollup figures are built here
        # too; the writer keeps what needs the stored row: deduplication, ids, the final merge.
        jobs = {}
        for key, items in batch.jobs.items():
            lib, app, job_id = key
            row = new_row(lib, app, job_id, items[0][1]["ts"], job_key(lib, app, job_id))
            flat: list[Any] = [row]
            for eid, event in items:
                merge_into(row, eid, event)
                flat.extend(compact_values(eid, event))
                flat.append(rollup_spec(event))
            jobs[key] = flat
        self._send(WriteBatch(seq=self.seq, entries=len(batch.ids), jobs=jobs, others=batch.others,
                              quarantine=batch.quarantine, valid=batch.valid, ignored=batch.ignored))

    def mark_lost(self, now: float, lost_after_s: float) -> int:
        """Ask the writer to mark silent workers, and the jobs running on them, ``lost``."""
        self.seq += 1
        self._send(WriteBatch(seq=self.seq, lost_check=(now, lost_after_s)))
        return 0
