"""Taskiq collector: one middleware for workers, producers and the scheduler process.

Install it the way Taskiq adds middleware, in every process that imports the broker::

    broker.add_middlewares(collectors.taskiq.Collector(app="shop"))

and, for schedule events, build the scheduler with the instrumented subclass::

    scheduler = collectors.taskiq.InstrumentedScheduler(broker, sources=[LabelScheduleSource(broker), ...])

Taskiq has no retry hook: a retry middleware re-sends the message with the same task id from
inside ``on_error``, so a send of a running task's id (or ``NoResultError`` in ``post_execute``)
marks the attempt as retrying; any other error is final. Enqueue time and correlation id travel
as labels stamped in ``pre_send``. A worker's attempt begins where Taskiq first hands over each
message, its formatter's ``loads`` (made to report to the collector: see :func:`_instrument`), and
ends in ``post_execute``.
"""

from __future__ import annotations

import contextvars
import itertools
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

try:
    from taskiq import TaskiqMiddleware, TaskiqScheduler
    from taskiq.exceptions import NoResultError
except ImportError as exc:  # pragma: no cover - depends on the user's environment
    raise ImportError(
        "collectors.taskiq needs Taskiq in this environment: pip install taskiq"
    ) from exc

from .config import CollectorConfig
from .emitter import map_distinct, row_builder
from .events import (
    ARGS_KWARGS,
    C_ARGS,
    C_ATTEMPT,
    C_CPU,
    C_DURATION,
    C_ENQUEUED_AT,
    C_MAX_ATTEMPTS,
    C_QUEUE,
    C_SIZE,
    C_SPAN_ID,
    C_STARTED_AT,
    C_TRACE_ID,
    C_TS,
    C_TYPE,
    C_X,
    ROW_WIDTH,
    EventType,
    job_row,
    preview,
)
from .runtime import (
    CpuSampler,
    Heartbeat,
    LoopLagMonitor,
    Recorder,
    current_trace,
    failure_fields,
    hook_failed,
    new_correlation_id,
    swallow_errors,
)

__all__ = ["Collector", "InstrumentedScheduler"]

LIB = "taskiq"
#: Label carrying the unix time the job was first enqueued (Taskiq messages have none).
LABEL_ENQUEUED_AT = "fb_enqueued_at"
#: Label carrying the correlation id from producer to job.
LABEL_CORRELATION = "fb_correlation_id"
#: Label naming one attempt's bookkeeping in this worker (an int, see _run_base): a retry middleware
#: may start the next attempt (same task id) before the failed one's post_execute has run.
LABEL_RUN = "fb_run"
#: Labels that describe one delivery, not the job: left out of a requeue payload.
_DELIVERY_LABELS = frozenset({"_retries", "schedule_id", "delay", LABEL_ENQUEUED_AT, LABEL_RUN})
#: Bound on per-task bookkeeping, so hooks another middleware skipped cannot grow it forever.
_MAX_TRACKED = 10_000
_now = time.time
_perf = time.perf_counter
_process_time = time.process_time
_ENQUEUED = EventType.JOB_ENQUEUED
_STARTED = EventType.JOB_STARTED
_modules = sys.modules
_OTEL = "opentelemetry.trace"  # current_trace() only once OpenTelemetry is loaded
_SUCCEEDED = EventType.JOB_SUCCEEDED

#: The message of the job running in this context: jobs it enqueues inherit its correlation id.
_current_job: contextvars.ContextVar[Any] = contextvars.ContextVar("flowerbed_taskiq_job", default=None)
#: Set by InstrumentedScheduler.on_ready so post_send can report which job a fire enqueued.
_firing: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "flowerbed_taskiq_fire", default=None
)


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _int(value: Any, default: int = 0) -> int:
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _worker_args() -> Any:
    """The ``taskiq worker`` command line of this process (it lives on the Receiver, not the broker)."""
    try:
        from taskiq.cli.worker.args import WorkerArgs

        argv = list(sys.argv)
        rest = argv[argv.index("worker") + 1:] if "worker" in argv else argv[1:]
        return WorkerArgs.from_cli(rest)
    except BaseException:  # argparse exits on what it cannot parse
        return None


