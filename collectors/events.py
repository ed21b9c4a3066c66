"""The Flowerbed event protocol, version 1, as code.

A stream entry holds either one event, a JSON object under the field ``e``, or many job events of
one sender as rows under the field ``b`` (:func:`rows_entry`, :data:`ROW_COLS`); :func:`entry_events`
reads both. This module is the only definition of those objects. Collectors build events with :func:`build` (cheap enough for a job's own
thread); the emitter's background thread turns them into bytes with :func:`encode` (or, for a queued
sender's event, :func:`encode_with_tail`, which appends the sender's pre-serialised identity), which is
where argument previews are redacted and truncated; the dashboard checks every entry it reads with
:func:`decode` / :func:`validate` and quarantines what fails.

Errors::

    InvalidEvent(ValueError)   -- an entry that is not a valid v1 event; ``reason`` says why
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final

from .constants import (
    DEFAULT_ARGS_LIMIT,
    DEFAULT_MESSAGE_LIMIT,
    DEFAULT_PAYLOAD_LIMIT,
    DEFAULT_REDACT,
    DEFAULT_TRACEBACK_LIMIT,
    EVENT_FIELD,
    MAX_EVENT_BYTES,
    PROTOCOL_VERSION,
    REDACTED,
    ROWS_FIELD,
)

__all__ = [
    "EventType",
    "JOB_TYPES",
    "WORKER_TYPES",
    "SCHEDULE_TYPES",
    "KNOWN_TYPES",
    "REQUIRED",
    "FIELD_TYPES",
    "InvalidEvent",
    "Redactor",
    "build",
    "complete",
    "new_event_id",
    "encode",
    "encode_with_tail",
    "identity_tail",
    "RESERVED",
    "decode",
    "validate",
    "split_started",
    "ENDING_TYPES",
    "ROW_COLS",
    "job_row",
    "set_extra",
    "rows_entry",
    "ROW_WIDTH",
    "previews",
    "decode_rows",
    "entry_rows",
    "entry_events",
    "preview",
    "cap_payload",
    "cap_text",
    "cap_traceback",
]


class EventType:
    """The event types of protocol v1 (Celery's kebab-case)."""

    #: A producer put the job on the broker (attempt 1), or the library re-enqueued it for a retry.
    JOB_ENQUEUED: Final = "job-enqueued"
    #: A worker began an attempt.
    JOB_STARTED: Final = "job-started"
    #: The attempt returned normally.
    JOB_SUCCEEDED: Final = "job-succeeded"
    #: The attempt raised; ``final`` says whether retries are exhausted (or none are configured).
    JOB_FAILED: Final = "job-failed"
    #: The job was aborted, revoked, skipped or expired; ``reason`` says which.
    JOB_CANCELLED: Final = "job-cancelled"
    #: A worker process started taking jobs.
    WORKER_ONLINE: Final = "worker-online"
    #: A worker process is alive: concurrency, in-flight, loop lag, RSS, drops.
    WORKER_HEARTBEAT: Final = "worker-heartbeat"
    #: A worker process stopped gracefully.
    WORKER_OFFLINE: Final = "worker-offline"
    #: A scheduler announced one schedule (name, cron or interval, timezone).
    SCHEDULE_REGISTERED: Final = "schedule-registered"
    #: A scheduler fired a schedule for a slot.
    SCHEDULE_FIRED: Final = "schedule-fired"
    #: A scheduler process is alive.
    SCHEDULER_HEARTBEAT: Final = "scheduler-heartbeat"


JOB_TYPES: Final = frozenset(
    {
        EventType.JOB_ENQUEUED,
        EventType.JOB_STARTED,
        EventType.JOB_SUCCEEDED,
        EventType.JOB_FAILED,
        EventType.JOB_CANCELLED,
    }
)
WORKER_TYPES: Final = frozenset(
    {EventType.WORKER_ONLINE, EventType.WORKER_HEARTBEAT, EventType.WORKER_OFFLINE}
)
SCHEDULE_TYPES: Final = frozenset(
    {EventType.SCHEDULE_REGISTERED, EventType.SCHEDULE_FIRED, EventType.SCHEDULER_HEARTBEAT}
)
KNOWN_TYPES: Final = JOB_TYPES | WORKER_TYPES | SCHEDULE_TYPES

LIBS: Final = frozenset({"arq", "dramatiq", "taskiq", "celery"})

#: Fields every event must carry.
COMMON_REQUIRED: Final = ("v", "id", "type", "ts", "lib", "app")

#: Fields each known type requires beyond the common ones.
REQUIRED: Final[dict[str, tuple[str, ...]]] = {
    **{t: ("job_id",) for t in JOB_TYPES},
    **{t: ("worker",) for t in WORKER_TYPES},
    EventType.SCHEDULE_REGISTERED: ("schedule",),
    EventType.SCHEDULE_FIRED: ("schedule",),
    EventType.SCHEDULER_HEARTBEAT: ("scheduler",),
}

_STR = (str,)
_NUM = (int, float)
_INT = (int,)
_OBJ = (dict,)

#: Python types each known field may hold (``None`` is always allowed for optional fields).
FIELD_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "v": _INT,
    "id": _STR,
    "type": _STR,
    "ts": _NUM,
    "lib": _STR,
    "app": _STR,
    "host": _STR,
    "pid": _INT,
    "worker": _STR,
    "job_id": _STR,
    "task": _STR,
    "queue": _STR,
    "attempt": _INT,
    "max_attempts": _INT,
    "enqueued_at": _NUM,
    "eta": _NUM,
    "duration_ms": _NUM,
    "cpu_ms": _NUM,
    "args": _STR,
    "payload_bytes": _INT,
    "exc_type": _STR,
    "exc_message": _STR,
    "traceback": _STR,
    "retry_in_s": _NUM,
    "correlation_id": _STR,
    "trace_id": _STR,
    "span_id": _STR,
    "payload": _OBJ,
    "final": (bool,),
    "reason": _STR,
    "result": _STR,
    "concurrency": _INT,
    "inflight": _INT,
    "processed": _INT,
    "failed": _INT,
    "loop_lag_ms": _NUM,
    "rss_bytes": _INT,
    "dropped": _INT,
    "queues": (list,),
    "schedule": _STR,
    "cron": _STR,
    "interval_s": _NUM,
    "timezone": _STR,
    "slot": _NUM,
    "scheduler": _STR,
    "started_at": _NUM,
}

