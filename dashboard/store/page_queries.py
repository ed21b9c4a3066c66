"""Aggregates for the overview and workers pages, read from the rollups so charts never scan ``jobs``.

Short windows read ``rollup_minute`` (PK lib, app, task, outcome, minute) one PK range per series;
the series present are found in ``rollup_hour`` (PK outcome, hour, …), which is a cheap range too.
Long windows read ``rollup_hour`` directly. Percentiles come from the duration histogram buckets.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from sqlalchemy import and_, func, literal, select, text, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import BUCKET_COLUMNS, DURATION_BUCKETS_MS, jobs, rollup_hour, schedules, workers

__all__ = [
    "WINDOWS",
    "Window",
    "window_for",
    "percentile",
    "overview",
    "SettledCache",
    "swimlanes",
    "LANE_COLUMNS",
    "lost_worker_jobs",
]

#: Overview windows: name → (seconds, chart bin seconds).
WINDOWS: dict[str, tuple[int, int]] = {
    "15m": (900, 60),
    "1h": (3600, 60),
    "24h": (86400, 3600),
    "7d": (604800, 3600 * 4),
}

#: Outcomes that end an attempt (``wait`` is queue wait, not an attempt).
ATTEMPT_OUTCOMES: tuple[str, ...] = ("succeeded", "failed", "retried", "cancelled", "lost")
#: Attempt outcomes that count as failures in the failure rate.
FAILED_OUTCOMES: tuple[str, ...] = ("failed", "retried", "lost")
#: Filtered live counts (which must visit rows) stop here.
FILTERED_COUNT_CAP = 1000
#: Job states counted live from the jobs index (not windowed).
LIVE_STATES: tuple[str, ...] = ("queued", "running", "retrying")


@dataclass(frozen=True)
class Window:
    """The time span an overview covers, and how its charts are binned."""

    name: str
    since: float
    until: float
    bin_s: int

    @property
    def minutes(self) -> bool:
        """True when the window is short enough to read the minute rollup."""
        return self.until - self.since <= 6 * 3600


def window_for(name: str | None, now: float | None = None, since: float | None = None,
               until: float | None = None) -> Window:
    """Resolve a window name (default 1h), or explicit since/until, into a :class:`Window`."""
    now = time.time() if now is None else now
    if since is not None:
        until = now if until is None else until
        span = max(60.0, until - since)
        bin_s = 60 if span <= 6 * 3600 else 3600 if span <= 3 * 86400 else 4 * 3600
        return Window("custom", since, until, bin_s)
    key = name if name in WINDOWS else "1h"
    seconds, bin_s = WINDOWS[key]
    # Charts end at the current bin so the newest bar is the one still filling.
    end = (int(now) // bin_s + 1) * bin_s
    return Window(key, end - seconds, end, bin_s)


def percentile(buckets: Sequence[int], q: float, max_ms: float | None = None) -> float | None:
    """The q-quantile (0–1) of a duration histogram, interpolated inside its bucket."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i, count in enumerate(buckets):
        if count and seen + count >= rank:
            lower = float(DURATION_BUCKETS_MS[i - 1]) if i > 0 else 0.0
            if i < len(DURATION_BUCKETS_MS):
                upper = float(DURATION_BUCKETS_MS[i])
            else:
                upper = max(lower, max_ms or lower * 2)
            if max_ms is not None:
                upper = min(upper, max(lower, max_ms))
            return lower + (upper - lower) * ((rank - seen) / count)
        seen += count
    return float(max_ms) if max_ms is not None else None


