"""Applies the low-volume parts of a batch: workers, schedules, schedulers, quarantine, counters.

These tables see a few rows per second, so clarity wins over speed: each key is read (locked on
PostgreSQL), merged in Python and written back, through a tiny :class:`Executor` that both stores
provide (sqlite3 directly, SQLAlchemy's sync facade on PostgreSQL). The SQL is written once, with
``:name`` parameters, in the dialect both databases share.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from dashboard.store.tables import meta, quarantine, schedule_fires, schedulers, schedules, workers

__all__ = ["Executor", "apply_others", "add_counters", "insert_quarantine", "set_workers_lost"]

Record = dict[str, Any]


class Executor(Protocol):
    """Runs one statement with ``:name`` parameters inside the batch's transaction."""

    #: ``sqlite`` or ``postgresql``.
    dialect: str

    def rows(self, sql: str, params: Mapping[str, Any]) -> list[Sequence[Any]]: ...

    def run(self, sql: str, params: Mapping[str, Any]) -> int: ...


_WORKER_STATS = ("host", "pid", "concurrency", "inflight", "processed", "failed", "loop_lag_ms",
                 "rss_bytes", "dropped")
_WORKER_KNOWN = frozenset(_WORKER_STATS) | {"v", "id", "type", "ts", "lib", "app", "worker", "queues"}
_SCHEDULE_SPEC = ("task", "cron", "interval_s", "timezone")
_SCHEDULE_KNOWN = frozenset(_SCHEDULE_SPEC) | {"v", "id", "type", "ts", "lib", "app", "schedule", "host", "pid"}


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def _upsert(ex: Executor, table: Any, key: Record, merge: Callable[[Record | None], Record]) -> None:
    """Read-merge-write one row; an insert that loses a race on PostgreSQL is retried as an update."""
    cols = [c.name for c in table.columns if c.name != "id"]
    where = " AND ".join(f"{k} = :{k}" for k in key)
    select = f"SELECT {', '.join(cols)} FROM {table.name} WHERE {where}"
    if ex.dialect == "postgresql":
        select += " FOR UPDATE"
    found = ex.rows(select, key)
    if not found:
        new = merge(None)
        sql = (f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)}) "
               f"ON CONFLICT ({', '.join(key)}) DO NOTHING")
        if ex.run(sql, {c: new.get(c) for c in cols}):
            return
        found = ex.rows(select, key)
    new = merge(dict(zip(cols, found[0])))
    sets = ", ".join(f"{c} = :{c}" for c in cols if c not in key)
    ex.run(f"UPDATE {table.name} SET {sets} WHERE {where}", {c: new.get(c) for c in cols})


def _worker_merge(events: list[Record]) -> Callable[[Record | None], Record]:
    def merge(row: Record | None) -> Record:
        first = events[0]
        row = dict(row) if row else {"lib": first["lib"], "app": first["app"], "worker": first["worker"],
                                     "state": "online", "last_seen_at": first["ts"]}
        for ev in events:  # sorted by time: the newest event sets the state
            ts, etype = ev["ts"], ev["type"]
            if etype == "worker-online" and (row.get("started_at") is None or ts < row["started_at"]):
                row["started_at"] = ts
            if ts < row["last_seen_at"]:
                continue
            row["last_seen_at"] = ts
            row["state"] = "offline" if etype == "worker-offline" else "online"
            if etype == "worker-offline":
                row["stopped_at"] = ts
            for name in _WORKER_STATS:
                if ev.get(name) is not None:
                    row[name] = ev[name]
            if ev.get("queues") is not None:
                row["queues"] = _dump(ev["queues"])
            rest = {k: v for k, v in ev.items() if k not in _WORKER_KNOWN}
            if rest:
                row["extra"] = _dump(rest)
        return row

    return merge


def _scheduler_merge(events: list[Record]) -> Callable[[Record | None], Record]:
    def merge(row: Record | None) -> Record:
        first = events[0]
        row = dict(row) if row else {"lib": first["lib"], "app": first["app"], "scheduler": first["scheduler"],
                                     "last_seen_at": first["ts"]}
        for ev in events:
            ts = ev["ts"]
            if row.get("started_at") is None or ts < row["started_at"]:
                row["started_at"] = ts
            if ts >= row["last_seen_at"]:
                row["last_seen_at"] = ts
                for name in ("host", "pid"):
                    if ev.get(name) is not None and ev["type"] == "scheduler-heartbeat":
                        row[name] = ev[name]
        return row

    return merge


