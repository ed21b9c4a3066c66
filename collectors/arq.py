"""Flowerbed collector for arq (0.28): job, worker and cron events from an arq worker and its producers.

Worker, one line around the settings the ``arq`` command (or ``run_worker``) is given::

    from collectors.arq import instrument

    class Settings:
        functions = [send_email, func(resize, max_tries=3)]
        cron_jobs = [cron(nightly, hour=3, minute=0)]

    WorkerSettings = instrument(Settings, app="billing")     # arq app.WorkerSettings

Producer (a web app that enqueues), one line after ``create_pool``::

    pool = instrument_pool(await create_pool(RedisSettings()), app="billing")

What ``instrument`` does (it returns a copy: a dict for a dict, a class of the same name for a class):

* wraps every function and every cron job's coroutine. arq's ``on_job_*`` hooks see neither the result
  nor the exception, so the wrapper is where ``job-started``, ``job-succeeded``, ``job-failed`` and
  ``job-cancelled`` come from. Its verdict mirrors ``Worker.run_job``: ``Retry``/``RetryJob`` is a
  retry (``retry_in_s`` from the defer), a plain exception is final, ``job_timeout`` is a final failure
  whose message names the limit, ``Job.abort()`` (``allow_abort_jobs``) is ``job-cancelled``
  (``reason="aborted"``), and a job cut off by the worker's shutdown is ``job-failed`` with
  ``final=False, reason="shutdown"`` because arq runs it again;
* chains ``on_startup`` (ours first: ``worker-online``, ``schedule-registered`` per cron job, heartbeat
  threads, event-loop lag monitor, and the producer hook on the worker's own pool) and ``on_shutdown``
  (the user's first, then ``worker-offline`` and a bounded flush). The per-job hooks (``on_job_start``,
  ``on_job_end``, ``after_job_end``) are left exactly as the user set them: the wrapper needs none;
* patches ``arq.worker.Worker`` once per process, inert for workers built from settings that were not
  instrumented: ``handle_sig`` and ``_sleep_until_tasks_complete`` (to note that the worker is
  cancelling its jobs to stop), ``__init__`` (to hand the wrapper its ``Worker``, whose
  ``aborting_tasks``, limits and that note decide the verdicts above) and ``finish_failed_job``, the only code on arq's
  paths that end a job without running it: retries exhausted (``job-failed``, ``final=True``,
  ``reason="max-tries"``, at ``attempt = max_tries + 1`` — the pickup that found it exhausted, as arq
  itself records it), expired (``job-cancelled``, ``reason="expired"``), aborted before start
  (``job-cancelled``, ``reason="aborted"``), unknown function or undecodable payload (``job-failed``).

Cron, reported as arq runs it: every worker runs the cron loop and enqueues each slot under the job id
``<name>:<slot ms>``; arq's WATCH/EXISTS lets exactly one enqueue win. Each worker announces the cron
jobs it runs (``schedule-registered``, ``scheduler`` = that worker) and sends ``scheduler-heartbeat``;
only the worker whose enqueue won sends ``schedule-fired`` (``slot`` = the slot it fired for, unix s).
``cron`` is a croniter string: five fields, plus seconds as a sixth when the job is not at second 0;
weekdays are cron's (0 = Sunday). arq matches day-of-month and weekday with AND, cron with OR.

Enqueues (``job-enqueued``, with ``payload_bytes``, ``eta`` and the argument preview) are seen on pools
passed to :func:`instrument_pool` and on every worker's own pool (cron fires, jobs enqueued by jobs).
An enqueue that arq rejects because the job id exists sends nothing. arq's messages carry nothing
but the call, so a correlation id cannot travel with a job: a job enqueued by a running job reports
the parent's job id as its ``correlation_id`` (one level), and top-level jobs have none.

A final failure carries ``payload`` = ``{"function", "args", "kwargs", "queue_name", "job_id"}``: the
arguments of ``ArqRedis.enqueue_job(function, *args, _job_id=job_id, _queue_name=queue_name,
**kwargs)``. Arguments that JSON cannot hold exactly (arq pickles by default) are also given as
``"job"``: the base64 of arq's own serialised job, to be decoded with the worker's deserializer.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import dataclasses
import functools
import json
import sys
import time
from collections import namedtuple
from collections.abc import Mapping
from datetime import datetime, tzinfo
from typing import Any, Callable

from .config import CollectorConfig
from .constants import HEARTBEAT_INTERVAL_S
from .emitter import row_builder
from .events import (
    ARGS_KWARGS,
    C_ARGS,
    C_ENQUEUED_AT,
    C_ETA,
    C_STARTED_AT,
    C_X,
    ROW_WIDTH,
    EventType,
    cap_text,
    job_row,
    preview,
    set_extra,
)
from .runtime import (
    Heartbeat,
    LoopLagMonitor,
    Recorder,
    current_trace,
    failure_fields,
    hook_failed,
    qualname,
    swallow_errors,
    trace_fields,
)

__all__ = ["instrument", "instrument_pool"]

LIB = "arq"

#: Key under which a worker's collector state sits in arq's ``ctx``.
CTX_KEY = "_flowerbed"

#: Attribute that marks what this module made (hooks, wrappers, patched methods).
_MARK = "__flowerbed_arq__"

#: The job a coroutine runs inside, so an enqueue made by a job is never taken for a cron fire.
_current_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("flowerbed_arq_job", default=None)

#: ``ArqRedis.enqueue_job``'s own keyword options; every other keyword is the job's.
_ENQUEUE_OPTIONS = ("_job_id", "_queue_name", "_defer_until", "_defer_by", "_expires", "_job_try")

_RESULT_PREVIEW_CHARS = 200


def _import_arq() -> Any:
    try:
        import arq.worker
    except ImportError as exc:  # pragma: no cover - the user asked for the arq collector without arq
        raise ImportError("collectors.arq needs arq installed in this environment (pip install arq)") from exc
    return arq.worker


# --- install --------------------------------------------------------------------------------------


def instrument(
    settings: Any,
    *,
    app: str | None = None,
    redis_url: str | None = None,
    stream: str | None = None,
    capture_args: bool | None = None,
    redact: Any = None,
    heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
) -> Any:
    """Return a copy of arq ``WorkerSettings`` (class or dict) whose worker reports to Flowerbed."""
    arq_worker = _import_arq()
    _patch_worker_class(arq_worker.Worker)
    if isinstance(settings, Mapping):
        ns = dict(settings)
    else:
        ns = {k: v for k, v in vars(settings).items() if k not in ("__dict__", "__weakref__")}
    if getattr(ns.get("on_startup"), _MARK, None) is not None:
        return settings  # already instrumented
    config = CollectorConfig.resolve(app, redis_url, stream, capture_args, redact)
    setup = _Setup(config, heartbeat_interval)

    ns["functions"] = [_wrap_function(arq_worker.func(f)) for f in ns.get("functions") or ()]
    if ns.get("cron_jobs"):
        ns["cron_jobs"] = [
            dataclasses.replace(cj, coroutine=_wrap(cj.coroutine, cj.name, cj.max_tries, cj.timeout_s, cron=True))
            for cj in ns["cron_jobs"]
        ]
    ns["on_startup"] = _startup_hook(setup, ns.get("on_startup"))
    ns["on_shutdown"] = _shutdown_hook(ns.get("on_shutdown"))
    if isinstance(settings, Mapping):
        return ns
    return type(settings)(settings.__name__, settings.__bases__, ns)


def instrument_pool(
    pool: Any,
    *,
    app: str | None = None,
    redis_url: str | None = None,
    stream: str | None = None,
    capture_args: bool | None = None,
    redact: Any = None,
) -> Any:
    """Make an ``ArqRedis`` pool report every job it enqueues; returns the same pool."""
    config = CollectorConfig.resolve(app, redis_url, stream, capture_args, redact)
    _patch_pool(pool, _Enqueues(Recorder(LIB, config)))
    return pool


@dataclasses.dataclass(frozen=True)
class _Setup:
    """What one ``instrument`` call was given; each Worker built from it gets its own state."""

    config: CollectorConfig
    heartbeat_interval: float


def _startup_hook(setup: _Setup, user_hook: Callable[..., Any] | None) -> Callable[..., Any]:
    async def on_startup(ctx: dict[Any, Any]) -> None:
        state = ctx.get(CTX_KEY)
        if isinstance(state, _WorkerState):
            with swallow_errors("arq on_startup"):
                state.online(ctx)
        if user_hook is not None:
            await user_hook(ctx)

    setattr(on_startup, _MARK, setup)
    return on_startup


def _shutdown_hook(user_hook: Callable[..., Any] | None) -> Callable[..., Any]:
    async def on_shutdown(ctx: dict[Any, Any]) -> None:
        try:
            if user_hook is not None:
                await user_hook(ctx)
        finally:
            state = ctx.get(CTX_KEY)
            if isinstance(state, _WorkerState):
                with swallow_errors("arq on_shutdown"):
                    state.offline()

    setattr(on_shutdown, _MARK, True)
    return on_shutdown


def _wrap_function(fn: Any) -> Any:
    return dataclasses.replace(fn, coroutine=_wrap(fn.coroutine, fn.name, fn.max_tries, fn.timeout_s))


def _wrap(
    coroutine: Callable[..., Any], name: str, max_tries: int | None, timeout_s: float | None, cron: bool = False
) -> Callable[..., Any]:
    """Wrap one job coroutine so that each run reports its start and its outcome."""
    if getattr(coroutine, _MARK, None) is not None:
        return coroutine
    spec = _JobSpec(name, max_tries, timeout_s, cron)

    @functools.wraps(coroutine)
    async def job(ctx: Any, *args: Any, **kwargs: Any) -> Any:
        state = ctx.get(CTX_KEY) if isinstance(ctx, dict) else None
        if type(state) is not _WorkerState:
            return await coroutine(ctx, *args, **kwargs)
        # The attempt starts: snapshot it; job-started is built on the emitter's thread. This and the
        # success below run for every job, inline: each Python call saved is ~0.5 % of a no-op job here.
        try:
            get = ctx.get
            run = _new_run(_Run, (spec, str(ctx["job_id"]), int(get("job_try") or 1), args, kwargs, _monotonic(),
                                  get("enqueue_time"), get("score"), _now(),
                                  current_trace() if _OTEL in _modules else None))
            state.recorder.inflight += 1  # one event loop, one thread: no lock
            if state.enabled:  # held: a job that ends before the next send costs one event
                state.held[run] = (_started_row, state, run)
        except Exception:
            hook_failed("arq job start")
            run = None
        # arq runs each job in a task of its own, whose context ends with it: nothing to reset.
        _current_job.set(run.job_id if run is not None else None)
        try:
            result = await coroutine(ctx, *args, **kwargs)
        except BaseException as exc:
            state.raised(run, exc)
            raise
        if run is not None:
            try:
                t1 = _monotonic()
                rec = state.recorder
                rec.inflight = max(0, rec.inflight - 1)  # _count(True), inline: this runs for every job
                rec.processed += 1
                if state.enabled:  # its start folded in when that was never sent
                    state.rows.add(_succeeded_row(state, run, t1, result, state.held.pop(run, None) is not None))
            except Exception:
                hook_failed("arq job end")
        return result

    setattr(job, _MARK, spec)
    return job


@dataclasses.dataclass(frozen=True)
class _JobSpec:
    name: str
    max_tries: int | None
    timeout_s: float | None
    cron: bool


class _Run(namedtuple("_Run", "spec job_id attempt args kwargs t0 enqueue_time score ts trace")):
    """One attempt of one job, as the wrapper saw it begin.

    Made for every job on the event loop's thread, so it holds what that thread must snapshot (arq's
    ``ctx`` is the job's to change) and a clock; ``max_attempts`` and ``timeout_s`` follow from the
    spec and the worker's settings whenever they are needed. A tuple made in C (:data:`_new_run`),
    not an ``__init__`` call; it is a key of the emitter's held starts, so it hashes by identity.
    """

    __slots__ = ()
    __hash__ = object.__hash__
    __eq__ = object.__eq__  # type: ignore[assignment]


_new_run = tuple.__new__


_now = time.time
_monotonic = time.monotonic
_modules = sys.modules
_OTEL = "opentelemetry.trace"  # current_trace() only once OpenTelemetry is loaded
_SUCCEEDED = EventType.JOB_SUCCEEDED


# --- rows completed on the emitter's thread (see Emitter: deferred events, rows) ---------------------


def _row(state: _WorkerState, etype: str, ts: float, run: _Run) -> list[Any]:
    spec = run.spec
    row = job_row(etype, ts, run.job_id, spec.name, state.worker.queue_name, run.attempt,
                  state._max_attempts(spec), None, run.trace)
    if spec.cron:
        row[C_X] = {"schedule": spec.name}
    return row


def _add_start(state: _WorkerState, row: list[Any], run: _Run) -> None:
    """What only the start reports: arguments, enqueue time, the time it was deferred to."""
    row[C_ARGS] = preview(run.args, run.kwargs, state.recorder.emitter.redactor)
    enqueue_time, score = run.enqueue_time, run.score
    if isinstance(enqueue_time, datetime):
        row[C_ENQUEUED_AT] = enqueue_time.timestamp()
    if isinstance(score, (int, float)):
        row[C_ETA] = score / 1000.0


@row_builder
def _started_row(item: tuple[Any, ...]) -> tuple[Any, list[Any]]:
    """A start sent on its own: its job was still running when the emitter sent."""
    _, state, run = item
    row = _row(state, EventType.JOB_STARTED, run.ts, run)
    _add_start(state, row, run)
    return state.recorder.identity, row


def _succeeded_row(state: _WorkerState, run: _Run, t1: float, result: Any, alone: bool) -> list[Any]:
    """An attempt's success as a finished row, built on the job's thread (see RowQueue).

    It carries its start too (``started_at``, the arguments, enqueue and deferred-to times) when
    ``alone``; those two times are left raw (a datetime, milliseconds) for :func:`_finish_rows`.
    """
    spec = run.spec
    max_tries = spec.max_tries
    trace = run.trace
    # events.job_row's row (ROW_COLS), written out: a call less for every job. Milliseconds to the µs:
    # round(x, 3) costs 7 times this.
    row = [_SUCCEEDED, _now(), run.job_id, spec.name, state.worker.queue_name, run.attempt,
           state.worker.max_tries if max_tries is None else max_tries, None, int((t1 - run.t0) * 1e6 + 0.5) / 1e3,
           None, None, None, None, None, None if trace is None else trace.get("trace_id"),
           None if trace is None else trace.get("span_id"), None, {"schedule": spec.name} if spec.cron else None]
    if alone:
        row[C_STARTED_AT] = run.ts
        args, kwargs = run.args, run.kwargs  # args alone, the job's own: the previews' fast path
        row[C_ARGS] = (ARGS_KWARGS, args, kwargs) if kwargs else args
        row[C_ENQUEUED_AT] = run.enqueue_time
        row[C_ETA] = run.score
    if result is not None and state.setup.config.capture_args:
        set_extra(row, "result", _result_preview(result))
    return row


def _result_preview(result: Any) -> str:
    """The start of the job's result's repr, taken now: the job may change the object later."""
    try:
        return cap_text(repr(result), _RESULT_PREVIEW_CHARS)
    except Exception:
        return f"<{type(result).__name__}>"


_NUMBERS = frozenset({int, float})


def _finish_rows(cells: list[Any]) -> None:
    """The raw times of the starts folded into success rows, as unix seconds (the emitter's thread,
    a column at a time: see RowQueue)."""
    cells[C_ENQUEUED_AT::ROW_WIDTH] = [t if t is None else t.timestamp() if isinstance(t, datetime) else None
                                       for t in cells[C_ENQUEUED_AT::ROW_WIDTH]]
    cells[C_ETA::ROW_WIDTH] = [s if s is None else s / 1000.0 if type(s) in _NUMBERS else None
                               for s in cells[C_ETA::ROW_WIDTH]]


# --- the Worker class patches ------------------------------------------------------------------


def _patch_worker_class(worker_cls: Any) -> None:
    """Patch a few ``Worker`` methods once per process; each stays inert for workers that are not ours."""
    if getattr(worker_cls.__init__, _MARK, None) is not None:
        return
    original_init = worker_cls.__init__
    original_finish_failed = worker_cls.finish_failed_job

    @functools.wraps(original_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        setup = getattr(self.on_startup, _MARK, None)
        if isinstance(setup, _Setup):
            with swallow_errors("arq Worker.__init__"):
                self.ctx[CTX_KEY] = _WorkerState(setup, self)

    @functools.wraps(original_finish_failed)
    async def finish_failed_job(self: Any, job_id: str, result_data: bytes | None) -> None:
        await original_finish_failed(self, job_id, result_data)
        state = self.ctx.get(CTX_KEY) if isinstance(getattr(self, "ctx", None), dict) else None
        if isinstance(state, _WorkerState):
            with swallow_errors("arq finish_failed_job"):
                state.ended_unrun(job_id, result_data)

    setattr(__init__, _MARK, True)
    setattr(finish_failed_job, _MARK, True)
    worker_cls.__init__ = __init__
    worker_cls.finish_failed_job = finish_failed_job
    _mark_stopping_before(worker_cls, "handle_sig", is_async=False)
    _mark_stopping_before(worker_cls, "_sleep_until_tasks_complete", is_async=True)


#: Set on a Worker once it has begun cancelling its jobs to stop (signal, close, watch reload).
_STOPPING = "_flowerbed_stopping"


def _mark_stopping_before(worker_cls: Any, name: str, is_async: bool) -> None:
    """Flag the worker as stopping when ``name`` runs: ``handle_sig`` cancels the jobs at once, and the
    wait of ``job_completion_wait`` ends right before they are cancelled.

    The flag is what tells a job cut off by shutdown (arq runs it again) from one cut off by its
    timeout (final). Task state cannot: redis-py cancels the worker's main task for an instant on its
    own zero-timeout reads, and from Python 3.12 ``wait_for``'s timeout cancels the outer task too.
    """
    original = getattr(worker_cls, name, None)
    if original is None:  # another arq version: jobs cut off by shutdown then read as timeouts
        return
    if is_async:

        @functools.wraps(original)
        async def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return await original(self, *args, **kwargs)
            finally:
                setattr(self, _STOPPING, True)

    else:

        @functools.wraps(original)
        def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
            setattr(self, _STOPPING, True)
            return original(self, *args, **kwargs)

    setattr(worker_cls, name, patched)


# --- enqueues ---------------------------------------------------------------------------------


@dataclasses.dataclass
class _Enqueue:
    function: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]
    ts: float
    parent: str | None = None
    schedule: str | None = None
    slot: float | None = None


class _Enqueues:
    """Reports what one pool enqueues; on a worker's pool it also tells cron fires apart."""

    def __init__(self, recorder: Recorder, state: _WorkerState | None = None) -> None:
        self.recorder = recorder
        self.state = state

    def prepare(self, pool: Any, function: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Enqueue:
        options = {k: kwargs[k] for k in _ENQUEUE_OPTIONS if k in kwargs}
        job_kwargs = {k: v for k, v in kwargs.items() if k not in options}
        call = _Enqueue(function, args, job_kwargs, options, time.time(), parent=_current_job.get())
        state = self.state
        if state is not None and call.parent is None:
            cron_job = state.crons.get(function)
            if cron_job is not None and cron_job.next_run is not None:
                # run_cron calls enqueue_job before it advances next_run: this is the slot being fired.
                call.schedule = function
                call.slot = cron_job.next_run.timestamp()
        return call

    def enqueued(self, pool: Any, call: _Enqueue, job: Any) -> None:
        if job is None:
            return  # arq refused it: that job id exists (for a cron slot: another worker won)
        opts = call.options
        queue = opts.get("_queue_name") or getattr(pool, "default_queue_name", None)
        eta = None
        if opts.get("_defer_until") is not None:
            eta = opts["_defer_until"].timestamp()
        elif opts.get("_defer_by") is not None:
            defer = opts["_defer_by"]
            eta = call.ts + (defer.total_seconds() if hasattr(defer, "total_seconds") else float(defer))
        fields: dict[str, Any] = {}
        state = self.state
        if state is not None:
            fields["max_attempts"] = state.max_attempts_of(call.function)
        self.recorder.emit(
            EventType.JOB_ENQUEUED,
            job_id=job.job_id,
            task=call.function,
            queue=queue,
            attempt=opts.get("_job_try") or 1,
            enqueued_at=call.ts,
            eta=eta if eta is not None else call.slot,
            args_raw=call.args,
            kwargs_raw=call.kwargs,
            payload_bytes=_serialized_size(pool, call),
            schedule=call.schedule,
            correlation_id=call.parent,
            **fields,
            **trace_fields(),
        )
        if call.schedule is not None:
            self.recorder.emit(
                EventType.SCHEDULE_FIRED,
                schedule=call.schedule,
                task=call.function,
                queue=queue,
                slot=call.slot,
                scheduler=self.recorder.worker,
                job_id=job.job_id,
            )


def _serialized_size(pool: Any, call: _Enqueue) -> int | None:
    try:
        from arq.jobs import serialize_job

        data = serialize_job(
            call.function, call.args, call.kwargs, call.options.get("_job_try"), int(call.ts * 1000),
            serializer=getattr(pool, "job_serializer", None),
        )
        return len(data)
    except Exception:
        return None


def _patch_pool(pool: Any, enqueues: _Enqueues) -> None:
    """Shadow ``pool.enqueue_job`` on this instance only (``run_cron`` calls it through ``self.pool``)."""
    current = pool.enqueue_job
    if getattr(current, _MARK, None) is not None:
        current.__dict__[_MARK] = enqueues  # re-instrumented: the newest owner reports
        return
    original = current

    def enqueue_job(function: str, *args: Any, **kwargs: Any) -> Any:
        # A plain function, so that the call itself (before run_cron moves next_run on) is seen.
        owner = enqueue_job.__dict__[_MARK]
        call = None
        with swallow_errors("arq enqueue_job"):
            call = owner.prepare(pool, function, args, kwargs)
        coro = original(function, *args, **kwargs)
        if call is None:
            return coro
        return _observe(coro, owner, pool, call)

    enqueue_job.__dict__[_MARK] = enqueues
    pool.enqueue_job = enqueue_job


async def _observe(coro: Any, owner: _Enqueues, pool: Any, call: _Enqueue) -> Any:
    job = await coro
    with swallow_errors("arq enqueue_job"):
        owner.enqueued(pool, call, job)
    return job


# --- one worker --------------------------------------------------------------------------------


class _WorkerState:
    """Collector state of one arq ``Worker``: its recorder, heartbeats and the verdicts on its jobs."""

    def __init__(self, setup: _Setup, worker: Any) -> None:
        self.setup = setup
        self.worker = worker
        self.recorder = Recorder(LIB, setup.config)
        #: What the job wrapper reads for every job: the row queue, the emitter's held starts, enabled.
        self.rows = self.recorder.emitter.row_queue(lambda: self.recorder.identity, _finish_rows)
        self.held = self.recorder.emitter.held
        self.enabled = setup.config.enabled
        self.crons: dict[str, Any] = {cj.name: cj for cj in getattr(worker, "cron_jobs", ()) or ()}
        self.lag = LoopLagMonitor()
        self._beats: list[Heartbeat] = []

    # worker lifecycle

    def online(self, ctx: dict[Any, Any]) -> None:
        w = self.worker
        rec = self.recorder
        pool = ctx.get("redis")
        if pool is not None:
            _patch_pool(pool, _Enqueues(rec, self))
        rec.emit(
            EventType.WORKER_ONLINE,
            concurrency=w.max_jobs,
            queues=[w.queue_name],
            functions=sorted(n for n in w.functions if n not in self.crons),
            job_timeout_s=w.job_timeout_s,
            max_tries=w.max_tries,
            poll_delay_s=w.poll_delay_s,
            allow_abort_jobs=w.allow_abort_jobs,
            burst=w.burst,
        )
        tz = _tz_name(w.timezone)
        for name, cj in self.crons.items():
            rec.emit(
                EventType.SCHEDULE_REGISTERED,
                schedule=name,
                task=name,
                queue=w.queue_name,
                cron=cron_spec(cj),
                timezone=tz,
                scheduler=rec.worker,
                unique=cj.unique,
                run_at_startup=cj.run_at_startup,
            )
        self.lag.start()
        interval = self.setup.heartbeat_interval
        beat = Heartbeat(rec, self._heartbeat_extra, interval)
        self._beats = [beat]
        if self.crons:
            names = sorted(self.crons)
            self._beats.append(
                Heartbeat(rec, lambda: {"scheduler": rec.worker, "schedules": names}, interval,
                          EventType.SCHEDULER_HEARTBEAT)
            )
        for b in self._beats:
            b.start()

    def _heartbeat_extra(self) -> dict[str, Any]:
        return {"concurrency": self.worker.max_jobs, "loop_lag_ms": self.lag.take(), "queues": [self.worker.queue_name]}

    def offline(self) -> None:
        for b in self._beats:
            b.stop()
        self.lag.stop()
        rec = self.recorder
        rec.emit(
            EventType.WORKER_OFFLINE,
            inflight=rec.inflight,
            processed=rec.processed,
            failed=rec.failed,
            dropped=rec.emitter.dropped,
        )
        rec.emitter.flush(2.0)

    # one job

    def max_attempts_of(self, name: str) -> int | None:
        fn = self.worker.functions.get(name)
        if fn is None:
            return None
        return self.worker.max_tries if fn.max_tries is None else fn.max_tries

    def _max_attempts(self, spec: _JobSpec) -> int:
        return self.worker.max_tries if spec.max_tries is None else spec.max_tries  # type: ignore[no-any-return]

    def _timeout_s(self, spec: _JobSpec) -> float | None:
        return self.worker.job_timeout_s if spec.timeout_s is None else spec.timeout_s  # type: ignore[no-any-return]

    def _job_fields(self, spec: _JobSpec, run: _Run) -> dict[str, Any]:
        fields = {
            "job_id": run.job_id,
            "task": spec.name,
            "queue": self.worker.queue_name,
            "attempt": run.attempt,
            "max_attempts": self._max_attempts(spec),
        }
        if spec.cron:  # left out, not None, otherwise: the event is then encoded without a filtering copy
            fields["schedule"] = spec.name
        return fields

    def _finish(self, run: _Run, type: str, ok: bool, **fields: Any) -> None:
        rec = self.recorder
        self._count(ok)
        duration_ms = round((time.monotonic() - run.t0) * 1000.0, 3)
        rec.emit(type, duration_ms=duration_ms, **self._job_fields(run.spec, run), **fields)

    def _count(self, ok: bool) -> None:
        rec = self.recorder
        rec.inflight = max(0, rec.inflight - 1)
        rec.processed += 1
        if not ok:
            rec.failed += 1

    def raised(self, run: _Run | None, exc: BaseException) -> None:
        """Report an attempt that raised, with the verdict arq's ``run_job`` is about to reach."""
        if run is None:
            return
        with swallow_errors("arq job end"):
            self.recorder.emitter.release(run)  # a failure is sent as two events, as it always was
            arq_worker = _import_arq()
            w = self.worker
            if isinstance(exc, arq_worker.Retry) and w.retry_jobs:
                self._retrying(run, (exc.defer_score or 0) / 1000.0, **failure_fields(exc))
            elif isinstance(exc, asyncio.CancelledError):
                self._cancelled(run, exc)
            elif isinstance(exc, arq_worker.RetryJob) and w.retry_jobs:
                self._retrying(run, 0.0, **failure_fields(exc))
            else:
                self._finish(run, EventType.JOB_FAILED, False, final=True, payload=_payload(self, run),
                             **failure_fields(exc))

    def _retrying(self, run: _Run, retry_in: float, **failure: Any) -> None:
        """A failed attempt that arq will pick up again: this attempt failed, the next one is queued.

        arq keeps the same queue entry (re-scored ``retry_in`` s ahead) and counts the pickup as the next
        try, even the one that only finds ``max_tries`` exhausted.
        """
        self._finish(run, EventType.JOB_FAILED, False, final=False, retry_in_s=retry_in, **failure)
        self.recorder.emit(
            EventType.JOB_ENQUEUED,
            job_id=run.job_id,
            task=run.spec.name,
            queue=self.worker.queue_name,
            attempt=run.attempt + 1,
            max_attempts=self._max_attempts(run.spec),
            eta=time.time() + retry_in,
            retry_in_s=retry_in,
            schedule=run.spec.name if run.spec.cron else None,
        )

    def _cancelled(self, run: _Run, exc: BaseException) -> None:
        w = self.worker
        if run.job_id in w.aborting_tasks:
            self._finish(run, EventType.JOB_CANCELLED, False, reason="aborted",
                         exc_type=qualname(exc), exc_message="aborted by Job.abort()")
        elif not getattr(w, _STOPPING, False):
            # Nothing but asyncio.wait_for's timeout cancels a job of a running worker.
            source = "func timeout" if run.spec.timeout_s is not None else "job_timeout"
            info = failure_fields(exc)
            info["exc_type"] = qualname(asyncio.TimeoutError)
            info["exc_message"] = f"job exceeded its time limit of {self._timeout_s(run.spec):g} s ({source})"
            self._finish(run, EventType.JOB_FAILED, False, final=True, reason="timeout",
                         payload=_payload(self, run), **info)
        elif w.retry_jobs:
            info = failure_fields(exc)
            info["exc_message"] = "cancelled by worker shutdown; arq will run it again"
            self._retrying(run, 0.0, reason="shutdown", **info)
        else:
            info = failure_fields(exc)
            info["exc_message"] = "cancelled by worker shutdown (retry_jobs is off)"
            self._finish(run, EventType.JOB_FAILED, False, final=True, reason="shutdown",
                         payload=_payload(self, run), **info)

    def ended_unrun(self, job_id: str, result_data: bytes | None) -> None:
        """Report a job that arq ended without running it (``finish_failed_job``)."""
        from arq.jobs import deserialize_result
        from arq.worker import JobExecutionFailed

        w = self.worker
        rec = self.recorder
        info: Any = None
        if result_data is not None:
            try:
                info = deserialize_result(result_data, deserializer=w.job_deserializer)
            except Exception:
                info = None
        exc = getattr(info, "result", None)
        function = getattr(info, "function", None)
        if function == "<unknown>":
            function = None
        enqueue_time = getattr(info, "enqueue_time", None)
        fields: dict[str, Any] = {
            "job_id": job_id,
            "task": function,
            "queue": getattr(info, "queue_name", None) or w.queue_name,
            "attempt": getattr(info, "job_try", None),
            "max_attempts": self.max_attempts_of(function) if function else None,
            "enqueued_at": enqueue_time.timestamp() if isinstance(enqueue_time, datetime) else None,
        }
        rec.processed += 1
        rec.failed += 1
        message = str(exc) if exc is not None else ""
        if isinstance(exc, asyncio.CancelledError):
            rec.emit(EventType.JOB_CANCELLED, reason="aborted", exc_type=qualname(exc),
                     exc_message="aborted by Job.abort() before it started", **fields)
            return
        if isinstance(exc, JobExecutionFailed) and message == "job expired":
            rec.emit(EventType.JOB_CANCELLED, reason="expired", exc_type=qualname(exc),
                     exc_message="job expired before a worker started it", **fields)
            return
        reason = "max-tries" if isinstance(exc, JobExecutionFailed) and "retries exceeded" in message else None
        payload = None
        if function:
            payload = _payload_of(w, job_id, fields["queue"], function, getattr(info, "args", ()) or (),
                                  getattr(info, "kwargs", {}) or {})
        failure = failure_fields(exc) if isinstance(exc, BaseException) else {"exc_message": "job failed (no result)"}
        failure.pop("traceback", None)  # arq's synthetic exception has none worth sending
        rec.emit(EventType.JOB_FAILED, final=True, reason=reason, payload=payload, **failure, **fields)


def _payload(state: _WorkerState, run: _Run) -> dict[str, Any]:
    return _payload_of(state.worker, run.job_id, state.worker.queue_name, run.spec.name, run.args, run.kwargs)


def _payload_of(worker: Any, job_id: str, queue: str, function: str, args: Any, kwargs: Any) -> dict[str, Any]:
    """What ``enqueue_job`` needs to run this job again (and arq's exact bytes when JSON loses data)."""
    payload: dict[str, Any] = {
        "function": function,
        "args": list(args),
        "kwargs": dict(kwargs),
        "queue_name": queue,
        "job_id": job_id,
    }
    try:
        exact = json.loads(json.dumps([payload["args"], payload["kwargs"]])) == [payload["args"], payload["kwargs"]]
    except (TypeError, ValueError):
        exact = False
    if not exact:
        try:
            from arq.jobs import serialize_job

            raw = serialize_job(function, tuple(args), dict(kwargs), None, int(time.time() * 1000),
                                serializer=worker.job_serializer)
            payload["job"] = base64.b64encode(raw).decode("ascii")
        except Exception:
            pass
    return payload


# --- cron description --------------------------------------------------------------------------


def _field(value: Any) -> str:
    if value is None:
        return "*"
    if isinstance(value, (set, frozenset, list, tuple)):
        return ",".join(str(v) for v in sorted(value))
    return str(value)


_WEEKDAYS = ("mon", "tues", "wed", "thurs", "fri", "sat", "sun")


def cron_spec(cron_job: Any) -> str:
    """Describe an arq ``CronJob`` as a croniter string (seconds as a sixth field when not 0)."""
    weekday = cron_job.weekday
    if isinstance(weekday, str):
        weekday = _WEEKDAYS.index(weekday.lower())
    if weekday is not None:
        # arq counts weekdays from Monday = 0 (datetime.weekday); cron from Sunday = 0.
        days = weekday if isinstance(weekday, (set, frozenset, list, tuple)) else {weekday}
        weekday = {(int(d) + 1) % 7 for d in days}
    fields = [_field(cron_job.minute), _field(cron_job.hour), _field(cron_job.day), _field(cron_job.month),
              _field(weekday)]
    second = cron_job.second
    if not (second == 0 or second == {0}):
        fields.append(_field(second))
    return " ".join(fields)


def _tz_name(tz: tzinfo | None) -> str | None:
    if tz is None:
        return None
    key = getattr(tz, "key", None)  # zoneinfo.ZoneInfo
    if key:
        return str(key)
    zone = getattr(tz, "zone", None)  # pytz
    if zone:
        return str(zone)
    offset = tz.utcoffset(None)
    if offset is None:
        return str(tz)
    # A fixed offset (arq's default is the system's, as datetime.astimezone gives it): name it by
    # its offset, which any time library understands, rather than by an abbreviation such as CET.
    minutes = int(offset.total_seconds() // 60)
    if minutes == 0:
        return "UTC"
    sign = "+" if minutes > 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"

