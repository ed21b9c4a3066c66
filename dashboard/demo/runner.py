"""``flowerbed demo``: start Redis if needed, the four libraries' workers, schedulers and producers, and
``flowerbed serve``; print the URL when it answers; stop everything on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from .envs import LIBS, EnvError, cache_root, prepare
from .processes import Child, Spec, lib_specs, spawn, stop_all
from .redis_local import NoRedis, cleanup_keys, ping, server_spec, wait_until_up

__all__ = ["main"]

#: The demo's own event stream, so its events never mix with real ones.
STREAM = "flowerbed:demo"

#: Prefix of every broker key and queue name the demo apps use.
PREFIX = "flowerbed-demo"

#: The application name the demo's workers report.
APP = "shop"

#: How long each role gets to stop gracefully before it is killed (s); about 25 s in all at worst.
STOP_TIMEOUTS = {"producer": 4.0, "scheduler": 4.0, "worker": 10.0, "dashboard": 6.0, "redis": 3.0}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowerbed demo",
        description="Real arq, Dramatiq, Taskiq and Celery workers and schedulers on a sample workload, "
                    "plus the dashboard on a SQLite file. Ctrl-C stops everything.",
    )
    parser.add_argument("--port", type=int, default=5555, help="dashboard port [5555]")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0",
                        help="Redis for the brokers and the event stream; started if none answers and "
                             "redis-server is installed [redis://127.0.0.1:6379/0]")
    parser.add_argument("--database-url", default="./flowerbed-demo.db",
                        help="the dashboard's store: a SQLite file path or URL [./flowerbed-demo.db]")
    parser.add_argument("--libs", default=",".join(LIBS), help=f"comma-separated subset of {','.join(LIBS)}")
    parser.add_argument("--rate", type=float, default=3.0, help="jobs per second each producer enqueues [3]")
    return parser


def _libs(text: str) -> list[str]:
    chosen = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(LIBS))
    if unknown or not chosen:
        raise SystemExit(f"flowerbed demo: --libs takes some of {','.join(LIBS)} (got {text!r})")
    return [lib for lib in LIBS if lib in chosen]


def _database_url(value: str) -> str:
    if "://" in value:
        return value
    return "sqlite:///" + str(Path(value).expanduser().resolve())


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _child_env(redis_url: str, rate: float, bindir: Path | None = None) -> dict[str, str]:
    """The environment of every demo process: its stream, app name and prefixes, and nothing that mutes it."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("FLOWERBED_REDACT", "FLOWERBED_DISABLED", "FLOWERBED_CAPTURE_ARGS")}
    env.update({
        "FLOWERBED_REDIS_URL": redis_url,
        "FLOWERBED_STREAM": STREAM,
        "FLOWERBED_APP": APP,
        "FLOWERBED_DEMO_PREFIX": PREFIX,
        "FLOWERBED_DEMO_RATE": str(rate),
        "PYTHONUNBUFFERED": "1",
    })
    if bindir is not None:  # a library's venv: its own packages and the shim, nothing of ours
        env.pop("PYTHONPATH", None)
        env["VIRTUAL_ENV"] = str(bindir.parent)
        env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    return env


