"""`flowerbed demo` for real: all four libraries' workers, schedulers and producers plus the dashboard,
started by one command and stopped by one Ctrl-C, leaving no process and no broker key behind.

The first run builds the per-library environments (minutes; cached under ~/.cache/flowerbed/demo).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from tests.conftest import REDIS_URL, ROOT, free_port

LIBS = ("arq", "dramatiq", "taskiq", "celery")
READY = re.compile(r"ready at (http://127\.0\.0\.1:\d+/)")

pytestmark = [pytest.mark.slow, pytest.mark.libenv]


class Output:
    """Collects a process's output lines on a thread, so the test can wait for one without blocking."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)


def get_json(base: str, path: str) -> Any:
    with urllib.request.urlopen(base.rstrip("/") + path, timeout=10) as resp:
        return json.loads(resp.read())


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _group_alive(pgid: int) -> list[str]:
    """Live members of a process group; zombies don't count (this VM's PID 1 does not reap orphans)."""
    found = []
    for process in psutil.process_iter(["pid", "status", "cmdline"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(" ".join(process.info["cmdline"] or []))
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def demo_keys(client: redis.Redis) -> list[bytes]:
    """Keys the demo's brokers made (the event stream, flowerbed:demo, is meant to stay)."""
    return [*client.scan_iter(match="flowerbed-demo:*", count=1000),
            *client.scan_iter(match="arq:*:flowerbed-demo-*", count=1000),
            *client.scan_iter(match="arq:*:refresh_exchange_rates:*", count=1000)]


def lib_ready(base: str, lib: str) -> dict[str, bool]:
    """What the dashboard shows of one library so far."""
    def jobs(query: str) -> list[dict[str, Any]]:
        return list(get_json(base, f"/api/jobs?lib={lib}&limit=200&{query}")["items"])

    retried = [j for j in jobs("task=sync_inventory&state=succeeded") if (j["attempt"] or 0) >= 2]
    webhooks = jobs("task=call_webhook&state=succeeded")
    workers = [w for w in get_json(base, "/api/workers")["items"] if w["lib"] == lib and w["state"] == "online"]
    status = {
        "succeeded": bool(jobs("state=succeeded")),
        "failed": bool(jobs("state=failed")),
        "retried then succeeded": bool(retried),
        "redacted": bool(webhooks) and all("[redacted]" in json.dumps(j["args"]) and "tok_live_" not in
                                           json.dumps(j["args"]) for j in webhooks),
        "worker online": bool(workers),
    }
    if lib != "dramatiq":  # periodiq fires once a minute; the others every 10 s
        status["periodic"] = bool(jobs("task=refresh_exchange_rates&state=succeeded"))
    return status


@pytest.mark.timeout(1500)
def test_demo_runs_all_four_libraries_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    database = tmp_path / "demo.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dashboard", "demo", "--port", str(port), "--database-url", str(database),
         "--redis-url", REDIS_URL],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    out = Output(proc)
    client = redis.Redis.from_url(REDIS_URL)
    descendants: list[psutil.Process] = []
    commands: dict[int, str] = {}
    try:
        # First run: the four environments are built (minutes); cached afterwards.
        deadline = time.monotonic() + 1200
        base = None
        while base is None:
            match = READY.search(out.text())
            if match:
                base = match.group(1)
            elif proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the demo never said it was ready (exit {proc.poll()}):\n{out.text()}")
            else:
                time.sleep(0.5)
        assert f"http://127.0.0.1:{port}/" == base
        assert "Ctrl-C" in out.text() and all(lib in out.text() for lib in LIBS)

        deadline = time.monotonic() + 120
        status: dict[str, dict[str, bool]] = {}
        while True:
            status = {lib: lib_ready(base, lib) for lib in LIBS}
            if all(all(s.values()) for s in status.values()):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the dashboard never showed everything: {status}\n{out.text()}")
            time.sleep(2)

        descendants = psutil.Process(proc.pid).children(recursive=True)
        commands = {p.pid: " ".join(p.cmdline()) for p in descendants}
        assert len(descendants) >= 12  # dashboard (+ ingest), and per library a worker, a producer, a scheduler

        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(35) == 0, out.text()
        assert time.monotonic() - started < 30
        alive = [p for p in descendants if _alive(p)]
        assert not alive, [" ".join(p.cmdline()) for p in alive]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        for child in descendants:  # leave nothing behind even when an assertion failed
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)
    # Each child ran in its own session: nothing of its group lives on either.
    for child in descendants:
        assert not _group_alive(child.pid), (commands.get(child.pid), _group_alive(child.pid))
    assert demo_keys(client) == []
    assert client.exists("flowerbed:demo")
    client.close()
    assert "stopped" in out.text()
