"""Dashboard settings: one table of options, read from command-line flags or FLOWERBED_* variables.

Each option is declared once in :data:`OPTIONS`; the CLI builds its flags from it, the README's
configuration table is checked against it by a test, and :class:`Settings` holds the values.
Precedence: flag, then environment variable, then default.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from collectors.constants import DEFAULT_REDIS_URL, DEFAULT_STREAM

__all__ = ["Option", "OPTIONS", "Settings", "add_arguments", "settings_from"]


@dataclass(frozen=True)
class Option:
    """One setting: its attribute name, type, default and help text."""

    name: str
    cast: Callable[[str], Any]
    default: Any
    help: str

    @property
    def env(self) -> str:
        return "FLOWERBED_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _bool(value: str) -> bool:
    return value.strip().lower() not in {"0", "false", "no", "off", ""}


OPTIONS: tuple[Option, ...] = (
    Option("host", str, "127.0.0.1", "address the web server binds; beyond loopback needs authentication"),
    Option("port", int, 5555, "port the web server listens on"),
    Option("redis_url", str, DEFAULT_REDIS_URL, "Redis holding the event stream"),
    Option("stream", str, DEFAULT_STREAM, "stream the collectors write to"),
    Option("database_url", str, "sqlite:///./flowerbed.db",
           "store: a SQLite file, or postgresql://user@host/db"),
    Option("consumer", str, "", "this process's consumer name in the group (default host:pid)"),
    # 50k rather than 20k: fewer rollup upserts and commits per event (measured over 1M events:
    # writer CPU 31-33 -> 26-29 us/event), for ~80 MB more RSS in each ingest process.
    Option("batch_size", int, 50000, "most events read and committed in one transaction"),
    Option("block_ms", int, 200, "how long one stream read waits for new events (ms)"),
    Option("claim_idle_ms", int, 60000, "pending entries idle this long are claimed from dead consumers (ms)"),
    Option("lost_after_s", float, 30.0, "a worker silent this long is lost, and so are its running jobs (s)"),
    Option("retention_days", float, 14.0, "jobs finished longer ago than this are pruned (days; 0 keeps all)"),
    Option("auth_token", str, "", "API token that allows listening beyond loopback (Authorization: Bearer)"),
    Option("log_level", str, "info", "log level: debug, info, warning, error"),
)

_BY_NAME = {o.name: o for o in OPTIONS}


@dataclass(frozen=True)
class Settings:
    """The resolved settings of one dashboard process."""

    host: str = "127.0.0.1"
    port: int = 5555
    redis_url: str = DEFAULT_REDIS_URL
    stream: str = DEFAULT_STREAM
    database_url: str = "sqlite:///./flowerbed.db"
    consumer: str = ""
    batch_size: int = 50000
    block_ms: int = 200
    claim_idle_ms: int = 60000
    lost_after_s: float = 30.0
    retention_days: float = 14.0
    auth_token: str = ""
    log_level: str = "info"
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def consumer_name(self) -> str:
        """This process's name in the consumer group."""
        return self.consumer or f"{socket.gethostname()}:{os.getpid()}"

    def replace(self, **changes: Any) -> Settings:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Settings(**values)


def add_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """Add a flag for each option (or those named); defaults stay ``None`` so env vars can apply."""
    for opt in OPTIONS:
        if names is not None and opt.name not in names:
            continue
        parser.add_argument(
            opt.flag, dest=opt.name, type=opt.cast if opt.cast is not bool else _bool, default=None,
            help=f"{opt.help} [env {opt.env}, default {opt.default!r}]",
        )


def settings_from(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve every option: flag, then FLOWERBED_* variable, then default."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        value = getattr(args, opt.name, None) if args is not None else None
        if value is None and opt.env in environ:
            raw = environ[opt.env]
            try:
                value = (_bool if opt.cast is bool else opt.cast)(raw)
            except ValueError:
                raise SystemExit(f"flowerbed: {opt.env}={raw!r} is not a valid {opt.cast.__name__}") from None
        values[opt.name] = opt.default if value is None else value
    return Settings(**values)


def option(name: str) -> Option:
    """Look up one option by name."""
    return _BY_NAME[name]