async def _series(conn: AsyncConnection, lo: int, hi: int, outcomes: Iterable[str],
                  lib: str | None, app: str | None) -> list[tuple[str, str, str]]:
    """The (lib, app, task) series with data in [lo, hi), found through the hour rollup."""
    conds = [rollup_hour.c.outcome.in_(tuple(outcomes)), rollup_hour.c.hour >= lo // 3600 * 3600,
             rollup_hour.c.hour < hi]
    if lib:
        conds.append(rollup_hour.c.lib == lib)
    if app:
        conds.append(rollup_hour.c.app == app)
    stmt = select(rollup_hour.c.lib, rollup_hour.c.app, rollup_hour.c.task).where(and_(*conds)).distinct()
    return [tuple(r) for r in await conn.execute(stmt)]  # type: ignore[misc]


def _sources(window: Window, lo: int, hi: int, outcomes: tuple[str, ...], series: list[tuple[str, str, str]],
             lib: str | None, app: str | None) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(WITH prefix, FROM/WHERE clause, time column, parameters) per statement reading [lo, hi) of the rollups."""
    base: dict[str, Any] = {"since": int(window.since), "lo": lo, "hi": hi, "bin": window.bin_s}
    marks = []
    for k, outcome in enumerate(outcomes):
        base[f"o{k}"] = outcome
        marks.append(f":o{k}")
    in_outcomes = f"m.outcome IN ({', '.join(marks)})"
    if window.minutes:
        out = []
        # The series drive a nested loop: one PK-range search per series and outcome (lib, app, task,
        # outcome, minute); a row-value IN or a bare minute range would scan the table.
        for i in range(0, len(series), 300):
            params = dict(base)
            values = []
            for k, (s_lib, s_app, s_task) in enumerate(series[i:i + 300]):
                values.append(f"(:l{k}, :a{k}, :t{k})")
                params.update({f"l{k}": s_lib, f"a{k}": s_app, f"t{k}": s_task})
            head = f"WITH s(lib, app, task) AS (VALUES {', '.join(values)}) "
            clause = ("s JOIN rollup_minute m ON m.lib = s.lib AND m.app = s.app AND m.task = s.task "
                      f"AND {in_outcomes} AND m.minute >= :lo AND m.minute < :hi")
            out.append((head, clause, "m.minute", params))
        return out
    params = dict(base, lo=lo // 3600 * 3600)
    clause = f"rollup_hour m WHERE {in_outcomes} AND m.hour >= :lo AND m.hour < :hi"
    if lib:
        clause += " AND m.lib = :lib"
        params["lib"] = lib
    if app:
        clause += " AND m.app = :app"
        params["app"] = app
    return [("", clause, "m.hour", params)]


Aggregates = tuple[list[dict[str, Any]], list[dict[str, Any]]]


async def _aggregates_between(conn: AsyncConnection, window: Window, lo: int, hi: int, outcomes: tuple[str, ...],
                              lib: str | None, app: str | None) -> Aggregates:
    """Per-bin counts by outcome, and per-task sums with histograms, over [lo, hi) of the window."""
    if hi <= lo:
        return [], []
    series = await _series(conn, lo, hi, outcomes, lib, app) if window.minutes else []
    if window.minutes and not series:
        return [], []
    sums = ", ".join(f"sum(m.{b}) AS {b}" for b in BUCKET_COLUMNS)
    bins: list[dict[str, Any]] = []
    tasks: list[dict[str, Any]] = []
    for head, clause, tcol, params in _sources(window, lo, hi, outcomes, series, lib, app):
        bins.extend(dict(r._mapping) for r in await conn.execute(text(
            f"{head}SELECT ({tcol} - :since) / :bin AS idx, m.outcome, sum(m.n) AS n FROM {clause} "
            "GROUP BY idx, m.outcome"), params))
        tasks.extend(dict(r._mapping) for r in await conn.execute(text(
            f"{head}SELECT m.lib, m.app, m.task, m.outcome, sum(m.n) AS n, sum(m.sum_ms) AS sum_ms, "
            f"max(m.max_ms) AS max_ms, {sums} FROM {clause} GROUP BY m.lib, m.app, m.task, m.outcome"), params))
    return bins, tasks


class SettledCache:
    """What was read from the settled part of a window, reused by the refreshes that follow (one per app).

    Pages keep changing only near their window's end, where jobs are finishing now. The part older
    than :data:`SETTLED_AFTER_S` (the previous hour, for hour rollups) is read once and kept until
    its bounds move or ``ttl_s`` passes, which bounds how long a straggling event into that part
    can go unseen. A 7-day overview then re-reads only its last hour or two instead of ~16,000 hour
    rows per refresh, and a 1-hour swimlane only its last minutes instead of ~6,000 jobs.
    """

    def __init__(self, ttl_s: float = 120.0, max_entries: int = 64) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[tuple[Any, ...], tuple[float, Any]] = {}

    def get(self, key: tuple[Any, ...], now: float) -> Any:
        """The value stored under ``key`` (None if absent or older than the TTL)."""
        hit = self._entries.get(key)
        if hit is None or now - hit[0] > self.ttl_s:
            return None
        return hit[1]

    def put(self, key: tuple[Any, ...], value: Any, now: float) -> None:
        """Store a value, dropping expired entries (and the oldest ones past ``max_entries``)."""
        for k in [k for k, (t, _) in self._entries.items() if now - t > self.ttl_s]:
            del self._entries[k]
        while len(self._entries) >= self.max_entries:
            del self._entries[min(self._entries, key=lambda k: self._entries[k][0])]
        self._entries[key] = (now, value)


#: Job states that can still change: a cached job in one of them is read again.
UNSETTLED_STATES: frozenset[str] = frozenset(("queued", "running", "retrying"))
#: Minute rollups and jobs older than this are treated as settled by :class:`SettledCache` (late events are rare).
SETTLED_AFTER_S = 120


async def _aggregates(conn: AsyncConnection, window: Window, outcomes: tuple[str, ...], lib: str | None,
                      app: str | None, now: float, cache: SettledCache | None = None) -> Aggregates:
    """Per-bin counts by outcome, and per-task sums with histograms, summed by the database."""
    lo, hi = int(window.since), int(window.until)
    if cache is None:
        return await _aggregates_between(conn, window, lo, hi, outcomes, lib, app)
    step = 60 if window.minutes else 3600
    settled = (int(now) - (SETTLED_AFTER_S if window.minutes else 3600)) // step * step
    cut = max(lo, min(hi, settled))
    key = (window.minutes, lo, cut, window.bin_s, outcomes, lib, app)
    old = cache.get(key, now)
    if old is None:
        old = await _aggregates_between(conn, window, lo, cut, outcomes, lib, app)
        cache.put(key, old, now)
    new = await _aggregates_between(conn, window, cut, hi, outcomes, lib, app)
    # overview() adds rows up, so a task or bin present in both parts is simply counted from both.
    return old[0] + new[0], old[1] + new[1]


def _empty_agg() -> dict[str, Any]:
    return {"n": 0, "sum_ms": 0.0, "max_ms": 0.0, "buckets": [0] * len(BUCKET_COLUMNS)}


def _add(agg: dict[str, Any], row: dict[str, Any]) -> None:
    agg["n"] += row["n"]
    agg["sum_ms"] += row["sum_ms"] or 0.0
    agg["max_ms"] = max(agg["max_ms"], row["max_ms"] or 0.0)
    buckets = agg["buckets"]
    for i, b in enumerate(BUCKET_COLUMNS):
        buckets[i] += row[b] or 0


def _stats(agg: dict[str, Any]) -> dict[str, Any]:
    n = agg["n"]
    return {
        "n": n,
        "mean_ms": (agg["sum_ms"] / n) if n else None,
        "max_ms": agg["max_ms"] if n else None,
        "p50_ms": percentile(agg["buckets"], 0.50, agg["max_ms"]),
        "p95_ms": percentile(agg["buckets"], 0.95, agg["max_ms"]),
    }


async def _live_counts(conn: AsyncConnection, lib: str | None, app: str | None) -> dict[str, int]:
    """Jobs in a non-final state right now, plus the DLQ (failed jobs), counted on the state index.

    Unfiltered counts read the (state, id) index alone, all states in one statement. A lib/app filter
    has to visit each row, so those counts stop at :data:`FILTERED_COUNT_CAP` (the page shows "1,000+").
    """
    states = (*LIVE_STATES, "failed")
    out: dict[str, int] = {s: 0 for s in states}
    if not (lib or app):
        stmt = select(jobs.c.state, func.count()).where(jobs.c.state.in_(states)).group_by(jobs.c.state)
        for state, n in await conn.execute(stmt):
            out[state] = int(n)
        return out
    parts = []
    for state in states:
        conds = [jobs.c.state == state]
        if lib:
            conds.append(jobs.c.lib == lib)
        if app:
            conds.append(jobs.c.app == app)
        sub = select(jobs.c.id).where(and_(*conds)).limit(FILTERED_COUNT_CAP + 1).subquery()
        parts.append(select(literal(state).label("state"), func.count().label("n")).select_from(sub))
    for state, n in await conn.execute(union_all(*parts)):
        out[state] = int(n)
    return out


async def _workers_online(conn: AsyncConnection, now: float, lost_after_s: float,
                          lib: str | None, app: str | None) -> dict[tuple[str, str], dict[str, int]]:
    stmt = select(workers.c.lib, workers.c.app, workers.c.state, workers.c.last_seen_at, workers.c.concurrency,
                  workers.c.inflight)
    if lib:
        stmt = stmt.where(workers.c.lib == lib)
    if app:
        stmt = stmt.where(workers.c.app == app)
    out: dict[tuple[str, str], dict[str, int]] = {}
    for w in await conn.execute(stmt):
        slot = out.setdefault((w.lib, w.app), {"online": 0, "lost": 0, "concurrency": 0, "inflight": 0})
        if w.state == "online" and now - w.last_seen_at <= lost_after_s:
            slot["online"] += 1
            slot["concurrency"] += w.concurrency or 0
            slot["inflight"] += w.inflight or 0
        elif w.state == "online":
            slot["lost"] += 1
    return out


async def _schedule_health(conn: AsyncConnection, now: float, lib: str | None, app: str | None) -> list[dict[str, Any]]:
    """Interval schedules that have not fired for two intervals (a cheap stand-in for the schedules page)."""
    stmt = select(schedules.c.lib, schedules.c.app, schedules.c.name, schedules.c.task, schedules.c.interval_s,
                  schedules.c.cron, schedules.c.last_fired_at)
    if lib:
        stmt = stmt.where(schedules.c.lib == lib)
    if app:
        stmt = stmt.where(schedules.c.app == app)
    out = []
    for s in await conn.execute(stmt):
        if s.interval_s and s.last_fired_at and now - s.last_fired_at > 2 * s.interval_s + 30:
            out.append({**dict(s._mapping), "health": "late", "late_s": now - s.last_fired_at - s.interval_s})
    return out


async def overview(conn: AsyncConnection, window: Window, *, lib: str | None = None, app: str | None = None,
                   now: float | None = None, lost_after_s: float = 30.0, top: int = 8,
                   cache: SettledCache | None = None) -> dict[str, Any]:
    """Everything the overview shows (and /api/stats returns) for one window."""
    now = time.time() if now is None else now
    bin_rows, task_rows = await _aggregates(conn, window, (*ATTEMPT_OUTCOMES, "wait"), lib, app, now, cache)
    nbins = max(1, int((window.until - window.since) // window.bin_s))
    bins: list[dict[str, Any]] = [{"t": window.since + i * window.bin_s, **{o: 0 for o in ATTEMPT_OUTCOMES}}
                                  for i in range(nbins)]
    for r in bin_rows:
        idx = int(r["idx"])
        if r["outcome"] in ATTEMPT_OUTCOMES and 0 <= idx < nbins:
            bins[idx][r["outcome"]] += int(r["n"] or 0)
    counts = {o: 0 for o in ATTEMPT_OUTCOMES}
    durations = _empty_agg()
    wait = _empty_agg()
    per_task: dict[tuple[str, str, str], dict[str, Any]] = {}
    per_app: dict[tuple[str, str], dict[str, Any]] = {}
    for r in task_rows:
        outcome = r["outcome"]
        if outcome == "wait":
            _add(wait, r)
            continue
        counts[outcome] = counts.get(outcome, 0) + r["n"]
        if outcome != "cancelled":
            _add(durations, r)
        task = per_task.setdefault((r["lib"], r["app"], r["task"]), {"dur": _empty_agg(), **{o: 0 for o in ATTEMPT_OUTCOMES}})
        task[outcome] += r["n"]
        if outcome != "cancelled":
            _add(task["dur"], r)
        la = per_app.setdefault((r["lib"], r["app"]), {"dur": _empty_agg(), **{o: 0 for o in ATTEMPT_OUTCOMES}})
        la[outcome] += r["n"]
        if outcome != "cancelled":
            _add(la["dur"], r)

    attempts = sum(counts.values())
    failures = sum(counts[o] for o in FAILED_OUTCOMES)
    for b in bins:
        total = sum(b[o] for o in ATTEMPT_OUTCOMES)
        b["total"] = total
        b["failure_rate"] = (sum(b[o] for o in FAILED_OUTCOMES) / total) if total else None

    tasks = []
    for (t_lib, t_app, t_task), agg in per_task.items():
        total = sum(agg[o] for o in ATTEMPT_OUTCOMES)
        fails = sum(agg[o] for o in FAILED_OUTCOMES)
        tasks.append({"lib": t_lib, "app": t_app, "task": t_task, "attempts": total, "failures": fails,
                      "failed": agg["failed"], "retried": agg["retried"],
                      "failure_rate": fails / total if total else None, **_stats(agg["dur"])})
    slowest = sorted((t for t in tasks if t["p95_ms"] is not None), key=lambda t: -t["p95_ms"])[:top]
    failing = sorted((t for t in tasks if t["failures"]), key=lambda t: (-t["failures"], t["task"]))[:top]

    live = await _live_counts(conn, lib, app)
    online = await _workers_online(conn, now, lost_after_s, lib, app)
    apps = []
    for key in sorted(set(per_app) | set(online)):
        agg = per_app.get(key) or {"dur": _empty_agg(), **{o: 0 for o in ATTEMPT_OUTCOMES}}
        total = sum(agg[o] for o in ATTEMPT_OUTCOMES)
        fails = sum(agg[o] for o in FAILED_OUTCOMES)
        w = online.get(key, {"online": 0, "lost": 0, "concurrency": 0, "inflight": 0})
        apps.append({"lib": key[0], "app": key[1], "attempts": total, "failures": fails,
                     "failure_rate": fails / total if total else None,
                     **{o: agg[o] for o in ATTEMPT_OUTCOMES}, **_stats(agg["dur"]),
                     "workers_online": w["online"], "workers_lost": w["lost"],
                     "concurrency": w["concurrency"], "inflight": w["inflight"]})
    libs: dict[str, dict[str, Any]] = {}
    for a in apps:
        agg_lib = libs.setdefault(a["lib"], {"lib": a["lib"], "apps": 0, "attempts": 0, "failures": 0,
                                             "workers_online": 0, **{o: 0 for o in ATTEMPT_OUTCOMES}})
        agg_lib["apps"] += 1
        for k in ("attempts", "failures", "workers_online", *ATTEMPT_OUTCOMES):
            agg_lib[k] += a[k]
    for agg_lib in libs.values():
        agg_lib["failure_rate"] = agg_lib["failures"] / agg_lib["attempts"] if agg_lib["attempts"] else None

    return {
        "window": window,
        "counts": {**counts, **{s: live[s] for s in LIVE_STATES}},
        "attempts": attempts,
        "failure_rate": failures / attempts if attempts else None,
        "throughput_per_min": attempts / max(1.0, (min(now, window.until) - window.since) / 60),
        "duration": _stats(durations),
        "wait": _stats(wait),
        "bins": bins,
        "libs": sorted(libs.values(), key=lambda x: x["lib"]),
        "apps": apps,
        "slowest": slowest,
        "failing": failing,
        "workers_online": sum(w["online"] for w in online.values()),
        "workers_lost": sum(w["lost"] for w in online.values()),
        "dlq": live["failed"],
        "count_cap": FILTERED_COUNT_CAP if (lib or app) else None,
        "unhealthy_schedules": await _schedule_health(conn, now, lib, app),
    }


#: A swimlane is divided into this many columns (about 4 px each); succeeded jobs starting in touching
#: columns are drawn as one bar, so a busy hour costs a few hundred elements, not one per job.
LANE_COLUMNS = 250
#: Runs of succeeded jobs separated by at most this many empty columns merge into one bar.
LANE_GAP_COLUMNS = 1

_LANE_COLUMNS_FETCHED = (jobs.c.id, jobs.c.worker, jobs.c.state, jobs.c.started_at, jobs.c.finished_at, jobs.c.task,
                         jobs.c.lib, jobs.c.app, jobs.c.job_id, jobs.c.duration_ms)
_LANE_KEYS = ("id", "worker", "state", "started_at", "finished_at", "task", "lib", "app", "job_id", "duration_ms")


async def swimlanes(conn: AsyncConnection, names: Sequence[str], since: float, until: float, *,
                    columns: int = LANE_COLUMNS, gap: int = LANE_GAP_COLUMNS, lookback_s: float | None = None,
                    cache: SettledCache | None = None,
                    now: float | None = None) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """What each named worker ran in [since, until): ``runs`` of succeeded jobs and every other job itself.

    A run is ``{c0, c1, n, t0, t1, task, job}``: first and last column (0 … ``columns``, may reach
    outside), how many jobs, first start and last finish, the task when all its jobs ran the same
    one (else None) and, for a run of one job, that job. Succeeded jobs starting within ``gap`` empty
    columns of a run join it. Other jobs (failed, retrying, running, lost, cancelled) come one by
    one, since those are the ones a reader opens.

    Only ``jobs_created`` indexes time, so jobs created up to ``lookback_s`` (default: 5 min, or a
    twelfth of a longer span) before ``since`` are considered; jobs running now are found through the
    state index however long ago they began. With a ``cache``, jobs first seen more than
    :data:`SETTLED_AFTER_S` ago are read once a minute (those unfinished then are re-read by id).
    The scan fetches narrow rows in index order and they are grouped here: measured on a busy hour
    (6,000 jobs), SQLite's GROUP BY with the aggregates the bars need took several times longer
    than fetching the rows.
    """
    out: dict[str, dict[str, list[dict[str, Any]]]] = {n: {"runs": [], "jobs": []} for n in names}
    if not names:
        return out
    now = time.time() if now is None else now
    span = max(1.0, until - since)
    scale = columns / span
    lo = since - (max(300.0, span / 12) if lookback_s is None else lookback_s)
    by_worker: dict[str, list[Any]] = {}

    def add(row: Any) -> None:
        bucket = by_worker.get(row[1])
        if bucket is None:
            bucket = by_worker[row[1]] = []
        bucket.append(row)

    fresh_from = lo
    if cache is not None:
        # Jobs first seen before ``cut`` are read once a minute; those not finished then are re-read by id.
        cut = int(until - SETTLED_AFTER_S) // 60 * 60
        start = int(lo) // 600 * 600
        if cut > start:
            key = ("lanes", tuple(names), start, cut)
            settled = cache.get(key, now)
            if settled is None:
                stmt = select(*_LANE_COLUMNS_FETCHED).where(
                    jobs.c.created_at >= start, jobs.c.created_at < cut, jobs.c.worker.in_(tuple(names)),
                    jobs.c.started_at.is_not(None))
                fetched = [tuple(r) for r in await conn.execute(stmt)]
                settled = (fetched, [r[0] for r in fetched if r[2] in UNSETTLED_STATES])
                cache.put(key, settled, now)
            cached_rows, unsettled = settled
            refreshed: dict[int, tuple[Any, ...]] = {}
            for i in range(0, len(unsettled), 500):
                stmt = select(*_LANE_COLUMNS_FETCHED).where(jobs.c.id.in_(unsettled[i:i + 500]))
                refreshed.update((r[0], tuple(r)) for r in await conn.execute(stmt))
            for row in cached_rows:
                if row[2] in UNSETTLED_STATES:
                    row = refreshed.get(row[0], row)
                if row[3] < until and (row[4] if row[4] is not None else until) >= since:
                    add(row)
            fresh_from = cut
    scan = select(*_LANE_COLUMNS_FETCHED).where(
        jobs.c.created_at >= fresh_from, jobs.c.created_at < until, jobs.c.worker.in_(tuple(names)),
        jobs.c.started_at < until, func.coalesce(jobs.c.finished_at, until) >= since,
    )
    for row in await conn.execute(scan):
        add(row)
    # Jobs running now that began before the scan's reach, through the state index alone.
    long_running = select(*_LANE_COLUMNS_FETCHED).where(
        jobs.c.state == "running", jobs.c.worker.in_(tuple(names)), jobs.c.started_at < lo).limit(500)
    running = {r[0] for rows_ in by_worker.values() for r in rows_ if r[2] == "running"}
    for row in await conn.execute(long_running):
        if row[0] not in running:
            add(row)

    gap1 = gap + 1
    by_start = itemgetter(3)
    for worker, rows in by_worker.items():
        lane = out.setdefault(worker, {"runs": [], "jobs": []})
        current: list[Any] | None = None  # [c0, c1, n, t0, t1, task, first row]
        rows.sort(key=by_start)  # index order is creation order: nearly sorted already
        for row in rows:
            if row[2] != "succeeded":
                lane["jobs"].append(dict(zip(_LANE_KEYS, row)))
                continue
            c0 = int((row[3] - since) * scale)
            c1 = int((row[4] - since) * scale)
            if current is not None and c0 <= current[1] + gap1:
                if c1 > current[1]:
                    current[1] = c1
                if row[4] > current[4]:
                    current[4] = row[4]
                current[2] += 1
                if row[5] != current[5]:
                    current[5] = None
            else:
                current = [c0, c1, 1, row[3], row[4], row[5], row]
                lane["runs"].append(current)  # type: ignore[arg-type]
    for lane_ in out.values():
        lane_["runs"] = [{"c0": c0, "c1": c1, "n": n, "t0": t0, "t1": t1, "task": task,
                          "job": dict(zip(_LANE_KEYS, first)) if n == 1 else None}
                         for c0, c1, n, t0, t1, task, first in lane_["runs"]]
    return out


async def lost_worker_jobs(conn: AsyncConnection, names: Sequence[str], limit: int = 200) -> list[dict[str, Any]]:
    """Jobs that were running (or were marked lost) on the given lost workers."""
    if not names:
        return []
    stmt = select(jobs.c.id, jobs.c.lib, jobs.c.app, jobs.c.job_id, jobs.c.task, jobs.c.state, jobs.c.worker,
                  jobs.c.started_at, jobs.c.attempt).where(
        jobs.c.state.in_(("running", "lost")), jobs.c.worker.in_(tuple(names)),
    ).order_by(jobs.c.id.desc()).limit(limit)
    return [dict(r._mapping) for r in await conn.execute(stmt)]