#: Longest identifier-like string accepted (ids, names); longer ones are quarantined.
MAX_ID_CHARS: Final = 512
_ID_FIELDS: Final = ("id", "type", "lib", "app", "job_id", "worker", "schedule", "scheduler", "queue", "task")


class InvalidEvent(ValueError):
    """An entry that is not a valid protocol-v1 event; ``reason`` is shown in quarantine."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- building (runs on the job's own thread: keep it to a dict and a counter) ----------------

_counter = itertools.count()
_prefix = os.urandom(8).hex()


def _reseed() -> None:
    """Give a forked child its own id prefix so event ids never collide across processes."""
    global _counter, _prefix
    _counter = itertools.count()
    _prefix = os.urandom(8).hex()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


def new_event_id() -> str:
    """Return an id unique across processes and restarts: a random per-process prefix plus a counter."""
    return f"{_prefix}{next(_counter):x}"


def build(type: str, lib: str, app: str, **fields: Any) -> dict[str, Any]:
    """Return a new event dict; fields left ``None`` are dropped when it is encoded.

    ``args_raw`` / ``kwargs_raw`` may hold the job's real arguments: :func:`encode` turns them into
    a redacted, truncated ``args`` preview off the job's thread.
    """
    return complete(fields, type, lib, app)


def complete(fields: dict[str, Any], type: str, lib: str, app: str) -> dict[str, Any]:
    """:func:`build` on a dict the caller hands over: filled in place, so nothing is copied."""
    fields["v"] = PROTOCOL_VERSION
    fields["id"] = new_event_id()
    fields["type"] = type
    fields.setdefault("ts", time.time())
    fields["lib"] = lib
    fields["app"] = app
    return fields


# --- redaction and truncation (runs on the emitter's background thread) -----------------------


#: One encoder, built once: json.dumps with options builds a new JSONEncoder on every call.
_json_dumps = json.JSONEncoder(ensure_ascii=False, default=str, separators=(",", ":")).encode


def _json_bytes(obj: Any) -> bytes:
    return _json_dumps(obj).encode()


_dumps_bytes: Any = _json_bytes


def _dumps(obj: Any) -> str:
    return _dumps_bytes(obj).decode()


def dumps_bytes(obj: Any) -> bytes:
    """JSON bytes of ``obj`` with this process's serialiser (orjson when :func:`use_fast_json` found it)."""
    return _dumps_bytes(obj)


