"""A deterministic, realistic stream of job events for benchmarks and reliability tests.

Jobs run interleaved (``in_flight`` at once). 90 % succeed in four events (enqueued, started, a
progress event of a type the dashboard does not know, succeeded); 10 % fail and are retried (six
events), a third of those failing for good at attempt 2. A few events come out of order and about
1 % are delivered twice. Each of a handful of workers runs one library's jobs of one app, which
that app's producer enqueued (the retry is enqueued by the worker), and sends heartbeats. Times end
about now.

:func:`events` yields the events as dicts; :func:`rows` yields the same events queued as a worker's
collector queues them (job events as rows, a quick job's start inside its success).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from collectors.emitter import row_builder
from collectors.events import ROW_COLS, EventType, build, set_extra

__all__ = ["events", "rows", "FOLD_MS"]

LIBS = ("arq", "dramatiq", "taskiq", "celery")
APPS = ("shop", "billing")
TASKS = tuple(f"tasks.{kind}_{i}" for kind in ("send", "sync", "resize", "charge") for i in range(20))
WORKERS = tuple(f"worker-{i}" for i in range(8))
HOST = "bench-host"
#: An attempt that succeeds within this many ms has its start sent inside its success: the emitter
#: sends every 100 ms when busy (a quiet one waits up to 500 ms), and a job still running by then has
#: its start sent alone.
FOLD_MS = 100.0

#: One planned event: type, fields, and whether it is half of a quick attempt (see :data:`FOLD_MS`).
Step = tuple[str, dict[str, Any], bool]


def _sender(w: int, producer: bool = False) -> dict[str, Any]:
    """The identity fields of worker ``w``'s events, or of its app's producer (a process of its own)."""
    if producer:
        return {"host": HOST, "pid": 5000 + w, "worker": f"producer-{w}"}
    return {"host": HOST, "pid": 4000 + w, "worker": WORKERS[w]}


def _lib_app(w: int) -> tuple[str, str]:
    """The library and app worker ``w`` runs (one each, as a real worker process does)."""
    return LIBS[w % len(LIBS)], APPS[w // len(LIBS) % len(APPS)]


def _plan(rng: random.Random, job_id: str, w: int) -> tuple[list[Step], str]:
    """The events of one job run by worker ``w`` and the state they should leave it in."""
    job = {"job_id": job_id, "task": rng.choice(TASKS), "queue": "default"}
    run = {**job, **_sender(w), "max_attempts": 3}
    args = f'{{"args":[{rng.randrange(10**6)}],"kwargs":{{"user":"u{rng.randrange(10**4)}","note":"x"}}}}'
    plan: list[tuple[str, dict[str, Any]]] = [
        ("job-enqueued", {**job, **_sender(w, producer=True), "attempt": 1, "args": args, "payload_bytes": 180}),
        ("job-started", {**run, "attempt": 1}),
    ]
    roll = rng.random()
    if roll < 0.9:
        plan.append(("job-progress", {**run, "attempt": 1, "percent": 50}))
        plan.append(("job-succeeded", {**run, "attempt": 1, "duration_ms": rng.expovariate(1 / 80)}))
        return _quick(plan), "succeeded"
    plan.append(("job-failed", {**run, "attempt": 1, "final": False, "exc_type": "TimeoutError",
                                "exc_message": "upstream timed out", "retry_in_s": 5.0,
                                "duration_ms": rng.uniform(100, 3000), "traceback": "Traceback …\nTimeoutError"}))
    plan.append(("job-enqueued", {**job, **_sender(w), "attempt": 2}))
    plan.append(("job-started", {**run, "attempt": 2}))
    if roll < 0.9 + 0.1 / 3:
        plan.append(("job-failed", {**run, "attempt": 2, "final": True, "exc_type": "TimeoutError",
                                    "exc_message": "upstream timed out", "duration_ms": rng.uniform(100, 3000),
                                    "payload": {"args": [1], "kwargs": {}}}))
        return _quick(plan), "failed"
    plan.append(("job-succeeded", {**run, "attempt": 2, "duration_ms": rng.expovariate(1 / 80)}))
    return _quick(plan), "succeeded"


def _quick(plan: list[tuple[str, dict[str, Any]]]) -> list[Step]:
    """Mark the start and success of each attempt that succeeds within :data:`FOLD_MS`: a collector
    sends those two as one row."""
    quick = {f["attempt"] for t, f in plan if t == EventType.JOB_SUCCEEDED and f["duration_ms"] < FOLD_MS}
    return [(t, f, t in (EventType.JOB_STARTED, EventType.JOB_SUCCEEDED) and f["attempt"] in quick)
            for t, f in plan]


def _timeline(n: int, seed: int, in_flight: int, span_s: float,
              expected: dict[tuple[str, str, str], str] | None) -> Iterator[tuple[dict[str, Any], bool, bool]]:
    """Yield about ``n`` events, each with whether it is half of a quick attempt and whether it is a
    second delivery; fills ``expected`` with each job's final state."""
    rng = random.Random(seed)
    start = time.time() - span_s
    step = span_s / max(n, 1)
    active: list[list[Any]] = []  # [lib, app, remaining plan]
    redeliver: list[tuple[int, dict[str, Any]]] = []
    emitted = 0
    while emitted < n or active:
        while len(active) < in_flight and emitted < n:
            w = rng.randrange(len(WORKERS))
            lib, app = _lib_app(w)
            job_id = f"{rng.getrandbits(128):032x}"
            plan, state = _plan(rng, job_id, w)
            if expected is not None:
                expected[(lib, app, job_id)] = state
            active.append([lib, app, plan])
        if not active:
            break
        i = rng.randrange(len(active))
        lib, app, plan = active[i]
        k = 1 if len(plan) > 1 and rng.random() < 0.03 else 0  # out of order: the next-but-one first
        etype, fields, quick = plan.pop(k)
        if not plan:
            active[i] = active[-1]
            active.pop()
        ts = start + emitted * step
        event = build(etype, lib, app, ts=ts, **fields)
        emitted += 1
        yield event, quick, False
        if rng.random() < 0.01:
            redeliver.append((emitted + rng.randrange(1, 20_000), dict(event)))
        if redeliver and redeliver[0][0] <= emitted:
            redeliver.sort(key=lambda r: r[0])
            while redeliver and redeliver[0][0] <= emitted:
                yield redeliver.pop(0)[1], False, True
                emitted += 1
        if emitted % 5000 == 0:
            for w in range(len(WORKERS)):
                yield build("worker-heartbeat", *_lib_app(w), ts=ts, **_sender(w), concurrency=16,
                            inflight=rng.randrange(17), processed=emitted // 8, failed=emitted // 80,
                            rss_bytes=200 << 20, dropped=0), False, False
    for _, event in redeliver:
        yield event, False, True


