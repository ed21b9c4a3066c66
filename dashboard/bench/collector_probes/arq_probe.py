"""arq probe: a job through the worker's own call (``run_job``'s ctx and ``wait_for``), and ``arq`` on Redis.

Also the worker's settings module (``arq arq_probe.WorkerSettings``), its queue and job ids named from
``FB_BENCH_PREFIX``. arq's job path needs Redis for everything around the call, so the in-process
figure covers the part the collector wraps: the instrumented coroutine run as ``Worker.run_job`` runs
it (a task on the loop awaited with ``asyncio.wait_for``), with ``run_job``'s ctx.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import datetime, timezone
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
    with_collector,
)
from arq.connections import RedisSettings
from arq.worker import Worker

QUEUE = f"{prefix()}:q"


async def noop(ctx: Any, i: int) -> None:
    return None


async def mark_job(ctx: Any, name: str) -> None:
    mark(name)


class _Settings:
    functions = [noop, mark_job]
    queue_name = QUEUE
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    keep_result = 0
    # arq sleeps poll_delay between polls for up to max_jobs ids: defaults (0.5 s, 10) would measure the
    # sleep, not the worker; these let a no-op run as fast as the worker can go.
    max_jobs = 100
    poll_delay = 0.002


if with_collector():
    import collectors.arq

    WorkerSettings = collectors.arq.instrument(_Settings)
else:
    WorkerSettings = _Settings


def _fill(jobs: int, warmup: int) -> None:
    from arq import create_pool

    async def go() -> None:
        pool = await create_pool(RedisSettings.from_dsn(REDIS_URL), default_queue_name=QUEUE)
        try:
            n = 0
            calls = [("noop", i) for i in range(warmup)] + [("mark_job", "start")]
            calls += [("noop", i) for i in range(jobs)] + [("mark_job", "end")]
            for function, arg in calls:
                n += 1
                # Increasing defer keeps arq's score order (ms) equal to the enqueue order.
                await pool.enqueue_job(function, arg, _job_id=f"{prefix()}:{n}", _queue_name=QUEUE)
        finally:
            await pool.aclose()

    asyncio.run(go())


def _build(pre: str, env: dict[str, str], jobs: int, warmup: int) -> tuple[list[str], Any]:
    arq_bin = os.path.join(os.path.dirname(sys.executable), "arq")
    # This file runs as __main__, built before the run's prefix was set: the app is imported afresh.
    import arq_probe as app_module

    return [arq_bin, "arq_probe.WorkerSettings"], lambda: app_module._fill(jobs, warmup)


def inproc(jobs: int, repeat: int, profile: bool) -> None:
    import collectors.arq

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    def setup(settings: Any) -> Any:
        worker = Worker(functions=settings.functions, queue_name=QUEUE, redis_settings=RedisSettings.from_dsn(REDIS_URL),
                        on_startup=getattr(settings, "on_startup", None),
                        on_shutdown=getattr(settings, "on_shutdown", None), handle_signals=False)
        function = worker.functions["noop"]
        base_ctx = worker.ctx
        timeout = worker.job_timeout_s
        enqueue_time = datetime.now(timezone.utc)

        async def many(n: int) -> None:
            for i in range(n):
                ctx = {**base_ctx, "job_id": f"j{i}", "job_try": 1, "enqueue_time": enqueue_time, "score": 0}
                task = loop.create_task(function.coroutine(ctx, i))
                await asyncio.wait_for(task, timeout)

        def run(n: int) -> tuple[float, float]:
            drain_emitters()
            return clocked(lambda: loop.run_until_complete(many(n)))

        return run

    runs = {"without": setup(_Settings), "with": setup(collectors.arq.instrument(_Settings))}
    try:
        if profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.runcall(runs["with"], jobs)
            pstats.Stats(prof, stream=sys.stderr).sort_stats(os.environ.get("FB_SORT", "tottime")).print_stats(25)
            return
        result = interleaved(runs, jobs, repeat)
        result["path"] = "the instrumented coroutine as Worker.run_job calls it (create_task + wait_for, run_job's ctx)"
        output(result)
    finally:
        loop.close()


def main(argv: list[str]) -> int:
    return probe_main("arq", argv, _build, inproc)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
