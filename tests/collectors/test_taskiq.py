"""collectors.taskiq against real `taskiq worker` and `taskiq scheduler` processes (taskiq 0.13 env)."""

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

APP = "tests.collectors.apps.taskiq_app"
MOD = "tests.collectors.apps.taskiq_app:"


class TaskiqLab(Lab):
    """One test's Taskiq world: a private prefix (queue, result and schedule keys), stream and processes."""

    tag = "tq"
    app = "tqtest"
    stop_group = True
    stop_timeout = 20.0

    def spawn_taskiq(self, *args: str) -> subprocess.Popen[bytes]:
        return self.spawn("taskiq", *args)

    def client(self, *names: str) -> dict[str, str]:
        out = self.run_module("tests.collectors.apps.taskiq_client", *names)
        return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def taskiq_bin() -> Path:
    return ensure_env("taskiq")


@pytest.fixture
def lab(taskiq_bin: Path, stream_name: str, tmp_path: Path) -> Iterator[TaskiqLab]:
    lab = TaskiqLab(taskiq_bin, stream_name, tmp_path)
    try:
        yield lab
    finally:
        lab.close()


JOBS = ("ok", "ok_sync", "flaky", "always_fails", "no_retry_fail", "too_slow", "blocks_loop", "parent")


def test_worker_jobs_reach_the_dashboard(lab: TaskiqLab, flowerbed_server: Callable[..., Any]) -> None:
    server = flowerbed_server(lab.stream)
    worker = lab.spawn_taskiq("worker", f"{APP}:broker", "--workers", "1", "--max-async-tasks", "7")
    lab.wait(lambda ev: of(ev, "worker-online"))  # the stream consumer group starts at "$"
    ids = lab.client(*JOBS)

    def settled(ev: list[dict[str, Any]]) -> bool:
        done = {e["job_id"] for e in ev if e["type"] == "job-succeeded" or (e["type"] == "job-failed" and e["final"])}
        return set(ids.values()) <= done and len(of(ev, "job-succeeded", task=MOD + "ok")) == 2

    events = lab.wait(settled)

    def job(name: str) -> dict[str, Any]:
        return server.get_json(f"/api/jobs/taskiq/tqtest/{ids[name]}")

    try:
        server.wait_for(lambda: job("always_fails")["state"] == "failed" and job("flaky")["state"] == "succeeded")
    except AssertionError:
        raise AssertionError(f"jobs: {server.get_json('/api/jobs?limit=100')} workers: {server.get_json('/api/workers')} status: {server.get_json('/api/status')} ids: {ids} log: {server.log()[-3000:]}") from None
    assert job("ok")["state"] == "succeeded" and job("ok")["task"] == MOD + "ok"
    assert job("ok")["queue"] == f"{lab.prefix}:queue"
    assert job("ok")["duration_ms"] is not None
    assert "[redacted]" in job("ok_sync")["args"] and "hunter2" not in job("ok_sync")["args"]
    # The worker's own start (a row's cell, previewed on the sending thread) reads as the producer's.
    [started] = of(events, "job-started", job_id=ids["ok_sync"])
    assert json.loads(started["args"]) == {"args": [21], "kwargs": {"password": "[redacted]"}}

    flaky = job("flaky")
    assert flaky["attempt"] == 2 and flaky["max_attempts"] == 3
    assert [a["outcome"] for a in flaky["attempts"]][:1] != ["succeeded"]

    dead = job("always_fails")
    assert (dead["attempt"], dead["max_attempts"], dead["exc_type"]) == (2, 2, "ValueError")
    assert dead["exc_message"] == "always broken" and len(dead["attempts"]) == 2

    assert job("no_retry_fail")["state"] == "failed" and job("no_retry_fail")["exc_type"] == "KeyError"
    slow = job("too_slow")
    assert slow["state"] == "failed" and "timeout" in slow["exc_message"]

    listed = server.get_json("/api/jobs?lib=taskiq&limit=100")["items"]
    assert {j["job_id"] for j in listed} >= set(ids.values())

    # What only the raw events show: retry delay, final payload, correlation, loop lag, chaining.
    first = of(events, "job-failed", job_id=ids["flaky"])[0]
    assert first["final"] is False and first["retry_in_s"] == 0.2 and first["exc_type"] == "ConnectionError"
    final = of(events, "job-failed", job_id=ids["always_fails"], final=True)[0]
    assert final["payload"]["task"] == MOD + "always_fails" and "traceback" in final
    enq = of(events, "job-enqueued", job_id=ids["ok"])[0]
    assert enq["payload_bytes"] > 100 and enq["enqueued_at"] <= enq["ts"]
    done = of(events, "job-succeeded", job_id=ids["ok"])[0]  # the label read back on the worker, as a number
    assert done["enqueued_at"] == enq["enqueued_at"] and done["max_attempts"] >= 1
    # A job still running when the sender sends (it blocks the loop 0.6 s; a quiet sender sends at most 0.5 s apart) has
    # its start sent on its own, made from its row as the worker received it; its end does not repeat it.
    long_start = of(events, "job-started", job_id=ids["blocks_loop"])
    long_enq = of(events, "job-enqueued", job_id=ids["blocks_loop"])[0]
    assert len(long_start) == 1 and not long_start[0]["id"].endswith(".s"), long_start
    assert long_start[0]["enqueued_at"] == long_enq["enqueued_at"] and long_start[0]["attempt"] == 1
    assert long_start[0]["queue"] == f"{lab.prefix}:queue" and long_start[0]["args"] == "{}"
    long_done = of(events, "job-succeeded", job_id=ids["blocks_loop"])[0]
    assert long_done["duration_ms"] >= 600 and long_done["ts"] >= long_start[0]["ts"] + 0.6
    parent = of(events, "job-started", job_id=ids["parent"])[0]
    child = [e for e in of(events, "job-enqueued", task=MOD + "ok") if e["job_id"] != ids["ok"]][0]
    assert child["correlation_id"] == parent["correlation_id"]
    assert int(lab.redis.get(f"{lab.prefix}:user-mw") or 0) >= len(JOBS)  # the user's middleware still ran
    lab.wait(lambda ev: any((e.get("loop_lag_ms") or 0) > 100 for e in of(ev, "worker-heartbeat")), timeout=10)

    workers = server.get_json("/api/workers")["items"]
    mine = [w for w in workers if w["lib"] == "taskiq" and w["state"] == "online"]
    assert mine and mine[0]["concurrency"] == 7

    assert lab.stop(worker) == 0
    lab.wait(lambda ev: of(ev, "worker-offline"))
    server.wait_for(lambda: all(w["state"] == "offline" for w in server.get_json("/api/workers")["items"]
                                if w["lib"] == "taskiq"))


