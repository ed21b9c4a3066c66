"""Flowerbed collector for Dramatiq (2.x, Redis and RabbitMQ brokers) and periodiq.

One line, in the module that builds the broker (so workers, producers and periodiq all get it)::

    broker.add_middleware(collectors.dramatiq.Collector(app="billing"))

Where it sits in the middleware list does not matter. Dramatiq calls ``after_*`` hooks in reverse
order, so an appended middleware hears ``after_process_message`` *before* Retries has decided
anything. A success is reported there (Retries only acts on an exception); any other outcome is
only noted there, and reported once the message is settled: at ``after_ack`` / ``after_nack``,
which come after every middleware has run. The verdict is then read off what really happened:

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

import itertools
import operator
import os
import sys
import threading
import time
import traceback
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
from .emitter import map_distinct, row_builder
from .events import (
    C_ARGS,
    C_DURATION,
    C_ENQUEUED_AT,
    C_MAX_ATTEMPTS,
    C_QUEUE,
    C_STARTED_AT,
    C_TASK,
    C_X,
    ROW_WIDTH,
    EventType,
    cap_text,
    job_row,
    preview,
    set_extra,
)
from .runtime import (
    CpuSampler,
    Heartbeat,
    Recorder,
    current_trace,
    failure_fields,
    hook_failed,
    new_correlation_id,
    swallow_errors,
    trace_fields,
)

__all__ = ["Collector"]

LIB = "dramatiq"

_RESULT_PREVIEW_CHARS = 200

#: Message option carrying the correlation id from a producer (or a parent job) to the job.
OPTION_CORRELATION = "fb_correlation_id"


_now = time.time
_SUCCEEDED = EventType.JOB_SUCCEEDED
_monotonic = time.monotonic
_thread_time = time.thread_time
_get_ident = threading.get_ident
_modules = sys.modules
_OTEL = "opentelemetry.trace"  # current_trace() only once OpenTelemetry is loaded


class _Attempt:
    """One attempt at one message, from its start (or its skip) until it is acked or nacked.

    Made on the worker thread for every message, so it holds only what that thread must snapshot:
    the attempt number (Retries bumps ``options["retries"]`` when it fails) and the clocks. What the
    message itself says (id, actor, queue, correlation id) is read when needed, mostly on the
    emitter's thread. ``message`` is the bare ``Message``: a ``MessageProxy`` answers every attribute
    through ``__getattr__``, ~0.7 µs a read on a slow machine.
    """

    outcome: str | None = None  # "ok" | "error" | "skip", once after_process/skip_message has run
    t1: float | None = None  # monotonic and thread CPU clocks when the actor returned
    cpu1: float | None = None
    exc: BaseException | None = None
    traceback: str | None = None
    exc_message: str | None = None
    reason: str | None = None
    result: str | None = None
    retry_delay_ms: int | None = None
    ts: float = 0.0  # unix time and trace ids at the start (set when the start is held for the emitter)
    trace: dict[str, str] | None = None

    def __init__(self, message: Any, attempt: int, started: bool, t0: float, cpu0: float | None) -> None:
        self.message = message
        self.attempt = attempt
        self.started = started
        self.t0 = t0
        self.cpu0 = cpu0

    @property
    def message_id(self) -> str:
        return self.message.message_id  # type: ignore[no-any-return]

    @property
    def correlation(self) -> str | None:
        message = self.message
        return message.options.get(OPTION_CORRELATION) or message.message_id  # type: ignore[no-any-return]

    def timing_fields(self) -> dict[str, float | None]:
        """duration_ms and cpu_ms of the actor's run (None when it never ran here)."""
        if self.t1 is None:
            return {"duration_ms": None, "cpu_ms": None}
        cpu0, cpu1 = self.cpu0, self.cpu1
        return {
            "duration_ms": round((self.t1 - self.t0) * 1000.0, 3),
            "cpu_ms": None if cpu0 is None or cpu1 is None else round((cpu1 - cpu0) * 1000.0, 3),
        }

    def fields(self, broker: Any) -> dict[str, Any]:
        """The fields every event about this attempt carries."""
        message = self.message
        return {
            "job_id": message.message_id,
            "task": message.actor_name,
            "queue": q_name(message.queue_name),
            "attempt": self.attempt,
            "max_attempts": _max_attempts(broker, message),
            **self.timing_fields(),
            "correlation_id": self.correlation,
        }


