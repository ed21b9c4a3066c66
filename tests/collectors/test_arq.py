"""collectors.arq against real arq 0.28 workers (their own virtualenv) and the real Redis."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from collectors.arq import cron_spec
from tests.collectors.harness import Lab, of
from tests.conftest import ROOT
from tests.libenvs import ensure_env

APP = "tests.collectors.apps.arq_app"


class ArqLab(Lab):
    """One test's arq world: a private prefix (queue, keys), a private stream, its worker processes."""

    tag = "arq"
    app = "arqtest"
    stop_timeout = 20.0

    @property
    def workers(self) -> list[subprocess.Popen[bytes]]:
        return self.procs

    def worker(self, **env: str) -> subprocess.Popen[bytes]:
        return self.spawn("arq", f"{APP}.WorkerSettings", env=env)

    def client(self, cmd: str, arg: Any) -> list[str]:
        return self.run_module("tests.collectors.apps.arq_client", cmd,
                               arg if isinstance(arg, str) else json.dumps(arg)).split()

    def enqueue(self, *calls: tuple[str, list[Any], dict[str, Any]]) -> list[str]:
        return self.client("enqueue", [list(c) for c in calls])


@pytest.fixture(scope="module")
def arq_bin() -> Path:
    return ensure_env("arq")


@pytest.fixture
def lab(arq_bin: Path, stream_name: str, tmp_path: Path) -> Iterator[ArqLab]:
    lab = ArqLab(arq_bin, stream_name, tmp_path)
    yield lab
    lab.close()


def test_cron_spec_is_a_croniter_string() -> None:
    def job(**kw: Any) -> SimpleNamespace:
        base = dict(month=None, day=None, weekday=None, hour=None, minute=None, second=0)
        return SimpleNamespace(**{**base, **kw})

    assert cron_spec(job()) == "* * * * *"
    assert cron_spec(job(hour=3, minute={0, 30})) == "0,30 3 * * *"
    assert cron_spec(job(weekday="mon", hour=9, minute=0)) == "0 9 * * 1"
    assert cron_spec(job(weekday={5, 6}, minute=0)) == "0 * * * 0,6"  # arq's sat, sun
    assert cron_spec(job(second={0, 15, 30, 45})) == "* * * * * 0,15,30,45"
    assert cron_spec(job(day=1, month=1, second=None)) == "* * 1 1 * *"


@pytest.mark.libenv
def test_instrument_returns_settings_arq_accepts(arq_bin: Path) -> None:
    """Class in, class of the same name out (attributes intact); dict in, dict out; twice is once."""
    code = """
import collectors.arq as ca
from arq.worker import Function, create_worker
from tests.collectors.apps.arq_app import Settings, WorkerSettings
assert WorkerSettings.__name__ == 'Settings' and WorkerSettings.queue_name == Settings.queue_name
assert all(isinstance(f, Function) for f in WorkerSettings.functions)
assert Settings.on_startup is not WorkerSettings.on_startup        # the user's class is untouched
assert ca.instrument(WorkerSettings) is WorkerSettings             # instrumenting twice is a no-op
d = ca.instrument({'functions': [Settings.functions[0]], 'queue_name': 'q'})
assert isinstance(d, dict) and d['queue_name'] == 'q' and d['on_startup'] is not None
w = create_worker(WorkerSettings)
assert '_flowerbed' in w.ctx and w.functions['too_slow'].timeout_s == 0.5
print('ok')
"""
    out = subprocess.run([str(arq_bin / "python"), "-c", code], cwd=ROOT, capture_output=True, timeout=60)
    assert out.stdout.decode().strip() == "ok", out.stderr.decode()


