"""What every library adapter shares: the error guard, worker identity, counters and heartbeats.

An adapter (``collectors.arq``, ``.dramatiq``, ``.taskiq``, ``.celery``) owns a :class:`Recorder`,
calls :meth:`Recorder.emit` from the library's hooks inside :func:`swallow_errors`, and starts a
:class:`Heartbeat` in worker processes. Nothing here touches the network on the caller's thread.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
import threading
import time
import traceback as tb_module
from typing import Any, Callable, TypeVar

from .config import CollectorConfig
from .constants import DEFAULT_TRACEBACK_LIMIT, HEARTBEAT_INTERVAL_S
from .emitter import Emitter, get_emitter
from .events import EventType, cap_text, cap_traceback

__all__ = [
    "swallow_errors",
    "guarded",
    "Recorder",
    "CpuSampler",
    "Heartbeat",
    "LoopLagMonitor",
    "failure_fields",
    "trace_fields",
    "current_trace",
    "new_correlation_id",
    "hook_failed",
    "rss_bytes",
    "qualname",
]

log = logging.getLogger("flowerbed.collectors")
_last_logged = [0.0]

F = TypeVar("F", bound=Callable[..., Any])


class swallow_errors:
    """Run a hook body; any exception is logged (at most once a minute) and never reaches the job.

    A class rather than a generator-based context manager: it runs on every job, and this costs
    a fifth of the time.
    """

    __slots__ = ("where",)

    def __init__(self, where: str = "collector") -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is None or not issubclass(exc_type, Exception):
            return False
        now = time.monotonic()
        if now - _last_logged[0] > 60:
            _last_logged[0] = now
            log.warning("flowerbed %s error (further errors muted for 60 s)", self.where,
                        exc_info=(exc_type, exc, tb))
        return True


def hook_failed(where: str) -> None:
    """What :class:`swallow_errors` does with an error, for a hot hook's own ``try``/``except``.

    ``try`` costs nothing until something raises (from Python 3.11; next to nothing before); a
    ``with`` block costs two calls, ~0.3 µs per hook on a slow machine. Call it from inside the
    ``except Exception`` block.
    """
    now = time.monotonic()
    if now - _last_logged[0] > 60:
        _last_logged[0] = now
        log.warning("flowerbed %s error (further errors muted for 60 s)", where, exc_info=True)


def guarded(fn: F) -> F:
    """Decorate a sync or async hook so that it can never raise into the library."""
    if asyncio.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            with swallow_errors(fn.__qualname__):
                return await fn(*args, **kwargs)
            return None

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with swallow_errors(fn.__qualname__):
            return fn(*args, **kwargs)
        return None

    return wrapper  # type: ignore[return-value]


def qualname(obj: Any) -> str:
    """``module.Name`` of an exception class (builtins keep their bare name)."""
    cls = obj if isinstance(obj, type) else type(obj)
    module = getattr(cls, "__module__", "") or ""
    name = getattr(cls, "__qualname__", cls.__name__)
    return name if module in ("builtins", "") else f"{module}.{name}"


def failure_fields(exc: BaseException | None, tb: Any = None, text: str | None = None) -> dict[str, Any]:
    """exc_type, exc_message and a capped traceback for an exception (or a preformatted one)."""
    if exc is None:
        return {"traceback": cap_traceback(text)} if text else {}
    if text is None:
        trace = tb if tb is not None else exc.__traceback__
        try:
            text = "".join(tb_module.format_exception(type(exc), exc, trace))
        except Exception:
            text = None
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {type(exc).__name__}>"
    return {
        "exc_type": qualname(exc),
        "exc_message": cap_text(message),
        "traceback": cap_traceback(text, DEFAULT_TRACEBACK_LIMIT),
    }


def new_correlation_id() -> str:
    """A fresh correlation id: 32 random hex digits, as ``uuid4().hex`` gave (less its version digit).

    ``os.urandom(16).hex()`` costs a fifth of ``uuid.uuid4().hex`` (~0.9 µs against ~4.7 µs on a slow
    machine), and every enqueue outside a job makes one.
    """
    return os.urandom(16).hex()


_modules = sys.modules


def current_trace() -> dict[str, str] | None:
    """:func:`trace_fields` for a job's hot path: ``None`` (no call, no dict) when OpenTelemetry is not loaded."""
    if _modules.get("opentelemetry.trace") is None:
        return None
    return trace_fields() or None


def trace_fields() -> dict[str, str]:
    """OpenTelemetry trace and span ids of the active span, when opentelemetry is in use."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return {}
    try:
        ctx = trace.get_current_span().get_span_context()
        if not ctx.is_valid:
            return {}
        return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}
    except Exception:
        return {}


_now = time.time
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int | None:
    """Resident memory of this process (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except Exception:
        return None


class Recorder:
    """One adapter's link to the stream: config, emitter, worker identity and job counters."""

    def __init__(self, lib: str, config: CollectorConfig) -> None:
        self.lib = lib
        self.config = config
        self.host = config.host
        self.emitter: Emitter = get_emitter(config)  # at install time: its setup stays off the jobs
        self._reset_identity()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset_identity)

    def _reset_identity(self) -> None:
        self.pid = os.getpid()
        self.started_at = time.time()
        #: Stable id of this worker process: host, pid and start time (pids are reused).
        self.worker = f"{self.host}:{self.pid}:{int(self.started_at * 1000) % 100_000_000:x}"
        self.inflight = 0
        self.processed = 0
        self.failed = 0
        #: Who sent an event; the emitter thread turns (identity, type, fields) into the event.
        self.identity = (self.lib, self.config.app, self.host, self.pid, self.worker)

    def emit(self, type: str, **fields: Any) -> None:
        """Queue an event with this worker's identity (never raises, never blocks).

        Only the timestamp is taken here; the event dict is completed on the emitter's thread,
        which keeps a job's own cost to a tuple and a deque append.
        """
        if not self.config.enabled:
            return
        try:
            if "ts" not in fields:
                fields["ts"] = _now()
            self.emitter.emit((self.identity, type, fields))  # type: ignore[arg-type]
        except Exception:
            pass

    def heartbeat_fields(self) -> dict[str, Any]:
        """The counters a worker-heartbeat carries."""
        return {
            "inflight": self.inflight,
            "processed": self.processed,
            "failed": self.failed,
            "rss_bytes": rss_bytes(),
            "dropped": self.emitter.dropped,
        }


