"""A synthetic store for page benchmarks and development: jobs, timelines, rollups, workers, quarantine.

Rows are written straight into a migrated SQLite file with ``executemany`` (it is a fixture, not a
test of ingest); rollups are then summed from the jobs with one ``INSERT … SELECT`` per outcome.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Table

from ..store.keys import job_key
from ..store.tables import DURATION_BUCKETS_MS, job_events, jobs, meta, quarantine, workers

__all__ = ["seed", "LIBS"]

#: lib → apps → tasks (with a typical duration in ms).
LIBS: dict[str, dict[str, dict[str, float]]] = {
    "celery": {"shop": {"orders.charge_card": 180, "orders.send_receipt": 40, "catalog.reindex": 2400},
               "reports": {"reports.daily_export": 9000, "reports.render_pdf": 1300}},
    "dramatiq": {"mailer": {"send_email": 120, "send_digest": 700, "bounce_check": 30},
                 "media": {"transcode_video": 24000, "make_thumbnail": 260}},
    "arq": {"api": {"sync_crm": 450, "refresh_token": 15, "webhook_deliver": 90},
            "scraper": {"fetch_page": 800, "parse_page": 60}},
    "taskiq": {"ml": {"embed_text": 55, "score_model": 340, "train_small": 45000},
               "notify": {"push_notification": 25, "sms_send": 210}},
}
ERRORS = [("TimeoutError", "read timed out after 30s"), ("ConnectionError", "connection refused by upstream"),
          ("ValueError", "invalid literal for int() with base 10: 'n/a'"), ("KeyError", "'customer_id'"),
          ("RateLimited", "429 Too Many Requests from api.example.com")]
TRACEBACK = ('Traceback (most recent call last):\n  File "/app/tasks.py", line 42, in {task}\n'
             '    result = client.call(payload)\n  File "/app/client.py", line 118, in call\n'
             '    raise {exc}({msg!r})\n{exc}: {msg}\n')


def _row(table: Table, values: dict[str, Any]) -> tuple[str, list[str]]:
    """INSERT SQL for the given columns, plus zeros for NOT NULL columns this seeder does not know."""
    cols = list(values)
    for c in table.columns:
        if c.name not in values and not c.nullable and not c.primary_key and c.server_default is None:
            cols.append(c.name)
    sql = f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
    return sql, cols


def _migrate(path: str) -> None:
    from ..store.db import create_engine, migrate

    async def run() -> None:
        engine = create_engine(f"sqlite:///{path}")
        try:
            await migrate(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())


def _worker_names() -> list[tuple[str, str, str, str]]:
    out = []
    for lib, apps in LIBS.items():
        for app in apps:
            for i in range(3):
                host = f"{app}-{lib}-{i + 1}"
                out.append((lib, app, f"{host}:{4000 + i}", host))
    return out


def _jobs(n: int, now: float, span_s: float, rng: random.Random) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Jobs (oldest first) with their timeline events."""
    flat = [(lib, app, task, ms) for lib, apps in LIBS.items() for app, tasks in apps.items()
            for task, ms in tasks.items()]
    weights = [max(1.0, 3000.0 / (ms ** 0.5)) for *_, ms in flat]
    by_app: dict[tuple[str, str], list[str]] = {}
    for lib, app, name, _host in _worker_names():
        by_app.setdefault((lib, app), []).append(name)
    start = now - span_s
    step = span_s / n
    picks = rng.choices(flat, weights, k=n)
    for i in range(n):
        lib, app, task, base_ms = picks[i]
        created = start + i * step + rng.random() * step
        r = rng.random()
        attempts = 1 if r < 0.76 else 2 if r < 0.93 else 3
        final_failed = r >= 0.93 or (r < 0.005)
        cancelled = 0.005 <= r < 0.012
        pool = by_app[(lib, app)]
        events: list[dict[str, Any]] = [{"type": "job-enqueued", "ts": created, "attempt": 1}]
        t = created
        worker = None
        dur = 0.0
        wait_ms = 0.0
        exc = ERRORS[i % len(ERRORS)]
        for a in range(1, attempts + 1):
            if a > 1:
                events.append({"type": "job-enqueued", "ts": t, "attempt": a})
                t += 2.0 ** a
            wait_ms = rng.expovariate(1 / 150.0)
            t += wait_ms / 1000
            worker = pool[rng.randrange(len(pool))]
            events.append({"type": "job-started", "ts": t, "attempt": a, "worker": worker})
            dur = base_ms * rng.lognormvariate(0, 0.5)
            t += dur / 1000
            last = a == attempts
            if cancelled and last:
                events.append({"type": "job-cancelled", "ts": t, "attempt": a, "worker": worker, "duration_ms": dur,
                               "reason": "revoked by operator"})
            elif last and not final_failed:
                events.append({"type": "job-succeeded", "ts": t, "attempt": a, "worker": worker, "duration_ms": dur})
            else:
                events.append({"type": "job-failed", "ts": t, "attempt": a, "worker": worker, "duration_ms": dur,
                               "exc_type": exc[0], "exc_message": exc[1], "final": last, "retry_in_s": None if last else 2.0 ** (a + 1),
                               "traceback": TRACEBACK.format(task=task.rsplit(".", 1)[-1], exc=exc[0], msg=exc[1])})
        terminal = events[-1]
        state = {"job-succeeded": "succeeded", "job-failed": "failed", "job-cancelled": "cancelled"}[terminal["type"]]
        started = events[-2]["ts"] if terminal["type"] != "job-enqueued" else None
        if terminal["ts"] > now:  # still happening at "now"
            state = "running" if started is not None and started <= now else "queued"
            events = [e for e in events if e["ts"] <= now]
        job = {
            "lib": lib, "app": app, "job_id": f"{lib[:2]}-{i:08x}-{rng.getrandbits(32):08x}", "task": task,
            "queue": "default" if i % 5 else "priority", "state": state, "attempt": attempts, "max_attempts": 3,
            "worker": worker, "created_at": created, "enqueued_at": created,
            "started_at": started if state != "queued" else None,
            "finished_at": terminal["ts"] if state in ("succeeded", "failed", "cancelled") else None,
            "updated_at": events[-1]["ts"], "duration_ms": dur if state in ("succeeded", "failed", "cancelled") else None,
            "exc_type": exc[0] if attempts > 1 or state == "failed" else None,
            "exc_message": exc[1] if attempts > 1 or state == "failed" else None,
            "args": json.dumps({"args": [i % 997], "kwargs": {"customer_id": 1000 + i % 5000, "token": "[redacted]"}}),
            "correlation_id": f"req-{i // 3:x}", "trace_id": f"{rng.getrandbits(128):032x}", "payload_bytes": 180 + i % 400,
            "ver": len(events), "_wait_ms": wait_ms,
        }
        yield job, events


