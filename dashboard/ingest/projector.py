"""Folds a job's events into its ``jobs`` row: a pure function, so any order and any duplicates agree.

A row is a list in the column order of :data:`dashboard.store.tables.jobs` (that is what the
SQLite writer hands to ``executemany`` without copying). Every field has one merge rule that is
commutative, associative and idempotent, which is what makes ingest order-independent:

* the *rank* of an event is (attempt, phase, ts, event-id hash); phases are enqueued 0, started 1,
  terminal 3. The highest-ranked event sets ``state``, ``attempt``, ``worker`` and the fields of
  its outcome (finished_at, duration, reason, result, retry_in_s, payload); ``ver``/``veid`` keep
  its rank, so a later merge (or a row reloaded from the store) knows what outranks it;
* ``started_at`` comes from the highest attempt's latest ``job-started``; ``exc_type`` and
  ``exc_message`` from the highest-ranked ``job-failed`` (so a job waiting for its retry still
  shows why);
* ``created_at`` is the earliest event time, ``updated_at`` the latest, ``enqueued_at`` the earliest
  enqueue time seen (an event's own ``enqueued_at`` field counts);
* job attributes that do not change between events (task, queue, args, …) keep the largest value
  seen, which for a consistent producer is simply its value;
* ``lost`` is set by ingest, not by an event (:func:`mark_lost`); it keeps the rank, so only an
  event that outranks the one that made the job ``running`` replaces it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from dashboard.store.keys import job_key
from dashboard.store.tables import jobs

__all__ = [
    "COLUMNS", "PHASES", "Row", "new_row", "rank", "fold", "merge_into", "merge_rows", "mark_lost", "state_of",
    "rollup_outcome", "rollup_spec", "rollup_resolve",
]

Row = list[Any]

#: The ``jobs`` columns in table order; a row is a list in this order.
COLUMNS: tuple[str, ...] = tuple(c.name for c in jobs.columns)
_I = {name: i for i, name in enumerate(COLUMNS)}
ID, JK, LIB, APP, JOB_ID = _I["id"], _I["jk"], _I["lib"], _I["app"], _I["job_id"]
STATE, VER, VEID, ATTEMPT, WORKER = _I["state"], _I["ver"], _I["veid"], _I["attempt"], _I["worker"]
CREATED, UPDATED, ENQUEUED = _I["created_at"], _I["updated_at"], _I["enqueued_at"]
STARTED, STARTED_ATTEMPT, FINISHED = _I["started_at"], _I["started_attempt"], _I["finished_at"]
EXC_TYPE, EXC_MESSAGE, EXC_VER = _I["exc_type"], _I["exc_message"], _I["exc_ver"]
PAYLOAD, TASK = _I["payload"], _I["task"]

#: Rank phase of each job event type; unknown types have none and only touch the times.
PHASES: Mapping[str, int] = {
    "job-enqueued": 0,
    "job-started": 1,
    "job-succeeded": 3,
    "job-failed": 3,
    "job-cancelled": 3,
}

#: Attributes of the job itself: the largest value seen wins (they do not change for one job).
_STATIC = tuple(
    (name, _I[name])
    for name in ("task", "queue", "max_attempts", "args", "payload_bytes", "correlation_id", "trace_id", "eta")
)
#: Fields of the highest-ranked event's outcome; cleared when an event without them outranks it.
_OUTCOME = tuple(
    (name, _I[name]) for name in ("duration_ms", "cpu_ms", "reason", "result", "retry_in_s")
)

#: What the highest-ranked event sets, copied whole from a row that outranks (:func:`merge_rows`).
_RANKED = (_I["ver"], _I["veid"], _I["state"], _I["attempt"], _I["worker"], _I["finished_at"], _I["payload"],
           *(i for _name, i in _OUTCOME))

_ATTEMPT_MAX = (1 << 19) - 1
_TS_MAX = (1 << 42) - 1


def rank(attempt: int, phase: int, ts: float) -> int:
    """Pack (attempt, phase, ts in ms) into the 63-bit ``ver`` that orders a job's events."""
    attempt = 1 if attempt < 1 else _ATTEMPT_MAX if attempt > _ATTEMPT_MAX else attempt
    ms = int(ts * 1000)
    ms = 0 if ms < 0 else _TS_MAX if ms > _TS_MAX else ms
    return ((attempt << 2 | phase) << 42) | ms


