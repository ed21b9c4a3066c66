"""A deterministic, realistic stream of job events for benchmarks and reliability tests.

Jobs run interleaved (``in_flight`` at once). 90 % succeed in four events (enqueued, started, a
progress event of a type the dashboard does not know, succeeded); 10 % fail and are retried (six
events), a third of those failing for good at attempt 2. A few events come out of order and about
1 % are delivered twice. Worker heartbeats come from a handful of workers. Times end about now.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

from collectors.events import build

__all__ = ["events"]

LIBS = ("arq", "dramatiq", "taskiq", "celery")
APPS = ("shop", "billing")
TASKS = tuple(f"tasks.{kind}_{i}" for kind in ("send", "sync", "resize", "charge") for i in range(20))
WORKERS = tuple(f"worker-{i}" for i in range(8))


def _plan(rng: random.Random, job_id: str) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    """The events of one job (type, fields) and the state they should leave it in."""
    worker = rng.choice(WORKERS)
    common = {"job_id": job_id, "task": rng.choice(TASKS), "queue": "default", "host": "bench-host",
              "pid": 4000 + WORKERS.index(worker)}
    run = {"worker": worker, "max_attempts": 3}
    args = f'{{"args":[{rng.randrange(10**6)}],"kwargs":{{"user":"u{rng.randrange(10**4)}","note":"x"}}}}'
    plan: list[tuple[str, dict[str, Any]]] = [
        ("job-enqueued", {**common, "attempt": 1, "args": args, "payload_bytes": 180}),
        ("job-started", {**common, **run, "attempt": 1}),
    ]
    roll = rng.random()
    if roll < 0.9:
        plan.append(("job-progress", {**common, **run, "attempt": 1, "percent": 50}))
        plan.append(("job-succeeded", {**common, **run, "attempt": 1, "duration_ms": rng.expovariate(1 / 80)}))
        return plan, "succeeded"
    plan.append(("job-failed", {**common, **run, "attempt": 1, "final": False, "exc_type": "TimeoutError",
                                "exc_message": "upstream timed out", "retry_in_s": 5.0,
                                "duration_ms": rng.uniform(100, 3000), "traceback": "Traceback …\nTimeoutError"}))
    plan.append(("job-enqueued", {**common, "attempt": 2}))
    plan.append(("job-started", {**common, **run, "attempt": 2}))
    if roll < 0.9 + 0.1 / 3:
        plan.append(("job-failed", {**common, **run, "attempt": 2, "final": True, "exc_type": "TimeoutError",
                                    "exc_message": "upstream timed out", "duration_ms": rng.uniform(100, 3000),
                                    "payload": {"args": [1], "kwargs": {}}}))
        return plan, "failed"
    plan.append(("job-succeeded", {**common, **run, "attempt": 2, "duration_ms": rng.expovariate(1 / 80)}))
    return plan, "succeeded"


def events(n: int, seed: int = 42, in_flight: int = 200, span_s: float = 86_400.0,
           expected: dict[tuple[str, str, str], str] | None = None) -> Iterator[dict[str, Any]]:
    """Yield about ``n`` events (protocol v1 dicts); fills ``expected`` with each job's final state."""
    rng = random.Random(seed)
    start = time.time() - span_s
    step = span_s / max(n, 1)
    active: list[list[Any]] = []  # [lib, app, remaining plan]
    redeliver: list[tuple[int, dict[str, Any]]] = []
    emitted = jobs = 0
    while emitted < n or active:
        while len(active) < in_flight and emitted < n:
            lib, app = rng.choice(LIBS), rng.choice(APPS)
            job_id = f"{rng.getrandbits(128):032x}"
            plan, state = _plan(rng, job_id)
            if expected is not None:
                expected[(lib, app, job_id)] = state
            active.append([lib, app, plan])
            jobs += 1
        if not active:
            break
        i = rng.randrange(len(active))
        lib, app, plan = active[i]
        k = 1 if len(plan) > 1 and rng.random() < 0.03 else 0  # out of order: the next-but-one first
        etype, fields = plan.pop(k)
        if not plan:
            active[i] = active[-1]
            active.pop()
        ts = start + emitted * step
        event = build(etype, lib, app, ts=ts, **fields)
        emitted += 1
        yield event
        if rng.random() < 0.01:
            redeliver.append((emitted + rng.randrange(1, 20_000), dict(event)))
        if redeliver and redeliver[0][0] <= emitted:
            redeliver.sort(key=lambda r: r[0])
            while redeliver and redeliver[0][0] <= emitted:
                yield redeliver.pop(0)[1]
                emitted += 1
        if emitted % 5000 == 0:
            for w, worker in enumerate(WORKERS):
                yield build("worker-heartbeat", LIBS[w % 4], APPS[w % 2], ts=ts, worker=worker, host="bench-host",
                            pid=4000 + w, concurrency=16, inflight=rng.randrange(17), processed=emitted // 8,
                            failed=emitted // 80, rss_bytes=200 << 20, dropped=0)
    for _, event in redeliver:
        yield event