@pytest.mark.libenv
@pytest.mark.slow
def test_worker_reports_every_outcome(lab: ArqLab) -> None:
    # Enqueued before any worker runs, with a 0.3 s expiry: arq will find it expired.
    [expired] = lab.enqueue(("ok", [0], {"_expires": 0.3}))
    time.sleep(0.6)
    worker = lab.worker()
    lab.wait(lambda ev: of(ev, "worker-online"))
    ok, flaky, boom, exhausted, slow = lab.enqueue(
        ("ok", [21], {"password": "hunter2"}),
        ("flaky", ["k"], {}),
        ("boom", [7], {}),
        ("always_retry", [], {}),
        ("too_slow", [5], {}),
    )

    def done(ev: list[dict[str, Any]]) -> bool:
        return bool(
            of(ev, "job-succeeded", job_id=ok) and of(ev, "job-succeeded", job_id=flaky)
            and of(ev, "job-failed", job_id=boom) and of(ev, "job-failed", job_id=exhausted, final=True)
            and of(ev, "job-failed", job_id=slow) and of(ev, "job-cancelled", job_id=expired)
            and len(of(ev, "worker-heartbeat")) >= 2
        )

    lab.wait(done)
    assert lab.stop(worker) == 0
    events = lab.wait(lambda ev: of(ev, "worker-offline"))

    [online] = of(events, "worker-online")
    assert online["lib"] == "arq" and online["app"] == "arqtest"
    assert online["concurrency"] == 4 and online["queues"] == [f"{lab.prefix}:arq"]
    wid = online["worker"]
    assert {e["worker"] for e in events if e["type"].startswith("job-") and e["type"] != "job-enqueued"} == {wid}

    # Success: enqueued by the producer (size, redacted preview), started, succeeded.
    [enq] = of(events, "job-enqueued", job_id=ok)
    assert enq["task"] == "ok" and enq["queue"] == f"{lab.prefix}:arq" and enq["attempt"] == 1
    assert enq["payload_bytes"] > 0 and "hunter2" not in json.dumps(events)
    assert json.loads(enq["args"]) == {"args": [21], "kwargs": {"password": "[redacted]"}}
    [started] = of(events, "job-started", job_id=ok)
    assert started["attempt"] == 1 and started["max_attempts"] == 5 and started["enqueued_at"] <= started["ts"]
    assert json.loads(started["args"]) == json.loads(enq["args"])  # given back from the row it rode on, or alone
    [succeeded] = of(events, "job-succeeded", job_id=ok)
    assert succeeded["result"] == "42" and succeeded["duration_ms"] >= 0

    # Retry then success: attempt 1 failed (not final, with arq's defer), attempt 2 succeeded.
    [f1] = of(events, "job-failed", job_id=flaky)
    assert (f1["attempt"], f1["final"], f1["retry_in_s"], f1["exc_type"]) == (1, False, 0.2, "arq.worker.Retry")
    [requeued] = of(events, "job-enqueued", job_id=flaky, attempt=2)
    assert requeued["retry_in_s"] == 0.2 and requeued["eta"] >= f1["ts"] + 0.19
    assert [e["attempt"] for e in of(events, "job-started", job_id=flaky)] == [1, 2]
    assert of(events, "job-succeeded", job_id=flaky)[0]["attempt"] == 2

    # A plain exception is final at once, with its traceback and what it takes to enqueue it again.
    [b] = of(events, "job-failed", job_id=boom)
    assert b["final"] is True and b["exc_type"] == "ValueError" and b["exc_message"] == "boom 7"
    assert 'raise ValueError(f"boom {n}")' in b["traceback"]
    assert b["payload"] == {"function": "boom", "args": [7], "kwargs": {}, "queue_name": f"{lab.prefix}:arq",
                            "job_id": boom}

    # max_tries=2: two real attempts retry, then the pickup that finds it exhausted is the final failure.
    attempts = [(e["attempt"], e["final"]) for e in of(events, "job-failed", job_id=exhausted)]
    assert attempts == [(1, False), (2, False), (3, True)]
    [last] = of(events, "job-failed", job_id=exhausted, final=True)
    assert last["reason"] == "max-tries" and last["exc_message"] == "max 2 retries exceeded"
    assert last["max_attempts"] == 2 and last["payload"]["function"] == "always_retry"
    assert len(of(events, "job-started", job_id=exhausted)) == 2
    # (sorted: the producer's first enqueue can reach the stream after the worker's later ones)
    assert sorted(e["attempt"] for e in of(events, "job-enqueued", job_id=exhausted)) == [1, 2, 3]

    # job_timeout: a final failure that names the limit, with where the job was when it was cut off.
    [t] = of(events, "job-failed", job_id=slow)
    assert t["final"] is True and t["reason"] == "timeout" and t["exc_type"] == "TimeoutError", t
    assert "0.5 s" in t["exc_message"] and "asyncio.sleep(seconds)" in t["traceback"]
    assert 0.4 < t["duration_ms"] / 1000 < 2.0

    # Expired before a worker started it.
    [x] = of(events, "job-cancelled", job_id=expired)
    assert x["reason"] == "expired" and x["attempt"] == 1 and "task" not in x  # arq lost the payload

    # Heartbeats carry the loop lag and counters; the user's own hooks still ran.
    beat = of(events, "worker-heartbeat")[-1]
    assert beat["concurrency"] == 4 and "loop_lag_ms" in beat and beat["rss_bytes"] > 0
    offline = of(events, "worker-offline")[0]
    assert offline["processed"] == 9 and offline["failed"] == 7  # attempts ended, and those not succeeded
    assert int(lab.redis.get(f"{lab.prefix}:user-startup")) == 1
    assert int(lab.redis.get(f"{lab.prefix}:user-shutdown")) == 1
    assert int(lab.redis.get(f"{lab.prefix}:user-job-start")) == len(of(events, "job-started")) == 7