def _schedule_merge(registered: list[Record], fired: list[Record]) -> Callable[[Record | None], Record]:
    def merge(row: Record | None) -> Record:
        first = (registered or fired)[0]
        row = dict(row) if row else {"lib": first["lib"], "app": first["app"], "name": first["schedule"], "fires": 0}
        for ev in registered:
            if row.get("registered_at") is None or ev["ts"] >= row["registered_at"]:
                row["registered_at"] = ev["ts"]
                for name in _SCHEDULE_SPEC:
                    row[name] = ev.get(name)
                rest = {k: v for k, v in ev.items() if k not in _SCHEDULE_KNOWN}
                row["extra"] = _dump(rest) if rest else None
        for ev in fired:
            row["fires"] = (row.get("fires") or 0) + 1
            if row.get("last_fired_at") is None or ev["ts"] > row["last_fired_at"]:
                row["last_fired_at"] = ev["ts"]
            slot = ev.get("slot")
            if slot is not None and (row.get("last_slot") is None or slot > row["last_slot"]):
                row["last_slot"] = slot
            if row.get("task") is None and ev.get("task") is not None:
                row["task"] = ev["task"]
        return row

    return merge


def _grouped(events: Iterable[Record], field: str) -> dict[tuple[str, str, str], list[Record]]:
    out: dict[tuple[str, str, str], list[Record]] = {}
    for ev in events:
        out.setdefault((ev["lib"], ev["app"], ev[field]), []).append(ev)
    for evs in out.values():
        evs.sort(key=lambda e: (e["ts"], e["id"]))
    return out


def apply_others(ex: Executor, events: Sequence[Record]) -> set[str]:
    """Apply worker, schedule and scheduler events; returns the live-update topics they touched."""
    topics: set[str] = set()
    by_type: dict[str, list[Record]] = {}
    for ev in events:
        by_type.setdefault(ev["type"], []).append(ev)
    worker_events = [e for t in ("worker-online", "worker-heartbeat", "worker-offline") for e in by_type.get(t, ())]
    for (lib, app, name), evs in sorted(_grouped(worker_events, "worker").items()):
        _upsert(ex, workers, {"lib": lib, "app": app, "worker": name}, _worker_merge(evs))
        topics.add("workers")
    fired_new = []
    fire_sql = (f"INSERT INTO {schedule_fires.name} (eid, lib, app, schedule, slot, fired_at, scheduler, job_id) "
                "VALUES (:eid, :lib, :app, :schedule, :slot, :fired_at, :scheduler, :job_id) "
                "ON CONFLICT (eid) DO NOTHING")
    for ev in by_type.get("schedule-fired", ()):
        params = {"eid": ev["id"][:64], "lib": ev["lib"], "app": ev["app"], "schedule": ev["schedule"],
                  "slot": ev.get("slot"), "fired_at": ev["ts"], "scheduler": ev.get("scheduler"),
                  "job_id": ev.get("job_id")}
        if ex.run(fire_sql, params):  # a redelivered fire is not counted twice
            fired_new.append(ev)
    registered = _grouped(by_type.get("schedule-registered", ()), "schedule")
    fired = _grouped(fired_new, "schedule")
    for key in sorted(set(registered) | set(fired)):
        lib, app, name = key
        _upsert(ex, schedules, {"lib": lib, "app": app, "name": name},
                _schedule_merge(registered.get(key, []), fired.get(key, [])))
        topics.add("schedules")
    sched_events = by_type.get("scheduler-heartbeat", []) + [e for e in fired_new if e.get("scheduler")]
    for (lib, app, name), evs in sorted(_grouped(sched_events, "scheduler").items()):
        _upsert(ex, schedulers, {"lib": lib, "app": app, "scheduler": name}, _scheduler_merge(evs))
        topics.add("schedules")
    return topics


def set_workers_lost(ex: Executor, lost: Iterable[tuple[str, str, str, float]]) -> None:
    """Mark workers ``lost`` unless an event newer than the one the decision was based on arrived."""
    sql = (f"UPDATE {workers.name} SET state = 'lost' WHERE lib = :lib AND app = :app AND worker = :worker "
           "AND state = 'online' AND last_seen_at <= :seen")
    for lib, app, name, seen in lost:
        ex.run(sql, {"lib": lib, "app": app, "worker": name, "seen": seen})


def insert_quarantine(ex: Executor, rows: Iterable[tuple[str, float, str, str | None, int | None]]) -> None:
    """Store rejected entries with their reason."""
    sql = (f"INSERT INTO {quarantine.name} (stream_id, received_at, reason, raw, raw_bytes) "
           "VALUES (:stream_id, :received_at, :reason, :raw, :raw_bytes)")
    for sid, received, reason, raw, size in rows:
        ex.run(sql, {"stream_id": sid, "received_at": received, "reason": reason, "raw": raw, "raw_bytes": size})


def add_counters(ex: Executor, counters: Mapping[str, int]) -> None:
    """Add to the ``meta`` counters (events_ingested, quarantined, duplicates)."""
    sql = (f"INSERT INTO {meta.name} (key, value) VALUES (:key, :value) "
           f"ON CONFLICT (key) DO UPDATE SET value = {meta.name}.value + excluded.value")
    for key, value in sorted(counters.items()):
        if value:
            ex.run(sql, {"key": key, "value": value})
