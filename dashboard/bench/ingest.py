"""``flowerbed bench ingest``: events/s from the Redis stream to the committed store, end to end.

It fills a private stream through the real :class:`collectors.emitter.Emitter`, as a busy worker's
collector does (``--format rows``: job events as rows, many per entry) or one event per entry
(``--format events``), then starts ingest as its own process (``python -m dashboard.ingest``,
exactly what ``flowerbed ingest`` runs) against a scratch SQLite file (or ``--database-url``), and
watches the consumer group until every entry is acknowledged — which ingest does only after the
commit. Progress counts events, not entries: the fill reads the stream back and notes the events of
each entry. Reported: events/s overall and over the last 10 %, peak RSS of the ingest processes,
and the database size. The stream is deleted after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import redis

from collectors.constants import CONSUMER_GROUP, DEFAULT_REDIS_URL, ROWS_FIELD
from collectors.emitter import Emitter
from collectors.events import entry_events, split_started

from .workload import events, rows

__all__ = ["main", "fill", "measure", "Ledger", "FORMATS"]

#: What the fill writes: ``rows`` as collectors now do (the common case), ``events`` one event per entry.
FORMATS = ("rows", "events")
T = TypeVar("T")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowerbed bench ingest", description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=1_000_000, help="job events to generate (default 1,000,000)")
    p.add_argument("--format", choices=FORMATS, default="rows",
                   help="rows: job events as a worker's collector sends them, many per entry (default); "
                        "events: one event per entry")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--database-url", default=None, help="store to ingest into (default: a scratch SQLite file)")
    p.add_argument("--redis-url", default=os.environ.get("FLOWERBED_REDIS_URL", DEFAULT_REDIS_URL))
    p.add_argument("--batch-size", type=int, default=50_000, help="events per transaction (default 50,000)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--rate", type=float, default=500.0,
                   help="production rate the event times imitate, events/s (default 500): it sets how many "
                        "rollup minutes a batch touches")
    return p


def _bar(label: str, done: int, total: int, started: float) -> None:
    frac = done / total if total else 1.0
    rate = done / max(time.monotonic() - started, 1e-9)
    filled = int(frac * 30)
    sys.stderr.write(f"\r{label:<7} [{'#' * filled}{'.' * (30 - filled)}] {done:>10,}/{total:,} {rate:>9,.0f}/s")
    sys.stderr.flush()


class Ledger:
    """The filled stream's entries in stream order, each with the events ingest counts in it.

    Ingest acknowledges whole entries and an entry of rows holds hundreds of events, so progress in
    events is read off this. Ids are kept as numbers in arrays: 1M single-event entries take 16 MB.
    """

    def __init__(self) -> None:
        self._keys = array("Q")  # each entry's stream id (see _key)
        self._upto = array("Q", [0])  # _upto[i]: the events in the first i entries
        self._after = b"-"  # where the next read starts

    @property
    def entries(self) -> int:
        return len(self._keys)

    @property
    def events(self) -> int:
        return self._upto[-1]

    def read(self, client: Any, stream: str) -> list[tuple[dict[bytes, bytes], int]]:
        """Note the entries added since the last read; returns its rows entries with their events
        (the ones :func:`_resend` may repeat)."""
        batches = []
        while page := client.xrange(stream, min=self._after, count=10_000):
            for sid, fields in page:
                n = _events_in(fields)
                self._keys.append(_key(sid))
                self._upto.append(self._upto[-1] + n)
                if _ROWS in fields:
                    batches.append((fields, n))
            self._after = b"(" + page[-1][0]
        return batches

    def before(self, sid: bytes) -> int:
        """Events in the entries before ``sid``."""
        return self._upto[bisect_left(self._keys, _key(sid))]

    def through(self, sid: bytes) -> int:
        """Events in the entries up to ``sid``, itself included."""
        return self._upto[bisect_right(self._keys, _key(sid))]


_ROWS = ROWS_FIELD.encode()


def _key(sid: bytes) -> int:
    """A stream id ``<ms>-<seq>`` as one number in its order (ms < 2**41; a millisecond holds far fewer
    than 2**23 entries)."""
    ms, _, seq = sid.partition(b"-")
    return int(ms) << 23 | int(seq)


def _events_in(fields: dict[bytes, bytes]) -> int:
    """The events ingest counts for one entry: one per event, two for an end that carries its start."""
    found = entry_events(fields, orjson.loads)
    return len(found) + sum(split_started(event) is not None for event in found)


def _resend(client: Any, stream: str, batches: list[tuple[dict[bytes, bytes], int]],
            counts: Counter[str], rng: random.Random) -> None:
    """Add rows entries again as they were, for the job events the workload delivers twice.

    With rows a second delivery is a batch the emitter sent again after losing Redis's reply: the
    same entry, so the same event ids, which ingest recognises as duplicates.
    """
    while counts["resend"] > 0 and batches:
        fields, n = batches.pop(rng.randrange(len(batches)))
        client.xadd(stream, fields)
        counts["resend"] -= n


#: Items the fill's emitter sends per batch (see :func:`fill`).
_PASS = 3_000


def fill(redis_url: str, stream: str, n: int, seed: int = 42, progress: bool = True, rate: float = 500.0,
         fmt: str = "rows") -> Ledger:
    """Put about ``n`` events on ``stream`` through the real emitter; returns the ledger of its entries.

    The emitter sends a batch once 3,000 items wait: each of its 8 workers then gets an entry of about
    230 rows, near what a busy worker's emitter sends per pass (it wakes at 256), and each producer
    one of about 100. Sent sooner, the 16 senders would share a few hundred rows, entries of ~25.
    """
    emitter = Emitter(redis_url, stream, maxlen=0, buffer_size=max(n * 2, 10_000), batch_size=_PASS,
                      wake_at=_PASS, flush_interval=1.0)
    ledger, counts, rng = Ledger(), Counter[str](), random.Random(seed)
    span_s = n / rate
    items = rows(n, seed, span_s=span_s, counts=counts) if fmt == "rows" else events(n, seed, span_s=span_s)
    started = time.monotonic()
    with redis.Redis.from_url(redis_url) as client:
        try:
            for i, item in enumerate(items, 1):
                emitter.emit(item)
                if i % 20_000 == 0:
                    while emitter.buffered > 200_000:  # keep memory bounded: the buffer is not the point
                        time.sleep(0.01)
                    _resend(client, stream, ledger.read(client, stream), counts, rng)
                    if progress:
                        _bar("fill", ledger.events, n, started)
            if not emitter.flush(timeout=600):
                raise RuntimeError(f"the emitter did not finish sending: {emitter.stats()}")
        finally:
            emitter.close(10)
        if emitter.dropped:
            raise RuntimeError(f"the emitter dropped {emitter.dropped} events")
        _resend(client, stream, ledger.read(client, stream), counts, rng)
        ledger.read(client, stream)  # the entries just resent
    if progress:
        _bar("fill", ledger.events, ledger.events, started)
        sys.stderr.write("\n")
    return ledger


def _committed(client: Any, stream: str, ledger: Ledger) -> int:
    """Events of the entries ingest has acknowledged, which it does only after their commit.

    Entries are delivered in stream order, so every entry before the oldest pending one has been
    acknowledged (with none pending, every delivered one). The group is read before the pending
    entries: an entry delivered in between is then never counted as done.
    """
    delivered = next((g["last-delivered-id"] for g in client.xinfo_groups(stream)
                      if g["name"] in (CONSUMER_GROUP, CONSUMER_GROUP.encode())), None)
    if delivered is None:
        return 0
    oldest = client.xpending(stream, CONSUMER_GROUP)["min"]
    return ledger.before(oldest) if oldest else ledger.through(delivered)


def _peak_rss(pids: list[int], field: str = "VmHWM") -> dict[int, int]:
    """Peak resident set (VmHWM; or ``field``, e.g. VmRSS for the current one) of each process, in bytes."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith(field + ":"):
                        out[pid] = int(line.split()[1]) * 1024
        except OSError:
            pass
    return out


