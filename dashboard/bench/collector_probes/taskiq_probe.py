"""Taskiq probe: a worker's ``Receiver.callback`` on prebuilt messages, and ``taskiq worker`` on Redis.

Also the worker's broker module (``taskiq worker taskiq_probe:broker``), named from ``FB_BENCH_PREFIX``.

The in-process figure is the job's own path in a worker: ``Receiver.callback`` (what ``taskiq worker``
runs, as a task per message) on message bytes built beforehand, so it runs exactly the worker-side
hooks: the broker formatter's ``loads``, which the collector instruments (the attempt's start), and
post_execute (its end). The messages carry the labels an instrumented producer stamps (enqueue time,
correlation id), in both modes, so both parse the same bytes.

Enqueueing is not the job's path, so it is measured apart and reported as ``producer_us_per_job``:
``kiq()`` on a broker whose ``kick`` sends nothing, i.e. pre_send (labels), the broker's formatter
(which the collector wraps to note the size) and post_send (job-enqueued).
"""

from __future__ import annotations

import asyncio
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
from taskiq import InMemoryBroker, TaskiqMiddleware
from taskiq_redis import ListQueueBroker

broker = ListQueueBroker(REDIS_URL, queue_name=f"{prefix()}:q")


@broker.task(task_name="noop")
async def noop(i: int) -> None:
    return None


@broker.task(task_name="mark")
async def mark_task(name: str) -> None:
    mark(name)


if with_collector():
    import collectors.taskiq

    broker.add_middlewares(collectors.taskiq.Collector())


def _fill(jobs: int, warmup: int) -> None:
    async def go() -> None:
        await broker.startup()
        try:
            for i in range(warmup):
                await noop.kiq(i)
            await mark_task.kiq("start")
            for i in range(jobs):
                await noop.kiq(i)
            await mark_task.kiq("end")
        finally:
            await broker.shutdown()

    asyncio.run(go())


def _build(pre: str, env: dict[str, str], jobs: int, warmup: int) -> tuple[list[str], Any]:
    taskiq_bin = os.path.join(os.path.dirname(sys.executable), "taskiq")
    cmd = [taskiq_bin, "worker", "taskiq_probe:broker", "--workers", "1", "--no-configure-logging"]
    # This file runs as __main__, built before the run's prefix was set: the app is imported afresh.
    import taskiq_probe as app_module

    return cmd, lambda: app_module._fill(jobs, warmup)


class _Empty(TaskiqMiddleware):
    """A middleware whose post_execute does nothing: what Taskiq's own dispatch to the one hook the
    collector has on every job costs (it begins an attempt in the formatter, not in pre_execute)."""

    def post_execute(self, message: Any, result: Any) -> None:
        return None


class _SendOnly(InMemoryBroker):
    """A broker whose ``kick`` sends nothing: what is left of ``kiq()`` is the producer's own path."""

    async def kick(self, message: Any) -> None:
        return None


async def _noop_job(i: int) -> None:
    return None


def _messages(broker: Any, task: Any, n: int) -> list[bytes]:
    """``n`` serialised messages as an instrumented producer sends them (its labels included)."""
    import time

    from collectors.taskiq import LABEL_CORRELATION, LABEL_ENQUEUED_AT

    out = []
    for i in range(n):
        message = task.kicker()._prepare_message(i)
        message.labels[LABEL_ENQUEUED_AT] = f"{time.time():.6f}"
        message.labels[LABEL_CORRELATION] = os.urandom(16).hex()
        out.append(broker.formatter.dumps(message).message)
    return out


def inproc(jobs: int, repeat: int, profile: bool) -> None:
    import collectors.taskiq

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    brokers = {
        "without": InMemoryBroker(),
        "floor": InMemoryBroker().with_middlewares(_Empty()),
        "with": InMemoryBroker().with_middlewares(collectors.taskiq.Collector()),
    }
    producers = {
        "without": _SendOnly(),
        "with": _SendOnly().with_middlewares(collectors.taskiq.Collector()),
    }
    tasks = {name: b.register_task(_noop_job, task_name="noop") for name, b in brokers.items()}
    kicks = {name: b.register_task(_noop_job, task_name="noop") for name, b in producers.items()}
    for b in (*brokers.values(), *producers.values()):
        loop.run_until_complete(b.startup())

    def worker_run(name: str) -> Any:
        broker, task = brokers[name], tasks[name]
        callback = broker.receiver.callback

        async def many(messages: list[bytes]) -> None:
            for data in messages:  # as the worker's runner does: a task per message
                await loop.create_task(callback(message=data, raise_err=False))

        def run(n: int) -> tuple[float, float]:
            messages = _messages(broker, task, n)
            drain_emitters()
            return clocked(lambda: loop.run_until_complete(many(messages)))

        return run

    def producer_run(name: str) -> Any:
        task = kicks[name]

        async def many(n: int) -> None:
            for i in range(n):
                await task.kiq(i)

        def run(n: int) -> tuple[float, float]:
            drain_emitters()
            return clocked(lambda: loop.run_until_complete(many(n)))

        return run

    try:
        if profile:
            body = producer_run("with") if os.environ.get("FB_PRODUCER") else worker_run("with")
            run_profiled(lambda: body(jobs))
            return
        result = interleaved({name: worker_run(name) for name in ("without", "floor", "with")}, jobs, repeat)
        producer = interleaved({"without": producer_run("without"), "with": producer_run("with")}, jobs, repeat)
        result["producer"] = producer
        result["producer_us_per_job"] = producer["us_per_job"]
        result["path"] = ("Receiver.callback on prebuilt messages, a task each (the worker's path): the formatter's "
                          "loads, post_execute; producer apart: kiq() with a no-op kick (pre_send, formatter, post_send)")
        output(result)
    finally:
        for b in (*brokers.values(), *producers.values()):
            loop.run_until_complete(b.shutdown())
        loop.close()


def main(argv: list[str]) -> int:
    return probe_main("taskiq", argv, _build, inproc)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
