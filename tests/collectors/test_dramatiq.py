"""collectors.dramatiq against real Dramatiq 2.x workers and periodiq (their own virtualenv).

Both brokers are exercised: Redis and RabbitMQ, with the collector added the documented way
(appended: it hears ``after_process_message`` before Retries) and placed before Retries.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.collectors.harness import Events, Lab, of
from tests.libenvs import ensure_env

APP = "tests.collectors.apps.dramatiq_app"

pytestmark = [pytest.mark.libenv, pytest.mark.slow]


class DramatiqLab(Lab):
    """One test's Dramatiq world: private queue names, a private stream, its processes."""

    tag = "dq"
    app = "dqtest"

    def __init__(self, bindir: Path, stream: str, tmp_path: Path, broker: str, position: str = "append") -> None:
        super().__init__(bindir, stream, tmp_path, FBTEST_BROKER=broker, FBTEST_POSITION=position)
        self.broker = broker
        self.queue = f"{self.prefix}-q"

    def worker(self) -> subprocess.Popen[bytes]:
        return self.spawn("dramatiq", APP, "--processes", "1", "--threads", "2")

    def periodiq(self) -> subprocess.Popen[bytes]:
        return self.spawn("periodiq", APP)

    def client(self, cmd: str, arg: Any = "") -> list[str]:
        return self.run_module("tests.collectors.apps.dramatiq_client", cmd,
                               arg if isinstance(arg, str) else json.dumps(arg)).split()

    def send(self, *calls: tuple[str, list[Any], dict[str, Any], dict[str, Any]]) -> list[str]:
        return self.client("send", [list(c) for c in calls])

    def wait(self, check: Callable[[Events], Any], timeout: float = 40.0) -> Events:
        return super().wait(check, timeout)

    def cleanup(self) -> None:
        if self.broker == "rabbitmq":
            self.client("cleanup")


@pytest.fixture(scope="module")
def dramatiq_bin() -> Path:
    return ensure_env("dramatiq")


@pytest.fixture
def make_lab(dramatiq_bin: Path, stream_name: str, tmp_path: Path) -> Iterator[Callable[..., DramatiqLab]]:
    labs: list[DramatiqLab] = []

    def factory(broker: str = "redis", position: str = "append") -> DramatiqLab:
        labs.append(DramatiqLab(dramatiq_bin, stream_name, tmp_path, broker, position))
        return labs[-1]

    yield factory
    for lab in labs:
        lab.close()