def _insert_rollups(db: sqlite3.Connection) -> None:
    """Sum the rollups from the jobs, as ingest would have counted them (one bucket CASE per bound)."""
    bounds = DURATION_BUCKETS_MS

    def bucket_sums(expr: str, weight: str = "1") -> str:
        parts = []
        for i in range(len(bounds) + 1):
            lo = f"{expr} > {bounds[i - 1]}" if i else "1"
            hi = f"{expr} <= {bounds[i]}" if i < len(bounds) else "1"
            parts.append(f"sum(CASE WHEN {lo} AND {hi} THEN {weight} ELSE 0 END)")
        return ", ".join(parts)

    cols = ", ".join(f"b{i}" for i in range(len(bounds) + 1))
    selects = {
        "succeeded": ("finished_at", "duration_ms", "1", "state = 'succeeded'"),
        "failed": ("finished_at", "duration_ms", "1", "state = 'failed'"),
        "cancelled": ("finished_at", "duration_ms", "1", "state = 'cancelled'"),
        "retried": ("started_at", "duration_ms", "(attempt - 1)", "attempt > 1 AND started_at IS NOT NULL"),
        "wait": ("started_at", "(started_at - enqueued_at) * 1000", "attempt",
                 "started_at IS NOT NULL"),
    }
    for outcome, (tcol, expr, weight, where) in selects.items():
        db.execute(
            f"INSERT INTO rollup_minute (minute, lib, app, task, outcome, n, sum_ms, max_ms, {cols}) "
            f"SELECT CAST({tcol} AS INTEGER) / 60 * 60 AS m, lib, app, task, '{outcome}', sum({weight}), "
            f"sum({expr} * {weight}), max({expr}), {bucket_sums(expr, weight)} "
            f"FROM jobs WHERE {where} GROUP BY m, lib, app, task"
        )
    sums = ", ".join(f"sum(b{i})" for i in range(len(bounds) + 1))
    db.execute(
        f"INSERT INTO rollup_hour (hour, lib, app, task, outcome, n, sum_ms, max_ms, {cols}) "
        f"SELECT minute / 3600 * 3600 AS h, lib, app, task, outcome, sum(n), sum(sum_ms), max(max_ms), {sums} "
        f"FROM rollup_minute GROUP BY h, lib, app, task, outcome"
    )