def use_fast_json() -> bool:
    """Serialise with orjson when the worker's environment has it (3-5x less CPU on the emitter thread).

    Called by the emitter at construction, so ``import collectors`` itself stays stdlib + redis;
    the standard library's json remains the fallback, and for values orjson refuses.
    """
    global _dumps_bytes
    try:
        import orjson
    except ImportError:
        return False
    option = orjson.OPT_NON_STR_KEYS

    def fast(obj: Any) -> bytes:
        try:
            return orjson.dumps(obj, default=str, option=option)
        except (TypeError, orjson.JSONEncodeError):  # e.g. an integer beyond 64 bits
            return _json_bytes(obj)

    _dumps_bytes = fast
    return True
_PLAIN: Final = frozenset({int, float, bool, type(None)})
_SEQUENCES: Final = frozenset({list, tuple})


class Redactor:
    """Replaces the values of secret-looking keys and cuts long previews."""

    def __init__(
        self,
        patterns: Iterable[str] = DEFAULT_REDACT,
        args_limit: int = DEFAULT_ARGS_LIMIT,
        capture_args: bool = True,
    ) -> None:
        pats = [p.strip() for p in patterns if p and p.strip()]
        self._re = re.compile("|".join(re.escape(p) for p in pats), re.IGNORECASE) if pats else None
        self.args_limit = args_limit
        self.capture_args = capture_args
        self._verdicts: dict[Any, bool] = {}  # argument names repeat: remember each one's verdict

    def is_secret(self, key: object) -> bool:
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = bool(self._re is not None and isinstance(key, str) and self._re.search(key))
            if len(self._verdicts) < 4096:
                self._verdicts[key] = verdict
        return verdict

    def scrub(self, value: Any, depth: int = 0) -> Any:
        """Return a JSON-able copy of ``value`` with secret keys' values replaced."""
        kind = type(value)
        if kind is str:
            return value if len(value) <= self.args_limit else value[: self.args_limit] + "…"
        if kind in _PLAIN:
            return value
        if depth > 6:
            return "…"
        if kind is list or kind is tuple:  # the common case, before the slower ABC checks below
            return [v if type(v) in _PLAIN else self.scrub(v, depth + 1) for v in itertools.islice(value, 50)]
        if isinstance(value, Mapping):
            return {
                str(k): (REDACTED if self.is_secret(k) else self.scrub(v, depth + 1))
                for k, v in itertools.islice(value.items(), 50)
            }
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self.scrub(v, depth + 1) for v in itertools.islice(value, 50)]
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, str):
            return value if len(value) <= self.args_limit else value[: self.args_limit] + "…"
        if isinstance(value, bytes):
            return f"<{len(value)} bytes>"
        try:
            text = repr(value)
        except Exception:  # a user object whose repr raises must not stop the event
            text = f"<{type(value).__name__}>"
        return text if len(text) <= 200 else text[:200] + "…"


