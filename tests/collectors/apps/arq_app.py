"""An arq app for the collector tests: names come from FBTEST_PREFIX so tests can run side by side."""

from __future__ import annotations

import asyncio
import os

import redis
from arq import cron
from arq.connections import RedisSettings
from arq.worker import Retry, func

import collectors.arq

PREFIX = os.environ.get("FBTEST_PREFIX", "fbtest")
REDIS_URL = os.environ.get("FLOWERBED_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = f"{PREFIX}:arq"

_redis = redis.Redis.from_url(REDIS_URL)


async def ok(ctx, x, password=""):
    return x * 2


async def flaky(ctx, key):
    if _redis.incr(f"{PREFIX}:flaky:{key}") < 2:
        raise Retry(defer=0.2)
    return "ok"


async def always_retry(ctx):
    raise Retry(defer=0.1)


async def boom(ctx, n):
    raise ValueError(f"boom {n}")


async def sleepy(ctx, seconds):
    await asyncio.sleep(seconds)
    return seconds


async def parent(ctx):
    child = await ctx["redis"].enqueue_job("ok", 1)
    return child.job_id


async def tick(ctx):
    _redis.incr(f"{PREFIX}:ticks")


async def user_startup(ctx):
    _redis.incr(f"{PREFIX}:user-startup")


async def user_shutdown(ctx):
    _redis.incr(f"{PREFIX}:user-shutdown")


async def user_job_start(ctx):
    _redis.incr(f"{PREFIX}:user-job-start")


class Settings:
    functions = [
        ok,
        flaky,
        func(always_retry, max_tries=2),
        boom,
        sleepy,
        func(sleepy, name="too_slow", timeout=0.5),
        parent,
    ]
    cron_jobs = (
        [cron(tick, name="tick", second=set(range(60)), microsecond=0)] if os.environ.get("FBTEST_CRON") else None
    )
    queue_name = QUEUE
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    on_startup = user_startup
    on_shutdown = user_shutdown
    on_job_start = user_job_start
    allow_abort_jobs = True
    poll_delay = 0.05
    max_jobs = 4
    keep_result = 60
    health_check_interval = 1


WorkerSettings = collectors.arq.instrument(Settings, heartbeat_interval=0.5)
