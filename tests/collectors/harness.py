"""What every collector test shares: a private world per test (key prefix, stream, processes).

Each library's test module subclasses :class:`Lab` with how it starts that library's workers and
clients; polling the stream, stopping processes and cleaning up are the same for all four.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import redis

from collectors.events import entry_events, split_started, validate
from tests.conftest import REDIS_URL, ROOT

Events = list[dict[str, Any]]


class Lab:
    """One test's world: a private key prefix and stream, and every process the test starts."""

    #: Short library tag: part of the key prefix.
    tag = "lab"
    #: FLOWERBED_APP for the processes.
    app = "test"
    #: Signal the whole process group on stop (workers that fork children of their own).
    stop_group = False
    stop_timeout = 30.0

    def __init__(self, bindir: Path, stream: str, tmp_path: Path, **env: str) -> None:
        self.bindir = bindir
        self.stream = stream
        self.tmp_path = tmp_path
        self.prefix = f"fb{self.tag}{uuid.uuid4().hex[:10]}"
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.env = {
            **os.environ,
            "FBTEST_PREFIX": self.prefix,
            "FLOWERBED_STREAM": stream,
            "FLOWERBED_REDIS_URL": REDIS_URL,
            "FLOWERBED_APP": self.app,
            **env,
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, program: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start one of the env's commands in its own session, logging to the test's folder."""
        log = open(self.tmp_path / f"{program}-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen([str(self.bindir / program), *argv], cwd=ROOT, env={**self.env, **(env or {})},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def run_module(self, module: str, *args: str) -> str:
        """Run a client module with the env's python; its standard output."""
        out = subprocess.run([str(self.bindir / "python"), "-m", module, *args],
                             cwd=ROOT, env=self.env, capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr.decode()[-3000:]
        return out.stdout.decode()

    def events(self) -> Events:
        """Every event on the test's stream, each checked against the protocol, read as ingest reads them:
        an attempt's end that carries its start (``started_at``) counts as both events."""
        out: Events = []
        for _, fields in self.redis.xrange(self.stream):
            for event in entry_events(fields):
                start = split_started(event)
                if start is not None:
                    out.append(validate(start))
                out.append(event)
        return out

    def wait(self, check: Callable[[Events], Any], timeout: float = 30.0) -> Events:
        """Poll the stream until ``check(events)`` is truthy; the processes' logs if it never is."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.events()
            if check(events):
                return events
            if time.monotonic() > deadline:
                logs = "\n".join(p.read_text()[-3000:] for p in sorted(self.tmp_path.glob("*.log")))
                raise AssertionError(f"timed out; {len(events)} events: {events[-12:]}\n{logs}")
            time.sleep(0.1)

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and wait; SIGKILL the process group if it does not stop in time."""
        if proc.poll() is None:
            if self.stop_group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        return proc.returncode

    def cleanup(self) -> None:
        """Library-specific clean-up (queues outside Redis); runs before the keys are deleted."""

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.cleanup()
        keys = list(self.redis.scan_iter(f"{self.prefix}*"))
        if keys:
            self.redis.delete(*keys)
        self.redis.close()


def of(events: Events, type: str, **match: Any) -> Events:
    """The events of one type whose fields equal ``match``."""
    return [e for e in events if e["type"] == type and all(e.get(k) == v for k, v in match.items())]