def preview(args: Any, kwargs: Any, redactor: Redactor) -> str | None:
    """Return the redacted, truncated JSON preview of a job's arguments (``None`` when not captured)."""
    if not redactor.capture_args:
        return None
    if not kwargs and type(args) in _SEQUENCES and 0 < len(args) <= 16:
        # The common call, a few numbers or short strings: nothing to redact or cut, one serialiser
        # call (~1 µs less per job on the emitter's thread than the general path below).
        for value in args:
            kind = type(value)
            if kind not in _PLAIN and (kind is not str or len(value) > 256):
                break
        else:
            text = _dumps_bytes({"args": args}).decode()
            return text if len(text) <= redactor.args_limit else text[: redactor.args_limit] + "…"
    body: dict[str, Any] = {}
    if args:
        body["args"] = redactor.scrub(list(args))
    if kwargs:
        body["kwargs"] = redactor.scrub(dict(kwargs))
    text = _dumps(body)
    limit = redactor.args_limit
    return text if len(text) <= limit else text[:limit] + "…"


#: First item of an args cell that holds ``(ARGS_KWARGS, args, kwargs)`` (see RowQueue): any other
#: list or tuple cell is positional arguments alone.
ARGS_KWARGS: Final = object()
_LIST_OR_NONE: Final = frozenset({list, tuple, type(None)})
_PLAIN_OR_STR: Final = _PLAIN | {str}


def previews(cells: list[Any], redactor: Redactor) -> list[str | None]:
    """The preview of each row's ``args`` cell, a whole column at once (the emitter's thread).

    A cell holds a preview already (a string), nothing, ``args`` alone as a list or tuple, or
    ``(ARGS_KWARGS, args, kwargs)`` (see ``emitter.RowQueue``). When every cell is nothing or a list
    or tuple of at most 16 numbers and short strings, as most jobs' are, :func:`preview`'s checks run in C over the whole column
    and, with the default limit, the column itself is returned: its lists go out as they are, for
    the reader to preview (see :func:`rows_entry`). Otherwise each cell is previewed here. The same
    previews come out in the end either way.
    """
    if not redactor.capture_args:
        return [None] * len(cells)
    if redactor.args_limit == DEFAULT_ARGS_LIMIT and _plain_lists(cells):
        # Nothing to redact or cut but the preview's length, and the reader cuts at this same limit:
        # the lists go as they are (see rows_entry), ~5,000 machine instructions a row less here.
        return cells
    return [_preview_cell(cell, redactor) for cell in cells]


def _plain_lists(cells: list[Any]) -> bool:
    """Whether every cell is None or a list that :func:`preview` takes its fast path for."""
    if not _LIST_OR_NONE.issuperset(map(type, cells)):
        return False
    filled = list(filter(None, cells))
    if not filled:
        return True
    if max(map(len, filled)) > 16:
        return False
    kinds = set(map(type, itertools.chain.from_iterable(filled)))
    if not kinds <= _PLAIN_OR_STR:
        return False
    return str not in kinds or max(len(v) for v in itertools.chain.from_iterable(filled) if type(v) is str) <= 256


def _preview_cell(cell: Any, redactor: Redactor) -> str | None:
    if cell is None or type(cell) is str:
        return cell
    try:
        if type(cell) is tuple and len(cell) == 3 and cell[0] is ARGS_KWARGS:
            return preview(cell[1], cell[2], redactor)
        return preview(cell, None, redactor)
    except Exception:
        return None


def cap_text(text: str | None, limit: int = DEFAULT_MESSAGE_LIMIT) -> str | None:
    """Cut a message to ``limit`` characters, marking the cut."""
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + "…"


def cap_traceback(text: str | None, limit: int = DEFAULT_TRACEBACK_LIMIT) -> str | None:
    """Cut a traceback from the front: its last lines name the failing call."""
    if text is None or len(text) <= limit:
        return text
    return "…" + text[-limit:]


def cap_payload(payload: Mapping[str, Any], limit: int = DEFAULT_PAYLOAD_LIMIT) -> dict[str, Any]:
    """Return ``payload`` if its JSON fits ``limit`` bytes, else a marker that says it was dropped."""
    data = _dumps_bytes(payload)
    if len(data) <= limit:
        return dict(payload)
    return {"truncated": True, "bytes": len(data), "limit": limit}


