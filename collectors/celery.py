"""Celery collector: signal receivers for producers and workers, and beat instrumentation.

Install it once, wherever the Celery app is built (workers, beat and web producers alike)::

    collectors.celery.install(celery_app, app="shop")

Then ``celery worker`` (prefork, threads, solo …) and ``celery beat`` report without further set-up:
beat is instrumented from the ``beat_init`` signal by wrapping the running scheduler's
``apply_async``, so any scheduler class (the default shelve one, django-celery-beat …) works.

Where things run: task signals fire in the pool child (prefork) or pool thread; revocations, hard
time limits and lost children fire ``task_failure``/``task_revoked`` in the worker's main process,
and a hard time limit fires ``task_failure`` twice there (deduplicated here). Every job event carries
the main process's worker id, so the node's heartbeats decide whether its jobs are lost.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import datetime, timedelta
from operator import attrgetter, itemgetter
from typing import Any, Callable

try:
    from celery import signals
    from celery._state import get_current_worker_task
    from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
except ImportError as exc:  # pragma: no cover - depends on the user's environment
    raise ImportError(
        "collectors.celery needs Celery in this environment: pip install celery"
    ) from exc

from .config import CollectorConfig
from .emitter import row_builder
from .events import (
    ARGS_KWARGS,
    C_ARGS,
    C_CPU,
    C_DURATION,
    C_ENQUEUED_AT,
    C_ETA,
    C_STARTED_AT,
    EventType,
    job_row,
    preview,
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

__all__ = ["install", "CeleryCollector"]

LIB = "celery"
#: Message headers carrying the first enqueue time and the correlation id; Celery copies custom
#: headers onto ``task.request``.
HEADER_ENQUEUED_AT = "fb_enqueued_at"
HEADER_CORRELATION = "fb_correlation_id"
_MAX_TRACKED = 10_000
_now = time.time
_perf = time.perf_counter
_thread_time = time.thread_time
_STARTED = EventType.JOB_STARTED
_SUCCEEDED = EventType.JOB_SUCCEEDED
_SEQUENCES = (list, tuple)
_modules = sys.modules
_OTEL = "opentelemetry.trace"  # current_trace() only once OpenTelemetry is loaded


def _current_job() -> tuple[str, str, float | None] | None:
    """(job_id, correlation_id, enqueued_at) of the job running here, from Celery's own task stack.

    Read only when something is published: keeping our own context variable instead cost every job
    a set and a reset (~0.4 µs on a slow machine). The stack's top task not called directly as a
    function is the one whose task_prerun ran last in this thread (worker or ``apply()``).
    """
    task = get_current_worker_task()
    if task is None:
        return None
    req = task.request
    job_id = getattr(req, "id", None)
    if job_id is None:
        return None
    return job_id, getattr(req, HEADER_CORRELATION, None) or job_id, _ts(getattr(req, HEADER_ENQUEUED_AT, None))


def _ts(value: Any) -> float | None:
    """A unix time from Celery's ISO strings, datetimes or numbers."""
    if value is None:
        return None
    try:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.timestamp() if isinstance(value, datetime) else None
    except Exception:
        return None


def _pool_name(pool: Any) -> str:
    """``prefork``, ``threads``, ``solo``, ``eventlet`` or ``gevent`` from the pool's module."""
    name = type(pool).__module__.rsplit(".", 1)[-1]
    return "threads" if name == "thread" else name  # the -P spelling