def _bare(message: Any) -> Any:
    """The ``Message`` inside a ``MessageProxy`` (attribute reads on it are plain, not ``__getattr__``)."""
    try:
        return message._message
    except AttributeError:
        return message


# --- rows completed on the emitter's thread (see Emitter: deferred events, rows) ---------------------


def _row(broker: Any, etype: str, ts: float, run: _Attempt) -> list[Any]:
    """What every row of an attempt carries."""
    message = run.message
    message_id = message.message_id
    return job_row(etype, ts, message_id, message.actor_name, q_name(message.queue_name), run.attempt,
                   _max_attempts(broker, message), message.options.get(OPTION_CORRELATION) or message_id,
                   run.trace)


def _add_start(rec: Recorder, row: list[Any], run: _Attempt) -> None:
    """What only the start reports: arguments, enqueue time, the periodiq schedule and slot."""
    message = run.message
    row[C_ENQUEUED_AT] = message.message_timestamp / 1000.0
    row[C_ARGS] = preview(message.args, message.kwargs, rec.emitter.redactor)
    schedule, slot = _schedule_of(message)
    if schedule is not None:
        row[C_X] = {"schedule": schedule, "slot": slot}


@row_builder
def _started_row(item: tuple[Any, ...]) -> tuple[Any, list[Any]]:
    """A start sent on its own: its job was still running when the emitter sent."""
    _, rec, broker, run = item
    row = _row(broker, EventType.JOB_STARTED, run.ts, run)
    _add_start(rec, row, run)
    return rec.identity, row


def _succeeded_row(collector: Collector, broker: Any, run: _Attempt, alone: bool) -> list[Any]:
    """An attempt's success as a finished row, built on the worker thread (see RowQueue).

    It carries its start too (``started_at``, arguments, enqueue time, periodiq slot) when ``alone``.
    Left raw for :func:`_finish_rows`: the queue's name as the message has it (``.DQ`` for a delayed
    one), the duration in seconds, and ``(broker, max_retries option)`` for max_attempts.
    """
    message = run.message
    message_id = message.message_id
    options = message.options
    duration = run.t1 - run.t0  # type: ignore[operator]
    cpu0, cpu1 = run.cpu0, run.cpu1
    cpu_ms = None
    if cpu0 is not None:  # a sampled run: it decides the actor's next ones
        collector._cpu.learn(message.actor_name, duration)
        if cpu1 is not None:
            cpu_ms = round((cpu1 - cpu0) * 1000.0, 3)
    trace = run.trace
    # events.job_row's row (ROW_COLS), written out: a call less on the worker thread.
    row = [_SUCCEEDED, _now(), message_id, message.actor_name, message.queue_name, run.attempt,
           (broker, options.get("max_retries", _MISSING)), None, duration, cpu_ms, None,
           options.get(OPTION_CORRELATION) or message_id, None, None,
           None if trace is None else trace.get("trace_id"), None if trace is None else trace.get("span_id"),
           None, None]
    if alone:
        row[C_STARTED_AT] = run.ts
        row[C_ENQUEUED_AT] = message.message_timestamp / 1000.0
        # Positional arguments alone go as a list (Dramatiq's are a tuple): the previews' fast path, where
        # a tuple took the sending thread ~5,000 instructions a row (see events.previews).
        args, kwargs = message.args, message.kwargs
        row[C_ARGS] = (args, kwargs) if kwargs else list(args)
        if options.get("scheduled_at"):  # periodiq's (see _schedule_of): a call only then
            schedule, slot = _schedule_of(message)
            row[C_X] = {"schedule": schedule, "slot": slot}
    if run.result is not None:
        set_extra(row, "result", run.result)
    return row


