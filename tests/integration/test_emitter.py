"""The emitter against real Redis servers: delivery, trimming, outages, fork and exit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from collectors.constants import MAX_EVENT_BYTES
from collectors.emitter import Emitter, row_builder
from collectors.events import ARGS_KWARGS, ROW_COLS, build, entry_events
from tests.conftest import REDIS_URL, free_port

ROOT = Path(__file__).resolve().parents[2]


def stream_events(stream: str, url: str = REDIS_URL) -> list[dict]:
    client = redis.Redis.from_url(url)
    try:
        return [event for _, fields in client.xrange(stream) for event in entry_events(fields)]
    finally:
        client.close()


def job_event(i: int) -> dict:
    return build("job-started", "arq", "test", job_id=f"job-{i}", task="t", attempt=1)


def test_events_reach_the_stream_in_order(stream_name: str) -> None:
    emitter = Emitter(REDIS_URL, stream_name, maxlen=0)
    for i in range(2000):
        emitter.emit(job_event(i))
    assert emitter.flush(10)
    emitter.close()
    got = stream_events(stream_name)
    assert [e["job_id"] for e in got] == [f"job-{i}" for i in range(2000)]
    assert emitter.stats()["sent"] == 2000 and emitter.stats()["dropped"] == 0


def test_stream_is_trimmed_approximately(stream_name: str) -> None:
    emitter = Emitter(REDIS_URL, stream_name, maxlen=1000, buffer_size=50_000)
    for i in range(20_000):
        emitter.emit(job_event(i))
    assert emitter.flush(20)
    emitter.close()
    length = redis.Redis.from_url(REDIS_URL).xlen(stream_name)
    assert 1000 <= length < 5000


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[str, callable, callable]]:
    """A redis-server of our own on a free port, which the test may stop and start again."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    procs: list[subprocess.Popen] = []

    def start() -> None:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("private redis-server did not start")

    def stop() -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)

    start()
    try:
        yield f"redis://127.0.0.1:{port}/0", start, stop
    finally:
        stop()


def test_redis_outage_never_blocks_the_caller_and_sending_resumes(private_redis) -> None:
    url, start, stop = private_redis
    stream = "fbtest:outage"
    emitter = Emitter(url, stream, maxlen=0, buffer_size=1000, max_backoff=0.2)
    for i in range(10):
        emitter.emit(job_event(i))
    assert emitter.flush(5)
    assert [e["job_id"] for e in stream_events(stream, url)] == [f"job-{i}" for i in range(10)]

    stop()  # the private server keeps nothing on disk: it comes back empty
    costs = []
    for i in range(10, 5010):
        event = job_event(i)
        t0 = time.perf_counter()
        emitter.emit(event)
        costs.append(time.perf_counter() - t0)
        if i % 500 == 0:
            time.sleep(0.02)  # let the background thread try (and fail) to send meanwhile
    costs.sort()
    # The typical emit is an append; the rare slow one waited for the GIL (a 5 ms switch
    # interval), never for the network, which would cost a connect timeout (1 s).
    assert costs[len(costs) // 2] < 20e-6, f"median emit {costs[len(costs) // 2] * 1e6:.1f} µs"
    assert costs[-1] < 0.1, f"an emit() took {costs[-1] * 1e3:.1f} ms while Redis was down"
    assert emitter.dropped >= 5000 - 1000 - emitter.batch_size
    assert emitter.send_errors >= 1

    start()
    for i in range(5010, 5020):
        emitter.emit(job_event(i))
    assert emitter.flush(15), emitter.stats()
    emitter.close()
    ids = [int(e["job_id"].split("-")[1]) for e in stream_events(stream, url)]
    # The newest survive, the oldest were dropped and counted, nothing is duplicated or reordered.
    assert ids[-10:] == list(range(5010, 5020))
    assert ids == sorted(set(ids))
    assert len(ids) + emitter.dropped == 5010


def test_unreachable_redis_at_start_is_survived(private_redis) -> None:
    url, _start, stop = private_redis
    stop()
    emitter = Emitter(url, "fbtest:never", maxlen=0, buffer_size=100)
    for i in range(300):
        emitter.emit(job_event(i))
    assert not emitter.flush(0.5)
    assert emitter.close(0.5) is False
    assert emitter.dropped == 300


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_gets_its_own_buffer_and_thread(stream_name: str) -> None:
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from collectors.emitter import Emitter
        from collectors.events import build
        em = Emitter({REDIS_URL!r}, {stream_name!r}, maxlen=0)
        em.emit(build("job-started", "celery", "t", job_id="parent-before-fork"))
        em.flush(5)
        em.emit(build("job-started", "celery", "t", job_id="parent-buffered"))  # not yet sent at fork time
        pid = os.fork()
        if pid == 0:
            em.emit(build("job-started", "celery", "t", job_id="child"))
            ok = em.flush(5)
            os._exit(0 if ok and em.stats()["emitted"] == 1 else 3)
        _, status = os.waitpid(pid, 0)
        em.flush(5)
        sys.exit(os.waitstatus_to_exitcode(status))
    """)
    result = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert result.returncode == 0
    ids = sorted(e["job_id"] for e in stream_events(stream_name))
    assert ids == ["child", "parent-before-fork", "parent-buffered"]


def test_buffer_is_flushed_at_interpreter_exit(stream_name: str) -> None:
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from collectors import CollectorConfig, get_emitter, build
        em = get_emitter(CollectorConfig.resolve(redis_url={REDIS_URL!r}, stream={stream_name!r}))
        for i in range(3000):
            em.emit(build("job-succeeded", "taskiq", "t", job_id=str(i)))
        # no flush: the atexit hook must send what is buffered
    """)
    subprocess.run([sys.executable, "-c", script], timeout=60, check=True)
    assert len(stream_events(stream_name)) == 3000


