"""A Celery app for the collector tests: queue and key names come from FBTEST_PREFIX."""

from __future__ import annotations

import os
import time

import redis
from celery import Celery, signals

import collectors.celery

PREFIX = os.environ.get("FBTEST_PREFIX", "fbtest")
REDIS_URL = os.environ.get("FLOWERBED_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = f"{PREFIX}-q"

_redis = redis.Redis.from_url(REDIS_URL)

app = Celery("fbtest", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_default_queue=QUEUE,
    result_expires=120,
    result_backend_transport_options={"global_keyprefix": f"{PREFIX}:"},
    broker_transport_options={"global_keyprefix": f"{PREFIX}:"},
    worker_prefetch_multiplier=2,
    broker_connection_retry_on_startup=True,
    beat_schedule={
        f"{PREFIX}-every-2s": {"task": "tests.collectors.apps.celery_app.tick", "schedule": 2.0},
    },
    beat_schedule_filename=os.environ.get("FBTEST_BEAT_FILE", f"/tmp/{PREFIX}-beat"),
    worker_hijack_root_logger=False,
)


@signals.task_success.connect
def users_own_handler(sender=None, **kw):
    """The user's own receiver: the collector must chain with it."""
    _redis.incr(f"{PREFIX}:user-signal")


@signals.task_prerun.connect
def users_own_prerun(sender=None, task_id=None, **kw):
    """The user's own receivers of the signals the collector stops receiving in a worker."""
    _redis.incr(f"{PREFIX}:user-prerun")


@signals.task_postrun.connect
def users_own_postrun(sender=None, task_id=None, **kw):
    _redis.incr(f"{PREFIX}:user-postrun")


class AuditedTask(app.Task):
    """A user's base class with its own __call__ (Celery then calls the task, not run())."""

    def __call__(self, *args, **kwargs):
        _redis.incr(f"{PREFIX}:audited")
        return super().__call__(*args, **kwargs)


collectors.celery.install(app, heartbeat_interval=1.0)


@app.task(base=AuditedTask)
def ok(x, password=""):
    return x * 2


@app.task(bind=True, max_retries=3)
def flaky(self, key):
    if _redis.incr(f"{PREFIX}:flaky:{key}") < 2:
        raise self.retry(exc=ConnectionError("first try fails"), countdown=0.3)
    return "ok"


@app.task(bind=True, max_retries=2)
def always_fails(self):
    raise self.retry(exc=ValueError("always broken"), countdown=0.1)


@app.task
def no_retry_fail():
    raise KeyError("no retry policy")


@app.task(soft_time_limit=0.5)
def soft_limited():
    time.sleep(3)


@app.task(time_limit=1)
def hard_limited():
    time.sleep(5)


@app.task
def sleepy(seconds):
    time.sleep(seconds)


@app.task
def parent():
    return ok.delay(20).id


@app.task
def tick():
    return None