def events(n: int, seed: int = 42, in_flight: int = 200, span_s: float = 86_400.0,
           expected: dict[tuple[str, str, str], str] | None = None) -> Iterator[dict[str, Any]]:
    """Yield about ``n`` events (protocol v1 dicts); fills ``expected`` with each job's final state."""
    for event, _, _ in _timeline(n, seed, in_flight, span_s, expected):
        yield event


#: Fields a row's sender carries once per entry (or that a row never holds: the id is the entry's).
_HEAD = frozenset({"v", "id", "lib", "app", "host", "pid", "worker"})
_COLUMN = {name: i for i, name in enumerate(ROW_COLS) if name != "x"}
Identity = tuple[str, str, str, int, str]


@row_builder
def _row(item: tuple[Any, ...]) -> tuple[Identity, list[Any]]:
    """A job event as its collector's row (run on the emitter's thread, as a collector's builder is)."""
    _, identity, event = item
    row: list[Any] = [None] * len(ROW_COLS)
    for name, value in event.items():
        i = _COLUMN.get(name)
        if i is not None:
            row[i] = value
        elif name not in _HEAD:
            set_extra(row, name, value)
    return identity, row


def rows(n: int, seed: int = 42, in_flight: int = 200, span_s: float = 86_400.0,
         counts: Counter[str] | None = None) -> Iterator[Any]:
    """Yield what a worker's collector queues for the events :func:`events` yields with the same
    arguments: deferred rows for job events, event dicts for failures and heartbeats.

    A quick attempt's start is not queued: its success carries ``started_at`` (a start that comes
    after its success, out of order, goes alone). A job event delivered twice is not queued twice:
    with rows a second delivery is a whole entry resent (see ``bench.ingest``), so it is added to
    ``counts["resend"]``, the events the caller should resend; ``counts["folded"]`` counts the starts.
    """
    counts = Counter() if counts is None else counts
    senders: dict[Identity, Identity] = {}  # one tuple per sender, as a collector's Recorder keeps it
    held: dict[tuple[str, str, str, int], dict[str, Any] | None] = {}  # quick starts; None: its success came first
    for event, quick, again in _timeline(n, seed, in_flight, span_s, None):
        etype = event["type"]
        if "job_id" not in event or etype == EventType.JOB_FAILED:
            yield event  # sent as single events, second deliveries included
            continue
        if again:
            counts["resend"] += 1
            continue
        if quick:
            key = (event["lib"], event["app"], event["job_id"], event["attempt"])
            if etype == EventType.JOB_STARTED and key not in held:
                held[key] = event
                continue
            start = held.pop(key, None)
            if etype == EventType.JOB_SUCCEEDED:
                if start is None:
                    held[key] = None
                else:
                    event["started_at"] = start["ts"]
                    counts["folded"] += 1
        identity = (event["lib"], event["app"], event["host"], event["pid"], event["worker"])
        yield _row, senders.setdefault(identity, identity), event