class _Running(tuple):  # type: ignore[type-arg]
    """One attempt, from its start to its outcome, as the job's thread snapshots it.

    Made for every job on its own thread, so it keeps references and clocks only; the fields derived
    from them (attempt, queue, correlation id, enqueue time, max_attempts) are read when an event is
    built, for a success on the emitter's thread. ``req`` is the attempt's request as a dict: the
    one the worker hands the tracer, or an eager run's request context's ``__dict__``. Celery makes
    a new one for every run and does not change it afterwards.

    A tuple underneath, ``(task, job_id, req, args, kwargs, t0, cpu0, ts, trace)``, named by the
    properties below: made on the job's thread for every run, and a class's ``__init__`` cost ~0.4 µs.
    """

    __slots__ = ()

    task = property(itemgetter(0))
    job_id = property(itemgetter(1))
    req = property(itemgetter(2))
    args = property(itemgetter(3))
    kwargs = property(itemgetter(4))
    t0 = property(itemgetter(5))
    cpu0 = property(itemgetter(6))
    ts = property(itemgetter(7))
    trace = property(itemgetter(8))

    @property
    def attempt(self) -> int:
        return int(self.req.get("retries") or 0) + 1

    @property
    def queue(self) -> str | None:
        return (self.req.get("delivery_info") or {}).get("routing_key")

    @property
    def corr(self) -> str:
        return self.req.get(HEADER_CORRELATION) or self.job_id

    @property
    def enqueued_at(self) -> float | None:
        return _ts(self.req.get(HEADER_ENQUEUED_AT))

    @property
    def max_attempts(self) -> int | None:
        max_retries = getattr(self.task, "max_retries", None)
        return None if max_retries is None else int(max_retries) + 1

    def fields(self, task: Any, t1: float, cpu1: float | None) -> dict[str, Any]:
        """The identity and timings of the attempt, for its outcome's event."""
        cpu0 = self.cpu0
        return {
            "job_id": self.job_id,
            "task": getattr(task, "name", None),
            "queue": self.queue,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "enqueued_at": self.enqueued_at,
            "correlation_id": self.corr,
            "duration_ms": round((t1 - self.t0) * 1000.0, 3),
            "cpu_ms": None if cpu0 is None or cpu1 is None else round((cpu1 - cpu0) * 1000.0, 3),
        }


# --- rows completed on the emitter's thread (see Emitter: deferred events, rows) ---------------------


def _row(etype: str, ts: float, state: _Running, task: Any) -> list[Any]:
    row = job_row(etype, ts, state.job_id, getattr(task, "name", None), state.queue, state.attempt,
                  state.max_attempts, state.corr, state.trace)
    row[C_ENQUEUED_AT] = state.enqueued_at
    return row


def _add_start(collector: CeleryCollector, row: list[Any], state: _Running) -> None:
    """What only the start reports: arguments and the eta."""
    row[C_ARGS] = preview(state.args, state.kwargs, collector.recorder.emitter.redactor)
    eta = state.req.get("eta")
    if eta is not None:
        row[C_ETA] = _ts(eta)


@row_builder
def _started_row(item: tuple[Any, ...]) -> tuple[Any, list[Any]]:
    """A start sent on its own: its job was still running when the emitter sent."""
    _, collector, state = item
    row = _row(_STARTED, state.ts, state, state.task)
    _add_start(collector, row, state)
    return collector._sender(), row


def _succeeded_row(collector: CeleryCollector, state: _Running, t1: float, cpu1: float | None,
                   max_attempts: int | None) -> list[Any]:
    """An attempt's success as a finished row, built on the job's thread (see RowQueue).

    It carries its start too (``started_at``, the arguments, the eta) when that was never sent.
    Plain reads and a list: the arguments' preview is made on the emitter's thread, from the
    arguments left in their cell (see RowQueue).
    """
    task, job_id, req, args, kwargs, t0, cpu0, started, trace = state
    duration = t1 - t0
    cpu_ms = None
    if cpu0 is not None and cpu1 is not None:
        cpu_ms = round((cpu1 - cpu0) * 1000.0, 3)
        collector._cpu.learn(task, duration)  # a sampled run decides the task's next ones
    info = req.get("delivery_info")
    enqueued_at = req.get(HEADER_ENQUEUED_AT)
    if enqueued_at is not None and type(enqueued_at) is not float:
        enqueued_at = _ts(enqueued_at)
    row = job_row(_SUCCEEDED, _now(), job_id, task.name, info.get("routing_key") if info else None,
                  (req.get("retries") or 0) + 1, max_attempts, req.get(HEADER_CORRELATION) or job_id, trace)
    row[C_DURATION], row[C_CPU], row[C_ENQUEUED_AT] = int(duration * 1e6 + 0.5) / 1e3, cpu_ms, enqueued_at
    if collector._held.pop(job_id, None) is not None:  # its start was never sent: it rides along
        row[C_STARTED_AT] = started
        # Positional arguments alone go as they are (a list copied): the previews' fast path (see
        # events.previews), where arguments with keywords took the sending thread ~5,000 instructions a row.
        row[C_ARGS] = ((args if type(args) is tuple else list(args)) if not kwargs and type(args) in _SEQUENCES
                       else (ARGS_KWARGS, args, kwargs))
        eta = req.get("eta")
        if eta is not None:
            row[C_ETA] = _ts(eta)
    return row