#: One attempt between its receipt and post_execute: its success row as the instrumented formatter's ``loads``
#: began it (see there), which also holds ``t0`` (perf counter) in the ``duration_ms`` cell and, for a
#: sampled attempt, ``(cpu0, seq)`` in ``cpu_ms``, until the end replaces them.
_Running = list


def _attempt(retries: Any) -> int:
    return (retries if type(retries) is int else _int(retries, 0)) + 1


# --- rows completed on the emitter's thread (see Emitter: deferred events, rows) ---------------------


def _row(collector: Collector, etype: str, ts: float, message: Any, attempt: int | None,
         trace: dict[str, str] | None) -> list[Any]:
    """A job event of ``message`` in ``ROW_COLS`` order; the caller fills in timings, args and size."""
    labels = message.labels
    task_id = message.task_id
    row = job_row(etype, ts, task_id, message.task_name, collector._queue(labels), attempt,
                  collector._max_attempts(labels), labels.get(LABEL_CORRELATION) or task_id, trace)
    row[C_ENQUEUED_AT] = labels.get(LABEL_ENQUEUED_AT)  # as text: the reader reads it (see rows_entry)
    return row


@row_builder
def _enqueued_row(item: tuple[Any, ...]) -> tuple[Any, list[Any]]:
    _, collector, message, size, ts, trace = item
    labels = message.labels
    row = _row(collector, _ENQUEUED, ts, message, _int(labels.get("_retries"), 0) + 1, trace)
    row[C_ARGS] = preview(message.args, message.kwargs, collector.recorder.emitter.redactor)
    row[C_SIZE] = size
    schedule_id = labels.get("schedule_id")
    if schedule_id is not None:
        row[C_X] = {"schedule_id": schedule_id}
    return collector.recorder.identity, row


@row_builder
def _started_row(item: tuple[Any, ...]) -> tuple[Any, list[Any]]:
    """A start sent on its own (its job was still running when the emitter sent), from a copy of the
    attempt's row: the job's thread writes only the cells of its end into it, which this resets."""
    _, collector, running, message = item
    row = running[:]
    row[C_TYPE] = _STARTED
    row[C_TS] = row[C_STARTED_AT]
    row[C_STARTED_AT] = row[C_DURATION] = row[C_CPU] = None
    if row[C_QUEUE] is None:
        row[C_QUEUE] = getattr(collector.broker, "queue_name", None)
    row[C_MAX_ATTEMPTS] = collector._max_attempts_of(row[C_MAX_ATTEMPTS])
    row[C_ARGS] = preview(message.args, message.kwargs, collector.recorder.emitter.redactor)
    return collector.recorder.identity, row


def _unstarted_row(message: Any, labels: dict[str, Any]) -> list[Any]:
    """The success row of an attempt whose start was never seen (a formatter put in after ours)."""
    task_id = message.task_id
    row = job_row(_SUCCEEDED, _now(), task_id, message.task_name, labels.get("queue_name"), None,
                  _retry_labels(labels),
                  labels.get(LABEL_CORRELATION) or task_id, None)
    row[C_ENQUEUED_AT] = labels.get(LABEL_ENQUEUED_AT)
    return row


def _retry_labels(labels: dict[str, Any]) -> tuple[Any, Any] | None:
    """A message's ``(retry_on_error, max_retries)`` labels, or ``None`` when it has neither (most
    have: a column of ``None`` is worked out on the sending thread for a fraction of one of pairs)."""
    retry_on_error, max_retries = labels.get("retry_on_error"), labels.get("max_retries")
    return None if retry_on_error is None and max_retries is None else (retry_on_error, max_retries)


def _set_trace(row: list[Any]) -> None:
    """The active span's ids into the row (OpenTelemetry loaded: Taskiq's middleware for it opens the
    job's span in pre_execute, after a message's receipt, and closes it after our post_execute)."""
    trace = current_trace()
    if trace is not None:
        row[C_TRACE_ID] = trace.get("trace_id")
        row[C_SPAN_ID] = trace.get("span_id")


