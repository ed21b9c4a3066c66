"""Live updates: the hub's throttled fan-out, and SSE from a real `flowerbed serve` after real events."""

from __future__ import annotations

import asyncio
import http.client
import socket
import time
from urllib.parse import urlsplit

from collectors.events import build
from dashboard.live.hub import Hub, Subscription, job_topic
from tests.conftest import publish


def _drain(sub: Subscription) -> list[str]:
    out = []
    while not sub.queue.empty():
        out.append(sub.queue.get_nowait())
    sub.waiting.clear()
    return out


async def test_hub_sends_each_topic_at_most_once_per_interval() -> None:
    hub = Hub("redis://unused", "x:changes", interval=0.2)
    jobs_sub = Subscription({"jobs"})
    one_job = Subscription({job_topic("celery", "shop", "j-1")})
    hub.subs |= {jobs_sub, one_job}
    for _ in range(1000):  # a burst of notices
        hub.handle({"events": 10, "topics": ["jobs", "status"], "jobs": [["celery", "shop", "j-2", "running"]]})
    assert _drain(jobs_sub) == ["jobs"]  # the first notice goes out at once
    assert _drain(one_job) == []  # not its job
    await asyncio.sleep(0.3)
    assert _drain(jobs_sub) == ["jobs"]  # the rest of the burst: one more, after the interval
    hub.handle({"events": 1, "topics": ["jobs"], "jobs": [["celery", "shop", "j-1", "succeeded"]]})
    await asyncio.sleep(0.3)
    assert _drain(one_job) == ["job"] and _drain(jobs_sub) == ["jobs"]
    await asyncio.sleep(0.3)
    assert _drain(jobs_sub) == [] and _drain(one_job) == []
    await hub.stop()


def _sse_events(base_url: str, path: str, until: set[str], timeout: float, on_open=None) -> list[str]:
    """Read named events from an SSE endpoint until all of ``until`` were seen (or time runs out)."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    conn.request("GET", path, headers={"Accept": "text/event-stream"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("content-type", "").startswith("text/event-stream")
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until <= set(seen):
            line = resp.fp.readline().decode().strip()
            if line.startswith("event:"):
                seen.append(line.split(":", 1)[1].strip())
                if seen == ["hello"] and on_open:
                    on_open()
    except (TimeoutError, socket.timeout):
        pass
    finally:
        conn.close()
    return seen


def test_sse_announces_new_jobs_and_a_jobs_own_changes(flowerbed_server, stream_name: str) -> None:
    server = flowerbed_server(stream_name)
    t0 = time.time()
    common = {"task": "send_email", "queue": "default"}
    publish(stream_name, [build("job-enqueued", "arq", "mail", job_id="live-1", ts=t0, **common)])
    server.wait_for(lambda: server.get_json("/api/jobs")["items"])

    def send() -> None:
        publish(stream_name, [
            build("job-started", "arq", "mail", job_id="live-1", attempt=1, worker="w-1", ts=t0 + 0.1, **common),
            build("job-enqueued", "arq", "mail", job_id="live-2", ts=t0 + 0.2, **common),
        ])

    seen = _sse_events(server.base_url, "/live?topics=jobs,status&lib=arq&app=mail&job_id=live-1",
                       {"jobs", "job", "status"}, timeout=40, on_open=send)
    assert seen[0] == "hello"
    assert {"jobs", "job", "status"} <= set(seen), seen
    assert server.get("/live")[0] == 400  # topics are required
