"""The demo's Redis: use the one that answers, start a throwaway ``redis-server`` when none does,
and delete the demo's broker keys on the way out (the event stream stays, like the SQLite file).
"""

from __future__ import annotations

import re
import shutil
import time
from urllib.parse import urlsplit

import redis

from .processes import Spec

__all__ = ["NoRedis", "cleanup_keys", "ping", "server_spec", "wait_until_up"]

_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "")

#: arq cannot prefix its keys; its cron job ids are ``<name>:<slot ms>`` (producers' ids carry the prefix).
_ARQ_CRON_KEY = re.compile(rb"^arq:(job|result|in-progress|retry):refresh_exchange_rates:\d+$")


class NoRedis(RuntimeError):
    """Nothing answers at the Redis URL and no local server can be started (the message says what to do)."""


def ping(url: str, timeout: float = 1.0) -> bool:
    """Whether a Redis answers at ``url``."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def server_spec(url: str) -> Spec:
    """The ``redis-server`` to start for ``url``, or :class:`NoRedis` saying what to do instead."""
    parts = urlsplit(url)
    binary = shutil.which("redis-server")
    if parts.scheme == "redis" and (parts.hostname or "") in _LOCAL_HOSTS and binary and not parts.password:
        port = str(parts.port or 6379)
        argv = (binary, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no")
        return Spec(f"redis-server on port {port}", "redis", argv)
    hint = (
        "Start one (Debian/Ubuntu: sudo apt install redis-server; macOS: brew services start redis;"
        " or docker run -d -p 6379:6379 redis), or point the demo at yours with --redis-url."
    )
    if parts.hostname in _LOCAL_HOSTS and not binary:
        hint = "redis-server is not installed here. " + hint
    raise NoRedis(f"flowerbed demo: no Redis answers at {url}.\n{hint}")


def wait_until_up(url: str, timeout: float = 10.0) -> bool:
    """Poll ``url`` until Redis answers (a server just started needs a moment)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ping(url, 0.5):
            return True
        time.sleep(0.1)
    return False


def cleanup_keys(url: str, prefix: str) -> int:
    """Delete every key the demo's brokers made under ``prefix`` (and arq's unprefixable ones)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    deleted = 0
    try:
        for pattern in (f"{prefix}:*", f"arq:*:{prefix}-*", "arq:*:refresh_exchange_rates:*"):
            batch: list[bytes] = []
            for name in client.scan_iter(match=pattern, count=1000):
                if pattern.endswith("refresh_exchange_rates:*") and not _ARQ_CRON_KEY.match(name):
                    continue
                batch.append(name)
                if len(batch) >= 500:
                    deleted += int(client.delete(*batch))
                    batch = []
            if batch:
                deleted += int(client.delete(*batch))
    except (redis.RedisError, OSError):
        pass
    finally:
        client.close()
    return deleted