def test_a_hung_redis_never_blocks_the_caller_or_the_exit() -> None:
    """A server that accepts and never answers: the sender thread waits, the job does not."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = server.getsockname()[1]
    try:
        emitter = Emitter(f"redis://127.0.0.1:{port}/0", "fbtest:hung", maxlen=0, buffer_size=100,
                          flush_interval=0.01)
        slowest = 0.0
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            emitter.emit(job_event(0))
            slowest = max(slowest, time.perf_counter() - t0)
            time.sleep(0.001)
        assert slowest < 0.1, f"an emit() took {slowest * 1e3:.1f} ms behind a hung Redis"
        assert emitter.sent == 0 and emitter.dropped > 0
        t0 = time.monotonic()
        assert emitter.close(0.5) is False
        assert time.monotonic() - t0 < 1.0  # the exit flush keeps its deadline
    finally:
        server.close()


def test_deferred_events_are_expanded_on_the_emitter_thread(stream_name: str) -> None:
    """``(expand, *state)`` items reach the stream as the event ``expand`` builds, with the sender's identity."""
    emitter = Emitter(REDIS_URL, stream_name, maxlen=0)
    identity = ("dramatiq", "shop", "host-1", 42, "host-1:42:abc")
    threads = []

    def expand(item: tuple) -> tuple:
        _, job_id, ts = item
        threads.append(threading.current_thread().name)
        return identity, "job-started", {"job_id": job_id, "attempt": 1, "ts": ts}

    emitter.emit((expand, "deferred-1", 1700000000.5))
    emitter.emit((identity, "job-started", {"job_id": "tuple-1", "ts": 1700000001.0}))  # a Recorder's kind
    assert emitter.flush(10)
    emitter.close()
    got = stream_events(stream_name)
    assert [e["job_id"] for e in got] == ["deferred-1", "tuple-1"]
    first = got[0]
    assert (first["lib"], first["app"], first["host"], first["pid"], first["worker"]) == ("dramatiq", "shop", "host-1",
                                                                                           42, "host-1:42:abc")
    assert first["ts"] == 1700000000.5 and first["attempt"] == 1 and first["type"] == "job-started"
    assert threads == ["flowerbed-emitter"]  # built off the caller's thread


def test_a_deferred_event_that_fails_to_expand_is_dropped_and_counted(stream_name: str) -> None:
    emitter = Emitter(REDIS_URL, stream_name, maxlen=0)

    def broken(item: tuple) -> tuple:
        raise RuntimeError("bug in an adapter")

    emitter.emit((broken,))
    emitter.emit(job_event(1))
    assert emitter.flush(10)
    emitter.close()
    assert [e["job_id"] for e in stream_events(stream_name)] == ["job-1"]
    assert emitter.dropped == 1 and emitter.sent == 1