@pytest.mark.libenv
@pytest.mark.slow
def test_abort_running_and_waiting_jobs(lab: ArqLab) -> None:
    lab.worker()
    lab.wait(lambda ev: of(ev, "worker-online"))
    running, waiting = lab.enqueue(("sleepy", [30], {}), ("sleepy", [30], {"_defer_by": 60}))
    lab.wait(lambda ev: of(ev, "job-started", job_id=running))
    lab.client("abort", running)
    lab.client("abort", waiting)
    events = lab.wait(lambda ev: of(ev, "job-cancelled", job_id=running) and of(ev, "job-cancelled", job_id=waiting))
    [r] = of(events, "job-cancelled", job_id=running)
    assert r["reason"] == "aborted" and r["attempt"] == 1 and r["duration_ms"] > 0
    [w] = of(events, "job-cancelled", job_id=waiting)
    assert w["reason"] == "aborted" and w["task"] == "sleepy" and "before it started" in w["exc_message"]
    assert not of(events, "job-started", job_id=waiting)


@pytest.mark.libenv
@pytest.mark.slow
def test_sigterm_cuts_a_job_that_arq_runs_again(lab: ArqLab) -> None:
    first = lab.worker()
    lab.wait(lambda ev: of(ev, "worker-online"))
    [job] = lab.enqueue(("sleepy", [30], {}))
    lab.wait(lambda ev: of(ev, "job-started", job_id=job))
    lab.stop(first)
    events = lab.wait(lambda ev: of(ev, "worker-offline"))
    [cut] = of(events, "job-failed", job_id=job)
    assert cut["final"] is False and cut["reason"] == "shutdown" and cut["attempt"] == 1
    assert events.index(cut) < events.index(of(events, "worker-offline")[0])

    lab.worker()
    events = lab.wait(lambda ev: of(ev, "job-started", job_id=job, attempt=2))


@pytest.mark.libenv
@pytest.mark.slow
def test_sigkill_stops_heartbeats(lab: ArqLab) -> None:
    """The collector's side of a lost job: heartbeats stop, and no terminal event is ever sent."""
    proc = lab.worker()
    online = lab.wait(lambda ev: of(ev, "worker-online"))
    wid = of(online, "worker-online")[0]["worker"]
    [job] = lab.enqueue(("sleepy", [30], {}))
    lab.wait(lambda ev: of(ev, "job-started", job_id=job) and of(ev, "worker-heartbeat", inflight=1))
    lab.stop(proc, signal.SIGKILL)
    killed_at = time.time()
    time.sleep(2.0)  # four heartbeat intervals
    events = lab.events()
    beats = of(events, "worker-heartbeat", worker=wid)
    assert beats and max(b["ts"] for b in beats) < killed_at
    assert not [e for e in events if e.get("job_id") == job and e["type"] in
                ("job-succeeded", "job-failed", "job-cancelled")]
    assert not of(events, "worker-offline")