def _instrument(formatter: Any, collector: Collector) -> Any:
    """The broker's formatter, its class made a subclass of its own that also reports to ``collector``:
    where Taskiq hands the collector every message at no hook's cost.

    ``dumps`` notes each sent message's encoded size (``payload_bytes``) without encoding it twice.
    ``loads`` begins the attempt of each message a worker receives, in place of a pre_execute hook:
    Taskiq calls ``loads`` first thing for every message, a plain call, while its dispatch to
    pre_execute (``maybe_awaitable``: a coroutine and an ABC check) cost a no-op job ~5,800
    instructions more than this does, 0.3 % of a real worker's no-op job. The attempt's success row
    is built here, whole but for its end, which post_execute writes in (see there).

    The formatter stays the same object (its own methods run first, its attributes and type hold)
    and the collector is a closure's: a wrapper object forwarding attributes through
    ``__getattr__`` cost every attribute read on it, 2,100 instructions a job. A formatter whose
    class cannot be swapped (a built-in type), or whose methods are its instance's own, is wrapped
    in :class:`_Forwarding`.
    """
    base = type(formatter)
    base_dumps, base_loads = getattr(base, "dumps", None), getattr(base, "loads", None)
    own = getattr(formatter, "__dict__", None) or {}
    if not (callable(base_dumps) and callable(base_loads)) or "dumps" in own or "loads" in own:
        return _instrument(_Forwarding(formatter), collector)  # its methods are its instance's own
    sizes = collector._sizes
    c = collector

    class Instrumented(base):  # type: ignore[valid-type,misc]
        __slots__ = ()
        _flowerbed_collector = collector

        def dumps(self, message: Any) -> Any:
            out = base_dumps(self, message)
            try:
                if len(sizes) < _MAX_TRACKED:
                    sizes[message.task_id] = len(out.message)
            except Exception:
                pass
            return out

        def loads(self, message: Any) -> Any:
            """The message, its attempt begun: clocks started, its row and held start made (see
            Emitter.held).

            Runs for every job: each line is ~0.1 µs of a no-op job's ~340 in a worker. Counters
            come from ``_running`` and ``_seq`` when a heartbeat needs them. A message of a task this
            broker does not know is left alone: Taskiq skips it before pre_execute.
            """
            msg = base_loads(self, message=message)
            try:
                task = msg.task_name
                if task not in c._tasks and not c._knows(task):
                    return msg
                labels = msg.labels
                c._seq = seq = c._seq + 1
                running = c._running
                # CPU time is per process: only attributable to a job that no other overlaps, so the
                # clock (a system call, ~0.8 µs) is read only then, and only for a sample (CpuSampler).
                cpu = (_process_time(), seq) if not running and (c._slow(task, True) or not seq % c._cpu_every) else None
                if len(running) >= _MAX_TRACKED:
                    running.clear()
                run = labels[LABEL_RUN] = c._run_base + seq
                retries = labels.get("_retries")
                task_id = msg.task_id
                args, kwargs = msg.args, msg.kwargs  # args alone (a list) keeps one object alive, not three
                # The success row (ROW_COLS): the broker's default queue, max_attempts (from the retry
                # labels, left as a pair) are made final on the emitter's thread (Collector._finish_rows),
                # the enqueue time's label by the reader; duration_ms holds t0 and cpu_ms (cpu0, seq)
                # until the end. No label dict is kept: each object a row holds adds to the garbage
                # collector's count until the send (see RowQueue).
                retry_on_error, max_retries = labels.get("retry_on_error"), labels.get("max_retries")  # _retry_labels, inline
                row = running[run] = [
                    _SUCCEEDED, None, task_id, task, labels.get("queue_name"), 1 if retries is None else _attempt(retries),
                    None if retry_on_error is None and max_retries is None else (retry_on_error, max_retries),
                    _now(), _perf(), cpu,
                    labels.get(LABEL_ENQUEUED_AT), labels.get(LABEL_CORRELATION) or task_id,
                    args if not kwargs and type(args) is list else (ARGS_KWARGS, args, kwargs), None, None, None, None,
                    None,
                ]
                _current_job.set(msg)  # each message runs in its own task: its context ends with it
                if c._enabled:  # held: a job that ends before the next send costs one row
                    c._held[run] = (_started_row, c, row, msg)
            except Exception:
                hook_failed("taskiq.start")
            return msg

    Instrumented.__name__ = Instrumented.__qualname__ = f"Flowerbed{base.__name__}"
    try:
        formatter.__class__ = Instrumented
    except TypeError:
        return _instrument(_Forwarding(formatter), collector)
    return formatter


