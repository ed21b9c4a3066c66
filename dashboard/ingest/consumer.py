"""The stream loop: consumer group, bounded reads, one transaction per batch, XACK after commit.

On start it takes over what dead consumers left pending (XAUTOCLAIM) and re-reads its own pending
entries (a restart under the same consumer name), then reads new entries. Each batch goes to the
store's backend, which commits it and only then acknowledges it; ingest is idempotent, so an entry
applied but not acknowledged before a crash is simply applied again. Errors of Redis or of the
store end the session: the loop waits, starts a fresh one, and resumes from the pending entries.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import redis
from redis.exceptions import RedisError, ResponseError

from collectors.constants import CONSUMER_GROUP
from collectors.events import MAX_ROWS
from dashboard.config import Settings
from dashboard.store.db import create_engine, is_sqlite, migrate, sqlite_path

from .batch import Batch

__all__ = ["run_ingest", "Backend", "make_backend", "ensure_group"]

log = logging.getLogger("flowerbed.ingest")


class Backend(Protocol):
    """What a store provides to the loop (see :mod:`.sqlite_backend` and :mod:`.postgres_backend`)."""

    write_s: float

    def start(self) -> None: ...

    def submit(self, batch: Batch) -> None: ...

    def mark_lost(self, now: float, lost_after_s: float) -> int: ...

    def drain(self) -> None: ...

    def settle(self) -> None: ...

    def close(self) -> None: ...

    def pids(self) -> list[int]: ...


def make_backend(settings: Settings) -> Backend:
    """The backend for the settings' database URL."""
    if is_sqlite(settings.database_url):
        from .sqlite_backend import SqliteBackend

        path = os.path.abspath(sqlite_path(settings.database_url))
        return SqliteBackend(path, settings.redis_url, settings.stream, CONSUMER_GROUP,
                             retention_days=settings.retention_days)
    from .postgres_backend import PostgresBackend

    return PostgresBackend(settings.database_url, settings.redis_url, settings.stream, CONSUMER_GROUP)


