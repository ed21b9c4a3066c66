"""A Dramatiq app for the collector tests, on Redis or RabbitMQ (FBTEST_BROKER).

Names come from FBTEST_PREFIX so tests can run side by side; FBTEST_POSITION=before-retries adds
the collector the way hooks.md once asked, instead of the documented one line (appended).
"""

from __future__ import annotations

import os
import time

import dramatiq
import redis
from dramatiq.middleware import Retries
from periodiq import PeriodiqMiddleware, cron

import collectors.dramatiq

PREFIX = os.environ.get("FBTEST_PREFIX", "fbtest")
REDIS_URL = os.environ.get("FLOWERBED_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("FBTEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
BROKER = os.environ.get("FBTEST_BROKER", "redis")
QUEUE = f"{PREFIX}-q"

if BROKER == "rabbitmq":
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker: dramatiq.Broker = RabbitmqBroker(url=AMQP_URL)
else:
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=REDIS_URL, namespace=PREFIX)

broker.add_middleware(PeriodiqMiddleware(skip_delay=5))
collector = collectors.dramatiq.Collector(heartbeat_interval=0.5)
if os.environ.get("FBTEST_POSITION") == "before-retries":
    broker.add_middleware(collector, before=Retries)
else:
    broker.add_middleware(collector)
dramatiq.set_broker(broker)

_redis = redis.Redis.from_url(REDIS_URL)
FAST_RETRY = {"min_backoff": 100, "max_backoff": 200}


@dramatiq.actor(queue_name=QUEUE)
def ok(x, password=""):
    return x * 2


@dramatiq.actor(queue_name=QUEUE, max_retries=3, **FAST_RETRY)
def flaky(key):
    if _redis.incr(f"{PREFIX}:flaky:{key}") < 2:
        raise ConnectionError("first try fails")


@dramatiq.actor(queue_name=QUEUE, max_retries=2, **FAST_RETRY)
def doomed(n):
    raise ValueError(f"doomed {n}")


@dramatiq.actor(queue_name=QUEUE, throws=(KeyError,), **FAST_RETRY)
def fragile(key):
    raise KeyError(key)


@dramatiq.actor(queue_name=QUEUE, max_retries=0, time_limit=500)
def slow():
    for _ in range(100):  # short sleeps: TimeLimit's exception lands between them
        time.sleep(0.05)


@dramatiq.actor(queue_name=QUEUE, max_age=200)
def aged(n):
    return n


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def sleepy(seconds):
    time.sleep(seconds)


@dramatiq.actor(queue_name=QUEUE)
def parent():
    _redis.set(f"{PREFIX}:child", ok.send(1).message_id)


@dramatiq.actor(queue_name=QUEUE, periodic=cron("* * * * *"))
def every_minute():
    _redis.incr(f"{PREFIX}:fired")
