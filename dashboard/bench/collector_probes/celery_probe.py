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
from celery import Celery, signals

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
    # This file runs as __main__, built before the run's prefix was set: the app is imported afresh.
    import celery_probe as app_module

    return cmd, lambda: app_module._fill(jobs, warmup)


def _disconnect(collector: Any) -> None:
    uid = f"flowerbed-{id(app)}"
    for name in dir(signals):
        sig = getattr(signals, name)
        if hasattr(sig, "disconnect") and hasattr(sig, "name"):
            sig.disconnect(dispatch_uid=f"{uid}-{sig.name}")


def inproc(jobs: int, repeat: int, profile: bool) -> None:
    import collectors.celery

    collector = collectors.celery.install(app)
    apply = noop.apply

    def loop(n: int) -> None:
        for i in range(n):
            apply((i,))

    def without(n: int) -> tuple[float, float]:
        _disconnect(collector)
        drain_emitters()
        return clocked(lambda: loop(n))

    def with_(n: int) -> tuple[float, float]:
        collector.connect()
        drain_emitters()
        return clocked(lambda: loop(n))

    def empty_prerun(sender: Any = None, task_id: Any = None, task: Any = None, args: Any = None,
                     kwargs: Any = None, **kw: Any) -> None:
        return None

    def empty_postrun(sender: Any = None, task_id: Any = None, **kw: Any) -> None:
        return None

    def floor(n: int) -> tuple[float, float]:
        """Receivers that do nothing on the same two signals: Celery's own dispatch."""
        _disconnect(collector)
        signals.task_prerun.connect(empty_prerun, weak=False, dispatch_uid="fbbench-floor-pre")
        signals.task_postrun.connect(empty_postrun, weak=False, dispatch_uid="fbbench-floor-post")
        try:
            return clocked(lambda: loop(n))
        finally:
            signals.task_prerun.disconnect(dispatch_uid="fbbench-floor-pre")
            signals.task_postrun.disconnect(dispatch_uid="fbbench-floor-post")

    if profile:
        collector.connect()
        run_profiled(lambda: loop(jobs))
        return
    result = interleaved({"without": without, "floor": floor, "with": with_}, jobs, repeat)
    result["path"] = "task.apply(): task_prerun, task_postrun"
    output(result)


def main(argv: list[str]) -> int:
    return probe_main("celery", argv, _build, inproc)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