def _finish_rows(cells: list[Any]) -> None:
    """Success rows made final on the emitter's thread (see _succeeded_row), a column at a time:
    each distinct queue and ``(actor, max_retries option)`` is worked out once per send."""
    # Its own queue's name, not its delay or dead-letter queue's.
    cells[C_QUEUE::ROW_WIDTH] = map_distinct(q_name, cells[C_QUEUE::ROW_WIDTH])
    keys = list(zip(cells[C_TASK::ROW_WIDTH], cells[C_MAX_ATTEMPTS::ROW_WIDTH]))  # (actor, (broker, option))
    cells[C_MAX_ATTEMPTS::ROW_WIDTH] = map_distinct(_max_attempts_of_key, keys)
    # Milliseconds to the microsecond: round(x, 3) costs ~1,400 machine instructions, this ~200.
    cells[C_DURATION::ROW_WIDTH] = [int(seconds * 1e6 + 0.5) / 1e3 for seconds in cells[C_DURATION::ROW_WIDTH]]


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
        self._rows = self.recorder.emitter.row_queue(lambda: self.recorder.identity, _finish_rows)
        self._held = self.recorder.emitter.held  # the emitter's held starts (see Emitter.begin), read directly
        self._enabled = self.config.enabled
        self.heartbeat_interval = heartbeat_interval
        self._scheduler = scheduler
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._runs: dict[int, _Attempt] = {}  # by worker thread: one message at a time each
        #: [processed, failed] by worker thread: each thread counts its own (no lock per message),
        #: heartbeats add them up.
        self._counts: dict[int, list[int]] = {}
        self._lock = threading.Lock()
        #: Threads whose attempt waits for its ack or nack (see _await_settle).
        self._unsettled: set[int] = set()
        self._hear_acks(False)
        self._beats: list[Heartbeat] = []
        self._registered: set[str] = set()
        self._scheduler_beat: Heartbeat | None = None
        self._cpu = CpuSampler()
        self._slow, self._cpu_every = self._cpu.is_slow, self._cpu.every
        self._ticks = itertools.count(1)

    # --- enqueues ------------------------------------------------------------------------------

    def before_enqueue(self, broker: Any, message: Any, delay: int | None) -> None:
        """Stamp the correlation id (the running job's, else a new one); options travel with the message."""
        with swallow_errors("dramatiq before_enqueue"):
            options = message.options
            if OPTION_CORRELATION not in options:
                run = self._runs.get(threading.get_ident())
                options[OPTION_CORRELATION] = run.correlation if run is not None else new_correlation_id()

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
                    max_attempts=_max_attempts(broker, run.message), **common,
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
        """An attempt begins on this worker thread: snapshot, and leave the event to the emitter.

        This and after_process_message run for every message (after_ack only while an attempt waits
        for its ack), in a worker whose no-op job is ~1,000,000 machine instructions: each Python call
        saved here is ~0.05 % of it.
        """
        try:
            msg = getattr(message, "_message", message)  # the bare Message (see _bare)
            name = msg.actor_name
            # A thread CPU clock is a system call: sampled (CpuSampler; a count shared by the threads).
            cpu0 = _thread_time() if self._slow(name, True) or not next(self._ticks) % self._cpu_every else None
            run = _Attempt(msg, int(msg.options.get("retries") or 0) + 1, True, _monotonic(), cpu0)
            self._runs[_get_ident()] = run  # replaces a stale attempt whose ack never came
            if self._enabled:  # held: a job that ends before the next send costs one event
                run.ts = _now()
                if _OTEL in _modules:
                    run.trace = current_trace()
                self._held[run] = (_started_row, self.recorder, broker, run)
        except Exception:
            hook_failed("dramatiq before_process_message")

    def after_process_message(
        self, broker: Any, message: Any, *, result: Any = None, exception: BaseException | None = None
    ) -> None:
        """A success is reported here; any other outcome is noted, and reported once the message is
        settled (after_ack / after_nack), when every middleware has had its say (see the module's doc).

        A success cannot turn into a retry: only a middleware that fails the message could still change
        it, and one that ran before this hook has set ``failed`` (that attempt waits for its nack). One
        that fails it after this hook (rare: nothing in Dramatiq does) gets a final failure at its nack,
        after the success.
        """
        try:
            t1 = _monotonic()
            ident = _get_ident()
            run = self._runs.get(ident)
            if run is None or run.message is not getattr(message, "_message", message) or run.outcome is not None:
                run = self._attempt_of(broker, message)
                t1 = _monotonic()
            run.t1 = t1
            if run.cpu0 is not None:
                run.cpu1 = _thread_time()
            if exception is None:
                run.outcome = "ok"
                if result is not None and self.config.capture_args:
                    try:
                        run.result = cap_text(repr(result), _RESULT_PREVIEW_CHARS)
                    except Exception:
                        run.result = f"<{type(result).__name__}>"
                if getattr(message, "failed", False):  # failed by a middleware: reported at its nack
                    self._await_settle(ident)
                    return
                del self._runs[ident]
                counts = self._counts.get(ident) or self._thread_counts()
                counts[0] += 1
                if self._enabled:  # its start folded in when that was never sent
                    self._rows.add(_succeeded_row(self, broker, run, self._held.pop(run, None) is not None))
                return
            run.outcome = "error"
            run.exc = exception
            run.traceback = "".join(traceback.format_exception(type(exception), exception, exception.__traceback__))
            if isinstance(exception, TimeLimitExceeded):
                limit = _time_limit_ms(broker, message)
                run.reason = "timeout"
                run.exc_message = f"actor exceeded its time limit of {limit:g} ms (TimeLimit)"
            self._await_settle(ident)
        except Exception:
            hook_failed("dramatiq after_process_message")

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
            self._await_settle(_get_ident())

    #: Dramatiq calls every middleware's every hook for every message: an inherited no-op, a Python
    #: method, costs a message ~2,500 machine instructions; a C function of two arguments that does
    #: nothing with them, ~150. ``before_ack`` is not a hook of ours; ``after_ack`` is one only while an
    #: attempt that did not succeed waits for its ack (see _await_settle): a success is reported
    #: at after_process_message, so most acks need nothing.
    before_ack = staticmethod(operator.is_)
    after_ack = staticmethod(operator.is_)

    def _await_settle(self, ident: int) -> None:
        """This thread's attempt is reported when its message is settled: hear after_ack until then.

        The instance's ``after_ack`` (the method) shadows the class's no-op while any thread waits.
        Kept per thread, so an attempt whose ack never came is dropped by that thread's next wait.
        """
        with self._lock:
            self._unsettled.add(ident)
            self._hear_acks(True)

    def _settled(self, ident: int) -> None:
        with self._lock:
            self._unsettled.discard(ident)
            if not self._unsettled:
                self._hear_acks(False)

    def _hear_acks(self, on: bool) -> None:
        """Shadow the class's no-op ``after_ack`` with the method, or stop. Not through ``__dict__``:
        reading that makes CPython give the instance a real dict, and every attribute read on it
        slower (~1,500 instructions a message over the hooks)."""
        if on:
            self.after_ack = self._after_ack
        else:
            try:
                del self.after_ack
            except AttributeError:
                pass

    def _after_ack(self, broker: Any, message: Any) -> None:
        """A message that did not succeed here was acked: a retried failure, a final one without a
        DLQ, or a skip. (Other threads' acks come here too while one waits: they find nothing.)"""
        with swallow_errors("dramatiq after_ack"):
            run = self._settle(message)
            if run is None:  # another thread's success, or the .DQ copy of a delayed message
                return
            self._settled(_get_ident())
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
            self._settled(_get_ident())
            self._report(broker, run, message, dead=True)

    def _new_attempt(self, broker: Any, message: Any, started: bool, keep: bool = True) -> _Attempt:
        msg = _bare(message)
        run = _Attempt(msg, int(msg.options.get("retries") or 0) + 1, started, _monotonic(), _thread_time())
        if keep:
            self._runs[_get_ident()] = run
        return run

    def _attempt_of(self, broker: Any, message: Any) -> _Attempt:
        run = self._runs.get(_get_ident())
        if run is None or run.message_id != message.message_id or run.outcome is not None:
            # A middleware ahead of us skipped it before our before_process_message ran.
            run = self._new_attempt(broker, message, started=False)
        return run

    def _settle(self, message: Any) -> _Attempt | None:
        ident = _get_ident()
        run = self._runs.get(ident)
        if run is None or run.outcome is None:
            return None
        if run.message is not getattr(message, "_message", message) and run.message_id != message.message_id:
            return None
        del self._runs[ident]
        return run

    def _count(self, failed: bool) -> None:
        """Count a settled attempt in this thread's own [processed, failed] (no other thread writes it)."""
        counts = self._counts.get(_get_ident()) or self._thread_counts()
        counts[0] += 1
        if failed:
            counts[1] += 1

    def _thread_counts(self) -> list[int]:
        """This thread's [processed, failed], made on its first settled attempt."""
        counts = self._counts[_get_ident()] = [0, 0]
        return counts

    def counters(self) -> dict[str, int]:
        """inflight, processed and failed of this process, for heartbeats and worker-offline."""
        totals = list(self._counts.values())
        runs = list(self._runs.values())
        rec = self.recorder
        rec.inflight = sum(1 for run in runs if run.started)
        rec.processed = sum(c[0] for c in totals)
        rec.failed = sum(c[1] for c in totals)
        return {"inflight": rec.inflight, "processed": rec.processed, "failed": rec.failed}

    def _report(self, broker: Any, run: _Attempt, message: Any, dead: bool) -> None:
        """An attempt settled other than as a success (after_process_message reports those): retried, failed,
        skipped, or processed yet dead-lettered by a middleware."""
        rec = self.recorder
        self._count(failed=True)
        rec.emitter.release(run)  # a failure is sent as two events, as it always was
        fields = run.fields(broker)
        if dead:
            fields["dead_letter_queue"] = xq_name(fields["queue"])
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
            beat = Heartbeat(self.recorder, lambda: {"concurrency": threads, **self.counters()},
                             self.heartbeat_interval)
            self._beats.append(beat)
            beat.start()

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        """The worker finished its in-flight messages and stopped: say so and flush."""
        with swallow_errors("dramatiq after_worker_shutdown"):
            for beat in self._beats:
                beat.stop()
            self._beats = []
            rec = self.recorder
            rec.emit(EventType.WORKER_OFFLINE, **self.counters(), dropped=rec.emitter.dropped)
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