def _prepared(event: dict[str, Any], redactor: Redactor | None) -> dict[str, Any]:
    """The event as it is serialised: the argument preview made, the payload capped, ``None`` values left out."""
    if "args_raw" in event or "kwargs_raw" in event:
        raw_args = event.pop("args_raw", None)
        raw_kwargs = event.pop("kwargs_raw", None)
        if (raw_args or raw_kwargs) and "args" not in event and redactor is not None:
            event["args"] = preview(raw_args, raw_kwargs, redactor)
    payload = event.get("payload")
    if payload is not None and redactor is not None:
        if isinstance(payload, Mapping) and not payload.get("truncated"):
            event["payload"] = cap_payload(payload)
    # Most events have no None left: testing for one is a C loop, the filtering copy is not.
    return {k: v for k, v in event.items() if v is not None} if None in event.values() else event


def encode(event: dict[str, Any], redactor: Redactor) -> bytes | None:
    """Serialise an event for the stream; ``None`` if it cannot be made to fit the size limit."""
    clean = _prepared(event, redactor)
    data = _dumps_bytes(clean)
    if len(data) <= MAX_EVENT_BYTES:
        return data
    # Too big: drop the bulky optional parts rather than the whole event.
    for key in ("payload", "traceback", "args", "result"):
        clean.pop(key, None)
    clean["oversize"] = len(data)
    data = _dumps_bytes(clean)
    return data if len(data) <= MAX_EVENT_BYTES else None


#: Fields a sender's identity and :func:`complete` fill in: a queued event that sets none of them can be
#: serialised as its own fields followed by its sender's constant :func:`identity_tail`.
RESERVED: Final = frozenset({"v", "id", "type", "lib", "app", "host", "pid", "worker"})


def identity_tail(type: str, lib: str, app: str, host: str, pid: int, worker: str) -> bytes:
    """The constant end of every event of one type from one sender: its JSON members from ``"type"`` on,
    closing brace included.

    Serialised once per sender and type, so the emitter's thread encodes only what changes per event
    (see :func:`encode_with_tail`).
    """
    members = {"type": type, "v": PROTOCOL_VERSION, "lib": lib, "app": app, "host": host, "pid": pid,
               "worker": worker}
    return _dumps_bytes(members)[1:]


def encode_with_tail(fields: dict[str, Any], tail: bytes, redactor: Redactor) -> bytes | None:
    """:func:`encode` for fields that set nothing in :data:`RESERVED`: their JSON, an event id, then ``tail``.

    ``None`` when the event would exceed the size limit: the caller then takes the :func:`encode` path,
    which drops its bulky parts.
    """
    fields["id"] = new_event_id()
    if "ts" not in fields:
        fields["ts"] = time.time()
    body = _dumps_bytes(_prepared(fields, redactor))
    if len(body) + len(tail) > MAX_EVENT_BYTES:
        return None
    return body[:-1] + b"," + tail


# --- validation (runs in the dashboard's ingest, once per entry) -------------------------------


#: Exact types accepted per field (JSON decoding yields exact types; bool is never a number).
_EXACT: Final[dict[str, frozenset[type]]] = {k: frozenset(v) for k, v in FIELD_TYPES.items()}


