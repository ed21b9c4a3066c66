"""The yardsticks issue 3 set its collector goal by, measured on the machine at hand.

The issue measured building and queueing one job event at ~0.5 µs and serialising it at ~0.7 µs
(orjson), and set the job thread's budget at 5 µs per job. The same Python code runs 2-3 times
faster on one session's machine than on the next one's, so a figure in µs says little without the
machine's own speed beside it: this module times those two operations here, so a reader can see
how fast this machine is, and what the job thread's cost is in events built and queued.
"""

from __future__ import annotations

import collections
import json
import os
import time
import timeit
from typing import Any, Callable

#: What issue 3 measured on its machine, in µs.
ISSUE_BUILD_QUEUE_US = 0.5
ISSUE_SERIALISE_US = 0.7


def _best_us(stmt: Callable[[], Any], number: int = 200_000, repeat: int = 7) -> float:
    """Best-of per-call µs: the machine's speed, not its neighbours' load."""
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e6


def _dumps() -> tuple[Callable[[Any], bytes], str]:
    try:
        import orjson

        return orjson.dumps, "orjson"
    except ImportError:  # pragma: no cover - the dev install has orjson
        return (lambda obj: json.dumps(obj, separators=(",", ":")).encode()), "json"


def measure(cpu: int | None = None) -> dict[str, Any]:
    """Time building and queueing one job event (a dict with a timestamp, appended to a deque) and
    serialising it; on ``cpu`` when given, as the benchmark's workers are pinned."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {cpu})
    try:
        buf: collections.deque[Any] = collections.deque()
        now = time.time

        def build_and_queue() -> None:
            buf.append({
                "v": 1, "id": "0c6f3c8e9b2a4d1f8e7a6b5c4d3e2f1a", "type": "job-succeeded", "ts": now(),
                "lib": "celery", "app": "shop", "worker": "celery@web-1:4242", "job_id": "5b0e2c7d-1a3f",
                "task": "shop.tasks.send_receipt", "queue": "default", "attempt": 1, "max_attempts": 4,
                "duration_ms": 1.234, "correlation_id": "5b0e2c7d-1a3f",
            })
            buf.popleft()

        dumps, serialiser = _dumps()
        buf.append(None)
        build_and_queue()  # leaves one event in the deque, for the serialiser
        event = buf[0]
        return {
            "build_queue_us": round(_best_us(build_and_queue), 3),
            "serialise_us": round(_best_us(lambda: dumps(event)), 3),
            "serialiser": serialiser,
            "issue_build_queue_us": ISSUE_BUILD_QUEUE_US,
            "issue_serialise_us": ISSUE_SERIALISE_US,
        }
    finally:
        if cpu is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, before)