@pytest.mark.libenv
@pytest.mark.slow
def test_cron_fires_once_per_slot_across_two_workers(lab: ArqLab) -> None:
    for _ in range(2):
        lab.worker(FBTEST_CRON="1")

    def enough(ev: list[dict[str, Any]]) -> bool:
        return len(of(ev, "worker-online")) == 2 and len(of(ev, "schedule-fired")) >= 4

    lab.wait(enough, timeout=40)
    for proc in lab.workers:
        lab.stop(proc)
    events = lab.wait(lambda ev: len(of(ev, "worker-offline")) == 2)
    workers = {e["worker"] for e in of(events, "worker-online")}

    registered = of(events, "schedule-registered")
    assert {e["scheduler"] for e in registered} == workers
    assert {(e["schedule"], e["cron"]) for e in registered} == {("tick", "* * * * * " + ",".join(map(str, range(60))))}
    assert {e["scheduler"] for e in of(events, "scheduler-heartbeat")} <= workers

    fired = of(events, "schedule-fired")
    slots = [e["slot"] for e in fired]
    assert len(slots) == len(set(slots)), "a slot fired twice"
    assert all(s == int(s) for s in slots)  # microsecond=0: whole seconds
    for fire in fired:
        assert fire["job_id"] == f"tick:{int(fire['slot'] * 1000)}"
        assert fire["scheduler"] in workers and fire["scheduler"] == fire["worker"]
        [enq] = of(events, "job-enqueued", job_id=fire["job_id"])
        assert enq["worker"] == fire["scheduler"] and enq["schedule"] == "tick" and enq["eta"] == fire["slot"]
    ran = {e["job_id"] for e in of(events, "job-started", task="tick")}
    assert ran <= {f["job_id"] for f in fired}
    for job_id in ran:
        assert len(of(events, "job-started", job_id=job_id)) == 1
        [s] = of(events, "job-started", job_id=job_id)
        assert s["schedule"] == "tick" and s["max_attempts"] == 1
    assert int(lab.redis.get(f"{lab.prefix}:ticks")) == len(ran)


@pytest.mark.libenv
@pytest.mark.slow
def test_jobs_reach_the_dashboard(lab: ArqLab, flowerbed_server: Callable[..., Any]) -> None:
    """Through a real ``flowerbed serve``: states, attempts, correlation, and a killed worker going lost."""
    server = flowerbed_server(lab.stream, extra_env={"FLOWERBED_LOST_AFTER_S": "2"})
    proc = lab.worker()
    lab.wait(lambda ev: of(ev, "worker-online"))  # the consumer group reads from "$": start after it
    ok, flaky, boom, exhausted, slow, parent = lab.enqueue(
        ("ok", [21], {"password": "hunter2"}), ("flaky", ["k"], {}), ("boom", [7], {}),
        ("always_retry", [], {}), ("too_slow", [5], {}), ("parent", [], {}),
    )

    def job(job_id: str) -> dict[str, Any]:
        return server.get_json(f"/api/jobs/arq/arqtest/{job_id}")

    finals = {ok: "succeeded", flaky: "succeeded", boom: "failed", exhausted: "failed", slow: "failed",
              parent: "succeeded"}
    server.wait_for(lambda: all(job(j)["state"] == s for j, s in finals.items()), timeout=40)
    assert job(ok)["duration_ms"] is not None and "hunter2" not in job(ok)["args"]
    assert (job(flaky)["attempt"], job(flaky)["max_attempts"]) == (2, 5)
    dead = job(exhausted)
    assert (dead["attempt"], dead["max_attempts"], dead["exc_message"]) == (3, 2, "max 2 retries exceeded")
    assert "0.5 s" in job(slow)["exc_message"]
    [child] = [e for e in of(lab.events(), "job-enqueued", task="ok") if e["job_id"] != ok]
    assert child["correlation_id"] == parent and job(child["job_id"])["state"] == "succeeded"

    [sleeper] = lab.enqueue(("sleepy", [60], {}))
    lab.wait(lambda ev: of(ev, "job-started", job_id=sleeper))
    server.wait_for(lambda: job(sleeper)["state"] == "running")
    lab.stop(proc, signal.SIGKILL)
    server.wait_for(lambda: [w["state"] for w in server.get_json("/api/workers?lib=arq")["items"]] == ["lost"],
                    timeout=20)
    assert job(sleeper)["state"] in ("running", "lost")  # "lost" once the dashboard folds it in


@pytest.mark.libenv
@pytest.mark.slow
def test_timeouts_are_never_taken_for_shutdown(lab: ArqLab) -> None:
    out = subprocess.run([str(lab.bindir / "python"), "-m", "tests.collectors.apps.arq_timeouts", "80"],
                         cwd=ROOT, env=lab.env, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    failed = of(lab.events(), "job-failed")
    assert len(failed) == 80
    assert {(e["final"], e.get("reason")) for e in failed} == {(True, "timeout")}
