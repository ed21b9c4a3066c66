"""The producers' shared loop: the calls to send, at the configured rate, until SIGTERM or SIGINT."""

from __future__ import annotations

import random
import signal
import threading
from collections.abc import Iterator
from typing import Any

from .settings import RATE
from .workload import first_round, next_call

__all__ = ["Stop", "calls"]


class Stop:
    """Set by SIGTERM or SIGINT, so a producer finishes the send in hand and exits cleanly."""

    def __init__(self) -> None:
        self.event = threading.Event()
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, signum: int, frame: Any) -> None:
        self.event.set()

    def __bool__(self) -> bool:
        return self.event.is_set()


def gap() -> float:
    """Seconds to the next send: about ``1 / RATE``, jittered so the stream looks like real traffic."""
    return min(random.expovariate(RATE), 3.0 / RATE) if RATE > 0 else 1.0


def calls() -> Iterator[tuple[str, dict[str, Any]]]:
    """One job of every kind first, then the steady random mix, forever."""
    yield from first_round()
    while True:
        yield next_call()
