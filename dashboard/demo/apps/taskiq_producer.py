"""The demo's Taskiq producer: a web app's worth of ``task.kiq`` calls, a few a second."""

from __future__ import annotations

import asyncio

import collectors

from .pacing import Stop, calls, gap
from .taskiq_app import TASKS, broker


async def main() -> None:
    stop = Stop()
    await broker.startup()
    try:
        for task, kwargs in calls():
            if stop:
                break
            await TASKS[task].kiq(**kwargs)
            await asyncio.sleep(gap())
    finally:
        await broker.shutdown()
        collectors.shutdown_all()


if __name__ == "__main__":
    asyncio.run(main())
