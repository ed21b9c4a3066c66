"""collectors.celery against real `celery worker` (prefork and threads pools) and `celery beat` (celery 5.7 env)."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.collectors.harness import Lab, of
from tests.libenvs import ensure_env

pytestmark = pytest.mark.libenv

APP = "tests.collectors.apps.celery_app"
T = APP + "."


class CeleryLab(Lab):
    """One test's Celery world: a private queue and key prefix, a private stream, its processes."""

    tag = "cel"
    app = "celtest"
    stop_group = True

    def __init__(self, bindir: Path, stream: str, tmp_path: Path) -> None:
        super().__init__(bindir, stream, tmp_path, FBTEST_BEAT_FILE=str(tmp_path / "beat-schedule"))
        self.queue = f"{self.prefix}-q"

    def celery(self, *args: str) -> subprocess.Popen[bytes]:
        return self.spawn("celery", "-A", f"{APP}:app", *args)

    def worker(self, pool: str, concurrency: int = 2) -> subprocess.Popen[bytes]:
        return self.celery("worker", "-P", pool, "-c", str(concurrency), "-Q", self.queue,
                           "-n", f"{self.prefix}@%h", "--without-gossip", "--without-mingle", "-l", "warning")

    def client(self, *names: str) -> dict[str, str]:
        out = self.run_module("tests.collectors.apps.celery_client", *names)
        return json.loads(out.strip().splitlines()[-1])


def finished(ids: dict[str, str]) -> Callable[[list[dict[str, Any]]], bool]:
    def check(ev: list[dict[str, Any]]) -> bool:
        done = {e["job_id"] for e in ev if e["type"] in ("job-succeeded", "job-cancelled")
                or (e["type"] == "job-failed" and e["final"])}
        return set(ids.values()) <= done
    return check


@pytest.fixture(scope="module")
def celery_bin() -> Path:
    return ensure_env("celery")


