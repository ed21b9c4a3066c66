"""What every demo process reads from its environment, so the runner decides names in one place."""

from __future__ import annotations

import os

#: Redis holding the brokers' keys and the event stream (the runner sets it).
REDIS_URL = os.environ.get("FLOWERBED_REDIS_URL", "redis://127.0.0.1:6379/0")

#: Prefix of every Redis key and queue name the demo's brokers use, so it never mixes with real data.
PREFIX = os.environ.get("FLOWERBED_DEMO_PREFIX", "flowerbed-demo")

#: Jobs per second each producer enqueues.
RATE = float(os.environ.get("FLOWERBED_DEMO_RATE", "3"))

#: Seconds between fires of the periodic job (periodiq's cron cannot go below one minute).
PERIOD_S = int(os.environ.get("FLOWERBED_DEMO_PERIOD_S", "10"))


def key(*parts: str) -> str:
    """A Redis key or queue name under the demo's prefix."""
    return ":".join((PREFIX, *parts))