def test_an_error_reply_is_a_send_error_and_the_batch_is_retried(stream_name: str) -> None:
    """Replies are read in bulk off the socket: an error reply (here WRONGTYPE) must still fail the batch."""
    client = redis.Redis.from_url(REDIS_URL)
    client.set(stream_name, "not a stream")
    emitter = Emitter(REDIS_URL, stream_name, maxlen=0, max_backoff=0.1)
    for i in range(5):
        emitter.emit(job_event(i))
    assert not emitter.flush(0.5)
    assert emitter.send_errors >= 1 and "WRONGTYPE" in (emitter.last_error or "") and emitter.sent == 0
    client.delete(stream_name)
    assert emitter.flush(10), emitter.stats()
    emitter.close()
    client.close()
    assert [e["job_id"] for e in stream_events(stream_name)] == [f"job-{i}" for i in range(5)]


def test_identity_fields_an_event_sets_win_and_oversize_events_shrink(stream_name: str) -> None:
    """Events that set identity fields themselves, or are too big, skip the pre-serialised identity."""
    emitter = Emitter(REDIS_URL, stream_name, maxlen=0)
    identity = ("celery", "shop", "host-1", 42, "host-1:42:abc")
    emitter.emit((identity, "worker-heartbeat", {"worker": "node-1", "inflight": 0, "ts": 1.5}))
    emitter.emit((identity, "job-failed", {"job_id": "big", "ts": 2.0, "traceback": "x" * MAX_EVENT_BYTES}))
    assert emitter.flush(10)
    emitter.close()
    beat, big = stream_events(stream_name)
    assert beat["worker"] == "node-1" and beat["host"] == "host-1" and beat["type"] == "worker-heartbeat"
    assert big["job_id"] == "big" and "traceback" not in big and big["oversize"] > MAX_EVENT_BYTES
    assert big["lib"] == "celery" and big["type"] == "job-failed"


def test_a_redis_py_without_the_raw_path_falls_back_to_its_pipeline(stream_name: str) -> None:
    emitter = Emitter(REDIS_URL, stream_name, maxlen=100)
    emitter._raw_ok = False
    for i in range(50):
        emitter.emit(job_event(i))
    assert emitter.flush(10)
    emitter.close()
    assert [e["job_id"] for e in stream_events(stream_name)] == [f"job-{i}" for i in range(50)]


def _started_row(item: tuple) -> tuple:
    """A row builder as the collectors write them: ``(identity, row)``, the row in ``ROW_COLS`` order."""
    _, identity, job_id, ts, args = item
    row: list = [None] * len(ROW_COLS)
    row[ROW_COLS.index("type")], row[ROW_COLS.index("ts")] = "job-started", ts
    row[ROW_COLS.index("job_id")], row[ROW_COLS.index("args")] = job_id, args
    row[ROW_COLS.index("x")] = {"pool": "threads"}
    return identity, row


row_builder(_started_row)


@pytest.mark.parametrize("raw_path", [True, False], ids=["raw", "pipeline"])
def test_rows_of_one_sender_share_an_entry_and_big_ones_are_split(stream_name: str, raw_path: bool) -> None:
    """Rows go out as ``b`` entries, one per sender and at most MAX_ROWS or MAX_EVENT_BYTES each, beside plain
    events; every row reads back as its own event with its sender's identity and a distinct id."""
    # One drain, at flush: a mid-loop wake (a loaded machine) would split the entries further.
    emitter = Emitter(REDIS_URL, stream_name, maxlen=0, flush_interval=5.0, batch_size=5000, buffer_size=10_000,
                      wake_at=5000)
    emitter._raw_ok = raw_path
    a = ("celery", "shop", "host-1", 42, "host-1:42:a")
    b = ("celery", "shop", "host-2", 43, "host-2:43:b")
    big = "x" * 2000
    for i in range(1200):
        emitter.emit((_started_row, a, f"a{i}", 1700000000.0 + i, big if i < 300 else '{"args":[1]}'))
        if i % 100 == 0:
            emitter.emit((_started_row, b, f"b{i}", 1700000000.0, None))
            emitter.emit(job_event(i))
    assert emitter.flush(10)
    emitter.close()
    client = redis.Redis.from_url(REDIS_URL)
    entries = client.xrange(stream_name)
    client.close()
    kinds = [next(iter(fields)) for _, fields in entries]
    assert kinds.count(b"e") == 12 and 4 <= kinds.count(b"b") <= 8
    assert all(len(fields[b"b"]) <= MAX_EVENT_BYTES for _, fields in entries if b"b" in fields)
    got = stream_events(stream_name)
    rows = [e for e in got if e["type"] == "job-started" and e["job_id"][0] in "ab"]
    assert sorted(e["job_id"] for e in rows) == sorted([f"a{i}" for i in range(1200)] + [f"b{i}" for i in range(0, 1200, 100)])
    assert len({e["id"] for e in got}) == len(got) == 1200 + 12 + 12
    first = next(e for e in rows if e["job_id"] == "b100")
    assert (first["host"], first["pid"], first["worker"], first["pool"]) == ("host-2", 43, "host-2:43:b", "threads")
    assert "args" not in first and emitter.sent == emitter.emitted == len(got) and emitter.dropped == 0


