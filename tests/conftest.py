"""Shared fixtures: unique stream names, and real `flowerbed serve` processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("FLOWERBED_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_URL = os.environ.get("FLOWERBED_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def stream_name() -> Iterator[str]:
    """A private stream for one test, deleted afterwards."""
    import redis

    name = f"fbtest:{uuid.uuid4().hex}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(name)
    client.close()


@dataclass
class Server:
    """A running `flowerbed serve` subprocess and how to talk to it."""

    proc: subprocess.Popen[bytes]
    base_url: str
    stream: str
    database_url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        req = urllib.request.Request(self.base_url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as err:
            return err.code, err.read(), dict(err.headers)

    def get_json(self, path: str, expect: int = 200) -> Any:
        status, body, _ = self.get(path)
        assert status == expect, f"GET {path} -> {status}: {body[:500]!r}"
        return json.loads(body)

    def wait_for(self, check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2) -> Any:
        """Poll ``check`` until it returns something truthy (or raise with the server's log)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = check()
                if last:
                    return last
            except (AssertionError, OSError, KeyError, IndexError) as exc:
                last = exc
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s; last result: {last!r}\n--- server log ---\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-5000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM the server, wait, then make sure nothing it started outlives it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers in its session
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(5)
        return self.proc.returncode


def start_server(tmp_path: Path, stream: str, database_url: str | None = None,
                 extra_env: dict[str, str] | None = None, python: str = sys.executable,
                 command: tuple[str, ...] = ("-m", "dashboard", "serve")) -> Server:
    """Start `flowerbed serve` on a free port and wait until /healthz answers."""
    port = free_port()
    database_url = database_url or f"sqlite:///{tmp_path / ('fb-' + uuid.uuid4().hex[:8] + '.db')}"
    log_path = tmp_path / f"serve-{port}.log"
    env = {
        **os.environ,
        "FLOWERBED_PORT": str(port),
        "FLOWERBED_HOST": "127.0.0.1",
        "FLOWERBED_STREAM": stream,
        "FLOWERBED_REDIS_URL": REDIS_URL,
        "FLOWERBED_DATABASE_URL": database_url,
        "FLOWERBED_BLOCK_MS": "100",
        **(extra_env or {}),
    }
    log_file = open(log_path, "wb")
    proc = subprocess.Popen([python, *command], cwd=tmp_path, env=env, stdout=log_file,
                            stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}", stream, database_url, log_path, env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"flowerbed serve exited with {proc.returncode}:\n{server.log()}")
        try:
            if server.get("/healthz")[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(0.2)
    server.stop()
    raise AssertionError(f"flowerbed serve did not answer within 60 s:\n{server.log()}")


@pytest.fixture
def flowerbed_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Factory: ``flowerbed_server(stream)`` starts a real `flowerbed serve`; all are stopped after the test."""
    servers: list[Server] = []

    def factory(stream: str, **kwargs: Any) -> Server:
        server = start_server(tmp_path, stream, **kwargs)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


def publish(stream: str, events: list[dict[str, Any]], redis_url: str = REDIS_URL) -> None:
    """Send events through the real emitter and wait until they are on the stream."""
    from collectors.emitter import Emitter

    emitter = Emitter(redis_url, stream, maxlen=0, buffer_size=max(10_000, len(events) + 1))
    for event in events:
        emitter.emit(event)
    assert emitter.flush(30), emitter.stats()
    emitter.close()