#: The collectors whose app's tracers are wrapped in this process (see CeleryCollector._trace_directly).
_tracing: list[CeleryCollector] = []


def _wrap_tracers_of(collector: CeleryCollector) -> None:
    """Make ``Task.__trace__`` wrap each tracer assigned to a task of ``collector``'s app.

    ``__trace__`` becomes a property over ``_flowerbed_trace`` (read in C: ``attrgetter``) whose
    setter wraps: Celery assigns a task's tracer from several places (consumer start and reconnect,
    each pool child) and may add more; all of them go through it. Tracers built before (a spawned
    pool child's) are moved behind it here.
    """
    from celery.app.task import Task

    if collector not in _tracing:
        _tracing.append(collector)
    if not isinstance(Task.__dict__.get("__trace__"), property):
        Task._flowerbed_trace = None  # type: ignore[attr-defined]
        Task.__trace__ = property(attrgetter("_flowerbed_trace"), _set_tracer)  # type: ignore[assignment]
    for task in list((getattr(collector.celery_app, "_tasks", None) or {}).values()):
        tracer = task.__dict__.pop("__trace__", None)
        if tracer is not None:
            task.__trace__ = tracer


def _set_tracer(task: Any, tracer: Any) -> None:
    """The ``__trace__`` setter: a tracer of a task whose app has a collector is wrapped by it."""
    if tracer is not None and not getattr(tracer, "_flowerbed", False):
        try:
            app = task.app
            for collector in _tracing:
                if collector.celery_app is app:
                    tracer = collector._traced(task, tracer)
                    break
        except Exception:
            hook_failed("celery.trace.wrap")
    task._flowerbed_trace = tracer


def _from_worker_request(task_id: str) -> dict[str, Any]:
    """Attempt, queue and correlation id of a job the main process reports failed (hard time limit,
    lost child), from the worker's ``Request`` that sends the signal: it is ``self`` a few frames
    up, and the signal does not pass it. Found by walking up at most 8 frames, on this rare path
    only; empty if this Celery calls from elsewhere. (Remembering every job at task_received for
    it instead cost every job two calls and a dict entry: ~6 µs in a solo worker.)
    """
    frame = sys._getframe(1)
    for _ in range(8):
        frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            break
        candidate = frame.f_locals.get("self")
        if getattr(candidate, "id", None) == task_id and hasattr(candidate, "request_dict"):
            info = getattr(candidate, "delivery_info", None) or {}
            headers = candidate.request_dict
            return {"attempt": int(headers.get("retries") or 0) + 1, "queue": info.get("routing_key"),
                    "correlation_id": headers.get(HEADER_CORRELATION)}
    return {}