@pytest.mark.parametrize(
    "broker,position", [("redis", "append"), ("rabbitmq", "append"), ("redis", "before-retries")]
)
def test_worker_reports_every_outcome(make_lab: Callable[..., DramatiqLab], broker: str, position: str) -> None:
    lab = make_lab(broker, position)
    worker = lab.worker()
    lab.wait(lambda ev: of(ev, "worker-online"))
    ok, flaky, doomed, fragile, slow, aged = lab.send(
        ("ok", [21], {"password": "hunter2"}, {}),
        ("flaky", ["k"], {}, {}),
        ("doomed", [3], {}, {}),
        ("fragile", ["nope"], {}, {}),
        ("slow", [], {}, {}),
        ("aged", [1], {}, {"delay": 600}),
    )

    def settled(ev: list[dict[str, Any]]) -> bool:
        return bool(
            of(ev, "job-succeeded", job_id=ok) and of(ev, "job-succeeded", job_id=flaky)
            and of(ev, "job-failed", job_id=doomed, final=True) and of(ev, "job-failed", job_id=fragile)
            and of(ev, "job-failed", job_id=slow) and of(ev, "job-cancelled", job_id=aged)
        )

    events = lab.wait(settled)
    dead = set(lab.client("dlq"))
    assert dead == {doomed, fragile, slow, aged}

    # The final failure's payload is enough to enqueue the job again (here, the way a live worker would).
    last = of(events, "job-failed", job_id=doomed, final=True)[0]
    lab.client("requeue", last["payload"])
    lab.wait(lambda ev: len(of(ev, "job-started", job_id=doomed, attempt=1)) == 2)
    lab.stop(worker)
    events = lab.wait(lambda ev: of(ev, "worker-offline"))

    [online] = of(events, "worker-online")
    assert (online["threads"], online["processes"], online["prefetch"], online["concurrency"]) == (2, 1, 4, 2)
    assert lab.queue in online["queues"] and online["lib"] == "dramatiq" and online["app"] == "dqtest"

    [enq] = of(events, "job-enqueued", job_id=ok)
    assert enq["queue"] == lab.queue and enq["attempt"] == 1 and enq["payload_bytes"] > 100
    assert json.loads(enq["args"]) == {"args": [21], "kwargs": {"password": "[redacted]"}}
    assert "hunter2" not in json.dumps([e for e in events if e["type"] != "job-failed"])
    [done] = of(events, "job-succeeded", job_id=ok)
    assert done["attempt"] == 1 and done["max_attempts"] == 21 and done["duration_ms"] >= 0
    # A worker's first runs, before its first send, read the CPU clock (CpuSampler.after_batch decides after).
    assert done["cpu_ms"] is not None and done["cpu_ms"] >= 0
    [start] = of(events, "job-started", job_id=ok)  # sent alone, or given back from the success it rode on
    assert done["queue"] == lab.queue and json.loads(start["args"]) == json.loads(enq["args"])
    # Positional arguments alone (a tuple in Dramatiq) read back the same from the row they travel in.
    assert json.loads(of(events, "job-started", job_id=flaky, attempt=2)[0]["args"]) == {"args": ["k"]}

    # Retried once: attempt 1 failed (not final, with the backoff Retries chose), attempt 2 succeeded.
    [f1] = of(events, "job-failed", job_id=flaky)
    assert (f1["attempt"], f1["final"], f1["exc_type"]) == (1, False, "ConnectionError")
    assert 0.1 <= f1["retry_in_s"] <= 0.2 and "payload" not in f1
    [again] = of(events, "job-enqueued", job_id=flaky, attempt=2)
    assert again["retry_in_s"] == f1["retry_in_s"]
    assert of(events, "job-succeeded", job_id=flaky)[0]["attempt"] == 2

    # max_retries=2: attempts 1 and 2 retry, attempt 3 is dead-lettered with the whole message.
    tries = [(e["attempt"], e["final"], e["max_attempts"]) for e in of(events, "job-failed", job_id=doomed)]
    assert tries[:3] == [(1, False, 3), (2, False, 3), (3, True, 3)]  # (then the requeued run's)
    assert last["dead_letter_queue"] == f"{lab.queue}.XQ" and last["exc_message"] == "doomed 3"
    assert 'raise ValueError(f"doomed {n}")' in last["traceback"]
    payload = last["payload"]
    assert payload["message_id"] == doomed and payload["actor_name"] == "doomed" and payload["args"] == [3]
    assert payload["queue_name"] == lab.queue and payload["options"]["retries"] == 3

    # throws=: final at once. TimeLimit: final, naming the limit. AgeLimit: a skip that dead-letters.
    [fr] = of(events, "job-failed", job_id=fragile)
    assert fr["final"] is True and fr["exc_type"] == "KeyError" and fr["attempt"] == 1
    [sl] = of(events, "job-failed", job_id=slow)
    assert sl["final"] is True and sl["reason"] == "timeout" and "500 ms" in sl["exc_message"]
    assert sl["exc_type"] == "dramatiq.middleware.time_limit.TimeLimitExceeded" and "time.sleep" in sl["traceback"]
    [ag] = of(events, "job-cancelled", job_id=aged)
    assert ag["reason"] == "expired" and ag["dead_letter_queue"] == f"{lab.queue}.XQ"
    assert ag["payload"]["message_id"] == aged and not of(events, "job-started", job_id=aged)

    beats = of(events, "worker-heartbeat")
    assert beats and beats[-1]["concurrency"] == 2 and beats[-1]["rss_bytes"] > 0
    [off] = of(events, "worker-offline")
    assert off["inflight"] == 0 and off["worker"] == online["worker"]


