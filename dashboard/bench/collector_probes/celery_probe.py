"""Celery probe: ``task.apply()`` in-process, and a ``celery worker -P solo`` on Redis.

Also the worker's app module (``celery -A celery_probe``): every name comes from ``FB_BENCH_PREFIX``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from _common import (
    REDIS_URL,
    clocked,
    drain_emitters,
    interleaved,
    mark,
    output,
    prefix,
    probe_main,
    run_profiled,
    with_collector,
)
from celery import Celery

QUEUE = f"{prefix()}:q"

app = Celery("fbbench", broker=REDIS_URL)
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    worker_enable_remote_control=False,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    # Every kombu key under this run's prefix (bindings, unacked), so cleanup finds them all.
    broker_transport_options={"global_keyprefix": f"{prefix()}:"},
)


@app.task(name="noop")
def noop(i: int) -> None:
    return None


@app.task(name="mark")
def mark_task(name: str) -> None:
    mark(name)


if with_collector():
    import collectors.celery

    collectors.celery.install(app)


def _fill(jobs: int, warmup: int) -> None:
    with app.producer_or_acquire() as producer:
        for i in range(warmup):
            noop.apply_async((i,), producer=producer)
        mark_task.apply_async(("start",), producer=producer)
        for i in range(jobs):
            noop.apply_async((i,), producer=producer)
        mark_task.apply_async(("end",), producer=producer)


def _build(pre: str, env: dict[str, str], jobs: int, warmup: int) -> tuple[list[str], Any]:
    celery_bin = os.path.join(os.path.dirname(sys.executable), "celery")
    cmd = [celery_bin, "-A", "celery_probe", "worker", "-P", "solo", "-Q", f"{pre}:q", "-l", "WARNING",
           "--without-gossip", "--without-mingle", "--without-heartbeat"]
    if os.environ.get("FB_BENCH_CELERY_EVENTS") == "1":  # Celery's own task events, which Flower needs
        cmd.append("--task-events")
    # This file runs as __main__, built before the run's prefix was set: the app is imported afresh.
    import celery_probe as app_module

    return cmd, lambda: app_module._fill(jobs, warmup)


def _request(job_id: str, i: int) -> dict[str, Any]:
    """The request dict a worker hands a task's tracer (a protocol-2 message's headers and more)."""
    return {
        "lang": "py", "task": "noop", "id": job_id, "shadow": None, "eta": None, "expires": None,
        "group": None, "group_index": None, "retries": 0, "timelimit": [None, None], "root_id": job_id,
        "parent_id": None, "argsrepr": f"({i},)", "kwargsrepr": "{}", "origin": "gen1@bench",
        "ignore_result": True, "fb_enqueued_at": 1.7e9, "fb_correlation_id": job_id,
        "properties": {"correlation_id": job_id, "reply_to": "r", "delivery_mode": 2, "delivery_tag": "t",
                       "priority": 0, "body_encoding": "base64"},
        "reply_to": "r", "correlation_id": job_id, "hostname": "bench@host",
        "delivery_info": {"exchange": "", "routing_key": QUEUE, "priority": 0, "redelivered": False},
        "args": [i], "kwargs": {}, "is_eager": False, "callbacks": None, "errbacks": None, "chain": None,
        "chord": None,
    }


def inproc(jobs: int, repeat: int, profile: bool) -> None:
    """Jobs through the tracer a worker builds for the task (``task.__trace__``), as a solo worker runs them."""
    import uuid

    from celery.app.trace import build_tracer, setup_worker_optimizations

    import collectors.celery

    collector = collectors.celery.install(app)
    setup_worker_optimizations(app, "bench@host")
    collector._trace_directly()  # what the worker_init signal does in a worker
    task = app.tasks[noop.name]  # the registered task, as the worker has it (``noop`` is a proxy)
    plain = build_tracer(task.name, task, app.loader, "bench@host", app=app)
    wrapped = collector._traced(task, plain)

    def empty(uuid: Any, args: Any, kwargs: Any, request: Any = None) -> Any:
        return plain(uuid, args, kwargs, request)

    def loop(tracer: Any, n: int) -> tuple[float, float]:
        ids = [uuid.uuid4().hex for _ in range(n)]
        requests = [_request(job_id, i) for i, job_id in enumerate(ids)]
        body = lambda: [tracer(ids[i], (i,), {}, requests[i]) for i in range(n)]  # noqa: E731
        return clocked(body)

    def without(n: int) -> tuple[float, float]:
        drain_emitters()
        return loop(plain, n)

    def with_(n: int) -> tuple[float, float]:
        drain_emitters()
        return loop(wrapped, n)

    def floor(n: int) -> tuple[float, float]:
        """A wrapper that does nothing: the call any collector at this hook point adds."""
        return loop(empty, n)

    if profile:
        run_profiled(lambda: loop(wrapped, jobs))
        return
    result = interleaved({"without": without, "floor": floor, "with": with_}, jobs, repeat)
    result["path"] = "task.__trace__ (the worker's tracer), wrapped"
    output(result)


def main(argv: list[str]) -> int:
    return probe_main("celery", argv, _build, inproc)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