def _cpu_s(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return out


def _children(pid: int) -> list[int]:
    try:
        import psutil

        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception:
        return []


def _query_store(url: str, query: Callable[[Any], Awaitable[T]]) -> T:
    """The result of one read of the store, through an engine of the bench's own (ingest has stopped)."""
    from dashboard.store.db import create_engine

    async def run() -> T:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                return await query(conn)
        finally:
            await engine.dispose()

    return asyncio.run(run())


async def _pg_size(conn: Any) -> int:
    from sqlalchemy import text

    return int((await conn.execute(text("SELECT pg_database_size(current_database())"))).scalar() or 0)


def _db_size(url: str) -> int:
    from dashboard.store.db import is_sqlite, sqlite_path

    if is_sqlite(url):
        import sqlite3

        path = sqlite_path(url)
        db = sqlite3.connect(path)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
    try:
        return _query_store(url, _pg_size)
    except Exception:
        return -1


def _ingested(url: str) -> dict[str, int]:
    """What ingest itself counted into the store: its events (new, duplicates) and quarantined entries,
    to check the bench's own count against (a ``--database-url`` holding earlier data adds those)."""
    from dashboard.store.queries import ingest_counters

    return _query_store(url, ingest_counters)


def _tail_rate(marks: list[tuple[float, int]], started: float, share: float = 0.1) -> float:
    """Events/s over the last ``share`` of the events, from the last reading before they were committed
    (a small run commits them all at once: timed from the first commit, they took no time)."""
    ended, total = marks[-1]
    t0, d0 = next(((t, d) for t, d in reversed(marks) if d < (1 - share) * total), (started, 0))
    return (total - d0) / max(ended - t0, 1e-9)


def measure(redis_url: str, stream: str, database_url: str, ledger: Ledger, batch_size: int,
            progress: bool = True) -> dict[str, Any]:
    """Run ingest as a process until the events of every entry in ``ledger`` are committed; returns the figures."""
    total = ledger.events
    client = redis.Redis.from_url(redis_url)
    cmd = [sys.executable, "-m", "dashboard.ingest", "--redis-url", redis_url, "--stream", stream,
           "--database-url", database_url, "--batch-size", str(batch_size), "--consumer", "bench",
           "--lost-after-s", "1e9", "--log-level", "warning"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    marks: list[tuple[float, int]] = []
    peaks: dict[int, int] = {}
    cpu: dict[int, float] = {}
    first_ack = None
    #: RSS (MB) of each process when each tenth of the events was acknowledged: flat memory shows here.
    rss_by_tenth: dict[str, dict[str, float]] = {}
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ingest exited early with code {proc.returncode}")
            try:
                done = _committed(client, stream, ledger)
            except redis.ResponseError:
                done = 0
            now = time.monotonic()
            if done and first_ack is None:
                first_ack = now
            marks.append((now, done))
            pids = [proc.pid, *_children(proc.pid)]
            for pid, rss in _peak_rss(pids).items():
                peaks[pid] = max(peaks.get(pid, 0), rss)
            cpu.update(_cpu_s(pids))
            tenth = min(10, done * 10 // max(total, 1))
            if tenth and f"{tenth * 10}%" not in rss_by_tenth:
                rss_by_tenth[f"{tenth * 10}%"] = {str(pid): round(rss / 2**20, 1)
                                                  for pid, rss in sorted(_peak_rss(pids, "VmRSS").items())}
            if progress:
                _bar("ingest", done, total, started)
            if done >= total:
                break
            time.sleep(0.1)
        ended = marks[-1][0]
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if progress:
            sys.stderr.write("\n")
    wall = ended - started
    return {
        "events": marks[-1][1],
        "entries": ledger.entries,
        "seconds": round(wall, 2),
        "events_per_s": round(total / wall),
        "last_10pct_events_per_s": round(_tail_rate(marks, started)),
        "startup_s": round((first_ack or ended) - started, 2),
        "peak_rss_mb": {str(pid): round(rss / 2**20, 1) for pid, rss in sorted(peaks.items())},
        "peak_rss_total_mb": round(sum(peaks.values()) / 2**20, 1),
        "cpu_s": {str(pid): round(t, 1) for pid, t in sorted(cpu.items())},
        "cpu_us_per_event": {str(pid): round(t / total * 1e6, 2) for pid, t in sorted(cpu.items())},
        "rss_mb_by_tenth": rss_by_tenth,
        "ingested": _ingested(database_url),
        "db_bytes": _db_size(database_url),
        "exit_code": proc.returncode,
    }


def main(argv: list[str]) -> int:
    """Entry point of ``flowerbed bench ingest``."""
    args = _parser().parse_args(argv)
    stream = f"flowerbed:bench:{uuid.uuid4().hex[:12]}"
    scratch = None
    url = args.database_url
    if url is None:
        scratch = tempfile.mkdtemp(prefix="flowerbed-bench-")
        url = f"sqlite:///{scratch}/bench.db"
    client = redis.Redis.from_url(args.redis_url)
    try:
        ledger = fill(args.redis_url, stream, args.events, seed=args.seed, progress=True, rate=args.rate,
                      fmt=args.format)
        result = {"format": args.format,
                  **measure(args.redis_url, stream, url, ledger, args.batch_size, progress=True),
                  "batch_size": args.batch_size, "rate": args.rate, "database": "scratch SQLite" if scratch else url}
    finally:
        client.delete(stream)
        client.close()
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"ingest ({result['format']}): {result['events']:,} events ({result['entries']:,} entries) in "
              f"{result['seconds']} s = {result['events_per_s']:,} events/s "
              f"(last 10 %: {result['last_10pct_events_per_s']:,}/s; first commit after {result['startup_s']} s)")
        print(f"peak RSS of the ingest processes: {result['peak_rss_total_mb']} MB {result['peak_rss_mb']}; "
              f"CPU s: {result['cpu_s']}")
        print(f"database: {result['database']}, {result['db_bytes'] / 2**20:,.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