def ensure_group(client: Any, stream: str) -> None:
    """Create the consumer group (and the stream) unless they exist; a new group reads from the start."""
    try:
        client.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def _migrate(url: str) -> None:
    engine = create_engine(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


def _raw_reply(response: Any, **_options: Any) -> Any:
    return response


class _Session:
    """One connection to Redis and one backend, from start to stop (or to the first error)."""

    def __init__(self, settings: Settings, stop: threading.Event, backend: Backend) -> None:
        self.s = settings
        self.stop = stop
        self.backend = backend
        self.consumer = settings.consumer_name
        # Typed as Any: redis-py's reply types do not describe stream replies usefully.
        self.client: Any = redis.Redis.from_url(
            settings.redis_url, protocol=2, socket_timeout=max(10.0, settings.block_ms / 1000 + 5),
            socket_connect_timeout=5,
        )
        # Stream replies stay as hiredis returns them ([id, [field, value, …]]): redis-py's parsing
        # into tuples of dicts cost ~1.7 µs per entry, more than reading them (Batch takes both).
        for command in ("XREADGROUP", "XAUTOCLAIM"):
            self.client.response_callbacks[command] = _raw_reply
        #: Events per entry to plan reads for (see :meth:`_count`): the last read's, starting high.
        self._per_entry = float(MAX_ROWS)

    def _count(self) -> int:
        """Entries to read at once for a batch of about ``batch_size`` events.

        An entry holds one event (``e``) or up to MAX_ROWS of them (``b``, a worker's rows), and a
        read cannot be bounded by events: the plan is the events per entry of the last read, and it
        falls at most by half per read (from MAX_ROWS at the start), so a stream of rows never
        yields a batch of ``batch_size`` rows entries (up to 512 times the events). Planning by the
        most rows in one entry instead made batches of a mixed stream far too small, and
        ingest 34 % slower (1M workload events as rows: 37k against 51k events/s).
        """
        return max(1, min(self.s.batch_size, int(self.s.batch_size / self._per_entry)))

    def _submit(self, entries: list[Any]) -> None:
        batch = Batch()
        batch.add_entries(entries)
        if entries:
            per_entry = (batch.valid + len(batch.quarantine)) / len(entries)
            self._per_entry = max(1.0, per_entry, self._per_entry / 2)
        self.backend.submit(batch)

    def claim(self) -> int:
        """Take over entries that other consumers left pending longer than ``claim_idle_ms``."""
        s, start, claimed = self.s, "0-0", 0
        while not self.stop.is_set():
            reply = self.client.xautoclaim(s.stream, CONSUMER_GROUP, self.consumer, s.claim_idle_ms,
                                           start_id=start, count=self._count())
            start, entries = reply[0], reply[1]
            entries = [e for e in entries if e is not None and e[0] is not None]
            if entries:
                claimed += len(entries)
                self._submit(entries)
            if start in (b"0-0", "0-0"):
                break
        if claimed:
            log.info("ingest: claimed %d pending entries from other consumers", claimed)
        self._forget_idle_consumers()
        return claimed

    def _forget_idle_consumers(self) -> None:
        try:
            for info in self.client.xinfo_consumers(self.s.stream, CONSUMER_GROUP):
                name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
                if name != self.consumer and not info["pending"] and info["idle"] > 10 * self.s.claim_idle_ms:
                    self.client.xgroup_delconsumer(self.s.stream, CONSUMER_GROUP, name)
        except RedisError:
            pass

    def replay_own(self) -> None:
        """Apply this consumer's own pending entries again (it was restarted under the same name)."""
        last = "0"
        while not self.stop.is_set():
            reply = self.client.xreadgroup(CONSUMER_GROUP, self.consumer, {self.s.stream: last},
                                           count=self._count())
            entries = reply[0][1] if reply else []
            if not entries:
                return
            self._submit(entries)
            last = entries[-1][0]

    def run(self, ready: Callable[[], None] | None) -> None:
        s = self.s
        ensure_group(self.client, s.stream)
        self.backend.start()
        if ready is not None:
            ready()
        self.claim()
        self.replay_own()
        claim_every = max(1.0, s.claim_idle_ms / 2000)
        lost_every = max(0.2, min(5.0, s.lost_after_s / 3))
        last_claim = last_lost = time.monotonic()
        while not self.stop.is_set():
            count = self._count()
            reply = self.client.xreadgroup(CONSUMER_GROUP, self.consumer, {s.stream: ">"},
                                           count=count, block=s.block_ms)
            entries = reply[0][1] if reply else []
            if entries:
                self._submit(entries)
            if len(entries) < count:  # caught up: acknowledge what has been committed meanwhile
                self.backend.settle()
            now = time.monotonic()
            if len(entries) < count and now - last_lost >= lost_every:
                last_lost = now
                n = self.backend.mark_lost(time.time(), s.lost_after_s)
                if n:
                    log.warning("ingest: %d running jobs marked lost (their workers went silent)", n)
            if now - last_claim >= claim_every:
                last_claim = now
                self.claim()
        self.backend.drain()

    def close(self) -> None:
        try:
            self.backend.close()
        finally:
            self.client.close()


def _install_signals(stop: threading.Event) -> Callable[[], None]:
    """Make SIGTERM/SIGINT finish the current batch instead of killing it (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, _frame: Any) -> None:
        log.info("ingest: signal %d, finishing the current batch", signum)
        stop.set()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, previous in old.items():
            signal.signal(sig, previous)

    return restore


def run_ingest(
    settings: Settings,
    stop: threading.Event | None = None,
    ready: Callable[[], None] | None = None,
) -> int:
    """Migrate the store, then ingest until ``stop`` is set or SIGTERM/SIGINT arrives; returns 0.

    ``ready`` is called once the consumer group exists and the store is open. On stop the current
    batch is finished, committed and acknowledged; any child process is ended before returning.
    """
    stop = stop if stop is not None else threading.Event()
    restore = _install_signals(stop)
    thresholds = gc.get_threshold()
    try:
        asyncio.run(_migrate(settings.database_url))
        # A batch keeps tens of thousands of small dicts alive; with the default thresholds the
        # collector rescans them over and over (measured: +56 % throughput without that).
        gc.collect()
        gc.freeze()
        gc.set_threshold(1_000_000, 50, 100)  # 100k still ran a gen-0 collection every few thousand events
        backoff = 0.5
        started = False

        def on_ready() -> None:
            nonlocal started
            if not started and ready is not None:
                ready()
            started = True

        while not stop.is_set():
            session = _Session(settings, stop, make_backend(settings))
            try:
                session.run(on_ready)
                backoff = 0.5
            except Exception as exc:
                if not started and not isinstance(exc, (RedisError, OSError)):
                    raise  # a start that cannot work (bad URL, locked database) is not retried
                log.error("ingest: %s: %s; restarting in %.1f s", type(exc).__name__, exc, backoff,
                          exc_info=log.isEnabledFor(logging.DEBUG))
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                session.close()
        return 0
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
        restore()