_MISSING: Any = object()


def _max_attempts(broker: Any, message: Any) -> int | None:
    """Attempts the Retries middleware allows this message (1 without it, None under retry_when)."""
    return _max_attempts_for(broker, message.actor_name, message.options.get("max_retries", _MISSING))


def _max_attempts_of_key(key: tuple[str, tuple[Any, Any]]) -> int | None:
    """:func:`_max_attempts_for` of a success row's ``(actor, (broker, option))``."""
    actor_name, (broker, option) = key
    return _max_attempts_for(broker, actor_name, option)


def _max_attempts_for(broker: Any, actor_name: str, max_retries_option: Any) -> int | None:
    """Attempts the Retries middleware allows a message of ``actor_name`` with that ``max_retries``
    option (``_MISSING`` when it has none).

    Remembered per broker, actor and option: it is asked for every event about a job.
    """
    key = (actor_name, max_retries_option, len(broker.middleware))
    try:
        cache = broker.__dict__.setdefault("_flowerbed_max_attempts", {})
    except AttributeError:  # a broker without __dict__
        return _compute_max_attempts(broker, actor_name, max_retries_option)
    value = cache.get(key, _MISSING)
    if value is _MISSING:
        if len(cache) >= 1024:
            cache.clear()
        value = cache[key] = _compute_max_attempts(broker, actor_name, max_retries_option)
    return value  # type: ignore[no-any-return]


def _compute_max_attempts(broker: Any, actor_name: str, max_retries_option: Any) -> int | None:
    retries = _middleware(broker, Retries)
    if retries is None:
        return 1
    try:
        actor = broker.get_actor(actor_name)
    except Exception:
        return None
    if actor.options.get("retry_when", retries.retry_when) is not None:
        return None
    max_retries = max_retries_option
    if max_retries is _MISSING:
        max_retries = actor.options.get("max_retries", retries.max_retries)
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

