"""The ``flowerbed`` command: serve, ingest, web, demo, bench."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import multiprocessing
import signal
import sys
import threading
import time
from typing import Any, Callable

from .config import Settings, add_arguments, settings_from

__all__ = ["main"]

log = logging.getLogger("flowerbed")

SERVER_OPTIONS = ("host", "port", "redis_url", "database_url", "stream", "auth_token", "lost_after_s", "log_level")
INGEST_OPTIONS = ("redis_url", "database_url", "stream", "consumer", "batch_size", "block_ms", "claim_idle_ms",
                  "lost_after_s", "retention_days", "log_level")


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_exposure(settings: Settings) -> None:
    """Refuse to listen beyond loopback with no authentication configured."""
    if not _is_loopback(settings.host) and not settings.auth_token:
        raise SystemExit(
            f"flowerbed: refusing to listen on {settings.host} without authentication.\n"
            "Set FLOWERBED_AUTH_TOKEN (or --auth-token) to a long random secret, or bind 127.0.0.1."
        )


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _migrate(settings: Settings) -> None:
    from .store.db import create_engine, migrate

    async def run() -> None:
        engine = create_engine(settings.database_url)
        try:
            await migrate(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())


def _ingest_child(settings: Settings) -> None:
    """Entry point of the ingest process that ``serve`` starts next to the web server."""
    from .procs import die_with_parent

    die_with_parent(signal.SIGTERM)  # a killed `serve` must not leave ingest running
    _setup_logging(settings)
    from .ingest import run_ingest

    sys.exit(run_ingest(settings))


class IngestSupervisor:
    """Runs ingest in a child process, restarts it if it dies, stops it gracefully."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ctx = multiprocessing.get_context("spawn")
        self.proc: Any = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="ingest-supervisor", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        self.proc = self.ctx.Process(target=_ingest_child, args=(self.settings,), name="flowerbed-ingest")
        self.proc.start()

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            if self.proc is not None and not self.proc.is_alive() and not self._stopping.is_set():
                log.error("ingest process exited with %s; restarting it", self.proc.exitcode)
                time.sleep(1.0)
                if not self._stopping.is_set():
                    self._spawn()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the child (it finishes its batch, commits, acks) and wait for it."""
        self._stopping.set()
        proc = self.proc
        if proc is None:
            return 0
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout)
            if proc.is_alive():
                log.error("ingest did not stop within %.0f s; killing it", timeout)
                proc.kill()
                proc.join(5)
        return proc.exitcode or 0


def _run_web(settings: Settings, on_started: Callable[[], None] | None = None) -> None:
    import uvicorn

    from .app import create_app

    app = create_app(settings, run_migrations=False)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
        lifespan="on", timeout_graceful_shutdown=3, access_log=False,
    )
    server = uvicorn.Server(config)
    if on_started is not None:
        original = server.startup

        async def startup(*args: Any, **kwargs: Any) -> None:
            await original(*args, **kwargs)
            on_started()

        server.startup = startup  # type: ignore[method-assign]
    # uvicorn re-raises the signal that stopped it, once its own handlers are removed; these
    # handlers receive it, so a graceful SIGTERM/SIGINT ends the process with status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()


def cmd_serve(args: argparse.Namespace) -> int:
    """Ingest (child process) and web (this process) together."""
    settings = settings_from(args)
    _check_exposure(settings)
    _setup_logging(settings)
    _migrate(settings)
    supervisor = IngestSupervisor(settings)
    supervisor.start()
    try:
        _run_web(settings, on_started=lambda: print(
            f"Flowerbed is serving on http://{settings.host}:{settings.port}/", flush=True))
    finally:
        code = supervisor.stop()
    return 0 if code in (0, -signal.SIGTERM) else code


def cmd_web(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    _check_exposure(settings)
    _setup_logging(settings)
    _migrate(settings)
    _run_web(settings)
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    _setup_logging(settings)
    from .ingest import run_ingest

    return run_ingest(settings)


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module(f"dashboard.bench.{args.what}")
    return int(module.main(args.rest))


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowerbed", description="One live monitoring dashboard for arq, Dramatiq, Taskiq and Celery."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="ingest events and serve the dashboard (one command)")
    add_arguments(p, SERVER_OPTIONS + INGEST_OPTIONS)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("web", help="serve the dashboard only (ingest runs elsewhere)")
    add_arguments(p, SERVER_OPTIONS)
    p.set_defaults(func=cmd_web)
    p = sub.add_parser("ingest", help="read the event stream into the store only")
    add_arguments(p, INGEST_OPTIONS)
    p.set_defaults(func=cmd_ingest)
    p = sub.add_parser("demo", help="real workers of all four libraries plus the dashboard", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("bench", help="measure ingest, collector and page speed")
    p.add_argument("what", choices=("ingest", "collectors", "pages"))
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point."""
    try:
        import starlette  # noqa: F401
    except ImportError:
        print("flowerbed: the dashboard's dependencies are missing: pip install 'flowerbed[dashboard]'",
              file=sys.stderr)
        return 2
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:  # argparse cannot hand demo a REMAINDER that starts with an option
        from .demo import main as demo_main

        return int(demo_main(argv[1:]))
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
