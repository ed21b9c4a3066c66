"""The demo's arq producer: a web app's worth of ``enqueue_job`` calls, a few a second."""

from __future__ import annotations

import asyncio
import uuid

from arq import create_pool
from arq.connections import RedisSettings

import collectors
import collectors.arq

from .arq_app import QUEUE
from .pacing import Stop, calls, gap
from .settings import PREFIX, REDIS_URL


async def main() -> None:
    stop = Stop()
    pool = collectors.arq.instrument_pool(
        await create_pool(RedisSettings.from_dsn(REDIS_URL), default_queue_name=QUEUE)
    )
    try:
        for task, kwargs in calls():
            if stop:
                break
            # arq's job keys (arq:job:<id>) cannot be prefixed: the id carries the prefix instead.
            await pool.enqueue_job(task, _job_id=f"{PREFIX}-{uuid.uuid4().hex[:16]}", **kwargs)
            await asyncio.sleep(gap())
    finally:
        await pool.aclose()
        collectors.shutdown_all()


if __name__ == "__main__":
    asyncio.run(main())
