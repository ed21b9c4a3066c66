"""`flowerbed serve` end to end: events through the real emitter, a real server, the JSON API."""

from __future__ import annotations

import signal
import time
from typing import Any

import redis

from collectors.constants import CONSUMER_GROUP
from collectors.events import build
from tests.conftest import REDIS_URL, publish


def job_story(job_id: str, task: str, outcome: str, t0: float, lib: str = "celery", app: str = "shop") -> list[dict]:
    """The events a collector sends for one job: retried once, then ``outcome``."""
    common: dict[str, Any] = {"job_id": job_id, "task": task, "queue": "default", "max_attempts": 3}
    worker = "host-a:1:abc"
    evs = [build("job-enqueued", lib, app, ts=t0, payload_bytes=120, args_raw=(1,), kwargs_raw={"token": "s3cret", "to": "bob"}, **common)]
    evs.append(build("job-started", lib, app, ts=t0 + 0.1, attempt=1, worker=worker, **common))
    if outcome == "succeeded":
        evs.append(build("job-succeeded", lib, app, ts=t0 + 0.3, attempt=1, worker=worker, duration_ms=200.0, **common))
        return evs
    evs.append(build("job-failed", lib, app, ts=t0 + 0.3, attempt=1, worker=worker, duration_ms=200.0,
                     exc_type="ConnectionError", exc_message="smtp down", traceback="Traceback…\nConnectionError: smtp down",
                     final=False, retry_in_s=2.0, **common))
    evs.append(build("job-enqueued", lib, app, ts=t0 + 0.31, attempt=2, **common))
    evs.append(build("job-started", lib, app, ts=t0 + 2.4, attempt=2, worker=worker, **common))
    if outcome == "retried-then-succeeded":
        evs.append(build("job-succeeded", lib, app, ts=t0 + 2.5, attempt=2, worker=worker, duration_ms=100.0, **common))
    else:
        evs.append(build("job-failed", lib, app, ts=t0 + 2.5, attempt=2, worker=worker, duration_ms=100.0,
                         exc_type="ValueError", exc_message="bad address", traceback="Traceback…\nValueError: bad address",
                         final=True, payload={"task": task, "args": [1]}, **common))
    return evs


def test_serve_ingests_and_answers_the_api(flowerbed_server, stream_name: str) -> None:
    t0 = time.time() - 60
    events: list[dict] = []
    events += job_story("ok-1", "send_email", "succeeded", t0)
    events += job_story("flaky-1", "send_email", "retried-then-succeeded", t0 + 1)
    events += job_story("dead-1", "charge_card", "failed", t0 + 2)
    events.append(build("worker-online", "celery", "shop", worker="host-a:1:abc", host="host-a", pid=1,
                        concurrency=4, queues=["default"]))
    events.append(build("worker-heartbeat", "celery", "shop", worker="host-a:1:abc", host="host-a", pid=1,
                        inflight=1, processed=3, failed=1, concurrency=4))
    # Deliver some events twice and out of order: the result must not change.
    events = events + events[:4]
    events.reverse()
    publish(stream_name, events)
    client = redis.Redis.from_url(REDIS_URL)
    client.xadd(stream_name, {"e": b"{not json"})
    client.xadd(stream_name, {"x": b"no e field"})

    server = flowerbed_server(stream_name)
    jobs = server.wait_for(lambda: (lambda j: j if len(j["items"]) == 3 else None)(server.get_json("/api/jobs")))
    by_id = {j["job_id"]: j for j in jobs["items"]}
    assert by_id["ok-1"]["state"] == "succeeded" and by_id["ok-1"]["attempt"] == 1
    assert by_id["flaky-1"]["state"] == "succeeded" and by_id["flaky-1"]["attempt"] == 2
    assert by_id["dead-1"]["state"] == "failed" and by_id["dead-1"]["exc_type"] == "ValueError"
    assert by_id["ok-1"]["duration_ms"] == 200.0 and by_id["ok-1"]["enqueued_at"].endswith("Z")
    assert "s3cret" not in by_id["ok-1"]["args"] and "bob" in by_id["ok-1"]["args"]

    detail = server.get_json("/api/jobs/celery/shop/flaky-1")
    assert [a["outcome"] for a in detail["attempts"]] == ["retrying", "succeeded"]
    assert detail["attempts"][0]["exc_message"] == "smtp down"
    assert [e["type"] for e in detail["events"]].count("job-started") == 2  # duplicates stored once
    server.get_json("/api/jobs/celery/shop/nope", expect=404)

    assert [j["job_id"] for j in server.get_json("/api/jobs?state=failed")["items"]] == ["dead-1"]
    assert {j["job_id"] for j in server.get_json("/api/jobs?q=exc:smtp")["items"]} == {"flaky-1"}
    assert {j["job_id"] for j in server.get_json("/api/jobs?task=charge_card")["items"]} == {"dead-1"}
    page1 = server.get_json("/api/jobs?limit=2")
    page2 = server.get_json(f"/api/jobs?limit=2&cursor={page1['next_cursor']}")
    assert len(page1["items"]) == 2 and len(page2["items"]) == 1 and page2["next_cursor"] is None
    assert {j["job_id"] for j in page1["items"] + page2["items"]} == {"ok-1", "flaky-1", "dead-1"}

    workers = server.get_json("/api/workers")["items"]
    assert [(w["worker"], w["state"], w["concurrency"]) for w in workers] == [("host-a:1:abc", "online", 4)]

    status = server.wait_for(lambda: (lambda s: s if s["quarantined"] == 2 else None)(server.get_json("/api/status")))
    assert status["events_ingested"] >= len(events) - 4
    reasons = " ".join(q["reason"] for q in status["quarantine"])
    assert "JSON" in reasons

    assert server.stop() == 0
    assert client.xpending(stream_name, CONSUMER_GROUP)["pending"] == 0
    client.close()


def no_process_left(pgid: int, timeout: float = 10.0) -> bool:
    """True once no process of the server's session (ingest, writer…) is still alive."""
    import os

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_sigterm_finishes_the_batch_and_exits_zero(flowerbed_server, stream_name: str) -> None:
    server = flowerbed_server(stream_name)
    t0 = time.time()
    events = [ev for i in range(3000) for ev in job_story(f"j{i}", "bulk", "succeeded", t0)]
    publish(stream_name, events)
    client = redis.Redis.from_url(REDIS_URL)

    def reading() -> bool:  # ingest has started on the stream (on a busy machine it can take seconds)
        try:
            return any((g.get("entries-read") or 0) > 0 for g in client.xinfo_groups(stream_name))
        except redis.ResponseError:
            return False

    server.wait_for(reading, timeout=60, interval=0.02)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0
    assert no_process_left(server.proc.pid), "a process started by `flowerbed serve` outlived it"
    pending = client.xpending(stream_name, CONSUMER_GROUP)["pending"]
    client.close()
    assert pending == 0  # everything read was committed and acknowledged before exit