def validate(obj: Any) -> dict[str, Any]:
    """Return ``obj`` if it is a valid v1 event, else raise :class:`InvalidEvent` with the reason.

    Runs once per ingested entry, so the common case is one pass of exact type lookups.
    """
    if type(obj) is not dict:
        if not isinstance(obj, dict):
            raise InvalidEvent(f"event is a JSON {type(obj).__name__}, not an object")
    for key in COMMON_REQUIRED:
        if obj.get(key) is None:
            raise InvalidEvent(f"missing required field {key!r}")
    v = obj["v"]
    if v != PROTOCOL_VERSION or type(v) is not int:
        raise InvalidEvent(f"unknown protocol version {v!r} (this dashboard reads v{PROTOCOL_VERSION})")
    etype = obj["type"]
    if type(etype) is not str:
        raise InvalidEvent("field 'type' must be a string")
    for key in REQUIRED.get(etype, ()):
        if obj.get(key) is None:
            raise InvalidEvent(f"{etype} is missing required field {key!r}")
    exact = _EXACT
    for key, value in obj.items():
        allowed = exact.get(key)
        if allowed is None or type(value) in allowed or value is None:
            continue  # unknown fields are kept as they are; None means "not set"
        if type(value) is not bool and isinstance(value, FIELD_TYPES[key]):
            continue  # a subclass (only from Python callers; JSON gives exact types)
        got = "a boolean" if type(value) is bool else type(value).__name__
        raise InvalidEvent(f"field {key!r} must be {_type_name(FIELD_TYPES[key])}, got {got}")
    for key in _ID_FIELDS:
        value = obj.get(key)
        if value is not None and (len(value) > MAX_ID_CHARS or not value):
            raise InvalidEvent(f"field {key!r} is empty or longer than {MAX_ID_CHARS} characters")
    ts = obj["ts"]
    if ts != ts or ts < 0 or ts > 1e11:  # NaN, negative, or milliseconds sent by mistake
        raise InvalidEvent(f"field 'ts' is not a unix time in seconds: {ts!r}")
    attempt = obj.get("attempt")
    if attempt is not None and not 0 < attempt < 1_000_000:
        raise InvalidEvent(f"field 'attempt' must be 1-based, got {attempt!r}")
    return obj


#: Job events that end an attempt: one of them may carry ``started_at`` in place of its own job-started.
ENDING_TYPES: Final = frozenset({EventType.JOB_SUCCEEDED, EventType.JOB_FAILED, EventType.JOB_CANCELLED})
#: Fields that describe an attempt's end, left out of the job-started recovered from it.
_ENDING_ONLY: Final = frozenset({
    "id", "type", "ts", "started_at", "duration_ms", "cpu_ms", "exc_type", "exc_message", "traceback",
    "retry_in_s", "payload", "final", "reason", "result", "time_limit_s", "oversize",
})


def split_started(event: dict[str, Any]) -> dict[str, Any] | None:
    """The ``job-started`` an ending event stands in for, or ``None`` (it has no valid ``started_at``).

    A collector sends one event for an attempt that ended before its start was sent: the end,
    carrying the start's fields and ``started_at``. This gives back the start as if it had been sent
    on its own: id ``<id>.s``, ``ts`` the start's. ``started_at`` is removed from ``event``.
    """
    if event.get("type") not in ENDING_TYPES:
        return None  # on any other type it is an unknown field, kept as it is
    started_at = event.pop("started_at", None)
    if type(started_at) not in (int, float) or started_at != started_at or not 0 <= started_at <= 1e11:
        return None
    start = {k: v for k, v in event.items() if k not in _ENDING_ONLY}
    start["id"] = f"{event['id']}.s"
    start["type"] = EventType.JOB_STARTED
    start["ts"] = started_at
    return start


# --- rows: many job events of one sender in one entry --------------------------------------------

#: A row's columns, in order, as the collectors write them; ``x`` holds any other fields (an object, or
#: null). An entry names its columns (``cols``), and readers go by those, so columns can be added.
ROW_COLS: Final = (
    "type", "ts", "job_id", "task", "queue", "attempt", "max_attempts", "started_at", "duration_ms",
    "cpu_ms", "enqueued_at", "correlation_id", "args", "payload_bytes", "trace_id", "span_id", "eta", "x",
)
#: Each column's index in a row, for the builders.
(C_TYPE, C_TS, C_JOB_ID, C_TASK, C_QUEUE, C_ATTEMPT, C_MAX_ATTEMPTS, C_STARTED_AT, C_DURATION, C_CPU,
 C_ENQUEUED_AT, C_CORRELATION, C_ARGS, C_SIZE, C_TRACE_ID, C_SPAN_ID, C_ETA, C_X) = range(len(ROW_COLS))
