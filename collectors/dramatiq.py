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
    ARGS_KWARGS,
    C_ARGS,
    C_ATTEMPT,
    C_CORRELATION,
    C_CPU,
    C_DURATION,
    C_ENQUEUED_AT,
    C_JOB_ID,
    C_MAX_ATTEMPTS,
    C_QUEUE,
    C_SPAN_ID,
    C_STARTED_AT,
    C_TASK,
    C_TRACE_ID,
    C_TS,
    C_TYPE,
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
    """One attempt at one message that did not succeed (or was skipped), until it is acked or nacked.

    A success never becomes one: its start tuple and end go to the emitter's thread as they are (see
    the start and record layouts below). Made from the start (``begun``), it keeps the attempt number
    as the start saw it (Retries bumps ``options["retries"]`` when it fails) and the clocks.
    ``message`` is the bare ``Message``: a ``MessageProxy`` answers every attribute through
    ``__getattr__``, ~0.7 µs a read on a slow machine.
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
    trace: dict[str, str] | None = None  # trace ids at the start
    start: tuple[Any, ...] | None = None  # its start, when this collector saw it begin

    def __init__(self, message: Any, attempt: int, started: bool, t0: float, cpu0: float | None) -> None:
        self.message = message
        self.attempt = attempt
        self.started = started
        self.t0 = t0
        self.cpu0 = cpu0

    @classmethod
    def begun(cls, start: tuple[Any, ...]) -> _Attempt:
        """The attempt of a start that did not end in a success (see _start)."""
        run = cls(_bare(start[S_MESSAGE]), int(start[S_RETRIES] or 0) + 1, True, start[S_T0], start[S_CPU0])
        run.trace = start[S_TRACE]
        run.start = start
        return run

    @property
    def message_id(self) -> str:
        return self.message.message_id  # type: ignore[no-any-return]

    @property
    def correlation(self) -> str | None:
        return _correlation(self)

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


def _message_of(run: Any) -> Any:
    """The message of this thread's attempt (a start or an _Attempt)."""
    return _bare(run[S_MESSAGE]) if type(run) is tuple else run.message


def _attempt_number(run: Any) -> int:
    return int(run[S_RETRIES] or 0) + 1 if type(run) is tuple else run.attempt  # type: ignore[no-any-return]


def _correlation(run: Any) -> str | None:
    """The correlation id of this thread's attempt (a start or an _Attempt)."""
    message = _message_of(run)
    return message.options.get(OPTION_CORRELATION) or message.message_id  # type: ignore[no-any-return]


def _bare(message: Any) -> Any:
    """The ``Message`` inside a ``MessageProxy`` (attribute reads on it are plain, not ``__getattr__``)."""
    try:
        return message._message
    except AttributeError:
        return message


# --- a started attempt, and its success, as the job's thread leaves them -----------------------------
#
# before_process_message keeps a *start*: one tuple, made in C, by worker thread (the emitter's thread
# sends a start still running at a send on its own, built by _started_row: Collector._inflight). A
# success adds one *record*, the start's cells and the end's (Collector._expand builds its row, on the
# emitter's thread, a column at a time). Only an attempt that does not succeed becomes an _Attempt.

#: A start's cells: the emitter calls S_BUILD(start) for the row of a start it sends on its own.
S_BUILD, S_COLLECTOR, S_BROKER, S_MESSAGE, S_T0, S_CPU0, S_TRACE, S_RETRIES = range(8)
#: A success record's cells: its start's, then the monotonic and thread CPU clocks at the end and the
#: result's preview.
R_T1, R_CPU1, R_RESULT = range(8, 11)
RECORD_WIDTH = 11


def _start(collector: Collector, broker: Any, message: Any, cpu0: float | None) -> tuple[Any, ...]:
    """A start made off the hot path (before_process_message writes the same tuple inline)."""
    return (_started_row, collector, broker, message, _monotonic(), cpu0,
            current_trace() if _OTEL in _modules else None, _bare(message).options.get("retries"))


@row_builder
def _started_row(start: tuple[Any, ...]) -> tuple[Any, list[Any]]:
    """A start sent on its own: its job was still running when the emitter sent (a row builder)."""
    collector, broker, message = start[S_COLLECTOR], start[S_BROKER], _bare(start[S_MESSAGE])
    rec = collector.recorder
    message_id = message.message_id
    row = job_row(EventType.JOB_STARTED, start[S_T0] + (_now() - _monotonic()), message_id, message.actor_name,
                  q_name(message.queue_name), int(start[S_RETRIES] or 0) + 1, _max_attempts(broker, message),
                  message.options.get(OPTION_CORRELATION) or message_id, start[S_TRACE])
    row[C_ENQUEUED_AT] = message.message_timestamp / 1000.0
    row[C_ARGS] = preview(message.args, message.kwargs, rec.emitter.redactor)
    schedule, slot = _schedule_of(message)
    if schedule is not None:
        row[C_X] = {"schedule": schedule, "slot": slot}
    return rec.identity, row