def test_successes_are_reported_at_once_and_other_outcomes_at_their_settling(
    make_lab: Callable[..., DramatiqLab],
) -> None:
    """A success is reported from after_process_message, so the collector's after_ack is the class's C
    no-op for every message but those that wait for their ack or nack; a success that a middleware
    fails afterwards (running before the collector's hook) is dead-lettered and reported as such."""
    lab = make_lab()
    seen = json.loads(lab.run_module("tests.collectors.apps.dramatiq_settle").strip().splitlines()[-1])
    assert seen["fast_after_successes"] and seen["fast_after_a_failure"] and seen["fast_after_a_veto"]
    assert seen["dead"] == sorted([seen["broken"], seen["vetoed"]])
    events = lab.wait(lambda ev: of(ev, "job-succeeded", job_id=seen["after"]))
    for n, job_id in enumerate(seen["fine"]):
        [done] = of(events, "job-succeeded", job_id=job_id)
        assert done["attempt"] == 1 and done["duration_ms"] >= 0 and done["result"] == str(n)
    [broken] = of(events, "job-failed", job_id=seen["broken"])
    assert broken["final"] is True and broken["exc_message"] == "broken 7" and broken["dead_letter_queue"]
    [vetoed] = of(events, "job-failed", job_id=seen["vetoed"])
    assert vetoed["final"] is True and vetoed["exc_message"] == "message failed by a middleware"
    assert not of(events, "job-succeeded", job_id=seen["vetoed"]) and not of(events, "job-succeeded", job_id=seen["broken"])


def test_sigterm_lets_the_running_job_finish(make_lab: Callable[..., DramatiqLab]) -> None:
    lab = make_lab()
    worker = lab.worker()
    lab.wait(lambda ev: of(ev, "worker-online"))
    [job] = lab.send(("sleepy", [1.5], {}, {}))
    lab.wait(lambda ev: of(ev, "job-started", job_id=job))
    lab.stop(worker)
    events = lab.wait(lambda ev: of(ev, "worker-offline"))
    [ok] = of(events, "job-succeeded", job_id=job)
    assert events.index(ok) < events.index(of(events, "worker-offline")[0])


def test_sigkill_stops_heartbeats(make_lab: Callable[..., DramatiqLab]) -> None:
    lab = make_lab()
    lab.worker()
    lab.wait(lambda ev: of(ev, "worker-online"))
    [job] = lab.send(("sleepy", [30], {}, {}))
    events = lab.wait(lambda ev: of(ev, "job-started", job_id=job) and of(ev, "worker-heartbeat", inflight=1))
    [started] = of(events, "job-started", job_id=job)
    os.kill(started["pid"], signal.SIGKILL)  # the worker process, not the dramatiq master
    killed_at = time.time()
    time.sleep(2.0)
    events = lab.events()
    beats = of(events, "worker-heartbeat", worker=started["worker"])
    assert beats and max(b["ts"] for b in beats) < killed_at
    assert not [e for e in events if e.get("job_id") == job and e["type"] != "job-enqueued" and e["type"] != "job-started"]
    assert not of(events, "worker-offline")


