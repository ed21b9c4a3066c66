"""Taskiq probe: ``kiq()`` + ``wait_result()`` on an in-place InMemoryBroker, and ``taskiq worker`` on Redis.

Also the worker's broker module (``taskiq worker taskiq_probe:broker``), named from ``FB_BENCH_PREFIX``.
The in-process path runs every middleware hook: pre_send, post_send (job-enqueued), pre_execute
(job-started) and post_execute (job-succeeded).
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
from taskiq import InMemoryBroker
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


def inproc(jobs: int, repeat: int, profile: bool) -> None:
    import collectors.taskiq

    plain = InMemoryBroker(await_inplace=True)
    instrumented = InMemoryBroker(await_inplace=True).with_middlewares(collectors.taskiq.Collector())

    async def _noop(i: int) -> None:
        return None

    tasks = {
        "without": plain.register_task(_noop, task_name="noop"),
        "with": instrumented.register_task(_noop, task_name="noop"),
    }
    loop = asyncio.new_event_loop()
    loop.run_until_complete(plain.startup())
    loop.run_until_complete(instrumented.startup())

    def runner(name: str) -> Any:
        task = tasks[name]

        async def many(n: int) -> None:
            for i in range(n):
                await (await task.kiq(i)).wait_result()

        def run(n: int) -> tuple[float, float]:
            drain_emitters()
            return clocked(lambda: loop.run_until_complete(many(n)))

        return run

    try:
        if profile:
            run_profiled(lambda: runner("with")(jobs))
            return
        result = interleaved({"without": runner("without"), "with": runner("with")}, jobs, repeat)
        result["path"] = "InMemoryBroker(await_inplace) kiq + wait_result: pre_send, post_send, pre_execute, post_execute"
        output(result)
    finally:
        loop.run_until_complete(instrumented.shutdown())
        loop.run_until_complete(plain.shutdown())
        loop.close()


def main(argv: list[str]) -> int:
    return probe_main("taskiq", argv, _build, inproc)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
