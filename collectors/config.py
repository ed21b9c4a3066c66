"""Collector options, resolved the same way in every library: keyword, then FLOWERBED_* variable."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field

from .constants import (
    DEFAULT_REDACT,
    DEFAULT_REDIS_URL,
    DEFAULT_STREAM,
    DEFAULT_STREAM_MAXLEN,
    ENV_APP,
    ENV_CAPTURE_ARGS,
    ENV_DISABLED,
    ENV_REDACT,
    ENV_REDIS_URL,
    ENV_STREAM,
    ENV_STREAM_MAXLEN,
)

_FALSE = {"0", "false", "no", "off", ""}


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() not in _FALSE


@dataclass(frozen=True)
class CollectorConfig:
    """Where and how a collector sends its events."""

    app: str
    redis_url: str
    stream: str
    maxlen: int
    capture_args: bool
    redact: tuple[str, ...]
    enabled: bool = True
    host: str = field(default_factory=socket.gethostname)

    @classmethod
    def resolve(
        cls,
        app: str | None = None,
        redis_url: str | None = None,
        stream: str | None = None,
        capture_args: bool | None = None,
        redact: Iterable[str] | None = None,
        maxlen: int | None = None,
    ) -> CollectorConfig:
        """Fill every option left ``None`` from its environment variable, then the default."""
        env_redact = os.environ.get(ENV_REDACT)
        return cls(
            app=app or os.environ.get(ENV_APP) or "default",
            redis_url=redis_url or os.environ.get(ENV_REDIS_URL) or DEFAULT_REDIS_URL,
            stream=stream or os.environ.get(ENV_STREAM) or DEFAULT_STREAM,
            maxlen=maxlen if maxlen is not None else int(os.environ.get(ENV_STREAM_MAXLEN) or DEFAULT_STREAM_MAXLEN),
            capture_args=capture_args if capture_args is not None else _env_bool(ENV_CAPTURE_ARGS, True),
            redact=tuple(redact) if redact is not None else (
                tuple(p.strip() for p in env_redact.split(",")) if env_redact else DEFAULT_REDACT
            ),
            enabled=not _env_bool(ENV_DISABLED, False),
        )