class CpuSampler:
    """Chooses the attempts whose CPU time (``cpu_ms``) is measured.

    A CPU clock is a system call (0.8-2 µs here, twice per attempt), which a no-op job cannot
    afford. Measured: every attempt of a task not yet timed or whose last timed run took ``slow_s``
    or more, and one in ``every`` of the others. What ``cpu_ms`` is for (is this queue's work
    CPU-bound?) needs the long jobs, and only a sample of the short ones. ``learn`` runs where
    durations are computed (often the emitter's thread); ``want`` on the job's.
    """

    __slots__ = ("every", "slow_s", "_n", "_slow", "is_slow")

    def __init__(self, every: int = 16, slow_s: float = 0.001) -> None:
        self.every = every
        self.slow_s = slow_s
        self._n = 0
        #: Whether each task's last timed run was slow (a task missing has not been timed yet).
        self._slow: dict[Any, bool] = {}
        #: ``is_slow(task, True)``: the test ``want`` makes, for a caller that counts attempts itself.
        self.is_slow = self._slow.get

    def want(self, task: Any) -> bool:
        """Whether the attempt of ``task`` starting now reads the CPU clock."""
        self._n = n = self._n + 1
        return self._slow.get(task, True) or n % self.every == 0

    def after_batch(self, longest_s: float) -> bool:
        """For a collector that decides per batch of attempts, not per attempt (collectors.dramatiq,
        on its sending thread): whether the attempts that start until the next batch read the clock.
        Yes after a batch with a slow attempt, and for one batch in ``every`` of the others."""
        self._n = n = self._n + 1
        return longest_s >= self.slow_s or n % self.every == 0

    def learn(self, task: Any, duration_s: float) -> None:
        """Note how long a run of ``task`` took (it decides the task's next attempts)."""
        slow = self._slow
        if len(slow) < 4096 or task in slow:
            slow[task] = duration_s >= self.slow_s


class Heartbeat:
    """A daemon thread that emits ``worker-heartbeat`` (or another type) every ``interval`` s."""

    def __init__(
        self,
        recorder: Recorder,
        extra: Callable[[], dict[str, Any]] | None = None,
        interval: float = HEARTBEAT_INTERVAL_S,
        type: str = EventType.WORKER_HEARTBEAT,
    ) -> None:
        self.recorder = recorder
        self.extra = extra
        self.interval = interval
        self.type = type
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flowerbed-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def beat(self) -> None:
        """Emit one heartbeat now."""
        with swallow_errors("heartbeat"):
            fields = self.recorder.heartbeat_fields() if self.type == EventType.WORKER_HEARTBEAT else {}
            if self.extra is not None:
                fields.update(self.extra())
            self.recorder.emit(self.type, **fields)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()


class LoopLagMonitor:
    """Measures how late an event loop runs a callback handed to it: the blocking a sync call causes.

    A daemon thread hands the loop a callback every ``interval`` (``call_soon_threadsafe``), a new
    one only once the last has run, and the callback notes how long it waited; the worst lag since
    the last heartbeat is reported, then reset. A thread, not a task sleeping on the loop: that
    task's timer, always in the loop's heap, made every other timer's push and pop compare with it
    in Python (``TimerHandle.__lt__``): ~200 bytecodes a job in a taskiq worker, 0.4 % of a no-op job.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.max_lag_ms = 0.0
        self._stop: threading.Event | None = None
        self._sent: float | None = None  # when the callback on its way was handed over

    def start(self) -> None:
        """Start on the running loop (call from a coroutine on the worker's loop)."""
        if self._stop is not None:
            return
        loop = asyncio.get_running_loop()
        self._stop = stop = threading.Event()
        self._sent = None
        threading.Thread(target=self._run, args=(loop, stop), name="flowerbed-loop-lag", daemon=True).start()

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None

    def take(self) -> float:
        """Return the worst lag (ms) since the last call, and reset it."""
        lag, self.max_lag_ms = self.max_lag_ms, 0.0
        return round(lag, 3)

    def _arrived(self) -> None:
        """On the loop: how long the callback waited to run."""
        sent = self._sent
        if sent is not None:
            lag = (time.monotonic() - sent) * 1000.0
            if lag > self.max_lag_ms:
                self.max_lag_ms = lag
        self._sent = None

    def _run(self, loop: asyncio.AbstractEventLoop, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            if self._sent is not None:
                continue  # the last one has not run yet: the loop is blocked, and its lag grows
            self._sent = time.monotonic()
            try:
                loop.call_soon_threadsafe(self._arrived)
            except RuntimeError:  # the loop is closed
                return


