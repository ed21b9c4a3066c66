"""Ingest against real Redis and real stores (a SQLite file, and a fresh PostgreSQL database)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from collectors.constants import CONSUMER_GROUP
from collectors.emitter import Emitter
from collectors.events import ROW_COLS, build, rows_entry
from dashboard.config import Settings
from dashboard.ingest import run_ingest

REDIS_URL = "redis://127.0.0.1:6379/0"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


# --- fixtures and helpers ----------------------------------------------------------------------


async def _pg(sql: str, database: str = "postgres") -> None:
    import asyncpg

    conn = await asyncpg.connect(user="postgres", host="127.0.0.1", port=5432, database=database)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    name = f"fb_{uuid.uuid4().hex[:16]}"
    asyncio.run(_pg(f"CREATE DATABASE {name}"))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(_pg(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/flowerbed.db"
    else:
        with pg_database() as url:
            yield url


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Run one SELECT on either store."""
    if url.startswith("sqlite"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            return [tuple(r) for r in db.execute(sql).fetchall()]
        finally:
            db.close()

    async def run() -> list[tuple[Any, ...]]:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(run())


def wait_until(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def ingesting(settings: Settings) -> Iterator[threading.Thread]:
    """Run ingest in a thread until the block ends; its return code must be 0."""
    stop = threading.Event()
    ready = threading.Event()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(run_ingest(settings, stop, ready.set)), daemon=True)
    thread.start()
    try:
        assert ready.wait(60), "ingest did not start"
        yield thread
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive(), "ingest did not stop"
    assert result == [0]


def settings_for(stream: str, url: str, **changes: Any) -> Settings:
    return Settings(redis_url=REDIS_URL, stream=stream, database_url=url, consumer=f"test-{uuid.uuid4().hex[:6]}",
                    block_ms=50, **changes)


def pending(client: redis.Redis, stream: str) -> int:
    return int(client.xpending(stream, CONSUMER_GROUP)["pending"])


def acked_all(client: redis.Redis, stream: str, n: int) -> bool:
    groups = {g["name"]: g for g in client.xinfo_groups(stream)}
    group = groups.get(CONSUMER_GROUP.encode())
    return bool(group and (group.get("entries-read") or 0) >= n and not group["pending"])


def emit(stream: str, events: list[dict[str, Any]]) -> None:
    emitter = Emitter(REDIS_URL, stream, buffer_size=len(events) + 10)
    for event in events:
        emitter.emit(event)
    assert emitter.flush(10)
    emitter.close()
    assert emitter.dropped == 0


def job(job_id: str, outcome: str, worker: str = "w1", lib: str = "arq") -> list[dict[str, Any]]:
    """A job's events; ``outcome`` succeeded, failed, retrying or running."""
    base = {"job_id": job_id, "task": "tasks.add", "queue": "default"}
    events = [build("job-enqueued", lib, "shop", attempt=1, args='{"args":[1]}', **base),
              build("job-started", lib, "shop", attempt=1, worker=worker, **base)]
    if outcome == "succeeded":
        events.append(build("job-succeeded", lib, "shop", attempt=1, worker=worker, duration_ms=12.5, **base))
    elif outcome in ("failed", "retrying"):
        events.append(build("job-failed", lib, "shop", attempt=1, worker=worker, final=outcome == "failed",
                            exc_type="ValueError", exc_message="bad", traceback="Traceback…", **base))
    return events


def hold_write_lock(url: str) -> Callable[[], None]:
    """Keep every other writer from committing until the returned function is called."""
    if url.startswith("sqlite"):
        blocker = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")

        def release_sqlite() -> None:
            blocker.execute("ROLLBACK")
            blocker.close()

        return release_sqlite
    locked, done = threading.Event(), threading.Event()

    async def hold() -> None:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
                locked.set()
                while not done.is_set():
                    await asyncio.sleep(0.02)
        finally:
            await conn.close()

    thread = threading.Thread(target=lambda: asyncio.run(hold()), daemon=True)
    thread.start()
    assert locked.wait(10)

    def release_pg() -> None:
        done.set()
        thread.join(10)

    return release_pg


# --- the tests ---------------------------------------------------------------------------------


def test_events_from_the_emitter_land_in_the_store(client: redis.Redis, stream: str, store_url: str) -> None:
    events = []
    for i in range(30):
        events += job(f"j{i}", ("succeeded", "failed", "retrying", "running")[i % 4])
    events.append(build("worker-online", "arq", "shop", worker="w1", host="h1", pid=10, concurrency=4))
    events.append(build("worker-heartbeat", "arq", "shop", worker="w1", host="h1", pid=10, inflight=2, custom=1))
    events.append(build("schedule-registered", "arq", "shop", schedule="nightly", cron="0 3 * * *", task="t"))
    events.append(build("schedule-fired", "arq", "shop", schedule="nightly", slot=1.0, scheduler="s1"))
    events.append(build("scheduler-heartbeat", "arq", "shop", scheduler="s1", host="h1", pid=11))
    events.append(build("job-progress", "arq", "shop", job_id="j0", percent=50, mood="fine"))
    events.append(dict(events[0]))  # a duplicate delivery
    emit(stream, events)
    n = len(events)
    with ingesting(settings_for(stream, store_url)):
        wait_until(lambda: acked_all(client, stream, n), what="every entry acknowledged")
    states = dict(query(store_url, "SELECT state, count(*) FROM jobs GROUP BY state"))
    assert states == {"succeeded": 8, "failed": 8, "retrying": 7, "running": 7}
    assert query(store_url, "SELECT count(*), count(DISTINCT job_id) FROM jobs") == [(30, 30)]
    assert query(store_url, "SELECT count(*) FROM job_events") == [(30 * 3 - 7 + 1,)]
    extra = query(store_url, "SELECT extra FROM job_events WHERE type = 'job-progress'")
    assert extra and '"mood":"fine"' in extra[0][0]
    row = query(store_url, "SELECT state, exc_type, exc_message, worker FROM jobs WHERE job_id = 'j1'")
    assert row == [("failed", "ValueError", "bad", "w1")]
    assert query(store_url, "SELECT state, concurrency, inflight FROM workers") == [("online", 4, 2)]
    assert query(store_url, "SELECT name, cron, fires FROM schedules") == [("nightly", "0 3 * * *", 1)]
    assert query(store_url, "SELECT scheduler, host FROM schedulers") == [("s1", "h1")]
    assert query(store_url, "SELECT count(*) FROM schedule_fires") == [(1,)]
    meta = dict(query(store_url, "SELECT key, value FROM meta"))
    assert meta["events_ingested"] == n - 1 and meta["duplicates"] == 1
    outcomes = dict(query(store_url, "SELECT outcome, sum(n) FROM rollup_minute GROUP BY outcome"))
    assert outcomes == {"succeeded": 8, "failed": 8, "retried": 7, "wait": 30}
    hours = dict(query(store_url, "SELECT outcome, sum(n) FROM rollup_hour GROUP BY outcome"))
    assert hours == outcomes
    assert query(store_url, "SELECT sum(b2) FROM rollup_minute WHERE outcome = 'succeeded'") == [(8,)]


def test_applying_the_same_entries_twice_changes_nothing(client: redis.Redis, stream: str, store_url: str) -> None:
    events = [e for i in range(10) for e in job(f"j{i}", "succeeded")]
    emit(stream, events)
    settings = settings_for(stream, store_url)
    with ingesting(settings):
        wait_until(lambda: acked_all(client, stream, len(events)), what="first pass")
    client.xgroup_destroy(stream, CONSUMER_GROUP)  # the group starts over: every entry is delivered again
    with ingesting(settings):
        wait_until(lambda: acked_all(client, stream, len(events)), what="second pass")
    assert query(store_url, "SELECT count(*) FROM jobs") == [(10,)]
    assert query(store_url, "SELECT count(*) FROM job_events") == [(30,)]
    assert query(store_url, "SELECT sum(n) FROM rollup_minute WHERE outcome = 'succeeded'") == [(10,)]
    assert dict(query(store_url, "SELECT key, value FROM meta"))["duplicates"] == 30


def test_malformed_entries_are_quarantined_and_acknowledged(client: redis.Redis, stream: str,
                                                            store_url: str) -> None:
    good = job("ok", "succeeded")
    emit(stream, good)
    bad = [
        {"e": b"{not json"},
        {"e": b'{"v":1,"id":"x","type":"job-started","ts":1.0,"lib":"arq","app":"a"}'},  # no job_id
        {"e": b'{"v":2,"id":"x","type":"job-started","ts":1.0,"lib":"arq","app":"a","job_id":"j"}'},
        {"e": b'{"v":1,"id":"x","type":"job-started","ts":"soon","lib":"arq","app":"a","job_id":"j"}'},
        {"e": b"x" * (300 * 1024)},
        {"other": b"field"},
        {"e": b"[1, 2]"},
    ]
    for fields in bad:
        client.xadd(stream, fields)
    emit(stream, job("ok2", "failed"))
    n = len(good) * 2 + len(bad)
    with ingesting(settings_for(stream, store_url)):
        wait_until(lambda: acked_all(client, stream, n), what="every entry acknowledged")
    reasons = [r[0] for r in query(store_url, "SELECT reason FROM quarantine ORDER BY id")]
    assert len(reasons) == len(bad)
    assert reasons[0].startswith("not JSON")
    assert "job_id" in reasons[1] and "version" in reasons[2] and "'ts'" in reasons[3]
    assert "limit" in reasons[4] and "'e'" in reasons[5] and "not an object" in reasons[6]
    raw = query(store_url, "SELECT raw, raw_bytes FROM quarantine WHERE reason LIKE 'not JSON%'")
    assert raw == [("{not json", 9)]
    assert query(store_url, "SELECT job_id, state FROM jobs ORDER BY job_id") == [("ok", "succeeded"),
                                                                                  ("ok2", "failed")]
    assert dict(query(store_url, "SELECT key, value FROM meta"))["quarantined"] == len(bad)


def test_entries_are_acknowledged_only_after_the_commit(client: redis.Redis, stream: str, store_url: str) -> None:
    settings = settings_for(stream, store_url)
    with ingesting(settings):  # creates the schema and the group
        pass
    events = [e for i in range(5) for e in job(f"j{i}", "succeeded")]
    emit(stream, events)  # all in the stream before ingest starts, so one read takes the whole batch
    release = hold_write_lock(store_url)
    try:
        with ingesting(settings):
            wait_until(lambda: pending(client, stream) == len(events), what="the batch delivered")
            time.sleep(1.0)
            assert pending(client, stream) == len(events), "acknowledged before the commit"
            release()
            release = lambda: None  # noqa: E731
            wait_until(lambda: acked_all(client, stream, len(events)), what="acknowledged after the commit")
            assert query(store_url, "SELECT count(*) FROM jobs") == [(5,)]
    finally:
        release()


def test_a_caught_up_ingest_acknowledges_its_last_batch_at_once(client: redis.Redis, stream: str,
                                                               store_url: str) -> None:
    """With nothing more to read, the last committed batch is acknowledged right away, not at the next
    send (the lost-worker check's, every 5 s with ``lost_after_s=60``)."""
    with ingesting(settings_for(stream, store_url, lost_after_s=60.0)):
        events = [e for i in range(3) for e in job(f"j{i}", "succeeded")]
        emit(stream, events)
        wait_until(lambda: acked_all(client, stream, len(events)), timeout=2.5,
                   what="the last batch acknowledged while caught up")
        assert query(store_url, "SELECT count(*) FROM jobs") == [(3,)]


def test_pending_entries_of_a_dead_consumer_are_claimed(client: redis.Redis, stream: str, store_url: str) -> None:
    events = [e for i in range(20) for e in job(f"j{i}", "succeeded")]
    emit(stream, events)
    client.xgroup_create(stream, CONSUMER_GROUP, id="0")
    got = client.xreadgroup(CONSUMER_GROUP, "dead-one", {stream: ">"}, count=25)  # read, never acked
    assert len(got[0][1]) == 25
    with ingesting(settings_for(stream, store_url, claim_idle_ms=200)):
        wait_until(lambda: acked_all(client, stream, len(events)), what="claimed and acknowledged")
    assert query(store_url, "SELECT count(*), min(state), max(state) FROM jobs") == [(20, "succeeded", "succeeded")]
    assert query(store_url, "SELECT count(*) FROM job_events") == [(60,)]


def test_a_silent_worker_and_its_running_jobs_become_lost(client: redis.Redis, stream: str, store_url: str) -> None:
    old = time.time() - 120
    events = [build("worker-heartbeat", "arq", "shop", worker="w-old", ts=old),
              *[dict(e, ts=old) for e in job("stuck", "running", worker="w-old")],
              *[dict(e, ts=old) for e in job("done", "succeeded", worker="w-old")],
              build("worker-heartbeat", "arq", "shop", worker="w-new"),
              *job("fine", "running", worker="w-new")]
    emit(stream, events)
    with ingesting(settings_for(stream, store_url, lost_after_s=30.0)):
        wait_until(lambda: query(store_url, "SELECT state FROM jobs WHERE job_id = 'stuck'") == [("lost",)],
                   what="the stuck job marked lost")
        # A later real event for the job outranks ``lost``.
        emit(stream, [dict(build("job-succeeded", "arq", "shop", job_id="stuck", attempt=1, worker="w-old"))])
        wait_until(lambda: query(store_url, "SELECT state FROM jobs WHERE job_id = 'stuck'") == [("succeeded",)],
                   what="the stuck job finished after all")
    states = dict(query(store_url, "SELECT worker, state FROM workers"))
    assert states == {"w-old": "lost", "w-new": "online"}
    assert dict(query(store_url, "SELECT job_id, state FROM jobs")) == {"stuck": "succeeded", "done": "succeeded",
                                                                         "fine": "running"}
    assert query(store_url, "SELECT sum(n) FROM rollup_minute WHERE outcome = 'lost'") == [(1,)]


def test_a_change_notice_is_published_after_each_commit(client: redis.Redis, stream: str, store_url: str) -> None:
    import json

    pubsub = client.pubsub()
    pubsub.subscribe(f"{stream}:changes")
    wait_until(lambda: pubsub.get_message(timeout=0.1), what="subscribed")
    emit(stream, job("j1", "succeeded"))
    with ingesting(settings_for(stream, store_url)):
        message = wait_until(lambda: pubsub.get_message(timeout=0.1), what="a notice")
    pubsub.close()
    notice = json.loads(message["data"])
    assert notice["events"] == 3 and "jobs" in notice["topics"] and "status" in notice["topics"]
    assert notice["jobs"] == [["arq", "shop", "j1", "succeeded"]]


def test_an_end_that_carries_its_start_is_stored_as_both(client: redis.Redis, stream: str, store_url: str) -> None:
    """A collector sends one event for an attempt that ended before its start was sent (``started_at``):
    the store holds the same job row and timeline as for two events, and a redelivery adds nothing."""
    t0 = time.time() - 5
    base = {"job_id": "c1", "task": "tasks.add", "queue": "default", "attempt": 1, "worker": "w1"}
    events = [build("job-enqueued", "taskiq", "shop", ts=t0, **base),
              build("job-succeeded", "taskiq", "shop", ts=t0 + 1.5, started_at=t0 + 1.0, duration_ms=500.0,
                    args='{"args":[1]}', correlation_id="corr-1", **base)]
    emit(stream, events)
    settings = settings_for(stream, store_url)
    with ingesting(settings):
        wait_until(lambda: acked_all(client, stream, 2), what="every entry acknowledged")
    client.xgroup_destroy(stream, CONSUMER_GROUP)  # delivered again: still one start, one end
    with ingesting(settings):
        wait_until(lambda: acked_all(client, stream, 2), what="second pass")
    [(state, started, finished, args)] = query(
        store_url, "SELECT state, started_at, finished_at, args FROM jobs WHERE job_id = 'c1'")
    assert state == "succeeded" and args == '{"args":[1]}'
    assert abs(_unix(started) - (t0 + 1.0)) < 0.01 and abs(_unix(finished) - (t0 + 1.5)) < 0.01
    timeline = query(store_url, "SELECT type, extra FROM job_events ORDER BY ts")
    assert [t for t, _ in timeline] == ["job-enqueued", "job-started", "job-succeeded"]
    assert not any(extra and "started_at" in extra for _, extra in timeline)
    meta = dict(query(store_url, "SELECT key, value FROM meta"))
    assert meta["events_ingested"] == 3 and meta["duplicates"] == 3


def _unix(value: Any) -> float:
    """A stored time as unix seconds (SQLite keeps floats, PostgreSQL timestamps)."""
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def test_a_rows_entry_is_stored_as_its_events_and_a_bad_row_is_quarantined_alone(
        client: redis.Redis, stream: str, store_url: str) -> None:
    """A collector sends a busy worker's job events as rows of one ``b`` entry: each row is one event
    (an end carrying ``started_at`` two), a row that is no valid event goes to quarantine by itself,
    and a redelivery of the entry adds nothing."""
    t0 = time.time() - 5
    identity = ("celery", "shop", "h1", 42, "w1")

    def row(**fields: Any) -> list[Any]:
        return [fields.get(c) for c in ROW_COLS]

    rows = [
        row(type="job-succeeded", ts=t0 + 1.5, job_id="r1", task="tasks.add", queue="q", attempt=1,
            started_at=t0 + 1.0, duration_ms=500.0, args='{"args":[1]}', x={"result": "3"}),
        row(type="job-started", ts=t0 + 2.0, job_id="r2", task="tasks.add", attempt=1),
        row(type="job-started", ts="soon", job_id="r3", task="tasks.add"),  # not a valid event
    ]
    client.xadd(stream, {"b": orjson.dumps(rows_entry("batch-1", identity, [cell for r in rows for cell in r]))})
    settings = settings_for(stream, store_url)
    with ingesting(settings):
        wait_until(lambda: acked_all(client, stream, 1), what="the entry acknowledged")
    client.xgroup_destroy(stream, CONSUMER_GROUP)
    with ingesting(settings):
        wait_until(lambda: acked_all(client, stream, 1), what="second pass")
    assert query(store_url, "SELECT job_id, state, worker, args FROM jobs ORDER BY job_id") == [
        ("r1", "succeeded", "w1", '{"args":[1]}'), ("r2", "running", "w1", None)]
    timeline = query(store_url, "SELECT e.type, e.extra FROM job_events e JOIN jobs j ON j.id = e.job "
                                "WHERE j.job_id = 'r1' ORDER BY e.ts")
    assert [t for t, _ in timeline] == ["job-started", "job-succeeded"]
    assert '"result"' in timeline[1][1]  # a row's extra fields (x) are the event's own
    [(sid, reason, raw)] = query(store_url, "SELECT stream_id, reason, raw FROM quarantine")[:1]
    assert sid.endswith("#2") and "'ts'" in reason and '"r3"' in raw
    meta = dict(query(store_url, "SELECT key, value FROM meta"))
    assert meta["events_ingested"] == 3 and meta["duplicates"] == 3


def test_a_batch_of_rows_entries_stays_near_batch_size_events(client: redis.Redis, stream: str,
                                                             store_url: str) -> None:
    """``batch_size`` bounds events, not entries: 40 entries of 50 rows with a batch size of 200 are
    committed 200 events or fewer at a time (read by entries, all 2,000 would be one transaction), and
    each commit's notice counts its events."""
    import json

    pubsub = client.pubsub()
    pubsub.subscribe(f"{stream}:changes")
    wait_until(lambda: pubsub.get_message(timeout=0.1), what="subscribed")
    identity = ("dramatiq", "shop", "h1", 7, "w1")
    t0 = time.time() - 60
    for e in range(40):
        rows = [[{"type": "job-started", "ts": t0 + e, "job_id": f"r{e}-{i}", "task": "t", "attempt": 1}.get(c)
                 for c in ROW_COLS] for i in range(50)]
        client.xadd(stream, {"b": orjson.dumps(rows_entry(f"batch-{e}", identity, [cell for r in rows for cell in r]))})
    with ingesting(settings_for(stream, store_url, batch_size=200)):
        wait_until(lambda: acked_all(client, stream, 40), what="every entry acknowledged")
        notices = []
        while (message := pubsub.get_message(timeout=0.5)) is not None:
            if message["type"] == "message":
                notices.append(json.loads(message["data"])["events"])
    pubsub.close()
    assert sum(notices) == 2000 and max(notices) <= 200, notices
    assert query(store_url, "SELECT count(*) FROM jobs") == [(2000,)]