def test_a_job_that_ends_before_the_next_send_costs_one_event(stream_name: str) -> None:
    """A held start settled by its end goes out inside the end's row (``started_at``); one still running
    at the next send goes out alone, and its end follows as a row of its own."""
    emitter = Emitter(REDIS_URL, stream_name, maxlen=0, flush_interval=5.0)  # sends only when flushed
    identity = ("taskiq", "shop", "host-1", 42, "host-1:42:abc")

    def succeeded(item: tuple) -> tuple:
        _, job_id, ts, started_at = item
        _, row = _started_row((None, identity, job_id, 0.0, None))
        row[ROW_COLS.index("type")], row[ROW_COLS.index("ts")] = "job-succeeded", ts
        row[ROW_COLS.index("started_at")] = started_at
        row[ROW_COLS.index("args")] = '{"args":[1]}' if started_at else None
        return identity, row

    row_builder(succeeded)
    fast, slow = object(), object()
    emitter.begin(fast, (_started_row, identity, "fast", 1700000000.0, '{"args":[1]}'))
    emitter.begin(slow, (_started_row, identity, "slow", 1700000000.0, '{"args":[1]}'))
    assert emitter.settle(fast) is not None  # the end took the start: it cannot be sent again
    emitter.emit((succeeded, "fast", 1700000000.5, 1700000000.0))
    assert emitter.settle(fast) is None
    assert emitter.flush(10)  # the slow job is still running: its start is sent on its own
    assert emitter.settle(slow) is None
    emitter.emit((succeeded, "slow", 1700000009.0, None))
    assert emitter.flush(10)
    emitter.close()
    got = [(e["type"], e["job_id"], e.get("started_at"), e.get("args")) for e in stream_events(stream_name)]
    assert sorted(got, key=lambda g: (g[1], g[0])) == [
        ("job-succeeded", "fast", 1700000000.0, '{"args":[1]}'),
        ("job-started", "slow", None, '{"args":[1]}'),
        ("job-succeeded", "slow", None, None),
    ]
    assert emitter.sent == emitter.emitted == 3 and emitter.dropped == 0


def _finished_row(job_id: str, args: object) -> list:
    row: list = [None] * len(ROW_COLS)
    row[ROW_COLS.index("type")], row[ROW_COLS.index("ts")] = "job-succeeded", 1700000000.0
    row[ROW_COLS.index("job_id")], row[ROW_COLS.index("args")] = job_id, args
    return row


def test_rows_of_plain_arguments_go_as_lists_and_read_back_as_their_previews(stream_name: str) -> None:
    """A column of plain positional arguments is sent as it lies (no preview built on the worker);
    what ingest reads from the entry is the preview all the same."""
    import orjson

    emitter = Emitter(REDIS_URL, stream_name, maxlen=0, flush_interval=0.05)
    queue = emitter.row_queue(lambda: ("arq", "shop", "host-1", 42, "host-1:42:a"))
    for i in range(20):
        queue.add(_finished_row(f"p{i}", [i, f"id-{i}"]))
    assert emitter.flush(10)
    [(_, fields)] = redis.Redis.from_url(REDIS_URL).xrange(stream_name)
    cells = orjson.loads(fields[b"b"])["cells"]
    assert cells[ROW_COLS.index("args")] == [0, "id-0"]
    got = {e["job_id"]: e["args"] for e in stream_events(stream_name)}
    assert got["p3"] == '{"args":[3,"id-3"]}' and len(got) == 20
    emitter.close()