_message_id = operator.attrgetter("message_id")
_actor_name = operator.attrgetter("actor_name")
_queue_name = operator.attrgetter("queue_name")
_options = operator.attrgetter("options")
_timestamp = operator.attrgetter("message_timestamp")
_args = operator.attrgetter("args")
_kwargs = operator.attrgetter("kwargs")
_dict_get = dict.get


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
        self._rows = self.recorder.emitter.row_queue(lambda: self.recorder.identity, expand=self._expand,
                                                     width=RECORD_WIDTH, inflight=self._inflight)
        self._enabled = self.config.enabled
        self.heartbeat_interval = heartbeat_interval
        self._scheduler = scheduler
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        #: By worker thread, one message at a time each: its start (a tuple), or an _Attempt once it
        #: did not succeed.
        self._runs: dict[int, Any] = {}
        #: Successes made into rows by the emitter's thread (see counters).
        self._expanded = 0
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
        #: Whether attempts read the thread CPU clock now (the emitter's thread decides, per batch).
        self._sample = True
        #: Starts the emitter's thread sent on its own, by id() of their message (see _inflight).
        self._announced: dict[int, Any] = {}

    # --- enqueues ------------------------------------------------------------------------------

    def before_enqueue(self, broker: Any, message: Any, delay: int | None) -> None:
        """Stamp the correlation id (the running job's, else a new one); options travel with the message."""
        with swallow_errors("dramatiq before_enqueue"):
            options = message.options
            if OPTION_CORRELATION not in options:
                run = self._runs.get(threading.get_ident())
                options[OPTION_CORRELATION] = _correlation(run) if run is not None else new_correlation_id()

    def after_enqueue(self, broker: Any, message: Any, delay: int | None) -> None:
        """A message reached the broker: a send, a retry (Retries' re-enqueue) or a periodiq fire."""
        with swallow_errors("dramatiq after_enqueue"):
            if isinstance(threading.current_thread(), ConsumerThread):
                return  # a delayed message moving from its .DQ to its queue: not a new enqueue
            ident = threading.get_ident()
            run = self._runs.get(ident)
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
            if (run is not None and _message_of(run).message_id == message.message_id
                    and common["attempt"] > _attempt_number(run)):
                # Retries putting the failed attempt back: it counted the attempt in options["retries"]
                # first (an actor that re-sends its own message does not).
                run = self._current(ident)
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
            # _start(), written out: a call less on the worker thread. The emitter's thread sends the
            # start on its own if it still runs at the next send (see _inflight); most end before, and
            # their success's row carries it. A thread CPU clock is a system call: read only while
            # the emitter's thread has turned sampling on (see CpuSampler.after_batch).
            self._runs[_get_ident()] = (
                _started_row, self, broker, message, _monotonic(), _thread_time() if self._sample else None,
                current_trace() if _OTEL in _modules else None,
                getattr(message, "_message", message).options.get("retries"))
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
            start = self._runs.pop(ident, None)
            if exception is None and type(start) is tuple and start[S_MESSAGE] is message \
                    and not getattr(message, "failed", False):
                if self._enabled:  # _add_success, written out: a call less on the worker thread
                    self._rows.add(start + (t1, None if start[S_CPU0] is None else _thread_time(),
                                            None if result is None else self._result_preview(result)))
                return
            if start is not None:
                self._runs[ident] = start
            self._not_succeeded(broker, message, t1, ident, result, exception)
        except Exception:
            hook_failed("dramatiq after_process_message")

    def _not_succeeded(self, broker: Any, message: Any, t1: float, ident: int, result: Any,
                       exception: BaseException | None) -> None:
        """after_process_message off its hot path: an exception, a message failed by a middleware, or
        an attempt whose start this collector did not see."""
        msg = getattr(message, "_message", message)
        run = self._runs.get(ident)
        if exception is None and not getattr(message, "failed", False):
            # A success whose start was made an _Attempt meanwhile (see after_enqueue), or that this
            # collector did not see begin (a middleware ahead of it raised).
            if isinstance(run, _Attempt) and run.message is msg and run.outcome is None:
                start = (_started_row, self, broker, message, run.t0, run.cpu0, run.trace, run.attempt - 1)
            else:
                start = _start(self, broker, message, None)
            self._runs.pop(ident, None)
            self._add_success(start, t1, result)
            return
        if type(run) is tuple and run[S_MESSAGE] is message:
            run = self._runs[ident] = _Attempt.begun(run)
        elif not isinstance(run, _Attempt) or run.message is not msg or run.outcome is not None:
            run = self._attempt_of(broker, message)
            t1 = _monotonic()
        run.t1 = t1
        if run.cpu0 is not None:
            run.cpu1 = _thread_time()
        if exception is None:  # processed, yet failed by a middleware: reported at its nack
            run.outcome = "ok"
            run.result = None if result is None else self._result_preview(result)
            self._await_settle(ident)
            return
        run.outcome = "error"
        run.exc = exception
        run.traceback = "".join(traceback.format_exception(type(exception), exception, exception.__traceback__))
        if isinstance(exception, TimeLimitExceeded):
            limit = _time_limit_ms(broker, message)
            run.reason = "timeout"
            run.exc_message = f"actor exceeded its time limit of {limit:g} ms (TimeLimit)"
        self._await_settle(ident)

    def _add_success(self, start: tuple[Any, ...], t1: float, result: Any) -> None:
        """A success's record: its start's cells and the end's (see RECORD_WIDTH)."""
        if self._enabled:
            self._rows.add(start + (t1, None if start[S_CPU0] is None else _thread_time(),
                                    None if result is None else self._result_preview(result)))

    def _inflight(self) -> list[tuple[Any, ...]]:
        """The starts of attempts still running that the emitter's thread has not sent yet: it sends
        them on its own, at every send (RowQueue's ``inflight``). Every other start rides in its
        attempt's success row, or goes with its failure (_release_start)."""
        if not self._enabled:
            return []
        fresh = []
        with self._lock:
            runs, announced = self._runs, self._announced
            for ident, start in list(runs.items()):
                if type(start) is tuple and runs.get(ident) is start and id(start[S_MESSAGE]) not in announced:
                    announced[id(start[S_MESSAGE])] = start[S_MESSAGE]
                    fresh.append(start)
        return fresh

    def _release_start(self, run: _Attempt) -> None:
        """Send the start of an attempt that did not succeed, unless the emitter's thread has."""
        start = run.start
        if start is None or not self._enabled:
            return
        with self._lock:
            if self._announced.pop(id(start[S_MESSAGE]), None) is None:
                self.recorder.emitter.emit(start)

    def _result_preview(self, result: Any) -> str | None:
        """The actor's result as text, cut (taken on the job's thread: the object may change later)."""
        if not self.config.capture_args:
            return None
        try:
            return cap_text(repr(result), _RESULT_PREVIEW_CHARS)
        except Exception:
            return f"<{type(result).__name__}>"

    def _expand(self, cells: list[Any]) -> list[Any]:
        """The rows of the success records in ``cells``, a column at a time (the emitter's thread).

        Most columns are one ``map`` in C over the records: the messages' attributes, the
        correlation id (its option, else the message id), the clocks made wall times with one offset.
        """
        width = RECORD_WIDTH
        n = len(cells) // width
        self._expanded += n
        if not n:
            return []
        t0s, t1s = cells[S_T0::width], cells[R_T1::width]
        cpu0s, traces, retries = cells[S_CPU0::width], cells[S_TRACE::width], cells[S_RETRIES::width]
        brokers, given = cells[S_BROKER::width], cells[S_MESSAGE::width]
        # A start the emitter sent on its own (see _inflight) is not folded into its success's row.
        announced = self._announced
        alone = [True] * n
        if announced:
            with self._lock:
                alone = [announced.pop(id(m), None) is None for m in given]
        messages = list(map(getattr, given, itertools.repeat("_message", n), given))  # see _bare
        offset = _now() - _monotonic()
        ids = list(map(_message_id, messages))
        actors = list(map(_actor_name, messages))
        options = list(map(_options, messages))
        durations = [t1 - t0 for t0, t1 in zip(t0s, t1s)]
        self._sample = self._cpu.after_batch(max(durations))
        rows: list[Any] = [None] * (n * ROW_WIDTH)
        rows[C_TYPE::ROW_WIDTH] = [_SUCCEEDED] * n
        rows[C_TS::ROW_WIDTH] = list(map(operator.add, t1s, itertools.repeat(offset, n)))
        rows[C_JOB_ID::ROW_WIDTH] = ids
        rows[C_TASK::ROW_WIDTH] = actors
        rows[C_QUEUE::ROW_WIDTH] = map_distinct(q_name, list(map(_queue_name, messages)))  # not its .DQ's
        rows[C_ATTEMPT::ROW_WIDTH] = [1] * n if not any(retries) else [int(r or 0) + 1 for r in retries]
        rows[C_MAX_ATTEMPTS::ROW_WIDTH] = _max_attempts_column(brokers, actors, options)
        # Milliseconds to the microsecond: round(x, 3) costs ~1,400 machine instructions, this ~200.
        rows[C_DURATION::ROW_WIDTH] = [int(d * 1e6 + 0.5) / 1e3 for d in durations]
        rows[C_CORRELATION::ROW_WIDTH] = list(map(_dict_get, options, itertools.repeat(OPTION_CORRELATION, n), ids))
        # The start's columns, where it was not sent on its own (most are: the columns are made whole,
        # then emptied for the rest). Positional arguments alone go as the message has them: the
        # previews' fast path (see events.previews).
        rows[C_STARTED_AT::ROW_WIDTH] = list(map(operator.add, t0s, itertools.repeat(offset, n)))
        rows[C_ENQUEUED_AT::ROW_WIDTH] = list(map(operator.truediv, map(_timestamp, messages),
                                                  itertools.repeat(1000.0, n)))
        kwargs = list(map(_kwargs, messages))
        args = list(map(_args, messages))
        rows[C_ARGS::ROW_WIDTH] = args if not any(kwargs) else [
            (ARGS_KWARGS, a, k) if k else a for a, k in zip(args, kwargs)]
        if not all(alone):
            for i, a in enumerate(alone):
                if not a:
                    base = i * ROW_WIDTH
                    rows[base + C_STARTED_AT] = rows[base + C_ENQUEUED_AT] = rows[base + C_ARGS] = None
        if any(cpu0s):
            cpu1s = cells[R_CPU1::width]
            for i, (cpu0, cpu1) in enumerate(zip(cpu0s, cpu1s)):
                if cpu0 is not None and cpu1 is not None:
                    rows[i * ROW_WIDTH + C_CPU] = round((cpu1 - cpu0) * 1000.0, 3)
        if any(traces):
            for i, trace in enumerate(traces):
                if trace:
                    rows[i * ROW_WIDTH + C_TRACE_ID] = trace.get("trace_id")
                    rows[i * ROW_WIDTH + C_SPAN_ID] = trace.get("span_id")
        results = cells[R_RESULT::width]
        scheduled = list(map(_dict_get, options, itertools.repeat("scheduled_at", n)))
        if any(results) or any(scheduled):
            for i in range(n):
                row = rows[i * ROW_WIDTH:(i + 1) * ROW_WIDTH]
                if scheduled[i] and alone[i]:  # periodiq's (see _schedule_of)
                    schedule, slot = _schedule_of(messages[i])
                    row[C_X] = {"schedule": schedule, "slot": slot}
                if results[i] is not None:
                    set_extra(row, "result", results[i])
                rows[i * ROW_WIDTH + C_X] = row[C_X]
        return rows

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

    def _current(self, ident: int) -> _Attempt | None:
        """This thread's attempt, its start made an _Attempt (an enqueue or a skip during it)."""
        run = self._runs.get(ident)
        if type(run) is tuple:
            run = self._runs[ident] = _Attempt.begun(run)
        return run  # type: ignore[no-any-return]

    def _attempt_of(self, broker: Any, message: Any) -> _Attempt:
        run = self._current(_get_ident())
        if run is None or run.message_id != message.message_id or run.outcome is not None:
            # A middleware ahead of us skipped it before our before_process_message ran.
            run = self._new_attempt(broker, message, started=False)
        return run

    def _settle(self, message: Any) -> _Attempt | None:
        ident = _get_ident()
        run = self._runs.get(ident)
        if not isinstance(run, _Attempt) or run.outcome is None:
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
        rec.inflight = sum(1 for run in runs if type(run) is tuple or run.started)
        # Successes are counted as the emitter's thread makes their rows, or wait as records.
        rec.processed = sum(c[0] for c in totals) + self._expanded + len(self._rows)
        rec.failed = sum(c[1] for c in totals)
        return {"inflight": rec.inflight, "processed": rec.processed, "failed": rec.failed}

    def _report(self, broker: Any, run: _Attempt, message: Any, dead: bool) -> None:
        """An attempt settled other than as a success (after_process_message reports those): retried, failed,
        skipped, or processed yet dead-lettered by a middleware."""
        rec = self.recorder
        self._count(failed=True)
        self._release_start(run)  # a failure is sent as two events, as it always was
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


def _max_attempts_column(brokers: list[Any], actors: list[str], options: list[dict[str, Any]]) -> list[int | None]:
    """max_attempts of each success row, worked out once per distinct (broker, actor, option)."""
    n = len(actors)
    max_retries = list(map(_dict_get, options, itertools.repeat("max_retries", n), itertools.repeat(_MISSING, n)))
    broker = brokers[0]
    if brokers.count(broker) == n and max_retries.count(_MISSING) == n:  # one broker, no message's own option
        return map_distinct(lambda actor: _max_attempts_for(broker, actor, _MISSING), actors)
    return map_distinct(_max_attempts_of_key, list(zip(brokers, actors, max_retries)))


def _max_attempts_of_key(key: tuple[Any, str, Any]) -> int | None:
    """:func:`_max_attempts_for` of ``(broker, actor, max_retries option)``, as success rows are made."""
    broker, actor_name, option = key
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