#: Cells in one row.
ROW_WIDTH: Final = len(ROW_COLS)


def job_row(etype: str, ts: float, job_id: str, task: str | None, queue: str | None, attempt: int | None,
            max_attempts: int | None, correlation_id: str | None, trace: Mapping[str, str] | None) -> list[Any]:
    """A row with the columns every job event has; a builder sets the rest by index (``C_…``)."""
    if trace is None:
        return [etype, ts, job_id, task, queue, attempt, max_attempts, None, None, None, None, correlation_id,
                None, None, None, None, None, None]
    return [etype, ts, job_id, task, queue, attempt, max_attempts, None, None, None, None, correlation_id,
            None, None, trace.get("trace_id"), trace.get("span_id"), None, None]


def set_extra(row: list[Any], name: str, value: Any) -> None:
    """Put a field with no column of its own into the row's ``x`` object (made when first needed)."""
    extra = row[C_X]
    if extra is None:
        row[C_X] = {name: value}
    else:
        extra[name] = value


#: Fields a rows entry carries once, for every row.
_ROWS_HEAD: Final = ("v", "lib", "app", "host", "pid", "worker")
#: Most rows in one entry (each is at most a few KiB: every column but ``x`` is capped).
MAX_ROWS: Final = 512


def rows_entry(batch_id: str, identity: tuple[str, str, str, int, str], cells: list[Any]) -> dict[str, Any]:
    """The object a ``b`` entry holds: the sender once, ``cols``, and its rows' ``cells`` end to end.

    Row ``i`` is ``cells[i * len(cols):(i + 1) * len(cols)]`` (flat: the emitter sends the cells as
    they lie in its queue, with no list per row to build and free). Event ``i`` of the entry is the
    sender's fields plus its row's non-null columns (``x``'s members added), with id
    ``<batch id>.<i>``: a batch resent after a lost reply gives the same ids. A reader also accepts
    ``rows``, a list of rows, in place of ``cells``.

    An ``args`` cell is the preview (a string), or a list: a job's positional arguments, at most 16
    numbers, booleans, nulls and strings of up to 256 characters, which the reader previews itself
    (:func:`preview`, the same text the collector would have sent). That is the common job's, and
    the preview cost the sending thread more than the rest of its row. An ``enqueued_at`` cell may
    be text, a decimal number as a producer stamped it in a label, which the reader reads: parsing
    it cost a worker's sending thread 1,100 instructions a row.
    """
    lib, app, host, pid, worker = identity
    return {"v": PROTOCOL_VERSION, "id": batch_id, "lib": lib, "app": app, "host": host, "pid": pid,
            "worker": worker, "cols": ROW_COLS, "cells": cells}


