"""Flowerbed collector for Dramatiq (2.x, Redis and RabbitMQ brokers) and periodiq.

One line, in the module that builds the broker (so workers, producers and periodiq all get it)::

    broker.add_middleware(collectors.dramatiq.Collector(app="billing"))

Where it sits in the middleware list does not matter. Dramatiq calls ``after_*`` hooks in reverse
order, so an appended middleware hears ``after_process_message`` *before* Retries has decided
anything. The collector therefore only notes the outcome there, and reports the attempt once the
message is settled: at ``after_ack`` / ``after_nack``, which come after every middleware has run.
The verdict is then read off what really happened:

* nacked → the message is in the dead-letter queue (``<queue>.XQ``): ``job-failed`` with
  ``final=True``, ``dead_letter_queue`` and ``payload`` = the full message dict (``Message.asdict()``:
  queue_name, actor_name, args, kwargs, options, message_id, message_timestamp), from which a live
  worker can enqueue it again (drop ``retries``, ``traceback``, ``redis_message_id``, ``eta``);
* acked after Retries re-enqueued it → ``job-failed`` with ``final=False`` and ``retry_in_s`` (the
  backoff Retries chose, seen on that re-enqueue, which is also reported as ``job-enqueued`` for the
  next attempt);
* acked with no re-enqueue (no Retries middleware, or the re-enqueue failed) → ``final=True``.

``attempt`` is ``options["retries"] + 1`` as the attempt began; ``max_attempts`` follows the Retries
middleware's ``max_retries`` (actor and message options first), ``None`` under ``retry_when``.
TimeLimit's ``TimeLimitExceeded`` is a failure whose message names the limit (``reason="timeout"``);
``SkipMessage`` is ``job-cancelled``: ``reason="expired"`` for AgeLimit (whose skip also dead-letters
the message, so it carries the payload too), ``"skipped"`` for any other middleware (periodiq's stale
fires), named in ``exc_message``.

Every message gets the option ``fb_correlation_id`` as it is enqueued (the running job's, so work a job
starts shares its id; else a new one): it is the ``correlation_id`` of all of the job's events.

Workers: ``worker-online`` (``threads``, ``processes`` from the dramatiq command line, ``prefetch``,
``delay_prefetch``, ``queues``) at ``before_worker_boot``, heartbeats from a daemon thread (so they
stop when the process dies), ``worker-offline`` at ``after_worker_shutdown``.

periodiq: in the periodiq process (detected from its command, or ``Collector(scheduler=True)``), each
``periodic`` actor is announced as ``schedule-registered`` (its cron spec and the local timezone) and
each fire is ``schedule-fired`` with ``slot`` = periodiq's ``scheduled_at`` and ``scheduler`` = that
process, plus ``scheduler-heartbeat``. periodiq has no leader election: two running fire twice, and
both are reported.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
import traceback
import uuid
from datetime import datetime
from typing import Any

try:
    from dramatiq.common import q_name, xq_name
    from dramatiq.middleware import Middleware, Retries, TimeLimit
    from dramatiq.middleware.age_limit import AgeLimit
    from dramatiq.middleware.time_limit import TimeLimitExceeded
    from dramatiq.worker import ConsumerThread
except ImportError as exc:  # pragma: no cover - the user asked for the Dramatiq collector without it
    raise ImportError("collectors.dramatiq needs dramatiq installed in this environment (pip install dramatiq)") from exc

from .config import CollectorConfig
from .constants import HEARTBEAT_INTERVAL_S
from .events import EventType, cap_text
from .runtime import Heartbeat, Recorder, failure_fields, swallow_errors, trace_fields

__all__ = ["Collector"]

LIB = "dramatiq"

_RESULT_PREVIEW_CHARS = 200

#: Message option carrying the correlation id from a producer (or a parent job) to the job.
OPTION_CORRELATION = "fb_correlation_id"


@dataclasses.dataclass
class _Attempt:
    """One attempt at one message, from its start (or its skip) until it is acked or nacked."""

    message_id: str
    task: str
    queue: str
    attempt: int
    max_attempts: int | None
    started: bool
    correlation: str | None = None
    t0: float = dataclasses.field(default_factory=time.monotonic)
    cpu0: float = dataclasses.field(default_factory=time.thread_time)
    outcome: str | None = None  # "ok" | "error" | "skip", once after_process/skip_message has run
    exc: BaseException | None = None
    traceback: str | None = None
    exc_message: str | None = None
    reason: str | None = None
    result: str | None = None
    duration_ms: float | None = None
    cpu_ms: float | None = None
    retry_delay_ms: int | None = None


class Collector(Middleware):
    """Dramatiq middleware that reports jobs, workers and periodiq schedules to Flowerbed."""

    def __init__(
        self,
        *,
        app: str | None = None,
        redis_url: str | None = None,
        stream: str | None = None,
        capture_args: bool | None = None,
        redact: Any = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
        scheduler: bool | None = None,
    ) -> None:
        self.config = CollectorConfig.resolve(app, redis_url, stream, capture_args, redact)
        self.recorder = Recorder(LIB, self.config)
        self.heartbeat_interval = heartbeat_interval
        self._scheduler = scheduler
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._runs: dict[int, _Attempt] = {}  # by worker thread: one message at a time each
        self._lock = threading.Lock()
        self._beats: list[Heartbeat] = []
        self._registered: set[str] = set()
        self._scheduler_beat: Heartbeat | None = None

    # --- enqueues ------------------------------------------------------------------------------

    def before_enqueue(self, broker: Any, message: Any, delay: int | None) -> None:
        """Stamp the correlation id (the running job's, else a new one); options travel with the message."""
        with swallow_errors("dramatiq before_enqueue"):
            options = message.options
            if OPTION_CORRELATION not in options:
                run = self._runs.get(threading.get_ident())
                options[OPTION_CORRELATION] = run.correlation if run is not None else uuid.uuid4().hex

    def after_enqueue(self, broker: Any, message: Any, delay: int | None) -> None:
        """A message reached the broker: a send, a retry (Retries' re-enqueue) or a periodiq fire."""
        with swallow_errors("dramatiq after_enqueue"):
            if isinstance(threading.current_thread(), ConsumerThread):
                return  # a delayed message moving from its .DQ to its queue: not a new enqueue
            run = self._runs.get(threading.get_ident())
            options = message.options
            eta = options.get("eta")
            common = {
                "job_id": message.message_id,
                "task": message.actor_name,
                "queue": q_name(message.queue_name),
                "attempt": int(options.get("retries") or 0) + 1,
                "enqueued_at": message.message_timestamp / 1000.0,
                "eta": eta / 1000.0 if isinstance(eta, (int, float)) else None,
                "payload_bytes": _encoded_size(message),
                "correlation_id": options.get(OPTION_CORRELATION),
            }
            if run is not None and run.message_id == message.message_id and common["attempt"] > run.attempt:
                # Retries putting the failed attempt back: it counted the attempt in options["retries"]
                # first (an actor that re-sends its own message does not).
                run.retry_delay_ms = delay if delay is not None else 0
                self.recorder.emit(
                    EventType.JOB_ENQUEUED, retry_in_s=(delay or 0) / 1000.0,
                    max_attempts=run.max_attempts, **common,
                )
                return
            schedule, slot = _schedule_of(message)
            self.recorder.emit(
                EventType.JOB_ENQUEUED,
                max_attempts=_max_attempts(broker, message),
                args_raw=message.args,
                kwargs_raw=message.kwargs,
                schedule=schedule,
                **common,
                **trace_fields(),
            )
            if schedule is not None and self._is_scheduler():
                self.recorder.emit(
                    EventType.SCHEDULE_FIRED,
                    schedule=schedule,
                    task=message.actor_name,
                    queue=common["queue"],
                    slot=slot,
                    scheduler=self.recorder.worker,
                    job_id=message.message_id,
                )

    # --- one attempt ---------------------------------------------------------------------------

    def before_process_message(self, broker: Any, message: Any) -> None:
        """An attempt begins on this worker thread."""
        with swallow_errors("dramatiq before_process_message"):
            run = self._new_attempt(broker, message, started=True)
            schedule, slot = _schedule_of(message)
            self.recorder.emit(
                EventType.JOB_STARTED,
                job_id=run.message_id,
                task=run.task,
                queue=run.queue,
                attempt=run.attempt,
                max_attempts=run.max_attempts,
                enqueued_at=message.message_timestamp / 1000.0,
                args_raw=message.args,
                kwargs_raw=message.kwargs,
                schedule=schedule,
                slot=slot,
                correlation_id=run.correlation,
                **trace_fields(),
            )

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        """Note how the attempt ended; it is reported once the message is acked or nacked."""
        with swallow_errors("dramatiq after_process_message"):
            run = self._attempt_of(broker, message)
            run.duration_ms = round((time.monotonic() - run.t0) * 1000.0, 3)
            run.cpu_ms = round((time.thread_time() - run.cpu0) * 1000.0, 3)
            if exception is None:
                run.outcome = "ok"
                if result is not None and self.config.capture_args:
                    try:
                        run.result = cap_text(repr(result), _RESULT_PREVIEW_CHARS)
                    except Exception:
                        run.result = f"<{type(result).__name__}>"
                return
            run.outcome = "error"
            run.exc = exception
            run.traceback = "".join(traceback.format_exception(type(exception), exception, exception.__traceback__))
            if isinstance(exception, TimeLimitExceeded):
                limit = _time_limit_ms(broker, message)
                run.reason = "timeout"
                run.exc_message = f"actor exceeded its time limit of {limit:g} ms (TimeLimit)"

    def after_skip_message(self, broker: Any, message: Any) -> None:
        """A middleware raised SkipMessage (AgeLimit, periodiq's stale fires, …)."""
        with swallow_errors("dramatiq after_skip_message"):
            run = self._attempt_of(broker, message)
            exc = sys.exc_info()[1]  # called inside the worker's ``except SkipMessage``
            by = _raised_by(exc)
            run.outcome = "skip"
            run.exc = exc
            run.reason = "expired" if by == AgeLimit.__name__ else "skipped"
            run.exc_message = (str(exc) if exc is not None and str(exc) else None) or f"skipped by {by or 'a middleware'}"

    def after_ack(self, broker: Any, message: Any) -> None:
        """The message is settled and gone: success, a retried failure, or a final one without a DLQ."""
        with swallow_errors("dramatiq after_ack"):
            run = self._settle(message)
            if run is not None:  # else: the .DQ copy of a delayed message, acked as it moves on
                self._report(broker, run, message, dead=False)

    def after_nack(self, broker: Any, message: Any) -> None:
        """The message went to the dead-letter queue: a final failure."""
        with swallow_errors("dramatiq after_nack"):
            run = self._settle(message)
            if run is None:
                # Dead-lettered without being processed here (e.g. no such actor in this worker).
                run = self._new_attempt(broker, message, started=False, keep=False)
                exc = getattr(message, "_exception", None)
                run.outcome, run.exc = "error", exc
                if exc is not None:
                    run.traceback = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            self._report(broker, run, message, dead=True)

    def _new_attempt(self, broker: Any, message: Any, started: bool, keep: bool = True) -> _Attempt:
        run = _Attempt(
            message_id=message.message_id,
            task=message.actor_name,
            queue=q_name(message.queue_name),
            attempt=int(message.options.get("retries") or 0) + 1,
            max_attempts=_max_attempts(broker, message),
            started=started,
            correlation=message.options.get(OPTION_CORRELATION) or message.message_id,
        )
        if keep:
            with self._lock:
                stale = self._runs.get(threading.get_ident())
                if stale is not None and stale.started:
                    self.recorder.inflight = max(0, self.recorder.inflight - 1)
                if started:
                    self.recorder.inflight += 1
                self._runs[threading.get_ident()] = run
        return run

    def _attempt_of(self, broker: Any, message: Any) -> _Attempt:
        run = self._runs.get(threading.get_ident())
        if run is None or run.message_id != message.message_id or run.outcome is not None:
            # A middleware ahead of us skipped it before our before_process_message ran.
            run = self._new_attempt(broker, message, started=False)
        return run

    def _settle(self, message: Any) -> _Attempt | None:
        ident = threading.get_ident()
        run = self._runs.get(ident)
        if run is None or run.message_id != message.message_id or run.outcome is None:
            return None
        with self._lock:
            del self._runs[ident]
            if run.started:
                self.recorder.inflight = max(0, self.recorder.inflight - 1)
        return run

    def _report(self, broker: Any, run: _Attempt, message: Any, dead: bool) -> None:
        rec = self.recorder
        fields: dict[str, Any] = {
            "job_id": run.message_id,
            "task": run.task,
            "queue": run.queue,
            "attempt": run.attempt,
            "max_attempts": run.max_attempts,
            "duration_ms": run.duration_ms,
            "cpu_ms": run.cpu_ms,
            "correlation_id": run.correlation,
        }
        if dead:
            fields["dead_letter_queue"] = xq_name(run.queue)
        with self._lock:
            rec.processed += 1
            if run.outcome != "ok" or dead:
                rec.failed += 1
        if run.outcome == "ok" and not dead:
            rec.emit(EventType.JOB_SUCCEEDED, result=run.result, **fields)
            return
        failure = failure_fields(run.exc, text=run.traceback) if run.exc is not None else {}
        if run.exc_message is not None:
            failure["exc_message"] = run.exc_message
        if run.outcome == "skip":
            failure.pop("traceback", None)  # where a middleware raised SkipMessage: noise
            rec.emit(EventType.JOB_CANCELLED, reason=run.reason, payload=_payload(message) if dead else None,
                     **failure, **fields)
            return
        if run.outcome == "ok":  # processed, yet a middleware failed the message: it is dead-lettered
            failure.setdefault("exc_message", "message failed by a middleware")
        final = dead or run.retry_delay_ms is None
        rec.emit(
            EventType.JOB_FAILED,
            final=final,
            reason=run.reason,
            retry_in_s=None if final else (run.retry_delay_ms or 0) / 1000.0,
            payload=_payload(message) if final else None,
            **failure,
            **fields,
        )

    # --- workers -------------------------------------------------------------------------------

    def before_worker_boot(self, broker: Any, worker: Any) -> None:
        """A worker process is about to start its threads: announce it and start heartbeats."""
        with swallow_errors("dramatiq before_worker_boot"):
            whitelist = getattr(worker, "consumer_whitelist", None)
            queues = sorted(q for q in broker.get_declared_queues() if not whitelist or q in whitelist)
            threads = getattr(worker, "worker_threads", None)
            self.recorder.emit(
                EventType.WORKER_ONLINE,
                concurrency=threads,
                threads=threads,
                processes=_cli_processes(),
                prefetch=getattr(worker, "queue_prefetch", None),
                delay_prefetch=getattr(worker, "delay_prefetch", None),
                queues=queues,
                broker=type(broker).__name__,
            )
            beat = Heartbeat(self.recorder, lambda: {"concurrency": threads}, self.heartbeat_interval)
            self._beats.append(beat)
            beat.start()

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        """The worker finished its in-flight messages and stopped: say so and flush."""
        with swallow_errors("dramatiq after_worker_shutdown"):
            for beat in self._beats:
                beat.stop()
            self._beats = []
            rec = self.recorder
            rec.emit(EventType.WORKER_OFFLINE, inflight=rec.inflight, processed=rec.processed, failed=rec.failed,
                     dropped=rec.emitter.dropped)
            rec.emitter.flush(2.0)

    # --- periodiq ------------------------------------------------------------------------------

    def after_declare_actor(self, broker: Any, actor: Any) -> None:
        """In the periodiq process, announce each periodic actor once."""
        with swallow_errors("dramatiq after_declare_actor"):
            spec = actor.options.get("periodic")
            if spec is None or actor.actor_name in self._registered or not self._is_scheduler():
                return
            self._registered.add(actor.actor_name)
            self.recorder.emit(
                EventType.SCHEDULE_REGISTERED,
                schedule=actor.actor_name,
                task=actor.actor_name,
                queue=actor.queue_name,
                cron=str(spec),
                timezone=_local_timezone(),
                scheduler=self.recorder.worker,
            )
            if self._scheduler_beat is None:
                rec = self.recorder
                self._scheduler_beat = Heartbeat(
                    rec, lambda: {"scheduler": rec.worker, "schedules": sorted(self._registered)},
                    self.heartbeat_interval, EventType.SCHEDULER_HEARTBEAT,
                )
                self._scheduler_beat.start()

    def _is_scheduler(self) -> bool:
        if self._scheduler is None:
            self._scheduler = os.path.basename(sys.argv[0] if sys.argv else "") == "periodiq"
        return self._scheduler


# --- helpers ---------------------------------------------------------------------------------


def _middleware(broker: Any, cls: type) -> Any:
    """The broker's middleware of ``cls``, remembered per broker (this runs for every message)."""
    stack = broker.middleware
    try:
        cache = broker.__dict__.setdefault("_flowerbed_middleware", {})
    except AttributeError:  # a broker without __dict__: search every time
        return next((m for m in stack if isinstance(m, cls)), None)
    key = (cls, len(stack))  # add_middleware changes the length, which invalidates the entry
    if key not in cache:
        cache[key] = next((m for m in stack if isinstance(m, cls)), None)
    return cache[key]


def _max_attempts(broker: Any, message: Any) -> int | None:
    """Attempts the Retries middleware allows this message (1 without it, None under retry_when)."""
    retries = _middleware(broker, Retries)
    if retries is None:
        return 1
    try:
        actor = broker.get_actor(message.actor_name)
    except Exception:
        return None
    if actor.options.get("retry_when", retries.retry_when) is not None:
        return None
    max_retries = message.options.get("max_retries", actor.options.get("max_retries", retries.max_retries))
    return None if max_retries is None else int(max_retries) + 1


def _time_limit_ms(broker: Any, message: Any) -> float:
    """The limit TimeLimit applied to this message, in ms (as TimeLimit computes it)."""
    middleware = _middleware(broker, TimeLimit)
    default = middleware.time_limit if middleware is not None else 600_000
    actor = broker.get_actor(message.actor_name)
    return float(message.options.get("time_limit") or actor.options.get("time_limit", default))


def _raised_by(exc: BaseException | None) -> str | None:
    """The class of the middleware whose method raised ``exc`` (the last frame's ``self``)."""
    tb = exc.__traceback__ if exc is not None else None
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    owner = tb.tb_frame.f_locals.get("self") if tb is not None else None
    return type(owner).__name__ if owner is not None else None


def _encoded_size(message: Any) -> int | None:
    try:
        return len(message.encode())
    except Exception:
        return None


def _payload(message: Any) -> dict[str, Any]:
    """The full message as a dict (a copy: the broker keeps mutating ``options``)."""
    data = dict(message.asdict())
    data["args"] = list(data.get("args") or ())
    data["kwargs"] = dict(data.get("kwargs") or {})
    data["options"] = dict(data.get("options") or {})
    return data


def _schedule_of(message: Any) -> tuple[str | None, float | None]:
    """``(actor name, slot)`` for a message periodiq sent (``scheduled_at`` set), else ``(None, None)``."""
    scheduled_at = message.options.get("scheduled_at")
    if not scheduled_at:
        return None, None
    return message.actor_name, _parse_time(str(scheduled_at))


def _parse_time(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        pass
    try:
        import pendulum

        return float(pendulum.parse(text).timestamp())
    except Exception:
        return None


def _local_timezone() -> str | None:
    try:
        import pendulum  # periodiq schedules in pendulum's local timezone

        return str(pendulum.local_timezone().name)
    except Exception:
        return time.tzname[0] if time.tzname else None


def _cli_processes() -> int | None:
    """``--processes`` of the dramatiq command this worker runs under (None when not under it)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) not in ("dramatiq", "dramatiq-gevent") and not argv0.endswith(
        os.path.join("dramatiq", "__main__.py")
    ):
        return None
    try:
        from dramatiq.cli import make_argument_parser

        args, _ = make_argument_parser().parse_known_args(sys.argv[1:])
        return int(args.processes)
    except (Exception, SystemExit):
        return None