@pytest.fixture
def lab(celery_bin: Path, stream_name: str, tmp_path: Path) -> Iterator[CeleryLab]:
    lab = CeleryLab(celery_bin, stream_name, tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def test_prefork_worker(lab: CeleryLab, flowerbed_server: Callable[..., Any]) -> None:
    server = flowerbed_server(lab.stream)
    worker = lab.worker("prefork")
    lab.wait(lambda ev: of(ev, "worker-online"))
    ids = lab.client("ok", "flaky", "always_fails", "no_retry_fail", "soft_limited", "hard_limited", "parent",
                     "expired", "sleepy")
    lab.wait(lambda ev: of(ev, "job-started", job_id=ids["sleepy"]))
    ids.update(lab.client(f"revoke:{ids['sleepy']}"))
    events = lab.wait(finished(ids))

    def job(name: str) -> dict[str, Any]:
        return server.get_json(f"/api/jobs/celery/celtest/{ids[name]}")

    server.wait_for(lambda: job("always_fails")["state"] == "failed" and job("sleepy")["state"] == "cancelled")
    assert job("ok")["state"] == "succeeded" and job("ok")["queue"] == lab.queue
    assert "hunter2" not in (job("ok")["args"] or "")
    # The worker's own start (a row's cell, previewed on the sending thread): arguments and keywords.
    assert [json.loads(e["args"]) for e in of(events, "job-started", job_id=ids["ok"])] == [
        {"args": [21], "kwargs": {"password": "[redacted]"}}]
    assert json.loads(job("flaky")["args"]) == {"args": ["flaky"]}  # positional alone: sent as a list
    flaky = job("flaky")
    assert (flaky["state"], flaky["attempt"], flaky["max_attempts"]) == ("succeeded", 2, 4)
    dead = job("always_fails")
    assert (dead["attempt"], dead["max_attempts"], dead["exc_type"]) == (3, 3, "ValueError")
    assert len(dead["attempts"]) == 3
    assert job("no_retry_fail")["state"] == "failed"
    soft, hard = job("soft_limited"), job("hard_limited")
    assert soft["state"] == "failed" and "soft time limit (0.5 s)" in soft["exc_message"]
    assert hard["state"] == "failed" and "hard time limit (1 s)" in hard["exc_message"]
    assert job("expired")["state"] == "cancelled" and job("sleepy")["state"] == "cancelled"

    # Raw-event facts: the double hard-limit signal is deduplicated, reasons, retry delay, payload.
    [hard_failed] = of(events, "job-failed", job_id=ids["hard_limited"])
    # Sent by the main process, which has no request context: attempt and queue come from its Request.
    assert hard_failed["attempt"] == 1 and hard_failed["queue"] and hard_failed["max_attempts"] is not None
    assert of(events, "job-cancelled", job_id=ids["sleepy"])[0]["reason"] == "terminated"
    assert of(events, "job-cancelled", job_id=ids["expired"])[0]["reason"] == "expired"
    assert of(events, "job-failed", job_id=ids["flaky"])[0]["retry_in_s"] == 0.3
    final = of(events, "job-failed", job_id=ids["always_fails"], final=True)[0]
    assert final["payload"]["task"] == T + "always_fails" and final["traceback"]
    enq = of(events, "job-enqueued", job_id=ids["ok"])[0]
    assert enq["payload_bytes"] > 0 and enq["correlation_id"]
    parent = of(events, "job-started", job_id=ids["parent"])[0]
    child = [e for e in of(events, "job-enqueued", task=T + "ok") if e["job_id"] not in ids.values()][0]
    assert child["correlation_id"] == parent["correlation_id"]
    online = of(events, "worker-online")[0]
    assert (online["pool"], online["concurrency"], online["prefetch"]) == ("prefork", 2, 4)
    # Jobs ran in pool children but carry the node's worker id, so its heartbeats cover them.
    started = of(events, "job-started", job_id=ids["ok"])[0]
    assert started["worker"] == online["worker"] and started["pid"] != online["pid"]
    assert int(lab.redis.get(f"{lab.prefix}:user-signal") or 0) >= 3  # the user's receiver still runs
    # The collector wraps tracers in a worker: the user's prerun/postrun receivers and custom
    # __call__ (ok's base class; ok also ran as parent's child) still run for every job.
    assert int(lab.redis.get(f"{lab.prefix}:user-prerun") or 0) >= 9
    assert int(lab.redis.get(f"{lab.prefix}:user-postrun") or 0) >= 9
    assert int(lab.redis.get(f"{lab.prefix}:audited") or 0) == 2

    workers = [w for w in server.get_json("/api/workers")["items"] if w["lib"] == "celery"]
    assert len(workers) == 1 and workers[0]["concurrency"] == 2
    lab.wait(lambda ev: any(e.get("failed", 0) >= 4 for e in of(ev, "worker-heartbeat")), timeout=10)
    assert lab.stop(worker) == 0
    lab.wait(lambda ev: of(ev, "worker-offline"))
    server.wait_for(lambda: [w["state"] for w in server.get_json("/api/workers")["items"]] == ["offline"])


def test_threads_worker_and_beat(lab: CeleryLab, flowerbed_server: Callable[..., Any]) -> None:
    server = flowerbed_server(lab.stream)
    worker = lab.worker("threads", concurrency=3)
    beat = lab.celery("beat", "-l", "warning", "--max-interval", "1")
    lab.wait(lambda ev: of(ev, "worker-online"))
    ids = lab.client("ok", "flaky", "always_fails", "parent", "countdown")
    lab.client(f"revoke:{ids['countdown']}")
    schedule = f"{lab.prefix}-every-2s"
    events = lab.wait(lambda ev: finished({k: v for k, v in ids.items() if k != "countdown"})(ev)
                      and len(of(ev, "schedule-fired", schedule=schedule)) >= 2, timeout=40)

    def job(name: str) -> dict[str, Any]:
        return server.get_json(f"/api/jobs/celery/celtest/{ids[name]}")

    server.wait_for(lambda: job("always_fails")["state"] == "failed" and job("flaky")["state"] == "succeeded")
    assert job("ok")["state"] == "succeeded" and job("flaky")["attempt"] == 2
    assert job("always_fails")["attempt"] == 3
    online = of(events, "worker-online")[0]
    assert (online["pool"], online["concurrency"]) == ("threads", 3)
    done = of(events, "job-succeeded", job_id=ids["ok"])[0]
    assert done["cpu_ms"] is not None and done["duration_ms"] is not None

    registered = {e["schedule"]: e for e in of(events, "schedule-registered")}
    assert registered[schedule]["interval_s"] == 2.0 and registered[schedule]["task"] == T + "tick"
    fires = of(events, "schedule-fired", schedule=schedule)
    assert abs(fires[1]["slot"] - fires[0]["slot"] - 2.0) < 0.05
    assert all(abs(f["ts"] - f["slot"]) < 1.5 for f in fires)
    assert {f["scheduler"] for f in fires} == {registered[schedule]["scheduler"]}
    assert of(events, "scheduler-heartbeat", scheduler=fires[0]["scheduler"])
    tick = server.wait_for(lambda: server.get_json(f"/api/jobs/celery/celtest/{fires[0]['job_id']}"))
    assert tick["task"] == T + "tick"
    server.wait_for(lambda: server.get_json(f"/api/jobs/celery/celtest/{fires[0]['job_id']}")["state"]
                    == "succeeded")

    assert lab.stop(beat) in (0, -signal.SIGTERM)
    assert lab.stop(worker) == 0
    lab.wait(lambda ev: of(ev, "worker-offline"))
