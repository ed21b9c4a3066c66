"""The live hub: one pub/sub subscription to ingest's change notices, throttled fan-out to SSE clients.

Ingest publishes a JSON notice on ``<stream>:changes`` after each commit. The hub turns the notices
into named topics (``jobs``, ``workers``, ``schedules``, ``status`` and ``job:<lib>\\x1f<app>\\x1f<id>``)
and sends each topic at most once per ``interval`` seconds, so a burst of 10,000 events costs a
browser one refresh. The subscription runs only while at least one client is connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from typing import Any

from starlette.applications import Starlette

__all__ = ["Hub", "Subscription", "hub_for", "job_topic", "TOPICS"]

log = logging.getLogger("flowerbed.live")

#: Topics a page may subscribe to (a job page also subscribes to its own job's topic).
TOPICS: tuple[str, ...] = ("jobs", "workers", "schedules", "status")


def job_topic(lib: str, app: str, job_id: str) -> str:
    """The topic that fires when one job changes."""
    return f"job:{lib}\x1f{app}\x1f{job_id}"


class Subscription:
    """One SSE client: the topics it follows and a small queue of event names to send."""

    def __init__(self, topics: set[str]) -> None:
        self.topics = topics
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=64)
        self.waiting: set[str] = set()

    def offer(self, name: str) -> None:
        """Queue an event name unless the same one is already waiting (a slow client gets one, not many)."""
        if name in self.waiting:
            return
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(name)
            self.waiting.add(name)

    async def next(self) -> str:
        """Wait for the next event name to send."""
        name = await self.queue.get()
        self.waiting.discard(name)
        return name


class Hub:
    """Fans ingest's change notices out to subscribed clients, at most one event per topic per interval."""

    def __init__(self, redis_url: str, channel: str, interval: float = 1.0) -> None:
        self.redis_url = redis_url
        self.channel = channel
        self.interval = interval
        self.subs: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._last_sent: dict[str, float] = {}
        self._pending: dict[str, asyncio.TimerHandle] = {}
        #: (monotonic time, events) of recent notices, for the status page's events/s.
        self.recent: deque[tuple[float, int]] = deque(maxlen=600)
        self.notices = 0
        #: Set while the Redis subscription is established (a client that waits for it misses nothing after).
        self.ready = asyncio.Event()

    # -- clients ---------------------------------------------------------------------------
    def subscribe(self, topics: set[str]) -> Subscription:
        """Register a client; starts the Redis subscription when it is the first."""
        sub = Subscription(topics)
        self.subs.add(sub)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="flowerbed-live-hub")
        return sub

    async def unsubscribe(self, sub: Subscription) -> None:
        """Forget a client; the last one out stops the Redis subscription."""
        self.subs.discard(sub)
        if not self.subs:
            await self.stop()

    async def stop(self) -> None:
        """Cancel the subscription task and any scheduled sends."""
        for handle in self._pending.values():
            handle.cancel()
        self._pending.clear()
        task, self._task = self._task, None
        self.ready.clear()
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- notices ---------------------------------------------------------------------------
    def events_per_second(self, span: float = 10.0) -> float | None:
        """Events ingested per second over the last ``span`` seconds, from the notices seen (None if idle)."""
        if self._task is None:
            return None
        cutoff = time.monotonic() - span
        return sum(n for t, n in self.recent if t >= cutoff) / span

    def handle(self, notice: dict[str, Any]) -> None:
        """Turn one notice into throttled topic sends."""
        self.notices += 1
        self.recent.append((time.monotonic(), int(notice.get("events") or 0)))
        topics = set(notice.get("topics") or ())
        wanted = {t for s in self.subs for t in s.topics if t.startswith("job:")}
        if wanted:
            for item in notice.get("jobs") or ():
                if len(item) >= 3:
                    topic = job_topic(str(item[0]), str(item[1]), str(item[2]))
                    if topic in wanted:
                        topics.add(topic)
        for topic in topics:
            self._mark(topic)

    def _mark(self, topic: str) -> None:
        if topic in self._pending:
            return
        wait = self._last_sent.get(topic, 0.0) + self.interval - time.monotonic()
        if wait <= 0:
            self._send(topic)
        else:
            self._pending[topic] = asyncio.get_running_loop().call_later(wait, self._send, topic)

    def _send(self, topic: str) -> None:
        self._pending.pop(topic, None)
        self._last_sent[topic] = time.monotonic()
        name = "job" if topic.startswith("job:") else topic
        for sub in list(self.subs):
            if topic in sub.topics:
                sub.offer(name)

    async def _run(self) -> None:
        import redis.asyncio as aioredis

        delay = 0.5
        while True:
            client = aioredis.Redis.from_url(self.redis_url, socket_connect_timeout=2)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.ready.set()
                delay = 0.5
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is None or message.get("type") != "message":
                        continue
                    try:
                        notice = json.loads(message["data"])
                    except (ValueError, TypeError):
                        continue
                    if isinstance(notice, dict):
                        self.handle(notice)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: retry with backoff, pages keep working
                log.warning("live hub: %s: %s; retrying in %.1f s", type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                self.ready.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await client.aclose()


def hub_for(app: Starlette) -> Hub:
    """This app's hub, made on first use (one per web process)."""
    hub = getattr(app.state, "live_hub", None)
    if hub is None:
        settings = app.state.settings
        hub = Hub(settings.redis_url, f"{settings.stream}:changes")
        app.state.live_hub = hub
    return hub