class Demo:
    """One run of the demo: its children, and whether it has been asked to stop."""

    def __init__(self, args: argparse.Namespace, libs: list[str]) -> None:
        self.args = args
        self.libs = libs
        self.database_url = _database_url(args.database_url)
        self.url = f"http://127.0.0.1:{args.port}/"
        self.run_dir = cache_root() / "run"
        self.children: list[Child] = []
        self.stopping = threading.Event()
        self.signals = 0

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1
        if self.signals > 1:
            print("\nflowerbed demo: stopping now (second signal).", flush=True)
            for child in self.children:
                try:
                    os.killpg(child.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self.stopping.set()

    def _start(self, spec: Spec, env: dict[str, str]) -> Child:
        child = spawn(spec, env, self.run_dir, self.run_dir)
        self.children.append(child)
        return child

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            return self._run()
        finally:
            self._stop()

    def _stop(self) -> None:
        """Stop producers and schedulers, then workers, then (once it has read their last events) the
        dashboard, then a Redis the demo started; delete the demo's broker keys from any other Redis."""
        if not self.children:
            return
        print("flowerbed demo: stopping…", flush=True)
        jobs = [c for c in self.children if c.spec.role in ("producer", "scheduler", "worker")]
        stop_all(jobs, STOP_TIMEOUTS)
        started_redis = any(c.spec.role == "redis" for c in self.children)
        if jobs:
            if not started_redis:
                cleanup_keys(self.args.redis_url, PREFIX)
            time.sleep(1.0)  # ingest reads the stream every ~200 ms: let it take the workers' last events
        stop_all([c for c in self.children if c not in jobs], STOP_TIMEOUTS)
        print("flowerbed demo: stopped.", flush=True)

    def _run(self) -> int:
        args = self.args
        if not ping(args.redis_url):
            try:
                spec = server_spec(args.redis_url)
            except NoRedis as exc:
                print(exc, file=sys.stderr, flush=True)
                return 2
            print(f"No Redis answers at {args.redis_url}: starting {spec.name} for the demo.", flush=True)
            self._start(spec, dict(os.environ))
            if not wait_until_up(args.redis_url):
                print(f"flowerbed demo: redis-server did not start; see {self.run_dir}", file=sys.stderr)
                return 2
        if not _port_free(args.port):
            print(f"flowerbed demo: port {args.port} is in use; choose another with --port.", file=sys.stderr)
            return 2
        try:
            bins = prepare(self.libs)
        except EnvError as exc:
            if self.stopping.is_set():
                return 0  # Ctrl-C interrupted the build; the next run starts it again
            print(f"flowerbed demo: could not prepare an environment:\n{exc}", file=sys.stderr, flush=True)
            return 1
        if self.stopping.is_set():
            return 0
        self._summary()
        serve_env = _child_env(args.redis_url, args.rate)
        serve_env.update({"FLOWERBED_HOST": "127.0.0.1", "FLOWERBED_PORT": str(args.port),
                          "FLOWERBED_DATABASE_URL": self.database_url})
        dashboard = self._start(Spec("dashboard", "dashboard", (sys.executable, "-m", "dashboard", "serve")),
                                serve_env)
        for lib in self.libs:
            env = _child_env(args.redis_url, args.rate, bins[lib])
            for spec in lib_specs(lib, bins[lib]):
                self._start(spec, env)
        return self._watch(dashboard)

    def _summary(self) -> None:
        print(
            f"Flowerbed demo: {', '.join(self.libs)} — a worker, a scheduler and a producer each\n"
            f"  dashboard  {self.url}  (store {self.database_url})\n"
            f"  redis      {self.args.redis_url}  (stream {STREAM}, broker keys {PREFIX}:*)\n"
            f"  logs       {self.run_dir}\n"
            f"  stop       Ctrl-C stops every process the demo started",
            flush=True,
        )

    def _watch(self, dashboard: Child) -> int:
        """Wait for the dashboard to answer, then keep watch until asked to stop."""
        ready = False
        deadline = time.monotonic() + 60
        while not self.stopping.wait(0.25 if not ready else 1.0):
            if not dashboard.alive:
                print(f"flowerbed demo: the dashboard exited ({dashboard.proc.returncode}); "
                      f"see {dashboard.log}", file=sys.stderr, flush=True)
                return 1
            if not ready:
                if _healthy(self.args.port):
                    ready = True
                    print(f"The dashboard is ready at {self.url} — press Ctrl-C to stop the demo.", flush=True)
                elif time.monotonic() > deadline:
                    print(f"flowerbed demo: the dashboard did not answer within 60 s; see {dashboard.log}",
                          file=sys.stderr, flush=True)
                    return 1
            for child in self.children:
                if not child.alive and not child.reported:
                    child.reported = True
                    print(f"flowerbed demo: {child.spec.name} exited ({child.proc.returncode}); "
                          f"see {child.log}", file=sys.stderr, flush=True)
        return 0


def main(argv: list[str]) -> int:
    """Run the demo until Ctrl-C or SIGTERM; 0 on a clean stop."""
    args = build_parser().parse_args(argv)
    libs = _libs(args.libs)
    return Demo(args, libs).run()