def state_of(event: Mapping[str, Any]) -> str | None:
    """The state a job event puts its job in, or ``None`` for an unknown type."""
    etype = event["type"]
    if etype == "job-started":
        return "running"
    if etype == "job-succeeded":
        return "succeeded"
    if etype == "job-failed":
        return "failed" if event.get("final") else "retrying"
    if etype == "job-enqueued":
        return "retrying" if (event.get("attempt") or 1) > 1 else "queued"
    if etype == "job-cancelled":
        return "cancelled"
    return None


def new_row(lib: str, app: str, job_id: str, ts: float, jk: int | None = None) -> Row:
    """An empty row for a job first seen at ``ts`` (``id`` is assigned by the store's writer).

    ``jk`` is :func:`~dashboard.store.keys.job_key` of the natural key, when the caller has it already.
    """
    row: Row = [None] * len(COLUMNS)
    row[JK] = job_key(lib, app, job_id) if jk is None else jk
    row[LIB], row[APP], row[JOB_ID] = lib, app, job_id
    row[STATE], row[VER], row[VEID] = "queued", 0, 0
    row[CREATED] = row[UPDATED] = ts
    return row


def fold(row: Sequence[Any] | None, events: Iterable[tuple[int, Mapping[str, Any]]]) -> Row:
    """Return ``row`` (or a new row) with every ``(event-id hash, event)`` merged in; inputs are left alone."""
    out: Row | None = list(row) if row is not None else None
    for eid, event in events:
        if out is None:
            out = new_row(event["lib"], event["app"], event["job_id"], event["ts"])
        merge_into(out, eid, event)
    if out is None:
        raise ValueError("fold() needs a row or at least one event")
    return out


def merge_into(row: Row, eid: int, event: Mapping[str, Any]) -> None:
    """Merge one event into ``row`` in place (the hot path of :func:`fold`)."""
    get = event.get
    ts = event["ts"]
    if ts < row[CREATED]:
        row[CREATED] = ts
    if ts > row[UPDATED]:
        row[UPDATED] = ts
    for name, i in _STATIC:
        value = get(name)
        if value is not None:
            current = row[i]
            if current is None or value > current:
                row[i] = value
    etype = event["type"]
    enqueued = get("enqueued_at")
    if etype == "job-enqueued" and (enqueued is None or ts < enqueued):
        enqueued = ts
    if enqueued is not None and (row[ENQUEUED] is None or enqueued < row[ENQUEUED]):
        row[ENQUEUED] = enqueued
    phase = PHASES.get(etype)
    if phase is None:
        return
    attempt = event.get("attempt") or 1
    ver = rank(attempt, phase, ts)
    if etype == "job-started":
        if row[STARTED_ATTEMPT] is None or (attempt, ts) > (row[STARTED_ATTEMPT], row[STARTED]):
            row[STARTED_ATTEMPT], row[STARTED] = attempt, ts
    elif etype == "job-failed":
        exc = (ver, event.get("exc_type") or "", event.get("exc_message") or "")
        if row[EXC_VER] is None or exc > (row[EXC_VER], row[EXC_TYPE] or "", row[EXC_MESSAGE] or ""):
            row[EXC_VER], row[EXC_TYPE], row[EXC_MESSAGE] = ver, event.get("exc_type"), event.get("exc_message")
    if (ver, eid) <= (row[VER], row[VEID]):
        return
    row[VER], row[VEID] = ver, eid
    row[STATE] = state_of(event)
    row[ATTEMPT] = attempt
    row[WORKER] = event.get("worker")
    row[FINISHED] = ts if phase == 3 else None
    for name, i in _OUTCOME:
        row[i] = event.get(name)
    payload = event.get("payload")
    row[PAYLOAD] = None if payload is None else orjson.dumps(payload, option=orjson.OPT_SORT_KEYS).decode()


