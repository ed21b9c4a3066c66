"""``flowerbed bench ingest``: events/s from the Redis stream to the committed store, end to end.

It fills a private stream through the real :class:`collectors.emitter.Emitter`, then starts ingest
as its own process (``python -m dashboard.ingest``, exactly what ``flowerbed ingest`` runs) against
a scratch SQLite file (or ``--database-url``), and watches the consumer group until every entry is
acknowledged — which ingest does only after the commit. Reported: events/s overall and over the
last 10 %, peak RSS of the ingest processes, and the database size. The stream is deleted after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import redis

from collectors.constants import CONSUMER_GROUP, DEFAULT_REDIS_URL
from collectors.emitter import Emitter

from .workload import events

__all__ = ["main", "fill", "measure"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowerbed bench ingest", description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=1_000_000, help="job events to generate (default 1,000,000)")
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


def fill(redis_url: str, stream: str, n: int, seed: int = 42, progress: bool = True, rate: float = 500.0) -> int:
    """Put about ``n`` events on ``stream`` through the real emitter; returns how many entries it holds."""
    emitter = Emitter(redis_url, stream, maxlen=0, buffer_size=max(n * 2, 10_000), batch_size=2_000,
                      flush_interval=0.02)
    started = time.monotonic()
    count = 0
    try:
        for event in events(n, seed=seed, span_s=n / rate):
            emitter.emit(event)
            count += 1
            if count % 20_000 == 0:
                while emitter.buffered > 200_000:  # keep memory bounded: the buffer is not the point
                    time.sleep(0.01)
                if progress:
                    _bar("fill", emitter.sent, n, started)
        if not emitter.flush(timeout=600):
            raise RuntimeError(f"the emitter did not finish sending: {emitter.stats()}")
    finally:
        emitter.close(10)
    if emitter.dropped:
        raise RuntimeError(f"the emitter dropped {emitter.dropped} events")
    if progress:
        _bar("fill", emitter.sent, count, started)
        sys.stderr.write("\n")
    return count


def _acked(client: Any, stream: str) -> int:
    for group in client.xinfo_groups(stream):
        name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
        if name == CONSUMER_GROUP:
            read = group.get("entries-read") or 0
            return int(read) - int(group["pending"])
    return 0


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


def _db_size(url: str) -> int:
    from dashboard.store.db import is_sqlite, sqlite_path

    if is_sqlite(url):
        import sqlite3

        path = sqlite_path(url)
        db = sqlite3.connect(path)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
    import asyncio

    from sqlalchemy import text

    from dashboard.store.db import create_engine

    async def size() -> int:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                return int((await conn.execute(text("SELECT pg_database_size(current_database())"))).scalar() or 0)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(size())
    except Exception:
        return -1


def measure(redis_url: str, stream: str, database_url: str, total: int, batch_size: int,
            progress: bool = True) -> dict[str, Any]:
    """Run ingest as a process until ``total`` entries are acknowledged; returns the figures."""
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
                done = _acked(client, stream)
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
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if progress:
            sys.stderr.write("\n")
    wall = ended - started
    t90 = next(t for t, d in marks if d >= 0.9 * total)
    return {
        "events": total,
        "seconds": round(wall, 2),
        "events_per_s": round(total / wall),
        "last_10pct_events_per_s": round((total - 0.9 * total) / max(ended - t90, 1e-9)),
        "startup_s": round((first_ack or ended) - started, 2),
        "peak_rss_mb": {str(pid): round(rss / 2**20, 1) for pid, rss in sorted(peaks.items())},
        "peak_rss_total_mb": round(sum(peaks.values()) / 2**20, 1),
        "cpu_s": {str(pid): round(t, 1) for pid, t in sorted(cpu.items())},
        "cpu_us_per_event": {str(pid): round(t / total * 1e6, 2) for pid, t in sorted(cpu.items())},
        "rss_mb_by_tenth": rss_by_tenth,
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
        total = fill(args.redis_url, stream, args.events, seed=args.seed, progress=True, rate=args.rate)
        entries = client.xlen(stream)
        result = measure(args.redis_url, stream, url, entries, args.batch_size, progress=True)
        result.update({"generated": total, "batch_size": args.batch_size, "rate": args.rate,
                       "database": "scratch SQLite" if scratch else url})
    finally:
        client.delete(stream)
        client.close()
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"ingest: {result['events']:,} events in {result['seconds']} s = {result['events_per_s']:,} events/s "
              f"(last 10 %: {result['last_10pct_events_per_s']:,}/s; first commit after {result['startup_s']} s)")
        print(f"peak RSS of the ingest processes: {result['peak_rss_total_mb']} MB {result['peak_rss_mb']}; "
              f"CPU s: {result['cpu_s']}")
        print(f"database: {result['database']}, {result['db_bytes'] / 2**20:,.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