def test_periodiq_schedules(make_lab: Callable[..., DramatiqLab]) -> None:
    lab = make_lab()
    lab.worker()
    lab.wait(lambda ev: of(ev, "worker-online"))
    scheduler = lab.periodiq()
    # periodiq fires every actor matching the current minute at start-up (or at the next minute).
    events = lab.wait(lambda ev: of(ev, "schedule-fired") and of(ev, "job-succeeded", task="every_minute"),
                      timeout=90)
    [registered] = of(events, "schedule-registered")
    assert registered["schedule"] == "every_minute" and registered["cron"] == "* * * * *"
    assert registered["timezone"] and registered["queue"] == lab.queue
    sched_id = registered["scheduler"]
    assert sched_id != of(events, "worker-online")[0]["worker"]  # announced by periodiq, not the worker

    [fired] = of(events, "schedule-fired")
    assert fired["scheduler"] == sched_id and fired["schedule"] == "every_minute"
    assert abs(fired["slot"] - fired["ts"]) < 2 and fired["slot"] == int(fired["slot"])
    [started] = of(events, "job-started", job_id=fired["job_id"])
    assert started["schedule"] == "every_minute" and started["slot"] == fired["slot"]
    lab.wait(lambda ev: of(ev, "scheduler-heartbeat", scheduler=sched_id))
    lab.stop(scheduler)

    # A fire older than periodiq's skip_delay is skipped by the worker: cancelled, not dead-lettered.
    stale = (datetime.now(timezone.utc) - timedelta(minutes=5)).replace(microsecond=0).isoformat()
    [old] = lab.send(("every_minute", [], {}, {"scheduled_at": stale}))
    events = lab.wait(lambda ev: of(ev, "job-cancelled", job_id=old))
    [skip] = of(events, "job-cancelled", job_id=old)
    assert skip["reason"] == "skipped" and skip["exc_message"] == "skipped by PeriodiqMiddleware"
    assert "payload" not in skip and "dead_letter_queue" not in skip
    assert len(of(events, "schedule-fired")) == 1  # the stale send is not a fire: it came from no periodiq


def test_jobs_reach_the_dashboard(make_lab: Callable[..., DramatiqLab], flowerbed_server: Callable[..., Any]) -> None:
    """Through a real ``flowerbed serve``: states, attempts, correlation, and a killed worker going lost."""
    lab = make_lab()
    server = flowerbed_server(lab.stream, extra_env={"FLOWERBED_LOST_AFTER_S": "2"})
    lab.worker()
    lab.wait(lambda ev: of(ev, "worker-online"))  # the consumer group reads from "$": start after it
    ok, flaky, doomed, slow, parent = lab.send(
        ("ok", [21], {"password": "hunter2"}, {}), ("flaky", ["k"], {}, {}), ("doomed", [3], {}, {}),
        ("slow", [], {}, {}), ("parent", [], {}, {}),
    )

    def job(job_id: str) -> dict[str, Any]:
        return server.get_json(f"/api/jobs/dramatiq/dqtest/{job_id}")

    finals = {ok: "succeeded", flaky: "succeeded", doomed: "failed", slow: "failed", parent: "succeeded"}
    server.wait_for(lambda: all(job(j)["state"] == s for j, s in finals.items()), timeout=40)
    assert "hunter2" not in job(ok)["args"]
    assert (job(flaky)["attempt"], job(flaky)["max_attempts"]) == (2, 4)
    dead = job(doomed)
    assert (dead["attempt"], dead["max_attempts"], dead["exc_type"]) == (3, 3, "ValueError")
    assert [a["attempt"] for a in dead["attempts"]] == [1, 2, 3]
    assert "500 ms" in job(slow)["exc_message"]
    child = lab.redis.get(f"{lab.prefix}:child").decode()
    assert job(child)["state"] == "succeeded"
    events = lab.events()
    assert of(events, "job-enqueued", job_id=child)[0]["correlation_id"] == \
        of(events, "job-started", job_id=parent)[0]["correlation_id"]

    [sleeper] = lab.send(("sleepy", [60], {}, {}))
    [started] = of(lab.wait(lambda ev: of(ev, "job-started", job_id=sleeper)), "job-started", job_id=sleeper)
    server.wait_for(lambda: job(sleeper)["state"] == "running")
    os.kill(started["pid"], signal.SIGKILL)
    server.wait_for(lambda: [w["state"] for w in server.get_json("/api/workers?lib=dramatiq")["items"]] == ["lost"],
                    timeout=20)
    assert job(sleeper)["state"] in ("running", "lost")  # "lost" once the dashboard folds it in