def test_row_queue_rows_are_sent_with_their_arguments_previewed_and_the_oldest_dropped_when_full(
        stream_name: str) -> None:
    """Rows added on job threads reach the stream whole, in order, with ``(args, kwargs)`` or a bare
    args list made into the redacted preview; beyond capacity the oldest go and are counted; after
    ``close`` a new row starts the sending thread again."""
    emitter = Emitter(REDIS_URL, stream_name, maxlen=0, flush_interval=0.05, buffer_size=300)
    identity = ("dramatiq", "shop", "host-1", 42, "host-1:42:a")
    queue = emitter.row_queue(lambda: identity)

    def add_many(first: int) -> None:
        for i in range(first, first + 100):
            queue.add(_finished_row(f"t{i}", (ARGS_KWARGS, [i], {"password": "hunter2"}) if i % 2 else (i,)))

    threads = [threading.Thread(target=add_many, args=(n * 100,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert emitter.flush(10)
    got = {e["job_id"]: e for e in stream_events(stream_name)}
    assert sorted(got) == sorted(f"t{i}" for i in range(300))
    assert got["t7"]["args"] == '{"args":[7],"kwargs":{"password":"[redacted]"}}' and got["t8"]["args"] == '{"args":[8]}'
    assert got["t7"]["worker"] == "host-1:42:a" and emitter.dropped == 0

    assert emitter.close()
    emitter.flush_interval = 60.0  # the restarted thread sends only when flushed
    for i in range(1000, 1400):  # the first add starts the thread again, the rest only queue
        queue.add(_finished_row(f"t{i}", None))
    assert emitter._thread is not None and len(queue) == 400
    assert emitter.flush(10)
    late = [e["job_id"] for e in stream_events(stream_name) if int(e["job_id"][1:]) >= 1000]
    assert emitter.dropped == 100 and late[0] == "t1100" and len(late) == 300
    emitter.close()


def _send_times(stream: str) -> list[int]:
    """The milliseconds of the sends that wrote ``stream``: a send's entries share their id's time, to a few ms."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        stamps = [int(entry_id.split(b"-")[0]) for entry_id, _ in client.xrange(stream)]
    finally:
        client.close()
    sends: list[int] = []
    for ms in stamps:
        if not sends or ms - sends[-1] > 10:
            sends.append(ms)
    return sends


def test_a_quiet_sender_sends_less_often_and_a_lone_or_busy_one_at_once(stream_name: str) -> None:
    """Events trickling in (fewer than ``wake_at`` a tick) go out at most ``max_interval`` after the
    last send, not every tick; the first event after a quiet spell, and a burst, go at the next tick."""
    emitter = Emitter(REDIS_URL, stream_name, maxlen=0, flush_interval=0.02, max_interval=0.4, wake_at=64)
    t0 = time.monotonic()
    emitter.emit(job_event(0))  # the first after nothing: at the next tick
    while not stream_events(stream_name) and time.monotonic() - t0 < 5:
        time.sleep(0.005)
    assert time.monotonic() - t0 < 0.3
    for i in range(1, 121):  # 1.2 s at 100 events/s: 2 a tick, well under wake_at
        emitter.emit(job_event(i))
        time.sleep(0.01)
    assert emitter.flush(10)
    trickle = _send_times(stream_name)
    assert len(stream_events(stream_name)) == 121
    gaps = [b - a for a, b in zip(trickle, trickle[1:])]
    assert 3 <= len(trickle) <= 6 and min(gaps[:-1]) >= 350, trickle  # the last one is flush()'s

    time.sleep(0.5)
    burst_at = time.monotonic()
    for i in range(1000, 1300):  # past wake_at: sent at once, whatever the last send
        emitter.emit(job_event(i))
    while len(stream_events(stream_name)) < 421 and time.monotonic() - burst_at < 5:
        time.sleep(0.005)
    assert time.monotonic() - burst_at < 0.3
    emitter.close()