def decode_rows(data: bytes | str, loads: Any = json.loads) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """The valid events of a ``b`` entry, and ``(row index, reason)`` for each row that is not one.

    Raises :class:`InvalidEvent` when the entry as a whole is malformed (its rows cannot be read).
    """
    obj = _parse(data, loads)
    if type(obj) is not dict:
        raise InvalidEvent(f"rows entry is a JSON {type(obj).__name__}, not an object")
    cols, batch_id = obj.get("cols"), obj.get("id")
    if type(batch_id) is not str or not batch_id or len(batch_id) > MAX_ID_CHARS - 8:
        raise InvalidEvent("rows entry has no valid 'id'")
    if type(cols) is not list or not all(type(c) is str for c in cols) or len(set(cols)) != len(cols):
        raise InvalidEvent("rows entry's 'cols' must be a list of distinct names")
    clash = set(cols) & (set(_ROWS_HEAD) | {"id"})
    if clash:
        raise InvalidEvent(f"rows entry's 'cols' name entry fields: {sorted(clash)}")
    width = len(cols)
    rows = entry_rows(obj)
    head = {k: obj.get(k) for k in _ROWS_HEAD}
    events: list[dict[str, Any]] = []
    bad: list[tuple[int, str]] = []
    for i, row in enumerate(rows):
        if type(row) is not list or len(row) != width:
            bad.append((i, f"row {i} is not a list of {width} values"))
            continue
        event = dict(head)
        for name, value in zip(cols, row):
            if value is not None:
                event[name] = value
        extra = event.pop("x", None)
        if extra is not None:
            if type(extra) is not dict:
                bad.append((i, f"row {i}: 'x' must be an object"))
                continue
            for name, value in extra.items():
                if name not in event and name not in _ROWS_HEAD:
                    event[name] = value
        event["id"] = f"{batch_id}.{i}"
        args = event.get("args")
        if type(args) is list:  # positional arguments left for the reader to preview (see rows_entry)
            event["args"] = preview(args, None, _READER)
        enqueued = event.get("enqueued_at")
        if type(enqueued) is str:  # a producer's label, as it travelled (see rows_entry)
            number = _label_number(enqueued)
            if number is None:
                bad.append((i, f"row {i}: 'enqueued_at' {enqueued[:40]!r} is not a number"))
                continue
            event["enqueued_at"] = number
        try:
            events.append(validate(event))
        except InvalidEvent as exc:
            bad.append((i, f"row {i}: {exc.reason}"))
    return events, bad


def _label_number(text: str) -> float | None:
    """A finite number written as text (at most 32 characters), or ``None``."""
    if len(text) > 32:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


#: How a reader previews the arguments a row left as a list: the collectors' defaults.
_READER = Redactor()


def entry_rows(obj: dict[str, Any]) -> list[Any]:
    """A parsed rows entry's rows, each a list of ``cols`` values (read from ``cells`` or ``rows``)."""
    cells = obj.get("cells")
    if cells is None:
        rows = obj.get("rows")
        if type(rows) is not list:
            raise InvalidEvent("rows entry has neither 'cells' nor a list of 'rows'")
        return rows
    width = len(obj.get("cols") or ())
    if type(cells) is not list or not width or len(cells) % width:
        raise InvalidEvent(f"rows entry's 'cells' must be a list of whole rows of {width} values")
    return [cells[i:i + width] for i in range(0, len(cells), width)]


def entry_events(fields: Mapping[Any, Any], loads: Any = json.loads) -> list[dict[str, Any]]:
    """Every event one stream entry holds (``e``: one; ``b``: its rows), as written: a reader that wants
    an attempt's start back from its end applies :func:`split_started`. Raises :class:`InvalidEvent`."""
    for e_key, b_key in ((EVENT_FIELD, ROWS_FIELD), (EVENT_FIELD.encode(), ROWS_FIELD.encode())):
        if e_key in fields:
            return [decode(fields[e_key], loads)]
        if b_key in fields:
            events, bad = decode_rows(fields[b_key], loads)
            if bad:
                raise InvalidEvent(bad[0][1])
            return events
    raise InvalidEvent(f"entry has neither an {EVENT_FIELD!r} nor a {ROWS_FIELD!r} field")


def _type_name(allowed: tuple[type, ...]) -> str:
    names = {"str": "a string", "int": "an integer", "float": "a number", "dict": "an object",
             "list": "a list", "bool": "a boolean"}
    return " or ".join(dict.fromkeys(names.get(t.__name__, t.__name__) for t in allowed))


def decode(data: bytes | str, loads: Any = json.loads) -> dict[str, Any]:
    """Parse and validate one stream entry's ``e`` field; raises :class:`InvalidEvent`."""
    return validate(_parse(data, loads))


def _parse(data: bytes | str, loads: Any) -> Any:
    """An entry field's JSON, within the size limit; raises :class:`InvalidEvent`."""
    if len(data) > MAX_EVENT_BYTES:
        raise InvalidEvent(f"entry is {len(data)} bytes, over the {MAX_EVENT_BYTES}-byte limit")
    try:
        return loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidEvent(f"not JSON: {exc}") from None