def _index_text(db: sqlite3.Connection) -> None:
    """Fill the jobs' full-text index, as ingest keeps it, when the schema has one (migration 0002)."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'jobs_fts'").fetchone():
        db.execute("INSERT INTO jobs_fts(jobs_fts) VALUES ('rebuild')")


def seed(path: str, n_jobs: int = 1_000_000, *, span_s: float = 7 * 86400, now: float | None = None,
         seed_value: int = 7, lost_workers: int = 2, progress: bool = False) -> dict[str, Any]:
    """Fill a new SQLite file at ``path``; returns counts and a few ids worth fetching."""
    now = time.time() if now is None else now
    rng = random.Random(seed_value)
    _migrate(path)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-131072")
    job_sql, job_cols = _row(jobs, {k: None for k in (
        "id", "jk", "lib", "app", "job_id", "task", "queue", "state", "ver", "attempt", "max_attempts", "worker",
        "created_at", "enqueued_at", "started_at", "finished_at", "updated_at", "duration_ms", "exc_type",
        "exc_message", "args", "correlation_id", "trace_id", "payload_bytes")})
    ev_sql, ev_cols = _row(job_events, {k: None for k in (
        "job", "eid", "ts", "type", "attempt", "worker", "duration_ms", "exc_type", "exc_message", "traceback",
        "retry_in_s", "final", "reason")})
    n_events = 0
    samples: dict[str, Any] = {}
    job_rows: list[tuple[Any, ...]] = []
    ev_rows: list[tuple[Any, ...]] = []
    db.execute("BEGIN")
    t0 = time.monotonic()
    for i, (job, events) in enumerate(_jobs(n_jobs, now, span_s, rng), start=1):
        job["id"] = i
        job["jk"] = job_key(job["lib"], job["app"], job["job_id"])
        job_rows.append(tuple(job.get(c, 0) for c in job_cols))
        for k, ev in enumerate(events):
            ev["job"] = i
            ev["eid"] = (i << 4) | k
            ev_rows.append(tuple(ev.get(c, 0 if c in ("eid",) else None) for c in ev_cols))
        n_events += len(events)
        if job["attempt"] == 2 and job["state"] == "succeeded":
            samples["retried"] = (job["lib"], job["app"], job["job_id"])
        if job["state"] == "failed":
            samples["failed"] = (job["lib"], job["app"], job["job_id"])
            samples["failed_task"] = job["task"]
        if len(job_rows) >= 50_000:
            db.executemany(job_sql, job_rows)
            db.executemany(ev_sql, ev_rows)
            job_rows.clear()
            ev_rows.clear()
            if progress:
                print(f"  seeded {i:,} jobs, {n_events:,} events ({time.monotonic() - t0:.0f} s)", flush=True)
    if job_rows:
        db.executemany(job_sql, job_rows)
        db.executemany(ev_sql, ev_rows)
    _insert_rollups(db)
    _index_text(db)
    w_sql, w_cols = _row(workers, {k: None for k in (
        "lib", "app", "worker", "host", "pid", "state", "started_at", "last_seen_at", "concurrency", "inflight",
        "processed", "failed", "loop_lag_ms", "rss_bytes", "dropped", "queues")})
    w_rows = []
    for k, (lib, app, name, host) in enumerate(_worker_names()):
        lost = k < lost_workers
        w_rows.append(tuple({
            "lib": lib, "app": app, "worker": name, "host": host, "pid": 4000 + k, "state": "online",
            "started_at": now - 86400 - k * 600, "last_seen_at": now - (600 if lost else 2), "concurrency": 8,
            "inflight": rng.randrange(0, 9), "processed": n_jobs // 24, "failed": n_jobs // 400,
            "loop_lag_ms": rng.random() * 12, "rss_bytes": (80 + k * 7) * 2 ** 20, "dropped": 0,
            "queues": json.dumps(["default", "priority"]),
        }.get(c, 0) for c in w_cols))
    db.executemany(w_sql, w_rows)
    q_sql, q_cols = _row(quarantine, {k: None for k in ("stream_id", "received_at", "reason", "raw", "raw_bytes")})
    q_rows = []
    for k in range(25):
        raw = json.dumps({"v": 1, "type": "job-started", "lib": "celery", "ts": "yesterday"})
        q_rows.append(tuple({"stream_id": f"{int(now * 1000) - k * 60000}-0", "received_at": now - k * 60,
                             "reason": "ts: not a number" if k % 2 else "missing required field: app",
                             "raw": raw, "raw_bytes": len(raw)}[c] for c in q_cols))
    db.executemany(q_sql, q_rows)
    db.executemany(f"INSERT OR REPLACE INTO {meta.name} (key, value) VALUES (?, ?)",
                   [("events_ingested", n_events), ("quarantined", 25), ("duplicates", 0)])
    db.execute("COMMIT")
    db.close()
    return {"jobs": n_jobs, "events": n_events, "samples": samples, "seconds": time.monotonic() - t0}