def merge_rows(row: Row, other: Sequence[Any]) -> None:
    """Merge ``other`` (a row folded from some of the job's events) into ``row`` in place.

    The same rules as :func:`merge_into`, applied to what a fold kept, so folding a batch's events
    apart and merging the result gives exactly the row that merging each event would: SQLite
    ingest folds each job's events where they are decoded and merges once per job where it writes.
    """
    if other[CREATED] < row[CREATED]:
        row[CREATED] = other[CREATED]
    if other[UPDATED] > row[UPDATED]:
        row[UPDATED] = other[UPDATED]
    for _name, i in _STATIC:
        value = other[i]
        if value is not None:
            current = row[i]
            if current is None or value > current:
                row[i] = value
    enqueued = other[ENQUEUED]
    if enqueued is not None and (row[ENQUEUED] is None or enqueued < row[ENQUEUED]):
        row[ENQUEUED] = enqueued
    attempt = other[STARTED_ATTEMPT]
    if attempt is not None and (
        row[STARTED_ATTEMPT] is None or (attempt, other[STARTED]) > (row[STARTED_ATTEMPT], row[STARTED])
    ):
        row[STARTED_ATTEMPT], row[STARTED] = attempt, other[STARTED]
    exc_ver = other[EXC_VER]
    if exc_ver is not None and (
        row[EXC_VER] is None
        or (exc_ver, other[EXC_TYPE] or "", other[EXC_MESSAGE] or "")
        > (row[EXC_VER], row[EXC_TYPE] or "", row[EXC_MESSAGE] or "")
    ):
        row[EXC_VER], row[EXC_TYPE], row[EXC_MESSAGE] = exc_ver, other[EXC_TYPE], other[EXC_MESSAGE]
    if (other[VER], other[VEID]) <= (row[VER], row[VEID]):
        return
    for i in _RANKED:
        row[i] = other[i]


def mark_lost(row: Sequence[Any]) -> Row:
    """Return ``row`` in state ``lost`` (its worker stopped heartbeating); the rank is kept."""
    out = list(row)
    out[STATE] = "lost"
    return out


def rollup_spec(event: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """What one event adds to the rollups, as far as the event alone tells; ``None`` if nothing.

    ``(ts, outcome, ms)`` when the event carries its own figure, else ``(ts, outcome, None,
    attempt)``: :func:`rollup_resolve` then takes the figure from the job's merged row. The split
    lets SQLite ingest compute this where the events are decoded, and finish it where the row is.
    """
    etype = event["type"]
    ts = event["ts"]
    if etype == "job-started":
        enqueued = event.get("enqueued_at")
        if enqueued is not None:
            wait = (ts - enqueued) * 1000.0
            return ts, "wait", (wait if wait > 0 else 0.0)
        attempt = event.get("attempt") or 1
        return (ts, "wait", None, 1) if attempt == 1 else None
    if etype == "job-succeeded":
        outcome = "succeeded"
    elif etype == "job-failed":
        outcome = "failed" if event.get("final") else "retried"
    elif etype == "job-cancelled":
        outcome = "cancelled"
    else:
        return None
    ms = event.get("duration_ms")
    if ms is not None:
        return ts, outcome, ms
    return ts, outcome, None, event.get("attempt") or 1


def rollup_resolve(row: Sequence[Any], spec: Sequence[Any]) -> tuple[float, str, float | None] | None:
    """``(ts, outcome, ms)`` of a :func:`rollup_spec`, given its job's merged row.

    Terminal events without a duration take the time since that attempt started; ``job-started``
    without an enqueue time takes the wait since the job's first enqueue (attempt 1 only).
    """
    if len(spec) == 3:
        return spec  # type: ignore[return-value]
    ts, outcome, _ms, attempt = spec
    if outcome == "wait":
        enqueued = row[ENQUEUED]
        if enqueued is None:
            return None
        wait = (ts - enqueued) * 1000.0
        return ts, outcome, (wait if wait > 0 else 0.0)
    if row[STARTED] is not None and row[STARTED_ATTEMPT] == attempt:
        ms = (ts - row[STARTED]) * 1000.0
        return ts, outcome, (ms if ms > 0 else 0.0)
    return ts, outcome, None


def rollup_outcome(row: Sequence[Any], event: Mapping[str, Any]) -> tuple[str, float | None] | None:
    """The rollup outcome and milliseconds one new event adds, given its job's merged row, or ``None``.

    Terminal events add their duration (or, without one, the time since that attempt started);
    ``job-started`` adds the queue wait of its attempt under the outcome ``wait``.
    """
    spec = rollup_spec(event)
    if spec is None:
        return None
    done = rollup_resolve(row, spec)
    return None if done is None else (done[1], done[2])
