"""Retention for SQLite: the writer prunes old jobs between ingest batches, a small step at a time.

A job goes when it finished more than ``retention_days`` ago (a ``lost`` job, which never
finishes, when it was last updated that long ago), together with its timeline rows and its
full-text index entry; per-minute rollups go after the same time, per-hour ones after
:data:`HOUR_ROLLUP_DAYS`. Each step is one short transaction of at most ``limit`` jobs, so ingest
never waits long, and the writer (the only one writing) runs it between batches: nothing races it.

Jobs are found through the ``created_at`` index (a job finishes after it was created), walking
forward from where the previous step stopped; a pass that reaches the cutoff starts again from the
beginning after :data:`PASS_INTERVAL_S`, so jobs still running when they were passed are seen again.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from dashboard.store.tables import ROLLUP_OUTCOMES

from .search_index import FIELDS

__all__ = ["Pruner", "HOUR_ROLLUP_DAYS", "PASS_INTERVAL_S"]

#: Per-hour rollups are kept this long (days), or ``retention_days`` when that is longer.
HOUR_ROLLUP_DAYS = 90.0
#: Seconds between two passes over the old jobs once a pass has caught up.
PASS_INTERVAL_S = 60.0
_DAY = 86_400.0
_CANDIDATES = ("SELECT id, created_at, finished_at, state, updated_at, lib, app, job_id FROM jobs "
               "WHERE created_at < ? AND (created_at > ? OR (created_at = ? AND id > ?)) "
               "ORDER BY created_at, id LIMIT ?")
_NOT_EMPTY = " OR ".join(f"{f} IS NOT NULL" for f in FIELDS)


class Pruner:
    """Deletes what is past retention, one bounded step per call; ``forget`` drops pruned jobs
    (their (lib, app, job_id) keys) from the writer's cache."""

    def __init__(self, db: sqlite3.Connection, retention_days: float,
                 forget: Callable[[list[tuple[str, str, str]]], None] | None = None, limit: int = 2000) -> None:
        self.db = db
        self.retention_s = retention_days * _DAY
        self.hour_retention_s = max(retention_days, HOUR_ROLLUP_DAYS) * _DAY
        self.forget = forget
        self.limit = limit
        self._pos: tuple[float, int] = (float("-inf"), 0)
        self._next_pass = 0.0
        self._minutes_pruned_to: int | None = None
        #: Jobs deleted so far (for tests and logs).
        self.deleted = 0

    @property
    def enabled(self) -> bool:
        return self.retention_s > 0

    def due(self) -> bool:
        """Whether a step has work to do now (cheap: no database access)."""
        return self.enabled and (time.monotonic() >= self._next_pass or self._pos[0] != float("-inf"))

    def step(self, now: float | None = None, limit: int | None = None) -> int:
        """Delete at most ``limit`` old jobs (and a slice of old rollups) in one transaction; returns jobs deleted."""
        if not self.enabled:
            return 0
        now = time.time() if now is None else now
        mono = time.monotonic()
        if mono < self._next_pass and self._pos[0] == float("-inf"):
            return 0
        cutoff = now - self.retention_s
        limit = limit or self.limit
        after_ts, after_id = self._pos
        found = self.db.execute(_CANDIDATES, (cutoff, after_ts, after_ts, after_id, limit)).fetchall()
        old = [row for row in found
               if (row[2] is not None and row[2] < cutoff) or (row[3] == "lost" and row[4] < cutoff)]
        doomed = [row[0] for row in old]
        if len(found) < limit:  # the pass reached the cutoff
            self._pos = (float("-inf"), 0)
            self._next_pass = mono + PASS_INTERVAL_S
        else:
            self._pos = (found[-1][1], found[-1][0])
        cur = self.db.cursor()
        cur.execute("BEGIN")
        try:
            if doomed:
                marks = ", ".join("?" * len(doomed))
                cur.execute(f"INSERT INTO jobs_fts (jobs_fts, rowid, {', '.join(FIELDS)}) "
                            f"SELECT 'delete', id, {', '.join(FIELDS)} FROM jobs "
                            f"WHERE id IN ({marks}) AND ({_NOT_EMPTY})", doomed)
                cur.execute(f"DELETE FROM job_events WHERE job IN ({marks})", doomed)
                cur.execute(f"DELETE FROM jobs WHERE id IN ({marks})", doomed)
                cur.execute("INSERT INTO meta (key, value) VALUES ('pruned_jobs', ?) "
                            "ON CONFLICT (key) DO UPDATE SET value = meta.value + excluded.value", (len(doomed),))
            if self._pos[0] == float("-inf"):  # once per pass: the rollups
                self._prune_rollups(cur, now)
            cur.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                cur.execute("ROLLBACK")
            raise
        if old and self.forget is not None:
            self.forget([(row[5], row[6], row[7]) for row in old])
        self.deleted += len(doomed)
        return len(doomed)

    def _prune_rollups(self, cur: sqlite3.Cursor, now: float) -> None:
        # rollup_hour is keyed (outcome, hour, …): one range per outcome.
        hour_cutoff = int(now - self.hour_retention_s)
        for outcome in ROLLUP_OUTCOMES:
            cur.execute("DELETE FROM rollup_hour WHERE outcome = ? AND hour < ?", (outcome, hour_cutoff))
        # rollup_minute is keyed (lib, app, task, outcome, minute): one range per series. The series
        # come from the (60 times smaller) hour table: all of them on the first pass, afterwards only
        # those with hours since the previous pass's cutoff (older minutes are gone already).
        minute_cutoff = int(now - self.retention_s)
        sql = "SELECT DISTINCT lib, app, task, outcome FROM rollup_hour"
        if self._minutes_pruned_to is None:
            series = cur.execute(sql).fetchall()
        else:
            since = self._minutes_pruned_to - self._minutes_pruned_to % 3600
            series = [s for outcome in ROLLUP_OUTCOMES
                      for s in cur.execute(sql + " WHERE outcome = ? AND hour >= ? AND hour < ?",
                                           (outcome, since, minute_cutoff)).fetchall()]
        cur.executemany("DELETE FROM rollup_minute WHERE lib = ? AND app = ? AND task = ? AND outcome = ? "
                        "AND minute < ?", [(*s, minute_cutoff) for s in series])
        self._minutes_pruned_to = minute_cutoff