class _Forwarding:
    """A formatter that hands ``dumps`` and ``loads`` to another, whose class :func:`_instrument`
    cannot swap; its other attributes are read through."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def dumps(self, message: Any) -> Any:
        return self.inner.dumps(message)

    def loads(self, message: Any) -> Any:
        return self.inner.loads(message=message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Collector(TaskiqMiddleware):
    """Reports Taskiq jobs, workers and scheduler liveness to Flowerbed; never changes an outcome."""

    def __init__(
        self,
        app: str | None = None,
        *,
        redis_url: str | None = None,
        stream: str | None = None,
        capture_args: bool | None = None,
        redact: Any = None,
        heartbeat_interval: float | None = None,
    ) -> None:
        super().__init__()
        config = CollectorConfig.resolve(
            app=app, redis_url=redis_url, stream=stream, capture_args=capture_args, redact=redact
        )
        self.recorder = Recorder(LIB, config)
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat: Heartbeat | None = None
        self._lag = LoopLagMonitor()
        self._running: dict[Any, _Running] = {}  # keyed by the attempt's LABEL_RUN
        self._errors: dict[str, BaseException] = {}
        self._retry_delays: dict[str, float | None] = {}
        self._sizes: dict[str, int] = {}
        self._seq = 0
        #: The emitter's held starts and its emit, looked up once: the job's path is a dict store and a call.
        self._held = self.recorder.emitter.held
        self._emit = self.recorder.emitter.emit
        self._rows = self.recorder.emitter.row_queue(lambda: self.recorder.identity, self._finish_rows)
        self._enabled = config.enabled
        self._instance = next(_instances)
        self._run_base = _run_base(self._instance)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._forked)
        self._concurrency: int | None = None
        self._retry_cache: tuple[Any, int, list[Any]] | None = None
        self._cpu = CpuSampler()
        self._slow = self._cpu.is_slow
        self._cpu_every = self._cpu.every
        self._tasks: set[str] = set()  # tasks the broker runs, as found (see _knows)

    def _forked(self) -> None:
        self._run_base = _run_base(self._instance)

    def _counters(self) -> dict[str, int]:
        """inflight and processed for heartbeats: attempts begun and not ended, and the rest."""
        rec = self.recorder
        rec.inflight = inflight = len(self._running)
        rec.processed = max(0, self._seq - inflight)
        return {"inflight": inflight, "processed": rec.processed}

    # --- lifecycle ----------------------------------------------------------------------------

    async def startup(self) -> None:
        """Announce a worker (or start scheduler heartbeats) when the broker starts."""
        with swallow_errors("taskiq.startup"):
            self._wrap_formatter()  # again: a formatter set after the middleware was added
            broker = self.broker
            if broker.is_worker_process:
                self._worker_online()
            elif broker.is_scheduler_process:
                rec = self.recorder
                self._start_heartbeat(Heartbeat(
                    rec, extra=lambda: {"scheduler": rec.worker},
                    type=EventType.SCHEDULER_HEARTBEAT, **self._hb_kwargs(),
                ))

    async def shutdown(self) -> None:
        """Report a graceful worker stop and flush, since pool processes skip atexit."""
        with swallow_errors("taskiq.shutdown"):
            rec = self.recorder
            if self.broker.is_worker_process:
                rec.emit(EventType.WORKER_OFFLINE, **self._counters(), failed=rec.failed)
            if self._heartbeat is not None:
                self._heartbeat.stop()
                self._heartbeat = None
            self._lag.stop()
            import asyncio

            await asyncio.get_running_loop().run_in_executor(None, rec.emitter.flush, 2.0)

    def _hb_kwargs(self) -> dict[str, Any]:
        return {} if self._heartbeat_interval is None else {"interval": self._heartbeat_interval}

    def _start_heartbeat(self, heartbeat: Heartbeat) -> None:
        self._heartbeat = heartbeat
        heartbeat.beat()
        heartbeat.start()

    def _worker_online(self) -> None:
        args = _worker_args()
        settings: dict[str, Any] = {}
        if args is not None:
            self._concurrency = args.max_async_tasks
            settings = {
                "processes": args.workers,
                "max_prefetch": args.max_prefetch,
                "ack_type": str(getattr(args.ack_type, "value", args.ack_type)),
                "max_threadpool_threads": args.max_threadpool_threads,
                "max_tasks_per_child": args.max_tasks_per_child,
            }
        broker = self.broker
        queue = getattr(broker, "queue_name", None)
        self._lag.start()
        self.recorder.emit(
            EventType.WORKER_ONLINE,
            concurrency=self._concurrency,
            queues=[queue] if queue else None,
            broker=type(broker).__name__,
            **settings,
        )
        lag = self._lag
        self._start_heartbeat(Heartbeat(
            self.recorder,
            extra=lambda: {"loop_lag_ms": lag.take(), "concurrency": self._concurrency, **self._counters()},
            **self._hb_kwargs(),
        ))

    # --- producer side ------------------------------------------------------------------------

    def pre_send(self, message: Any) -> Any:
        """Stamp enqueue time and correlation id as labels; they reach the worker."""
        try:
            labels = message.labels
            if LABEL_ENQUEUED_AT not in labels:
                labels[LABEL_ENQUEUED_AT] = f"{time.time():.6f}"
            if LABEL_CORRELATION not in labels:
                current = _current_job.get()
                labels[LABEL_CORRELATION] = (
                    str(current.labels.get(LABEL_CORRELATION) or current.task_id) if current is not None
                    else new_correlation_id()
                )
            run = _run_of(message)
            if run in self._running and "_retries" in labels:
                # A retry middleware is re-sending the running attempt: remember the chosen delay.
                self._retry_delays[run] = _float(labels.get("delay"))
            self._wrap_formatter()
        except Exception:
            hook_failed("taskiq.pre_send")
        return message

    def post_send(self, message: Any) -> None:
        """Report the job as enqueued (first send, retry or scheduler fire); built on the emitter's thread."""
        try:
            task_id = message.task_id
            fire = _firing.get()
            if fire is not None and "job_id" not in fire:
                fire["job_id"] = task_id
            size = self._sizes.pop(task_id, None)
            rec = self.recorder
            if rec.config.enabled:
                rec.emitter.emit((_enqueued_row, self, message, size, _now(), current_trace()))
        except Exception:
            hook_failed("taskiq.post_send")

    # --- worker side --------------------------------------------------------------------------

    def _wrap_formatter(self) -> None:
        """Instrument the broker's formatter (once; again if it was replaced): see :func:`_instrument`."""
        broker = self.broker
        formatter = broker.formatter
        if getattr(type(formatter), "_flowerbed_collector", None) is not self:
            broker.formatter = _instrument(formatter, self)

    def set_broker(self, broker: Any) -> None:
        """Taskiq hands the middleware its broker as it is added: the formatter is wrapped then."""
        super().set_broker(broker)
        with swallow_errors("taskiq.set_broker"):
            self._wrap_formatter()

    def _knows(self, task: str) -> bool:
        """Whether the broker runs ``task`` (remembered once found: ``_tasks``)."""
        if self.broker.find_task(task) is None:
            return False
        if len(self._tasks) < _MAX_TRACKED:
            self._tasks.add(task)
        return True

    def _outcome_fields(self, message: Any, row: _Running | None, t1: float) -> dict[str, Any]:
        """The fields of an attempt's outcome event."""
        labels = message.labels
        fields: dict[str, Any] = {
            "job_id": message.task_id,
            "task": message.task_name,
            "correlation_id": labels.get(LABEL_CORRELATION),
        }
        if row is not None:
            fields["queue"] = self._queue(labels)
            fields["attempt"] = row[C_ATTEMPT]
            fields["max_attempts"] = self._max_attempts(labels)
            fields["enqueued_at"] = _float(labels.get(LABEL_ENQUEUED_AT))
            fields["duration_ms"] = round((t1 - row[C_DURATION]) * 1000.0, 3)
            cpu = row[C_CPU]
            if cpu is not None and cpu[1] == self._seq and not self._running:
                fields["cpu_ms"] = round((_process_time() - cpu[0]) * 1000.0, 3)
        if _OTEL in _modules:
            fields.update(current_trace() or {})
        return fields

    def on_error(self, message: Any, result: Any, exception: BaseException) -> None:
        """Keep the real exception: a retry middleware replaces it with NoResultError."""
        with swallow_errors("taskiq.on_error"):
            if len(self._errors) >= _MAX_TRACKED:
                self._errors.clear()
            self._errors[_run_of(message)] = exception

    def post_execute(self, message: Any, result: Any) -> None:
        """Report the attempt's outcome: succeeded, retrying or finally failed.

        A success queues the attempt's row (see _instrument) with its end written in, and its
        start folded in unless that was sent already (held: see Emitter.held).
        """
        try:
            t1 = _perf()
            labels = message.labels
            run = labels.get(LABEL_RUN)
            if type(run) is not int:
                run = _run_of(message)
            row = self._running.pop(run, None)
            if result.is_err and self._ended_in_error(message, result, run, row, t1):
                return
            if self._errors or self._retry_delays:
                self._errors.pop(run, None)
                self._retry_delays.pop(run, None)
            if not self._enabled:
                return
            if row is None:  # a message our formatter never loaded
                row = _unstarted_row(message, labels)
            else:
                cpu = row[C_CPU]
                cpu1 = _process_time() if cpu is not None and cpu[1] == self._seq and not self._running else None
                if self._held.pop(run, None) is None:  # its start went on its own: not again
                    row = row[:]  # (the sender makes that start from a copy of the first)
                    row[C_STARTED_AT] = row[C_ARGS] = None
                row[C_TS] = _now()
                duration = t1 - row[C_DURATION]
                row[C_DURATION] = int(duration * 1e6 + 0.5) / 1e3  # ms to the µs; round(x, 3) costs 7 times this
                if cpu is not None:  # a sampled run: it decides the task's next ones
                    self._cpu.learn(message.task_name, duration)
                    row[C_CPU] = None if cpu1 is None else int((cpu1 - cpu[0]) * 1e6 + 0.5) / 1e3
            if _OTEL in _modules:
                _set_trace(row)
            self._rows.add(row)
        except Exception:
            hook_failed("taskiq.post_execute")

    def _ended_in_error(self, message: Any, result: Any, run: str, row: _Running | None, t1: float) -> bool:
        """An error result: a retry (the retry middleware's NoResultError) or a failure, reported
        here (True); or the task's own NoResultError, which is a success (False)."""
        exc = self._errors.pop(run, None)
        retry_delay = self._retry_delays.pop(run, _NO_RETRY)
        error = result.error
        if error is None or isinstance(exc, NoResultError):
            return False
        self.recorder.emitter.release(run)  # a failure is sent as two events, as it always was
        self._failed(message, row, t1, error, exc, retry_delay)
        return True

    def _failed(self, message: Any, row: _Running | None, t1: float, error: BaseException,
                exc: BaseException | None, retry_delay: Any) -> None:
        rec = self.recorder
        rec.failed += 1
        fields = self._outcome_fields(message, row, t1)
        exc = exc or error
        retrying = retry_delay is not _NO_RETRY or isinstance(error, NoResultError)
        fields.update(failure_fields(exc))
        timeout = _float(message.labels.get("timeout"))
        if timeout is not None and isinstance(exc, TimeoutError):
            fields["exc_message"] = f"time limit exceeded: timeout label of {timeout:g} s"
            fields["time_limit_s"] = timeout
        fields["final"] = not retrying
        if retrying:
            fields["retry_in_s"] = None if retry_delay is _NO_RETRY else retry_delay
        else:
            fields["payload"] = self._payload(message, fields.get("queue"))
        rec.emit(EventType.JOB_FAILED, **fields)

    # --- helpers ------------------------------------------------------------------------------

    def _finish_rows(self, cells: list[Any]) -> None:
        """Complete success rows: the broker's queue, max_attempts (the emitter's thread, a column at a
        time: see RowQueue). The enqueue time stays the producer's label, which the reader parses."""
        queues = cells[C_QUEUE::ROW_WIDTH]
        if None in queues:
            default = getattr(self.broker, "queue_name", None)
            cells[C_QUEUE::ROW_WIDTH] = [default if queue is None else queue for queue in queues]
        # The retry labels (see _retry_labels), worked out once each per send.
        cells[C_MAX_ATTEMPTS::ROW_WIDTH] = map_distinct(self._max_attempts_of, cells[C_MAX_ATTEMPTS::ROW_WIDTH])

    def _queue(self, labels: dict[str, Any]) -> str | None:
        return labels.get("queue_name") or getattr(self.broker, "queue_name", None)

    def _max_attempts(self, labels: dict[str, Any]) -> int | None:
        """Attempts the retry policy allows: Taskiq's ``max_retries`` counts attempts, not retries."""
        return self._max_attempts_of(_retry_labels(labels))

    def _max_attempts_of(self, retry: tuple[Any, Any] | None) -> int | None:
        """:meth:`_max_attempts` from what :func:`_retry_labels` kept of a message's labels."""
        return self._max_attempts_for(*(retry or (None, None)))

    def _max_attempts_for(self, retry_on_error: Any, max_retries: Any) -> int | None:
        """:meth:`_max_attempts` from a message's two retry labels (None when it has not got one)."""
        for mw in self._retry_middlewares():
            enabled = retry_on_error
            if isinstance(enabled, str):
                enabled = enabled.lower() == "true"
            if enabled is None:
                enabled = mw.default_retry_label
            if not enabled:
                return 1
            return max(1, _int(mw.default_retry_count if max_retries is None else max_retries, 1))
        return 1

    def _retry_middlewares(self) -> list[Any]:
        """The broker's retry middleware (Smart or Simple), looked up once per middleware list."""
        mws = self.broker.middlewares
        cached = self._retry_cache
        if cached is None or cached[0] is not mws or cached[1] != len(mws):
            found = [m for m in mws if hasattr(m, "default_retry_count") and hasattr(m, "default_retry_label")]
            cached = self._retry_cache = (mws, len(mws), found[:1])
        return cached[2]

    def _payload(self, message: Any, queue: str | None) -> dict[str, Any]:
        """What ``AsyncKicker(task, broker, labels).with_task_id(id).kiq(*args, **kwargs)`` needs."""
        labels = {k: v for k, v in message.labels.items() if k not in _DELIVERY_LABELS}
        return {
            "task": message.task_name,
            "args": list(message.args),
            "kwargs": dict(message.kwargs),
            "queue": queue,
            "options": {"labels": labels, "task_id": message.task_id},
        }


