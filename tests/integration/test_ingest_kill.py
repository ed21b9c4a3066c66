"""Reliability: ``kill -9`` of a real ingest process mid-stream, a restart, and every job exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis

from collectors.emitter import Emitter
from dashboard.bench.workload import events as workload
from tests.integration.test_ingest import REDIS_URL, acked_all, pg_database, query

pytestmark = pytest.mark.slow

EVENTS = 50_000


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/flowerbed.db"
    else:
        with pg_database() as url:
            yield url


def _start(stream: str, url: str, consumer: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "dashboard.ingest", "--redis-url", REDIS_URL, "--stream", stream,
           "--database-url", url, "--consumer", consumer, "--batch-size", "2000", "--claim-idle-ms", "500",
           "--lost-after-s", "1e9", "--log-level", "warning"]
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL)


def _acked(client: redis.Redis, stream: str) -> int:
    for group in client.xinfo_groups(stream):
        return int(group.get("entries-read") or 0) - int(group["pending"])
    return 0


def test_kill_9_mid_stream_then_restart_keeps_every_job_exactly_once(store_url: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    stream = f"fbtest:{uuid.uuid4().hex}"
    expected: dict[tuple[str, str, str], str] = {}
    job_event_ids: set[str] = set()
    terminal: Counter[str] = Counter()
    emitter = Emitter(REDIS_URL, stream, maxlen=0, buffer_size=EVENTS * 2)
    for event in workload(EVENTS, seed=7, expected=expected):
        if "job_id" in event and event["id"] not in job_event_ids:
            job_event_ids.add(event["id"])
            if event["type"] == "job-succeeded":
                terminal["succeeded"] += 1
            elif event["type"] == "job-failed":
                terminal["failed" if event.get("final") else "retried"] += 1
        emitter.emit(event)
    assert emitter.flush(60)
    emitter.close()
    assert emitter.dropped == 0
    total = client.xlen(stream)
    procs: list[psutil.Process] = []
    first = _start(stream, store_url, "first")
    try:
        deadline = time.monotonic() + 120
        while _acked_safe(client, stream) < total * 0.3:
            assert first.poll() is None, "ingest exited early"
            assert time.monotonic() < deadline, "ingest made no progress"
            time.sleep(0.01)
        procs = [psutil.Process(first.pid), *psutil.Process(first.pid).children(recursive=True)]
        done_at_kill = _acked(client, stream)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        assert done_at_kill < total, "the kill came too late to test anything"
        # The writer child must not outlive its parent (it would race the restarted ingest).
        gone, alive = psutil.wait_procs(procs, timeout=10)
        assert not alive, f"left running after kill -9: {alive}"

        second = _start(stream, store_url, "second")  # claims the dead consumer's pending entries
        try:
            deadline = time.monotonic() + 180
            while not acked_all(client, stream, total):
                assert second.poll() is None, "restarted ingest exited"
                assert time.monotonic() < deadline, "restarted ingest did not finish"
                time.sleep(0.05)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(60) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        for proc in procs:
            if proc.is_running():
                proc.kill()
        client.delete(stream)
        client.close()

    rows = query(store_url, "SELECT lib, app, job_id, state FROM jobs")
    assert len(rows) == len(expected)
    keys = Counter((lib, app, job_id) for lib, app, job_id, _ in rows)
    assert max(keys.values()) == 1, "a job is stored twice"
    assert {(lib, app, job_id): state for lib, app, job_id, state in rows} == expected
    assert query(store_url, "SELECT count(*) FROM job_events") == [(len(job_event_ids),)]
    counted = dict(query(store_url, "SELECT outcome, sum(n) FROM rollup_minute WHERE outcome <> 'wait' "
                                    "GROUP BY outcome"))
    assert counted == dict(terminal), "an event was counted twice (or not at all) in the rollups"


def _acked_safe(client: redis.Redis, stream: str) -> int:
    try:
        return _acked(client, stream)
    except redis.ResponseError:  # the group does not exist yet
        return 0