def test_jobs_are_timed_from_the_formatter_whatever_it_is(lab: TaskiqLab) -> None:
    """The collector begins an attempt in the broker formatter's ``loads``: the default formatter stays
    the same object of the same type, and one whose class cannot be swapped is wrapped; both time jobs."""
    seen = json.loads(lab.run_module("tests.collectors.apps.taskiq_formatters").strip().splitlines()[-1])
    assert seen["proxy"]["same"] and seen["proxy"]["is_proxy"] and seen["proxy"]["result"] == 42
    assert not seen["namespace"]["same"] and seen["namespace"]["reads_through"] and seen["namespace"]["result"] == 42
    for kind in ("proxy", "namespace"):
        job_id = seen[kind]["job_id"]
        events = lab.wait(lambda ev: of(ev, "job-succeeded", job_id=job_id))  # noqa: B023
        done = of(events, "job-succeeded", job_id=job_id)[0]
        started = of(events, "job-started", job_id=job_id)
        assert done["task"] == f"formatters.{kind}" and done["duration_ms"] is not None and done["attempt"] == 1
        assert len(started) == 1 and started[0]["args"] == '{"args":[41]}' and started[0]["ts"] <= done["ts"]


def test_scheduler_reports_schedules_and_fires(lab: TaskiqLab, flowerbed_server: Callable[..., Any]) -> None:
    server = flowerbed_server(lab.stream)
    ids = lab.client("redis-schedule")
    scheduler = lab.spawn_taskiq("scheduler", f"{APP}:scheduler")
    tick, redis_name = f"{lab.prefix}-tick", ids["redis-schedule"]
    events = lab.wait(lambda ev: len(of(ev, "schedule-fired", schedule=tick)) >= 2
                      and len(of(ev, "schedule-fired", schedule=redis_name)) >= 2, timeout=20)
    registered = {e["schedule"]: e for e in of(events, "schedule-registered")}
    assert registered[tick]["interval_s"] == 2.0 and registered[tick]["timezone"] == "UTC"
    assert registered[redis_name]["source"] == "ListRedisScheduleSource"
    assert registered[f"{MOD}minutely [* * * * *]"]["cron"] == "* * * * *"

    fires = of(events, "schedule-fired", schedule=tick)
    assert fires[1]["slot"] - fires[0]["slot"] == 2.0 and all(f["slot"] % 1 == 0 for f in fires)
    assert {f["scheduler"] for f in fires} == {registered[tick]["scheduler"]}
    cron_fire = of(events, "schedule-fired", schedule=f"{MOD}minutely [* * * * *]")[0]
    assert cron_fire["slot"] % 60 == 0
    assert of(events, "scheduler-heartbeat")

    # The jobs the scheduler enqueued are on the dashboard (no worker runs them: they stay queued).
    job_id = fires[0]["job_id"]
    job = server.wait_for(lambda: server.get_json(f"/api/jobs/taskiq/tqtest/{job_id}"))
    assert job["state"] == "queued" and job["task"] == MOD + "tick"
    assert lab.stop(scheduler) in (0, -signal.SIGTERM)