_NO_RETRY: Any = object()
_instances = itertools.count()


def _run_of(message: Any) -> Any:
    """The key of a message's attempt: its LABEL_RUN, an int, though text when a retry sent through a
    schedule source brought the label's type as text and ``parse_labels`` applied it; else its task id."""
    run = message.labels.get(LABEL_RUN)
    if type(run) is int:
        return run
    number = _int(run, -1)
    return number if number >= 0 else message.task_id


def _run_base(instance: int) -> int:
    """The first of a collector's attempt numbers (LABEL_RUN), unique to this process and collector: the
    held starts' keys (one emitter may serve several collectors) and, sent on with a retry, a label
    other workers' collectors must not take for one of theirs. An int: ``str`` of one cost 0.2 µs."""
    return ((os.getpid() << 10) + (instance & 1023)) << 40


class InstrumentedScheduler(TaskiqScheduler):
    """A TaskiqScheduler that reports its schedules at start and every fire with its slot."""

    def __init__(self, broker: Any, sources: list[Any], **collector_options: Any) -> None:
        super().__init__(broker, sources)
        found = [m for m in broker.middlewares if isinstance(m, Collector)]
        if found:
            self.collector = found[0]
        else:
            self.collector = Collector(**collector_options)
            broker.add_middlewares(self.collector)
        self._registered: set[str] = set()

    async def startup(self) -> None:
        """Start the broker (and sources, started by the CLI before us), then register schedules."""
        await super().startup()
        with swallow_errors("taskiq.scheduler.startup"):
            for source in self.sources:
                try:
                    schedules = await source.get_schedules()
                except Exception:
                    continue
                for task in schedules:
                    self._register(source, task)

    async def on_ready(self, source: Any, task: Any) -> None:
        """Enqueue through Taskiq's own path, then report the fire and the job it enqueued."""
        fire: dict[str, Any] = {}
        slot = None
        name = None
        with swallow_errors("taskiq.scheduler.on_ready"):
            if task.cron is not None or task.interval is not None:
                name = self._register(source, task)
                slot = _slot(task, time.time())
        token = _firing.set(fire)
        try:
            await super().on_ready(source, task)
        finally:
            _firing.reset(token)
        with swallow_errors("taskiq.scheduler.fired"):
            if name is not None and "job_id" in fire:
                rec = self.collector.recorder
                rec.emit(EventType.SCHEDULE_FIRED, schedule=name, task=task.task_name, slot=slot,
                         scheduler=rec.worker, job_id=fire["job_id"])

    def _register(self, source: Any, task: Any) -> str | None:
        """Report a recurring schedule once per scheduler process; one-off ``time`` schedules are jobs."""
        if task.cron is None and task.interval is None:
            return None
        name = _schedule_name(source, task)
        if name in self._registered:
            return name
        self._registered.add(name)
        interval = task.interval
        if isinstance(interval, timedelta):
            interval = interval.total_seconds()
        offset = task.cron_offset
        rec = self.collector.recorder
        rec.emit(
            EventType.SCHEDULE_REGISTERED,
            schedule=name,
            task=task.task_name,
            cron=task.cron,
            interval_s=float(interval) if interval is not None else None,
            timezone=offset if isinstance(offset, str) else "UTC",
            cron_offset_s=offset.total_seconds() if isinstance(offset, timedelta) else None,
            source=type(source).__name__,
            scheduler=rec.worker,
        )
        return name


def _schedule_name(source: Any, task: Any) -> str:
    """A name stable across restarts: LabelScheduleSource invents a new schedule_id on every start."""
    if type(source).__name__ != "LabelScheduleSource":
        return str(task.schedule_id)
    registered = getattr(source, "broker", None)
    decorated = registered.find_task(task.task_name) if registered is not None else None
    explicit = {s.get("schedule_id") for s in (decorated.labels.get("schedule") or [])} if decorated else set()
    if task.schedule_id in explicit:
        return str(task.schedule_id)
    spec = task.cron if task.cron is not None else f"every {task.interval}"
    return f"{task.task_name} [{spec}]"


def _slot(task: Any, now: float) -> float:
    """The unix time this fire was due for: cron matches whole minutes, the loop ticks whole seconds."""
    if task.cron is not None:
        shift = task.cron_offset.total_seconds() if isinstance(task.cron_offset, timedelta) else 0.0
        return float((int(now + shift) // 60) * 60 - shift)
    if task.time is not None and task.interval is None:
        when: datetime = task.time
        return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
    return float(int(now))