class CeleryCollector:
    """The signal receivers of one Celery app; created and connected by :func:`install`."""

    def __init__(self, celery_app: Any, config: CollectorConfig, heartbeat_interval: float | None) -> None:
        self.celery_app = celery_app
        self.recorder = Recorder(LIB, config)
        self._hb_kwargs: dict[str, Any] = {} if heartbeat_interval is None else {"interval": heartbeat_interval}
        self._node: str | None = None  # the worker main process's id, inherited by pool children
        self._node_identity: tuple[Any, Any, tuple[str, str, str, int, str]] | None = None
        #: The emitter's held starts and its emit, looked up once: the job's path is a dict store and a call.
        self._held = self.recorder.emitter.held
        #: Finished successes go here as rows (built on the job's thread, sent by the emitter's).
        self._rows = self.recorder.emitter.row_queue(self._sender)
        self._enabled = config.enabled
        self._running: dict[str, _Running] = {}
        self._failed_recently: dict[str, float] = {}
        self._failed_count: Any = None  # multiprocessing.Value shared with pool children
        self._heartbeat: Heartbeat | None = None
        self._inflight_at_shutdown: int | None = None
        self._lock = threading.Lock()
        #: id(task) -> (task, whether it belongs to our app): ``task.app`` is a class property costing
        #: more than the rest of a hook; the task is kept in the entry so a reused id cannot match.
        self._ours_cache: dict[int, tuple[Any, bool]] = {}
        self._cpu = CpuSampler()

    # --- wiring -------------------------------------------------------------------------------

    def connect(self) -> None:
        """Connect every receiver strongly, with a dispatch uid so installing twice is harmless."""
        uid = f"flowerbed-{id(self.celery_app)}"
        for signal, handler in (
            (signals.before_task_publish, self.on_publish),
            (signals.task_prerun, self.on_prerun),
            (signals.task_retry, self.on_retry),
            (signals.task_failure, self.on_failure),
            (signals.task_postrun, self.on_postrun),
            (signals.task_revoked, self.on_revoked),
            (signals.task_unknown, self.on_unknown),
            (signals.worker_init, self.on_worker_init),
            (signals.worker_process_init, self.on_worker_process_init),
            (signals.worker_ready, self.on_worker_ready),
            (signals.worker_shutting_down, self.on_worker_shutting_down),
            (signals.worker_shutdown, self.on_worker_shutdown),
            (signals.worker_process_shutdown, self.on_process_shutdown),
            (signals.beat_init, self.on_beat_init),
        ):
            signal.connect(handler, weak=False, dispatch_uid=f"{uid}-{signal.name}")

    def _ours(self, task: Any) -> bool:
        entry = self._ours_cache.get(id(task))
        if entry is not None and entry[0] is task:
            return entry[1]
        ours = getattr(task, "app", self.celery_app) is self.celery_app
        cache = self._ours_cache
        if len(cache) >= _MAX_TRACKED:
            cache.clear()
        cache[id(task)] = (task, ours)
        return ours

    def _emit(self, type: str, **fields: Any) -> None:
        if self._node is not None:
            fields.setdefault("worker", self._node)
        self.recorder.emit(type, **fields)

    def _sender(self) -> tuple[str, str, str, int, str]:
        """The identity rows go out under: the node's worker id replaces the pool child's (made once)."""
        identity = self.recorder.identity
        node = self._node
        if node is None or node == identity[4]:
            return identity
        cached = self._node_identity
        if cached is None or cached[0] is not identity or cached[1] is not node:
            cached = self._node_identity = (identity, node, (*identity[:4], node))
        return cached[2]

    def _max_attempts(self, task: Any) -> int | None:
        max_retries = getattr(task, "max_retries", None)
        return None if max_retries is None else int(max_retries) + 1

    # --- producer -----------------------------------------------------------------------------

    def on_publish(self, sender: Any = None, body: Any = None, routing_key: Any = None,
                   headers: Any = None, **kw: Any) -> None:
        """Stamp enqueue time and correlation id into the headers, and report the enqueue."""
        with swallow_errors("celery.before_task_publish"):
            if not isinstance(headers, dict) or "id" not in headers:
                return  # protocol 1 messages carry no headers to stamp
            job_id = headers["id"]
            current = _current_job()
            retry_of_current = current is not None and current[0] == job_id
            enqueued_at = headers.get(HEADER_ENQUEUED_AT)
            if enqueued_at is None:
                enqueued_at = (current[2] if current is not None and retry_of_current else None) or time.time()
                headers[HEADER_ENQUEUED_AT] = enqueued_at
            corr = headers.get(HEADER_CORRELATION)
            if corr is None:
                corr = current[1] if current is not None else new_correlation_id()
                headers[HEADER_CORRELATION] = corr
            name = headers.get("task") or sender
            args = body[0] if isinstance(body, (tuple, list)) and len(body) >= 2 else None
            kwargs = body[1] if isinstance(body, (tuple, list)) and len(body) >= 2 else None
            self._emit(
                EventType.JOB_ENQUEUED,
                job_id=job_id,
                task=name,
                queue=routing_key or None,
                attempt=int(headers.get("retries") or 0) + 1,
                max_attempts=self._max_attempts(self.celery_app.tasks.get(name)),
                enqueued_at=_ts(enqueued_at),
                eta=_ts(headers.get("eta")),
                payload_bytes=self._body_size(body),
                correlation_id=corr,
                args_raw=args,
                kwargs_raw=kwargs,
                beat=True if headers.get("celery_beat_task") else None,
                **trace_fields(),
            )

    def _body_size(self, body: Any) -> int | None:
        """Size of the body as serialised for the broker (Celery serialises after this signal)."""
        try:
            from kombu.serialization import dumps

            return len(dumps(body, serializer=self.celery_app.conf.task_serializer)[2])
        except Exception:
            return None

    # --- worker main process ------------------------------------------------------------------

    def on_worker_init(self, sender: Any = None, **kw: Any) -> None:
        """Fix the node's worker id and a failure counter before pool children fork."""
        with swallow_errors("celery.worker_init"):
            import multiprocessing

            self._node = self.recorder.worker
            self._failed_count = multiprocessing.Value("q", 0)
        with swallow_errors("celery.worker_init.trace"):
            self._trace_directly()

    def on_worker_process_init(self, sender: Any = None, **kw: Any) -> None:
        """A pool child: forked children inherit the wrapping; a spawned one builds its tracers afresh."""
        with swallow_errors("celery.worker_process_init"):
            self._trace_directly()

    def _trace_directly(self) -> None:
        """In a worker, time each job by wrapping its task's tracer instead of receiving signals.

        Celery dispatching task_prerun and task_postrun to our receivers cost a no-op job ~4.4 µs
        in-process (~9 µs in a worker) before a line of ours ran; the wrapper costs one call. The
        worker runs every job through ``task.__trace__``, which Celery (re)builds when the consumer
        starts or reconnects and in each pool child: :func:`_wrap_tracers_of` makes every such
        assignment wrap the tracer, so none is missed. Our two receivers are then disconnected in
        this process (the user's own keep running); ``apply()`` and eager calls, which build a
        tracer of their own, are reported through them elsewhere.
        """
        if not self._enabled:
            return
        _wrap_tracers_of(self)
        uid = f"flowerbed-{id(self.celery_app)}"
        signals.task_prerun.disconnect(dispatch_uid=f"{uid}-{signals.task_prerun.name}")
        signals.task_postrun.disconnect(dispatch_uid=f"{uid}-{signals.task_postrun.name}")

    def _traced(self, task: Any, tracer: Callable[..., Any]) -> Callable[..., Any]:
        """``tracer`` (Celery's ``trace_task(uuid, args, kwargs, request)``) reporting its job.

        A success (no error info, a runtime) is one row built on the emitter's thread, its start
        folded in when never sent; failures and retries are reported by their signals meanwhile.
        Anything of ours that fails is swallowed; what the tracer raises or returns passes unchanged.
        """
        held = self._held
        running = self._running
        rows = self._rows  # its add is looked up per row: the first in a process starts the sender
        want_cpu = self._cpu.want
        max_attempts = self._max_attempts(task)

        def traced_task(uuid: Any, args: Any, kwargs: Any, request: Any = None) -> Any:
            state = None
            try:
                cpu0 = _thread_time() if want_cpu(task) else None  # a system call: sampled (CpuSampler)
                state = _Running((task, uuid, request if request is not None else {}, args, kwargs,
                                  _perf(), cpu0, _now(), current_trace() if _OTEL in _modules else None))
                if len(running) >= _MAX_TRACKED:
                    running.clear()
                running[uuid] = state
                held[uuid] = (_started_row, self, state)  # a job that ends before the next send: one row
            except Exception:
                hook_failed("celery.trace.start")
            try:
                result = tracer(uuid, args, kwargs, request)
            except BaseException:
                if state is not None:
                    self._abandon(uuid)
                raise
            if state is not None:
                try:
                    t1 = _perf()
                    cpu1 = None if state[6] is None else _thread_time()
                    if running.pop(uuid, None) is state and result[1] is None and result[2] is not None:
                        rows.add(_succeeded_row(self, state, t1, cpu1, max_attempts))
                    else:  # failed, retried (reported by their signals), ignored, rejected or skipped
                        self.recorder.emitter.release(uuid)
                except Exception:
                    hook_failed("celery.trace.end")
            return result

        traced_task._flowerbed = True  # type: ignore[attr-defined]
        return traced_task

    def _abandon(self, task_id: Any) -> None:
        """The tracer raised (Reject, MemoryError …): forget the attempt; its start goes out alone."""
        try:
            self._running.pop(task_id, None)
            self.recorder.emitter.release(task_id)
        except Exception:
            hook_failed("celery.trace.abandon")

    def on_worker_ready(self, sender: Any = None, **kw: Any) -> None:
        """Announce the worker with its pool settings and start its heartbeat thread."""
        with swallow_errors("celery.worker_ready"):
            if self._node is None:
                self._node = self.recorder.worker
            consumer = sender
            conf = self.celery_app.conf
            pool = consumer.pool
            try:
                queues = [q.name for q in consumer.task_consumer.queues]
            except Exception:
                queues = list(self.celery_app.amqp.queues.consume_from or {})
            self._concurrency = getattr(pool, "limit", None)
            self._emit(
                EventType.WORKER_ONLINE,
                concurrency=self._concurrency,
                queues=queues,
                pool=_pool_name(pool),
                prefetch_multiplier=conf.worker_prefetch_multiplier,
                prefetch=getattr(consumer, "initial_prefetch_count", None),
                node=getattr(consumer, "hostname", None),
                acks_late=conf.task_acks_late,
                time_limit=conf.task_time_limit,
                soft_time_limit=conf.task_soft_time_limit,
            )
            self._heartbeat = Heartbeat(self.recorder, extra=self._heartbeat_fields, **self._hb_kwargs)
            self._heartbeat.start()

    def _heartbeat_fields(self) -> dict[str, Any]:
        """Counters from the main process's view (pool children keep no shared counters)."""
        from celery.worker import state

        active = len(state.active_requests)
        counter = self._failed_count
        return {
            "worker": self._node,
            "inflight": active,
            "reserved": len(state.reserved_requests),
            "processed": max(0, state.all_total_count[0] - active),
            "failed": counter.value if counter is not None else self.recorder.failed,
            "concurrency": getattr(self, "_concurrency", None),
        }

    def on_worker_shutting_down(self, sender: Any = None, **kw: Any) -> None:
        """Note the jobs still running when a shutdown began."""
        with swallow_errors("celery.worker_shutting_down"):
            from celery.worker import state

            self._inflight_at_shutdown = len(state.active_requests)

    def on_worker_shutdown(self, sender: Any = None, **kw: Any) -> None:
        """Report a graceful stop, stop the heartbeat and flush within a deadline."""
        with swallow_errors("celery.worker_shutdown"):
            from celery.worker import state

            if self._heartbeat is not None:
                self._heartbeat.stop()
            inflight = len(state.active_requests)
            self._emit(EventType.WORKER_OFFLINE, inflight=inflight,
                       inflight_at_shutdown=self._inflight_at_shutdown)
            self.recorder.emitter.flush(2.0)

    def on_process_shutdown(self, sender: Any = None, **kw: Any) -> None:
        """Flush a pool child's events: billiard children leave with os._exit and skip atexit."""
        with swallow_errors("celery.worker_process_shutdown"):
            self.recorder.emitter.flush(1.0)

    def on_revoked(self, sender: Any = None, request: Any = None, terminated: bool = False,
                   signum: Any = None, expired: bool = False, **kw: Any) -> None:
        """Report a revoked, terminated or expired job as cancelled."""
        with swallow_errors("celery.task_revoked"):
            if not self._ours(sender):
                return
            job_id = request.id
            reason = "expired" if expired else ("terminated" if terminated else "revoked")
            info = getattr(request, "delivery_info", None) or {}
            self._emit(
                EventType.JOB_CANCELLED,
                job_id=job_id,
                task=getattr(sender, "name", None),
                queue=info.get("routing_key"),
                attempt=int(getattr(request, "retries", 0) or 0) + 1,
                max_attempts=self._max_attempts(sender),
                reason=reason,
                signum=str(signum) if signum is not None else None,
                correlation_id=getattr(request, HEADER_CORRELATION, None),
            )

    def on_unknown(self, sender: Any = None, message: Any = None, exc: Any = None, name: Any = None,
                   id: Any = None, **kw: Any) -> None:
        """A message for a task this worker does not know: it is dropped, so it is a final failure."""
        with swallow_errors("celery.task_unknown"):
            if id is None:
                return
            self._count_failure()
            self._emit(EventType.JOB_FAILED, job_id=str(id), task=name, final=True, attempt=1,
                       **failure_fields(exc))

    # --- pool child / thread ------------------------------------------------------------------

    def on_prerun(self, sender: Any = None, task_id: Any = None, task: Any = None, args: Any = None,
                  kwargs: Any = None, **kw: Any) -> None:
        """The attempt starts (outside a worker: ``apply()``, eager mode); see :meth:`_traced` for workers."""
        try:
            if task is None or not self._ours(task):
                return
            cpu0 = _thread_time() if self._cpu.want(task) else None  # a system call: sampled (CpuSampler)
            state = _Running((task, task_id, task.request.__dict__, args, kwargs, _perf(), cpu0, _now(),
                              current_trace() if _OTEL in _modules else None))
            running = self._running
            if len(running) >= _MAX_TRACKED:
                running.clear()
            running[task_id] = state
            if self._enabled:  # held: a job that ends before the next send costs one row
                self._held[task_id] = (_started_row, self, state)
        except Exception:
            hook_failed("celery.task_prerun")

    def _attempt_fields(self, task_id: str, task: Any, state: _Running | None = None) -> dict[str, Any]:
        """Identity and timings of an attempt, from the running state when this thread ran it."""
        if state is None:
            state = self._running.get(task_id)
        if state is None:
            return {"job_id": task_id, "task": getattr(task, "name", None)}
        fields = state.fields(task, _perf(), None if state.cpu0 is None else _thread_time())
        fields["job_id"] = task_id
        self.recorder.emitter.release(task_id)  # an end not folded into its start: the start goes first
        return fields

    def on_retry(self, sender: Any = None, request: Any = None, reason: Any = None, einfo: Any = None,
                 **kw: Any) -> None:
        """Report a failed attempt that Celery has already re-published with its countdown."""
        with swallow_errors("celery.task_retry"):
            if sender is None or not self._ours(sender):
                return
            fields = self._attempt_fields(request.id, sender)
            exc = getattr(reason, "exc", None) or reason
            fields.update(failure_fields(exc))
            when = getattr(reason, "when", None)
            if isinstance(when, (int, float)):
                fields["retry_in_s"] = float(when)
            elif isinstance(when, datetime):
                fields["retry_in_s"] = round(_ts(when) - time.time(), 3)  # type: ignore[operator]
            self._count_failure()
            self._emit(EventType.JOB_FAILED, final=False, **fields)

    def on_failure(self, sender: Any = None, task_id: Any = None, exception: Any = None, args: Any = None,
                   kwargs: Any = None, traceback: Any = None, einfo: Any = None, **kw: Any) -> None:
        """Report a final failure (Celery retries only through Retry), once per job."""
        with swallow_errors("celery.task_failure"):
            if sender is None or task_id is None or not self._ours(sender):
                return
            if not self._first_failure(task_id):
                return  # a hard time limit reports twice in the main process
            fields = self._attempt_fields(task_id, sender)
            if "attempt" not in fields:
                # Main process (hard limit, lost child): the request context, or the worker's Request.
                req = sender.request
                if getattr(req, "id", None) == task_id:
                    info = req.delivery_info or {}
                    fields.update(attempt=int(req.retries or 0) + 1, queue=info.get("routing_key"),
                                  correlation_id=getattr(req, HEADER_CORRELATION, None))
                else:
                    fields.update(_from_worker_request(task_id))
                fields["max_attempts"] = self._max_attempts(sender)
            if isinstance(traceback, str):
                fields.update(failure_fields(exception, text=traceback))
            else:
                fields.update(failure_fields(exception, tb=traceback))
            limit = _time_limit_message(exception, sender)
            if limit is not None:
                fields["exc_message"], fields["time_limit_s"] = limit
            fields["payload"] = {
                "task": sender.name,
                "args": list(args) if args is not None else [],
                "kwargs": dict(kwargs) if kwargs else {},
                "queue": fields.get("queue"),
                "options": {"task_id": task_id},
            }
            self._count_failure()
            self._emit(EventType.JOB_FAILED, final=True, **fields)

    def on_postrun(self, sender: Any = None, task_id: Any = None, **kw: Any) -> None:
        """Report a success (one signal less per job than task_success) and forget the attempt."""
        try:
            t1 = _perf()
            state = self._running.pop(task_id, None)
            cpu1 = None if state is None or state[6] is None else _thread_time()
            if state is not None and state[0] is sender and kw.get("state") == "SUCCESS":  # ours: it has a state
                if self._enabled:  # its start folded in when that was never sent
                    self._rows.add(_succeeded_row(self, state, t1, cpu1, self._max_attempts(sender)))
                return
            if kw.get("state") != "SUCCESS" or sender is None or not self._ours(sender):
                if state is not None:
                    self.recorder.emitter.release(task_id)
                return
            # Not started here (or another task's attempt under this id): what the request says.
            self._emit(_SUCCEEDED, **self._attempt_fields(task_id or sender.request.id, sender, state))
        except Exception:
            hook_failed("celery.task_postrun")

    def _first_failure(self, task_id: str) -> bool:
        now = time.monotonic()
        with self._lock:
            seen = self._failed_recently
            if now - seen.get(task_id, -1e9) < 60.0:
                return False
            if len(seen) >= 1000:
                for key in [k for k, t in seen.items() if now - t >= 60.0]:
                    del seen[key]
            seen[task_id] = now
            return True

    def _count_failure(self) -> None:
        counter = self._failed_count
        if counter is None:
            self.recorder.failed += 1
            return
        with counter.get_lock():
            counter.value += 1

    # --- beat ---------------------------------------------------------------------------------

    def on_beat_init(self, sender: Any = None, **kw: Any) -> None:
        """Register every schedule, wrap the scheduler's apply_async and start scheduler heartbeats."""
        with swallow_errors("celery.beat_init"):
            scheduler = sender.scheduler
            rec = self.recorder
            for entry in list(scheduler.schedule.values()):
                rec.emit(EventType.SCHEDULE_REGISTERED, scheduler=rec.worker, **_entry_fields(entry, self))
            original = scheduler.apply_async
            if not getattr(original, "_flowerbed", False):
                scheduler.apply_async = self._wrap_apply_async(original)
            self._heartbeat = Heartbeat(
                rec, extra=lambda: {"scheduler": rec.worker}, type=EventType.SCHEDULER_HEARTBEAT,
                **self._hb_kwargs,
            )
            self._heartbeat.beat()
            self._heartbeat.start()

    def _wrap_apply_async(self, original: Any) -> Any:
        rec = self.recorder

        def apply_async(entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
            slot = None
            with swallow_errors("celery.beat.slot"):
                slot = _due(entry)
            result = original(entry, producer=producer, advance=advance, **kwargs)
            with swallow_errors("celery.beat.fired"):
                rec.emit(EventType.SCHEDULE_FIRED, schedule=entry.name, task=entry.task, slot=slot,
                         scheduler=rec.worker, job_id=getattr(result, "id", None))
            return result

        apply_async._flowerbed = True  # type: ignore[attr-defined]
        return apply_async


def _due(entry: Any) -> float | None:
    """The time the entry was due: now plus the (possibly negative) remaining estimate."""
    schedule = entry.schedule
    now = schedule.maybe_make_aware(schedule.now())
    remaining = schedule.remaining_estimate(entry.last_run_at)
    if not isinstance(remaining, timedelta):
        return None
    return (now + remaining).timestamp()


def _entry_fields(entry: Any, collector: CeleryCollector) -> dict[str, Any]:
    """Name, task and spec of one beat entry: crontab → cron string, schedule → interval."""
    schedule = entry.schedule
    fields: dict[str, Any] = {"schedule": entry.name, "task": entry.task}
    if hasattr(schedule, "_orig_minute"):
        fields["cron"] = " ".join(str(getattr(schedule, f"_orig_{part}")) for part in (
            "minute", "hour", "day_of_month", "month_of_year", "day_of_week"))
    elif isinstance(getattr(schedule, "run_every", None), timedelta):
        fields["interval_s"] = schedule.run_every.total_seconds()
    else:
        fields["spec"] = repr(schedule)
    tz = getattr(schedule, "tz", None) or collector.celery_app.conf.timezone or "UTC"
    fields["timezone"] = str(getattr(tz, "key", tz))
    return fields


def _time_limit_message(exc: Any, task: Any) -> tuple[str, float | None] | None:
    """A message naming the time limit a failure hit, and the limit in seconds."""
    if isinstance(exc, SoftTimeLimitExceeded):
        req = getattr(task, "request", None)
        limits = getattr(req, "timelimit", None) or (None, None)
        limit = limits[1] or getattr(task, "soft_time_limit", None) or task.app.conf.task_soft_time_limit
        return f"soft time limit ({limit} s) exceeded", float(limit) if limit else None
    if isinstance(exc, TimeLimitExceeded):
        limit = exc.args[0] if exc.args else None
        return f"hard time limit ({limit} s) exceeded", float(limit) if limit else None
    return None


def install(
    celery_app: Any,
    app: str | None = None,
    *,
    redis_url: str | None = None,
    stream: str | None = None,
    capture_args: bool | None = None,
    redact: Any = None,
    heartbeat_interval: float | None = None,
) -> CeleryCollector:
    """Connect Flowerbed's signal receivers for ``celery_app`` (producers, workers and beat)."""
    existing = getattr(celery_app, "_flowerbed_collector", None)
    if existing is not None:
        return existing
    config = CollectorConfig.resolve(
        app=app, redis_url=redis_url, stream=stream, capture_args=capture_args, redact=redact
    )
    collector = CeleryCollector(celery_app, config, heartbeat_interval)
    collector.connect()
    celery_app._flowerbed_collector = collector
    return collector
