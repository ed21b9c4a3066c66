"""`flowerbed bench pages`: p50/p95 of every page and its JSON twin over HTTP on a 1M-job store, and RSS.

Seeds a scratch SQLite file (``pages_seed``), starts a real uvicorn server on it (``flowerbed web``),
requests each URL in turn over one keep-alive connection and reports the latencies against the goals
(lists and detail p95 ≤ 20 ms, overview and aggregates p95 ≤ 50 ms, server RSS ≤ 150 MB).
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

from ..web.params import encode_cursor
from .pages_seed import seed

__all__ = ["main"]

LIST_GOAL_MS = 20.0
AGGREGATE_GOAL_MS = 50.0
RSS_GOAL_MB = 150.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _samples(path: str) -> dict[str, tuple[str, str, str]]:
    """A retried and a failed job to open (newest of each)."""
    db = sqlite3.connect(path)
    try:
        out = {}
        for name, where in (("retried", "state = 'succeeded' AND attempt = 2"), ("failed", "state = 'failed'")):
            row = db.execute(f"SELECT lib, app, job_id FROM jobs WHERE {where} ORDER BY id DESC LIMIT 1").fetchone()
            if row:
                out[name] = tuple(row)
        task = db.execute("SELECT task FROM jobs ORDER BY id DESC LIMIT 1").fetchone()
        out["task"] = (task[0], "", "") if task else ("send_email", "", "")
        top = db.execute("SELECT max(id) FROM jobs").fetchone()[0] or 0
        out["top"] = (str(top), "", "")
        return out
    finally:
        db.close()


#: Headers of the request htmx sends for the workers page's timeline (a fragment of its own).
LANES_FRAGMENT = {"HX-Request": "true", "HX-Target": "lanes"}


def _urls(samples: dict[str, tuple[str, str, str]]) -> list[tuple[str, str, float]]:
    """(label, path, p95 goal in ms) for every page and its JSON twin; a path may carry headers after a tab."""
    task = quote(samples["task"][0])
    top = int(samples["top"][0])
    deep = encode_cursor(top // 2)
    urls: list[tuple[str, str, float]] = []
    for window in ("15m", "1h", "24h", "7d"):
        urls.append((f"overview {window}", f"/?window={window}", AGGREGATE_GOAL_MS))
        urls.append((f"  /api/stats {window}", f"/api/stats?window={window}", AGGREGATE_GOAL_MS))
    urls.append(("overview 24h lib=celery", "/?window=24h&lib=celery", AGGREGATE_GOAL_MS))
    for label, query in (("jobs newest", ""), ("jobs state=failed", "state=failed"), (f"jobs task={task}", f"task={task}"),
                         ("jobs page at 500k", f"cursor={deep}"), ("jobs failed, last 1h", "state=failed&range=1h"),
                         ("jobs search exc:Timeout", "q=exc%3ATimeout")):
        urls.append((label, f"/jobs?{query}" if query else "/jobs", LIST_GOAL_MS))
        api_query = query.replace("&range=1h", f"&since={time.time() - 3600:.0f}")
        urls.append(("  /api/jobs", f"/api/jobs?{api_query}" if api_query else "/api/jobs", LIST_GOAL_MS))
    urls.append(("jobs live rows (after=)", f"/jobs?after={top - 5}&low={top - 50}&changed={time.time() - 5:.0f}",
                 LIST_GOAL_MS))
    for name in ("retried", "failed"):
        if name in samples:
            lib, app, job_id = samples[name]
            urls.append((f"job detail ({name})", f"/jobs/{lib}/{app}/{quote(job_id)}", LIST_GOAL_MS))
            urls.append(("  /api/jobs/…", f"/api/jobs/{lib}/{app}/{quote(job_id)}", LIST_GOAL_MS))
    urls += [("workers", "/workers", LIST_GOAL_MS), ("  /api/workers", "/api/workers", LIST_GOAL_MS),
             ("workers 1h", "/workers?span=1h", LIST_GOAL_MS),
             # The swimlanes: what the page's htmx fetches right after it loads, and refreshes.
             ("  swimlanes 15m (fragment)", "/workers/lanes?span=15m\tlanes", AGGREGATE_GOAL_MS),
             ("  swimlanes 1h (fragment)", "/workers/lanes?span=1h\tlanes", AGGREGATE_GOAL_MS),
             ("status", "/status", AGGREGATE_GOAL_MS), ("  /api/status", "/api/status", AGGREGATE_GOAL_MS)]
    return urls


def _measure(conn: http.client.HTTPConnection, path: str, n: int,
             warmup: int) -> tuple[list[float], int, int, float]:
    """Timed requests after ``warmup`` untimed ones; also returns the first (cold) request's time."""
    times = []
    status = size = 0
    first = 0.0
    path, _, fragment = path.partition("\t")
    headers = LANES_FRAGMENT if fragment == "lanes" else {}
    for i in range(warmup + n):
        t0 = time.perf_counter()
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        elapsed = (time.perf_counter() - t0) * 1000
        status, size = resp.status, len(body)
        if i == 0:
            first = elapsed
        if i >= warmup:
            times.append(elapsed)
    return times, status, size, first


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main(argv: list[str]) -> int:
    """Run the benchmark; exit 0 when every goal is met, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="flowerbed bench pages", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000, help="jobs to seed (about 4 events each)")
    parser.add_argument("--db", default="", help="SQLite file to seed (default: a new temporary file)")
    parser.add_argument("--reuse", action="store_true", help="use --db as it is if it exists (seeded data ages)")
    parser.add_argument("--requests", type=int, default=100, help="timed requests per URL")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests per URL first")
    parser.add_argument("--keep", action="store_true", help="keep the seeded file afterwards")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="flowerbed-bench-pages-"))
    path = args.db or str(workdir / "pages.db")
    if not (args.reuse and Path(path).exists()):
        for suffix in ("", "-wal", "-shm"):
            Path(path + suffix).unlink(missing_ok=True)
        print(f"seeding {args.jobs:,} jobs into {path} …", flush=True)
        info = seed(path, args.jobs, progress=True)
        print(f"seeded {info['jobs']:,} jobs, {info['events']:,} events in {info['seconds']:.0f} s "
              f"({Path(path).stat().st_size / 2**20:.0f} MB)", flush=True)
    samples = _samples(path)

    port = _free_port()
    env = {**os.environ, "FLOWERBED_DATABASE_URL": f"sqlite:///{path}", "FLOWERBED_PORT": str(port),
           "FLOWERBED_HOST": "127.0.0.1", "FLOWERBED_STREAM": f"fbbench:{uuid.uuid4().hex}",
           "FLOWERBED_LOG_LEVEL": "warning"}
    log = open(workdir / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "dashboard", "web"], env=env, stdout=log, stderr=subprocess.STDOUT)
    failures = 0
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    c.close()
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                print((workdir / "server.log").read_text()[-3000:], file=sys.stderr)
                return 2
            time.sleep(0.2)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"\n{'page':34} {'status':>6} {'KB':>7} {'first':>7} {'p50 ms':>8} {'p95 ms':>8} {'goal':>6}")
        for label, url, goal in _urls(samples):
            times, status, size, first = _measure(conn, url, args.requests, args.warmup)
            p50, p95 = statistics.median(times), _pct(times, 0.95)
            ok = status == 200 and p95 <= goal
            failures += not ok
            print(f"{label[:34]:34} {status:>6} {size / 1024:>7.1f} {first:>7.1f} {p50:>8.2f} {p95:>8.2f} {goal:>6.0f}"
                  f"{'' if ok else '  ← over goal' if status == 200 else '  ← error'}", flush=True)
        conn.close()
        try:
            import psutil

            rss_mb = psutil.Process(proc.pid).memory_info().rss / 2**20
        except ImportError:  # pragma: no cover - psutil is a dev dependency
            rss_mb = float("nan")
        ok = rss_mb <= RSS_GOAL_MB
        failures += not ok
        print(f"\nserver RSS after the run: {rss_mb:.0f} MB (goal ≤ {RSS_GOAL_MB:.0f} MB){'' if ok else '  ← over goal'}")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print("all goals met" if not failures else f"{failures} goal(s) missed")
        return 0 if not failures else 1
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if not args.keep and not args.db:
            for p in workdir.glob("pages.db*"):
                p.unlink()
