"""Many jobs cut off by their timeout, in one burst worker: ``python -m tests.collectors.apps.arq_timeouts N``.

Each must be reported as a timeout, never as a shutdown (redis-py's own zero-timeout reads cancel the
worker's main task for an instant, which once fooled the collector).
"""

from __future__ import annotations

import asyncio
import sys

from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import create_worker, func

import collectors
import collectors.arq

from .arq_app import QUEUE, REDIS_URL


async def stuck(ctx):
    await asyncio.sleep(30)


class Settings:
    functions = [func(stuck, timeout=0.1)]
    queue_name = QUEUE
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    poll_delay = 0.01
    max_jobs = 10
    burst = True
    handle_signals = False


async def main(count: int) -> None:
    pool = await create_pool(Settings.redis_settings, default_queue_name=QUEUE)
    for _ in range(count):
        await pool.enqueue_job("stuck")
    await pool.aclose()
    worker = create_worker(collectors.arq.instrument(Settings))
    await worker.async_run()
    await worker.close()
    collectors.shutdown_all()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
