"""Producer for the arq collector tests: ``python -m tests.collectors.apps.arq_client CMD JSON``.

``enqueue [[function, args, kwargs], …]`` prints one job id per line (``-`` when arq refused it);
``abort job_id`` asks the worker to abort that job.
"""

from __future__ import annotations

import asyncio
import json
import sys

from arq import create_pool
from arq.connections import RedisSettings
from arq.jobs import Job

import collectors.arq

from .arq_app import QUEUE, REDIS_URL


async def main(cmd: str, arg: str) -> None:
    pool = collectors.arq.instrument_pool(
        await create_pool(RedisSettings.from_dsn(REDIS_URL), default_queue_name=QUEUE)
    )
    if cmd == "enqueue":
        for function, args, kwargs in json.loads(arg):
            job = await pool.enqueue_job(function, *args, **kwargs)
            print(job.job_id if job else "-", flush=True)
    elif cmd == "abort":
        try:
            await Job(arg, pool, _queue_name=QUEUE).abort(timeout=0.05)
        except asyncio.TimeoutError:
            pass  # the abort is recorded; the test watches the worker's events
    await pool.aclose()
    collectors.shutdown_all()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
