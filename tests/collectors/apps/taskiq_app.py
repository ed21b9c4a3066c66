"""A Taskiq app for the collector tests: names come from FBTEST_PREFIX so tests can run side by side."""

from __future__ import annotations

import asyncio
import os
import time

import redis
from taskiq import SmartRetryMiddleware, TaskiqMiddleware
from taskiq.schedule_sources import LabelScheduleSource
from taskiq_redis import ListRedisScheduleSource, RedisAsyncResultBackend, RedisStreamBroker

import collectors.taskiq

PREFIX = os.environ.get("FBTEST_PREFIX", "fbtest")
REDIS_URL = os.environ.get("FLOWERBED_REDIS_URL", "redis://127.0.0.1:6379/0")
SCHEDULE_EVERY = int(os.environ.get("FBTEST_SCHEDULE_EVERY", "2"))

_redis = redis.Redis.from_url(REDIS_URL)


class UserMiddleware(TaskiqMiddleware):
    """The user's own middleware: the collector must leave it working."""

    def post_execute(self, message, result) -> None:
        _redis.incr(f"{PREFIX}:user-mw")


broker = RedisStreamBroker(
    REDIS_URL, queue_name=f"{PREFIX}:queue", consumer_group_name=f"{PREFIX}:group"
).with_result_backend(RedisAsyncResultBackend(REDIS_URL, prefix_str=PREFIX, result_ex_time=120))
broker.add_middlewares(
    SmartRetryMiddleware(default_retry_count=3, default_delay=0.2),
    UserMiddleware(),
    collectors.taskiq.Collector(heartbeat_interval=1.0),
)

redis_source = ListRedisScheduleSource(REDIS_URL, prefix=f"{PREFIX}:schedule")
scheduler = collectors.taskiq.InstrumentedScheduler(
    broker, sources=[LabelScheduleSource(broker), redis_source]
)


@broker.task
async def ok(x: int) -> int:
    return x * 2


@broker.task
def ok_sync(x: int, password: str = "") -> int:
    return x + 1


@broker.task(retry_on_error=True, max_retries=3)
async def flaky(key: str) -> str:
    if _redis.incr(f"{PREFIX}:flaky:{key}") < 2:
        raise ConnectionError("first try fails")
    return "ok"


@broker.task(retry_on_error=True, max_retries=2)
async def always_fails() -> None:
    raise ValueError("always broken")


@broker.task
async def no_retry_fail() -> None:
    raise KeyError("no retry policy")


@broker.task(timeout=0.5)
async def too_slow() -> None:
    await asyncio.sleep(5)


@broker.task
async def blocks_loop() -> None:
    time.sleep(0.6)


@broker.task
async def parent() -> str:
    child = await ok.kiq(20)
    return child.task_id


@broker.task(schedule=[{"interval": SCHEDULE_EVERY, "schedule_id": f"{PREFIX}-tick"}])
async def tick() -> None:
    return None


@broker.task(schedule=[{"cron": "* * * * *"}])
async def minutely() -> None:
    return None


@broker.task
async def from_redis_source() -> None:
    return None
