"""Retention on SQLite: the ingest writer prunes old jobs, their timeline, search entries and rollups."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import redis

from collectors.events import build
from tests.integration.test_ingest import acked_all, emit, ingesting, settings_for, wait_until

DAY = 86_400.0


def _finished_job(job_id: str, ts: float, word: str, outcome: str = "succeeded") -> list[dict[str, Any]]:
    common: dict[str, Any] = {"job_id": job_id, "task": "tasks.report", "queue": "default"}
    evs = [build("job-enqueued", "arq", "shop", ts=ts, attempt=1, args_raw=(word,), **common),
           build("job-started", "arq", "shop", ts=ts + 1, attempt=1, worker="w1", **common)]
    if outcome == "succeeded":
        evs.append(build("job-succeeded", "arq", "shop", ts=ts + 2, attempt=1, worker="w1", duration_ms=3.0, **common))
    elif outcome == "failed":
        evs.append(build("job-failed", "arq", "shop", ts=ts + 2, attempt=1, worker="w1", exc_type=f"{word.title()}Error",
                         exc_message=f"{word} broke", final=True, **common))
    return evs


def _one(db: sqlite3.Connection, sql: str, *params: Any) -> Any:
    return db.execute(sql, params).fetchone()[0]


def test_old_jobs_go_and_recent_ones_stay(tmp_path: Path, stream: str, client: redis.Redis) -> None:
    now = time.time()
    events: list[dict[str, Any]] = []
    events += _finished_job("old-ok", now - 20 * DAY, "fossil")
    events += _finished_job("old-failed", now - 15 * DAY, "fossil", outcome="failed")
    events += _finished_job("recent", now - 13 * DAY, "fresh")
    events += _finished_job("new", now - 60, "fresh", outcome="failed")
    events += _finished_job("old-running", now - 20 * DAY, "fossil", outcome="running")  # not finished: stays
    emit(stream, events)
    url = f"sqlite:///{tmp_path}/retention.db"
    path = tmp_path / "retention.db"
    with ingesting(settings_for(stream, url, retention_days=14.0)):
        wait_until(lambda: acked_all(client, stream, len(events)), what="events acknowledged")

        def pruned() -> bool:
            db = sqlite3.connect(path)
            try:
                return _one(db, "SELECT count(*) FROM jobs") == 3
            finally:
                db.close()

        wait_until(pruned, timeout=30, what="old jobs pruned")

    db = sqlite3.connect(path)
    try:
        assert {r[0] for r in db.execute("SELECT job_id FROM jobs")} == {"recent", "new", "old-running"}
        # The timeline of the pruned jobs is gone, the others' is whole.
        assert _one(db, "SELECT count(*) FROM job_events WHERE job NOT IN (SELECT id FROM jobs)") == 0
        assert _one(db, "SELECT count(*) FROM job_events") == 3 + 3 + 2
        # The search index forgot them: their words no longer match, the others' still do.
        fts = "SELECT count(*) FROM jobs_fts WHERE jobs_fts MATCH ?"
        assert _one(db, fts, "fossil") == 1  # old-running
        assert _one(db, fts, "fresh") == 2
        assert _one(db, fts, "FossilError") == 0 and _one(db, fts, "FreshError") == 1
        db.execute("INSERT INTO jobs_fts(jobs_fts) VALUES ('integrity-check')")  # raises if index != table
        # Minute rollups older than the retention go; hour rollups are kept longer (90 days).
        cutoff = now - 14 * DAY
        assert _one(db, "SELECT count(*) FROM rollup_minute WHERE minute < ?", cutoff) == 0
        assert _one(db, "SELECT count(*) FROM rollup_minute WHERE minute >= ?", cutoff) > 0
        assert _one(db, "SELECT count(*) FROM rollup_hour WHERE hour < ?", cutoff - 3600) > 0
        assert _one(db, "SELECT value FROM meta WHERE key = 'pruned_jobs'") == 2
    finally:
        db.close()


def test_retention_zero_keeps_everything(tmp_path: Path, stream: str, client: redis.Redis) -> None:
    now = time.time()
    events = _finished_job("ancient", now - 400 * DAY, "relic") + _finished_job("new", now - 5, "fresh")
    emit(stream, events)
    url = f"sqlite:///{tmp_path}/keep.db"
    with ingesting(settings_for(stream, url, retention_days=0.0)):
        wait_until(lambda: acked_all(client, stream, len(events)), what="events acknowledged")
        time.sleep(0.5)
    db = sqlite3.connect(tmp_path / "keep.db")
    try:
        assert {r[0] for r in db.execute("SELECT job_id FROM jobs")} == {"ancient", "new"}
        assert _one(db, "SELECT count(*) FROM jobs_fts WHERE jobs_fts MATCH 'relic'") == 1
    finally:
        db.close()

