"""Gets events from a job's thread onto the Redis stream without ever making the job wait.

The caller's whole cost is one ``deque.append``. A daemon thread wakes every ``flush_interval``,
serialises what is buffered (redaction and truncation happen here, off the job's thread) and sends
it as one pipelined batch of ``XADD … MAXLEN ~``. A small send waits: while fewer than ``wake_at``
events wait, the thread sends only once ``max_interval`` has passed since its last send (a send's
own cost is spread over the jobs it carries: a Dramatiq worker doing ~270 jobs/s spent 12.6 µs of
the sending thread's CPU a job at a send every 0.1 s, 7-8 µs with this wait).

What may be queued: an event dict; a Recorder's ``(identity, type, fields)``; or a *deferred* event
``(expand, *state)``, where ``expand(item)`` runs on the background thread and returns
``(identity, type, fields)``. The last kind lets a job's hook queue a few snapshotted values and
leave building the event (attribute reads, lookups, rounding) to this thread.

A deferred event whose ``expand`` is registered with :func:`row_builder` returns ``(identity, row)``
instead: a job event as a list of values in ``events.ROW_COLS`` order. Rows of one sender that are
sent together go into one stream entry (field ``b``, :func:`events.rows_entry`): a busy worker's job
events cost one serialiser call, one id and one XADD per batch rather than per event.

A busy collector's finished job events skip all of that: its job's thread appends each as a *row*
(``ROW_COLS`` values, final but for the few cells a queue's ``finish`` completes) to a
:class:`RowQueue`, flat in one list; the thread takes a queue's rows as one slice and sends the
cells as they lie, one serialiser call per entry. Deferred events kept the job's objects alive until
the next send, and in a busy worker those set off the garbage collector (Celery: 60 young
collections per 5,000 jobs against 1; a row queue's rows hold none).

A job's start is not queued but *held* (:meth:`Emitter.begin`): at its end the job's hook takes it
back (:meth:`Emitter.settle`) and, if it was never sent, queues one row for both: its end carrying
the start's fields and ``started_at``, from which ingest records the start. A start still held when
the thread next sends (a job still running) is sent on its own. Most jobs finish within the
thread's flush interval, so they cost one row instead of two.

While Redis is unreachable the thread retries with exponential backoff; the buffer is bounded, so
when it fills the oldest events are dropped and counted (``dropped`` is reported in worker heartbeats). Nothing here raises into the caller.

Fork safety: a child process starts with an empty buffer, no thread and no connection; they are
created again on its first event. At interpreter exit every emitter flushes within a deadline.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import threading
import time
import weakref
from collections import deque
from typing import Any, Callable

from .config import CollectorConfig
from .constants import DEFAULT_STREAM_MAXLEN, EVENT_FIELD, MAX_EVENT_BYTES, ROWS_FIELD
from .events import (
    C_ARGS,
    MAX_ROWS,
    RESERVED,
    ROW_WIDTH,
    Redactor,
    complete,
    dumps_bytes,
    encode,
    encode_with_tail,
    identity_tail,
    new_event_id,
    previews,
    rows_entry,
    use_fast_json,
)

__all__ = ["Emitter", "RowQueue", "get_emitter", "map_distinct", "row_builder", "shutdown_all"]

log = logging.getLogger("flowerbed.collectors")

_live: weakref.WeakSet[Emitter] = weakref.WeakSet()

#: The deferred-event builders that return a row (see :func:`row_builder`).
_ROW_BUILDERS: set[Callable[..., Any]] = set()


def row_builder(fn: Callable[[tuple[Any, ...]], tuple[Any, list[Any]]]) -> Callable[[tuple[Any, ...]], tuple[Any, list[Any]]]:
    """Register ``fn`` as a deferred builder that returns ``(identity, row)``, ``row`` in ``ROW_COLS`` order."""
    _ROW_BUILDERS.add(fn)
    return fn


def map_distinct(fn: Callable[[Any], Any], values: list[Any]) -> list[Any]:
    """``[fn(v) for v in values]`` with ``fn`` called once per distinct value: a send's column holds
    a few values many times (queue names, retry options), for a ``finish`` to work out once each.
    Values that cannot be dict keys are taken one by one."""
    try:
        known = {value: fn(value) for value in set(values)}
    except TypeError:
        return [fn(value) for value in values]
    return list(map(known.__getitem__, values))


class RowQueue:
    """Finished job rows of one sender, added on the job's thread and sent by the emitter's.

    The rows lie end to end in one list, ``ROW_COLS``-wide, and ``add`` is that list's own
    ``extend``: a row costs the job's thread one call into C, no frame of ours, and leaves behind
    no object the garbage collector tracks. (Rows kept as lists, or the job's objects kept, until the
    next send set off a busy worker's collections: a taskiq worker made 70 young, 7 middle and a full
    collection per 10,000 no-op jobs against none.) ``extend`` by a list or tuple runs without
    releasing the GIL, so rows from several threads never interleave. The emitter's thread takes
    whole rows from the front, every ``flush_interval``, as one slice and one deletion (each one
    call into C, the GIL held throughout), and drops the oldest beyond ``capacity`` the same way;
    the cells go on the wire as they lie (``rows_entry``), a row is never a list of its own again.

    The first ``add`` in a process starts the emitter's thread (then ``add`` becomes the bare
    ``extend``; a forked child starts over). ``identity()`` names the sender when rows are sent (a
    forked child's pid differs from its parent's). A row's ``args`` cell may hold ``(ARGS_KWARGS,
    args, kwargs)`` (``events.ARGS_KWARGS``), or ``args`` alone as a list or tuple (the job's own,
    no copy), made into the redacted preview on the sending thread
    (:func:`previews`, a column at a time); ``finish(cells)``, if given, completes any other cell a
    collector left raw, there too, in place, a column at a time (``cells[C_…::ROW_WIDTH]``).

    With ``expand``, what the job's thread adds is not a row but a shorter *record* of ``width``
    cells (the job's own objects and clocks, as its hook found them), and ``expand(cells)`` turns the
    taken records into rows on the sending thread, a column at a time: the job's thread then builds
    nothing at all (collectors.dramatiq, whose worker runs a no-op job in ~1,000,000 instructions).
    Such a collector keeps its running jobs' starts itself, not in :meth:`Emitter.begin`'s held
    starts: ``inflight()``, called at every send, gives the deferred start events to send on their own.
    """

    __slots__ = ("cells", "add", "identity", "finish", "expand", "width", "inflight", "_emitter", "_limit")

    def __init__(self, emitter: Emitter, identity: Callable[[], Any],
                 finish: Callable[[list[Any]], None] | None = None,
                 expand: Callable[[list[Any]], list[Any]] | None = None, width: int = ROW_WIDTH,
                 inflight: Callable[[], list[Any]] | None = None) -> None:
        self.cells: list[Any] = []
        self.identity = identity
        self.finish = finish
        self.expand = expand
        self.inflight = inflight
        self.width = width if expand is not None else ROW_WIDTH
        self._emitter = emitter
        self._limit = emitter.capacity * self.width
        self.restart()

    def restart(self) -> None:
        """Forget every row, and have the next ``add`` start the emitter's thread (a forked child)."""
        self.cells.clear()
        self.add: Callable[[list[Any] | tuple[Any, ...]], None] = self._first_add

    def _first_add(self, row: list[Any] | tuple[Any, ...]) -> None:
        self.add = self.cells.extend
        self.cells.extend(row)
        self._emitter._kick()

    def __len__(self) -> int:
        """Rows waiting."""
        return len(self.cells) // self.width

    def trim(self) -> int:
        """Drop the oldest whole rows beyond capacity (the emitter's thread); how many."""
        over = len(self.cells) - self._limit
        if over <= 0:
            return 0
        rows = -(-over // self.width)
        del self.cells[:rows * self.width]
        return rows

    def take(self, most: int) -> list[Any]:
        """The cells of up to ``most`` whole rows (or records) from the front (the emitter's thread)."""
        cells, width = self.cells, self.width
        count = min(most, len(cells) // width) * width
        taken = cells[:count]
        del cells[:count]  # rows added meanwhile lie after these: only the taken ones go
        return taken


class Emitter:
    """A bounded buffer in front of a background thread that pipelines XADDs to one stream."""

    def __init__(
        self,
        redis_url: str,
        stream: str,
        maxlen: int = DEFAULT_STREAM_MAXLEN,
        *,
        redactor: Redactor | None = None,
        buffer_size: int = 10_000,
        batch_size: int = 2_000,
        wake_at: int = 256,
        flush_interval: float = 0.1,
        max_interval: float = 0.5,
        max_backoff: float = 5.0,
        shutdown_deadline: float = 2.0,
        connect_timeout: float = 1.0,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.stream = stream
        self.maxlen = maxlen
        self.redactor = redactor or Redactor()
        self.capacity = buffer_size
        self.batch_size = batch_size
        #: Wake the thread early once this many events wait (else it sends every flush_interval).
        #: Each wake costs the job's thread a switch or two; what waits keeps job objects alive, and
        #: in a busy worker those survivors set off the garbage collector. A taskiq worker running
        #: no-op jobs made 117 young, 10 middle and 1 full collection per 10,000 jobs (3-5 µs a job)
        #: while its events waited for 2,000 of them, 6-8 young ones at 64. 256 cost the emitter
        #: thread ~1 µs a job less than 64 (taskiq, Celery, in-process, pinned); 1,024 no less.
        self._wake_at = max(1, min(wake_at, batch_size, buffer_size // 2))
        self.flush_interval = flush_interval
        #: The longest a send of fewer than ``wake_at`` events waits after the previous send: the
        #: dashboard sees an event at most this much later (its pages update about once a second).
        self.max_interval = max_interval
        self.max_backoff = max_backoff
        self.shutdown_deadline = shutdown_deadline
        self.connect_timeout = connect_timeout
        self._client_factory = client_factory
        if client_factory is None:
            # Import now, not in the thread: importing redis registers a threading atexit hook,
            # which fails once the interpreter has begun to shut down (a short-lived producer).
            try:
                import redis  # noqa: F401
            except ImportError:
                log.warning("flowerbed: redis-py is not installed; events will be dropped")
            use_fast_json()
        #: Row queues of this process's collectors (kept across a fork; their rows are not).
        self._row_queues: list[RowQueue] = []
        self._reset()
        _live.add(self)

    def _reset(self) -> None:
        """Start from nothing: used at construction and in a forked child."""
        self._buffer: deque[Any] = deque(maxlen=self.capacity)
        #: Held job starts (see :meth:`begin`), by the key their job's end will settle them with. The
        #: same dict for the emitter's life (a forked child's is emptied, not replaced): a collector's
        #: hot hook may hold and settle starts in it directly, a dict store and a ``pop``.
        held: dict[Any, Any] | None = getattr(self, "held", None)
        if held is None:
            self.held = held = {}
        held.clear()
        for queue in self._row_queues:
            queue.restart()
        #: An encoded batch not yet sent (it is retried first after a failure): XADD commands, and how many.
        self._pending: _Batch | None = None
        #: identity_tail() per (sender identity, event type).
        self._tails: dict[tuple[Any, str], bytes] = {}
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._client: Any = None
        self._conn: Any = None
        self._xadd_head: bytes | None = None
        self._rows_head: bytes | None = None
        self._pid = os.getpid()
        #: Events handed to :meth:`emit`.
        self.emitted = 0
        #: Events written to the stream.
        self.sent = 0
        #: Events lost: buffer overflow while Redis was away, or unencodable.
        self.dropped = 0
        #: Failed send attempts (each is retried with backoff).
        self.send_errors = 0
        self.last_error: str | None = None

    # --- the job's side -------------------------------------------------------------------

    def emit(self, event: dict[str, Any] | tuple[Any, ...]) -> None:
        """Queue one event (or a Recorder's deferred one); costs an append, never blocks, never raises."""
        try:
            buf = self._buffer
            size = len(buf)
            if size >= self.capacity:
                self.dropped += 1  # deque(maxlen) discards the oldest on append
            buf.append(event)
            self.emitted += 1
            if size + 1 == self._wake_at:
                self._wake.set()  # a batch is waiting: send it now, not at the next tick
            if self._thread is None:
                self._start()
        except Exception:  # pragma: no cover - a guest never breaks its host
            pass

    def begin(self, key: Any, item: tuple[Any, ...]) -> None:
        """Hold a job's deferred ``job-started`` until its end settles it or the next send goes out.

        ``key`` is anything hashable and unique to the attempt (its state object will do). Costs a
        dict store; never blocks, never raises.
        """
        try:
            self.held[key] = item
            if self._thread is None:
                self._start()
        except Exception:  # pragma: no cover - a guest never breaks its host
            pass

    def settle(self, key: Any) -> tuple[Any, ...] | None:
        """Take back the start held under ``key``: ``None`` if it has been sent meanwhile.

        One ``dict.pop`` on either side, so exactly one of the job's thread and the sender gets it.
        A job's end calls it and, given the start back, queues one row for both; :meth:`release`
        queues the start alone.
        """
        try:
            return self.held.pop(key, None)  # type: ignore[no-any-return]
        except Exception:  # pragma: no cover
            return None

    def release(self, key: Any) -> None:
        """Queue the start held under ``key`` on its own (an end that is not folded into it)."""
        item = self.settle(key)
        if item is not None:
            self.emit(item)

    def row_queue(self, identity: Callable[[], Any],
                  finish: Callable[[list[Any]], None] | None = None,
                  expand: Callable[[list[Any]], list[Any]] | None = None, width: int = ROW_WIDTH,
                  inflight: Callable[[], list[Any]] | None = None) -> RowQueue:
        """A new :class:`RowQueue` whose rows (or records, with ``expand``) this emitter sends."""
        queue = RowQueue(self, identity, finish, expand, width, inflight)
        self._row_queues.append(queue)
        return queue

    def _kick(self) -> None:
        """A row queue's first row in this process: make sure the thread that sends it runs."""
        try:
            if self._thread is None:
                self._start()
        except Exception:  # pragma: no cover - a guest never breaks its host
            pass

    def _rows_waiting(self) -> int:
        return sum(len(queue) for queue in self._row_queues)

    def _idle(self) -> bool:
        """Nothing left to send: no event, held start, queued row or unsent batch."""
        return not self._buffer and not self.held and self._pending is None and not self._rows_waiting()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None:
                return
            self._stop.clear()
            thread = threading.Thread(target=self._run, name="flowerbed-emitter", daemon=True)
            self._thread = thread
            thread.start()

    # --- control --------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Events waiting to be sent (buffered plus a failed batch awaiting retry)."""
        pending = self._pending
        return (len(self._buffer) + len(self.held) + self._rows_waiting()
                + (pending.count if pending is not None else 0))

    def stats(self) -> dict[str, int]:
        """Counters for heartbeats and tests."""
        return {
            "emitted": self.emitted,
            "sent": self.sent,
            "dropped": self.dropped,
            "buffered": self.buffered,
            "send_errors": self.send_errors,
        }

    def flush(self, timeout: float = 2.0) -> bool:
        """Ask the thread to send now and wait up to ``timeout`` s; True if everything was sent."""
        if self._thread is None and self._idle():
            return True
        if self._thread is None:
            self._start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._wake.set()
            if self._idle() and not self._busy:
                return True
            time.sleep(0.005)
        return self._idle()

    def close(self, timeout: float | None = None) -> bool:
        """Send what is buffered within ``timeout`` s (default: the shutdown deadline), then stop."""
        timeout = self.shutdown_deadline if timeout is None else timeout
        thread = self._thread
        if thread is None or self._pid != os.getpid():
            return not self._buffer and not self.held and not self._rows_waiting()
        self._stop.set()
        self._wake.set()
        thread.join(timeout)
        self._thread = None
        done = self._idle()
        if not done:
            self.dropped += self.buffered
            self._buffer.clear()
            self.held.clear()
            self._pending = None
        for queue in self._row_queues:  # rows added after this start the thread again, as emit does
            queue.restart()
        self._drop_client()
        return done

    # --- the background thread ------------------------------------------------------------

    _busy = False

    def _run(self) -> None:
        _name_os_thread(b"flowerbed-emit")
        failures = 0
        last_send = 0.0
        wait = self.flush_interval
        while not self._stop.is_set():
            woken = self._wake.wait(wait)
            self._wake.clear()
            wait = self.flush_interval
            for queue in self._row_queues:  # rows are added without a length test (see RowQueue)
                self.dropped += queue.trim()
            if not woken and len(self._buffer) + self._rows_waiting() < self._wake_at:
                remaining = last_send + self.max_interval - time.monotonic()
                if remaining > 0:  # a small send waits for more, to max_interval (see the module's doc)
                    wait = min(wait, remaining)
                    continue
            sent = self.sent
            if self._drain_marked():
                failures = 0
                if self.sent != sent:
                    last_send = time.monotonic()
                continue
            failures += 1
            self._stop.wait(min(self.max_backoff, 0.05 * 2**failures) * (0.5 + random.random() / 2))
        self._drain_marked(everything=True)  # the last pass after close(): one attempt, bounded by close's join

    def _drain_marked(self, everything: bool = False) -> bool:
        self._busy = True
        try:
            return self._drain(everything)
        finally:
            self._busy = False

    def _drain(self, everything: bool = False) -> bool:
        """Send what is buffered, batch by batch; False when a send failed.

        After the first batch, another goes out only once ``wake_at`` events wait (or ``everything``):
        events trickle in while a batch is sent, and chasing them sent batches of ~4 events, each
        send and reply a switch between this thread and the job's (0.7 forced switches per job, ~10
        µs of the job thread's CPU, measured on a pinned taskiq worker).
        """
        if self.held:
            self._release_starts()
        for queue in self._row_queues:
            if queue.inflight is not None:
                self._queue_starts(queue.inflight())
        minimum = 1 if everything else self._wake_at
        first = True
        while (self._pending is not None or (first and (self._buffer or self._rows_waiting()))
               or len(self._buffer) + self._rows_waiting() >= minimum):
            first = False
            if self._pending is None:
                batch = self._encode_batch()
                if not batch.entries:
                    continue
                self._pending = batch
            try:
                self._send(self._pending)
            except Exception as exc:
                self.send_errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._drop_client()
                return False
            self.sent += self._pending.count
            self._pending = None
        return True

    def _release_starts(self) -> None:
        """Queue every held start: its job is still running (or its end never came)."""
        starts = self.held
        taken = [starts.pop(key, None) for key in list(starts)]  # keys copied in C: the job's thread may settle meanwhile
        self._queue_starts([item for item in taken if item is not None])

    def _queue_starts(self, items: list[Any]) -> None:
        buf = self._buffer
        for item in items:
            if len(buf) >= self.capacity:
                self.dropped += 1  # deque(maxlen) discards the oldest on append
            buf.append(item)
            self.emitted += 1

    def _encode_batch(self) -> _Batch:
        """Take up to ``batch_size`` events off the buffer and encode them as one run of XADD commands.

        An event is appended to the batch as soon as it is encoded, so the serialiser's output is
        freed at once: orjson's output holds a few KiB each, and 2,000 of them kept in a list until
        the send made a ~0.3 µs ``dumps`` cost 2.5-4.5 µs (fresh memory, measured in isolation).
        Rows are gathered per sender and go last, a few entries for the lot; a row queue's finished
        jobs go after everything else (a retried job's earlier attempts are single events).
        """
        head = self._xadd_head
        if head is None:
            head = self._xadd_head = _xadd_head(self.stream, self.maxlen, EVENT_FIELD)
        batch = _Batch()
        buf = self._buffer
        redactor = self.redactor
        budget = self.batch_size
        rows_fns = _ROW_BUILDERS
        groups: dict[Any, list[Any]] = {}  # identity -> the cells of its rows, end to end
        last_identity: Any = None
        last_cells: list[Any] = []
        for _ in range(min(budget, len(buf))):
            try:
                event = buf.popleft()
            except IndexError:
                break
            budget -= 1
            if type(event) is tuple and event[0] in rows_fns:
                try:
                    identity, row = event[0](event)
                except Exception:
                    row = None
                if row is None or len(row) != ROW_WIDTH:
                    self.dropped += 1
                    continue
                if identity is not last_identity:
                    last_identity = identity
                    last_cells = groups.get(identity) or groups.setdefault(identity, [])
                last_cells += row
                continue
            try:
                data = self._encode(event, redactor)
            except Exception:
                data = None
            if data is None:
                self.dropped += 1
                continue
            batch.add(head, data, 1)
        for identity, cells in groups.items():
            self._add_rows(batch, identity, cells)
        for queue in self._row_queues:  # finished jobs last: a retried job's earlier attempts come first
            if budget > 0 and queue.cells:
                budget -= self._take_rows(batch, queue, budget, redactor)
        return batch

    def _take_rows(self, batch: _Batch, queue: RowQueue, most: int, redactor: Redactor) -> int:
        """Up to ``most`` of a row queue's rows into the batch, their raw cells completed; how many."""
        cells = queue.take(most)
        count = len(cells) // queue.width
        self.emitted += count
        try:
            if queue.expand is not None:
                cells = queue.expand(cells)
            args = cells[C_ARGS::ROW_WIDTH]
            done = previews(args, redactor)
            if done is not args:
                cells[C_ARGS::ROW_WIDTH] = done
            identity = queue.identity()
            if queue.finish is not None:
                queue.finish(cells)
        except Exception:
            self.dropped += count
            return count
        self._add_rows(batch, identity, cells)
        return count

    def _add_rows(self, batch: _Batch, identity: Any, cells: list[Any]) -> None:
        """``b`` entries for the rows in ``cells`` of one sender: ``MAX_ROWS`` at most each, halved
        until each fits the size limit."""
        rows = len(cells) // ROW_WIDTH
        if rows > MAX_ROWS:
            step = MAX_ROWS * ROW_WIDTH
            for i in range(0, len(cells), step):
                self._add_rows(batch, identity, cells[i:i + step])
            return
        try:
            data = dumps_bytes(rows_entry(new_event_id(), identity, cells))
        except Exception:
            self.dropped += rows
            return
        if len(data) > MAX_EVENT_BYTES:
            if rows == 1:
                self.dropped += 1
                return
            half = rows // 2 * ROW_WIDTH
            self._add_rows(batch, identity, cells[:half])
            self._add_rows(batch, identity, cells[half:])
            return
        head = self._rows_head
        if head is None:
            head = self._rows_head = _xadd_head(self.stream, self.maxlen, ROWS_FIELD)
        batch.add(head, data, rows)

    def _encode(self, event: Any, redactor: Redactor) -> bytes | None:
        """One queued event as stream bytes (see the module docstring for what may be queued)."""
        if type(event) is not tuple:
            return encode(event, redactor)
        if type(event[0]) is not tuple:  # (expand, *state): deferred by a job's hook
            event = event[0](event)
        identity, etype, fields = event  # (identity, type, fields), as a Recorder queues them
        if fields.keys().isdisjoint(RESERVED):
            key = (identity, etype)
            tail = self._tails.get(key)
            if tail is None:
                if len(self._tails) >= 256:
                    self._tails.clear()
                tail = self._tails[key] = identity_tail(etype, *identity)
            data = encode_with_tail(fields, tail, redactor)
            if data is not None:
                return data
            for name in ("id", "type", "v", "lib", "app"):  # too big: encode() drops its bulky parts
                fields.pop(name, None)
        return encode(_from_recorder(identity, etype, fields), redactor)

    def _send(self, batch: _Batch) -> None:
        """Write a batch as pipelined XADDs on one connection, then read every reply."""
        client = self._client
        if client is None:
            client = self._client = self._make_client()
        if self._raw_ok:
            try:
                self._send_raw(client, batch)
                return
            except (AttributeError, TypeError):  # a redis-py without these internals
                self._raw_ok = False
                self._drop_client()
                client = self._client = self._make_client()
        pipe = client.pipeline(transaction=False)
        kwargs: dict[str, Any] = {"maxlen": self.maxlen, "approximate": True} if self.maxlen > 0 else {}
        for name, data in batch.fields():
            pipe.xadd(self.stream, {name: data}, **kwargs)
        pipe.execute()

    #: Sends the batch's XADDs as packed and reads their replies in bulk: redis-py's pipeline spends
    #: ~6 µs of CPU per command building them and its parser ~10 µs per reply, CPU the worker's own
    #: threads wait for (the GIL). Falls back to the pipeline if these internals are missing.
    _raw_ok = True

    def _send_raw(self, client: Any, batch: _Batch) -> None:
        conn = self._conn
        if conn is None:
            conn = client.connection_pool.make_connection()
            conn.connect()  # the handshake (AUTH, SELECT, HELLO) is redis-py's
            if getattr(conn, "_sock", None) is None:
                conn.disconnect()
                raise AttributeError("this redis-py Connection has no _sock")  # before sending anything
            self._conn = conn
        try:
            conn.send_packed_command([batch.commands], check_health=False)
            _read_replies(conn._sock, batch.entries)
        except BaseException:
            conn.disconnect()  # replies may be half read: never reuse the connection
            self._conn = None
            raise

    def _make_client(self) -> Any:
        if self._client_factory is not None:
            return self._client_factory()
        import redis  # imported here so `import collectors` stays cheap

        return redis.Redis.from_url(
            self.redis_url,
            socket_connect_timeout=self.connect_timeout,
            socket_timeout=max(2.0, self.connect_timeout),
        )

    def _drop_client(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:
                pass
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                pass


class _Batch:
    """Encoded events ready to send: their ``XADD`` commands back to back (RESP), how many entries
    those are, and how many events they hold."""

    __slots__ = ("commands", "count", "entries")

    def __init__(self) -> None:
        self.commands = bytearray()
        self.count = 0
        self.entries = 0

    def add(self, head: bytes, data: bytes, events: int) -> None:
        """Append one XADD: its ``head`` (see :func:`_xadd_head`) and ``data`` as the field's value."""
        out = self.commands
        out += head
        out += b"$%d\r\n" % len(data)
        out += data
        out += b"\r\n"
        self.count += events
        self.entries += 1

    def fields(self) -> list[tuple[bytes, bytes]]:
        """Each entry's field and value again (for redis-py's pipeline, the fallback): the last two
        bulk strings of each ``XADD`` command."""
        out = []
        data = bytes(self.commands)
        i = 0
        while i < len(data):
            end = data.index(b"\r\n", i)
            count = int(data[i + 1:end])  # *<count>
            i = end + 2
            bulks = []
            for _ in range(count):
                end = data.index(b"\r\n", i)
                n = int(data[i + 1:end])  # $<n>
                bulks.append(data[end + 2:end + 2 + n])
                i = end + 2 + n + 2
            out.append((bulks[-2], bulks[-1]))
        return out


def _name_os_thread(name: bytes) -> None:
    """Name this thread for the OS (``top -H``, ``/proc/…/task/…/comm``): its CPU can then be told apart."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.prctl(15, ctypes.c_char_p(name[:15]), 0, 0, 0)  # PR_SET_NAME
    except Exception:
        pass


def _from_recorder(identity: tuple[str, str, str, int, str], etype: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The event a Recorder queued: its fields plus the sender's identity (explicit fields win)."""
    lib, app, host, pid, worker = identity
    if "host" not in fields:
        fields["host"] = host
    if "pid" not in fields:
        fields["pid"] = pid
    if "worker" not in fields:
        fields["worker"] = worker
    return complete(fields, etype, lib, app)


class ReplyError(Exception):
    """Redis answered an XADD with an error (the whole batch is retried, as for any send failure)."""


def _read_replies(sock: Any, count: int) -> None:
    """Read ``count`` XADD replies straight off the socket, in as few ``recv`` calls as they arrive in.

    An XADD reply is a bulk string, ``$<n>\r\n<id>\r\n``: two line ends, and an entry id holds
    none. Counting ``\n`` is therefore enough, and an error reply (``-ERR …\r\n``) is a line that
    starts with ``-``. redis-py's parser costs ~10 µs of Python per reply on a slow machine, GIL time
    the worker's own threads wait for; this is one ``bytes.count`` per chunk.
    """
    need = 2 * count
    seen = 0
    line_start = True  # whether the next byte begins a reply line
    while seen < need:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("Redis closed the connection while replies were pending")
        if (line_start and chunk[:1] == b"-") or b"\n-" in chunk:
            start = chunk.find(b"-") if line_start and chunk[:1] == b"-" else chunk.find(b"\n-") + 1
            raise ReplyError(chunk[start + 1:chunk.find(b"\r", start)].decode(errors="replace"))
        seen += chunk.count(b"\n")
        line_start = chunk[-1:] == b"\n"
    if seen > need:  # more than we asked for: the connection is out of step, never reuse it
        raise ConnectionError(f"Redis sent {seen - need} unexpected reply lines")


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _xadd_head(stream: str, maxlen: int, field: str) -> bytes:
    """The RESP bytes of ``XADD <stream> [MAXLEN ~ n] * <field>`` (the value follows per entry)."""
    args = [b"XADD", stream.encode()]
    if maxlen > 0:
        args += [b"MAXLEN", b"~", str(maxlen).encode()]
    args += [b"*", field.encode()]
    return b"*%d\r\n" % (len(args) + 1) + b"".join(_bulk(a) for a in args)


_registry: dict[tuple[str, str, int], Emitter] = {}
_registry_lock = threading.Lock()


def get_emitter(config: CollectorConfig) -> Emitter:
    """Return this process's emitter for the config's stream (one per Redis URL and stream)."""
    key = (config.redis_url, config.stream, config.maxlen)
    emitter = _registry.get(key)
    if emitter is None:
        with _registry_lock:
            emitter = _registry.get(key)
            if emitter is None:
                redactor = Redactor(config.redact, capture_args=config.capture_args)
                emitter = _registry[key] = Emitter(
                    config.redis_url, config.stream, config.maxlen, redactor=redactor
                )
    return emitter


def shutdown_all(timeout: float = 2.0) -> None:
    """Flush every emitter of this process within ``timeout`` s in total."""
    deadline = time.monotonic() + timeout
    for emitter in list(_live):
        emitter.close(max(0.0, deadline - time.monotonic()))


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for emitter in list(_live):
        emitter._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(shutdown_all)
