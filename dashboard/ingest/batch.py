"""One batch of stream entries, decoded and sorted: job events grouped per job, the rest, the rejects.

Decoding is the same for both stores; what a store does with a :class:`Batch` is its writer's job.
A bad entry never raises out of here: it becomes a quarantine row with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from collectors.constants import EVENT_FIELD, ROWS_FIELD
from collectors.events import (
    JOB_TYPES,
    SCHEDULE_TYPES,
    WORKER_TYPES,
    InvalidEvent,
    decode,
    decode_rows,
    entry_rows,
    split_started,
    use_fast_json,
)
from dashboard.store.keys import event_key

__all__ = ["Batch", "JobKey", "QUARANTINE_RAW_LIMIT"]

JobKey = tuple[str, str, str]
#: Raw text kept for a quarantined entry.
QUARANTINE_RAW_LIMIT = 64 * 1024
_FIELD = EVENT_FIELD.encode()
_ROWS = ROWS_FIELD.encode()
_OTHER_TYPES = WORKER_TYPES | SCHEDULE_TYPES
use_fast_json()  # the previews of arguments rows leave as lists are written here (decode_rows)


@dataclass
class Batch:
    """Stream entries read together, to be applied in one transaction and then acknowledged."""

    #: Stream ids to XACK once the batch is committed.
    ids: list[bytes] = field(default_factory=list)
    #: Job events per (lib, app, job_id), each as (event-id hash, event), in stream order.
    jobs: dict[JobKey, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    #: Worker, schedule and scheduler events.
    others: list[dict[str, Any]] = field(default_factory=list)
    #: quarantine rows: (stream id, received at, reason, raw text, raw bytes).
    quarantine: list[tuple[str, float, str, str | None, int | None]] = field(default_factory=list)
    #: Valid events of unknown types with no job id: counted, otherwise ignored.
    ignored: int = 0
    #: Valid events read (duplicates included; an end carrying its start counts twice).
    valid: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    def add_entries(self, entries: Sequence[Sequence[Any]]) -> None:
        """Decode stream entries into the batch; invalid ones are put in quarantine.

        An entry is ``(id, fields)``, its fields either a dict (redis-py's parsed replies) or the
        flat ``[name, value, …]`` list of a raw reply (what the consumer reads: parsing it into
        dicts cost more than the rest of the read).
        """
        now = time.time()
        self.ids.extend([entry[0] for entry in entries])
        loads, valid = orjson.loads, 0
        for sid, fields in entries:
            if fields is None:  # a pending entry trimmed from the stream before anyone applied it
                self._reject(sid, now, "entry was trimmed from the stream before it was applied", None)
                continue
            rows = None
            if type(fields) is list:
                if len(fields) == 2 and fields[0] == _FIELD:
                    raw = fields[1]
                elif len(fields) == 2 and fields[0] == _ROWS:
                    raw, rows = None, fields[1]
                else:
                    fields = dict(zip(fields[::2], fields[1::2]))
                    raw, rows = fields.get(_FIELD), fields.get(_ROWS)
            else:
                raw, rows = fields.get(_FIELD), fields.get(_ROWS)
            if raw is not None:
                try:
                    event = decode(raw, loads)
                except InvalidEvent as exc:
                    self._reject(sid, now, exc.reason, raw)
                    continue
                valid += self._add(event)
            elif rows is not None:
                try:
                    events, bad = decode_rows(rows, loads)
                except InvalidEvent as exc:
                    self._reject(sid, now, exc.reason, rows)
                    continue
                for event in events:
                    valid += self._add(event)
                if bad:
                    self._reject_rows(sid, now, bad, rows, loads)
            else:
                self._reject(sid, now, f"entry has no {EVENT_FIELD!r} or {ROWS_FIELD!r} field", fields)
        self.valid += valid

    def _add(self, event: dict[str, Any]) -> int:
        """File one valid event; how many events it counts for (an end that carries its start: two)."""
        etype = event["type"]
        job_id = event.get("job_id")
        if type(job_id) is str and (etype in JOB_TYPES or etype not in _OTHER_TYPES):
            key = (event["lib"], event["app"], job_id)
            item = (event_key(event["id"]), event)
            group = self.jobs.get(key)
            if group is None:
                group = self.jobs[key] = []
            counted = 1
            if "started_at" in event:  # one event for the attempt's start and end: two again
                start = split_started(event)
                if start is not None:
                    group.append((event_key(start["id"]), start))
                    counted = 2
            group.append(item)
            return counted
        if etype in _OTHER_TYPES:
            self.others.append(event)
        else:
            self.ignored += 1
        return 1

    def _reject_rows(self, sid: bytes, now: float, bad: list[tuple[int, str]], raw: Any, loads: Any) -> None:
        """Quarantine each bad row of a rows entry on its own (``<stream id>#<row>``), with its text."""
        rows = entry_rows(loads(raw))
        for index, reason in bad:
            text = orjson.dumps(rows[index]) if 0 <= index < len(rows) else b""
            self._reject(f"{_text(sid)}#{index}".encode(), now, reason, text)

    def _reject(self, sid: bytes, now: float, reason: str, raw: Any) -> None:
        if raw is None:
            text, size = None, None
        elif isinstance(raw, (bytes, bytearray)):
            size = len(raw)
            text = bytes(raw[:QUARANTINE_RAW_LIMIT]).decode("utf-8", "replace")
        else:  # the entry's whole field map, when the event field is missing
            text = repr({_text(k): _text(v) for k, v in raw.items()})[:QUARANTINE_RAW_LIMIT]
            size = len(text)
        self.quarantine.append((_text(sid), now, reason, text, size))


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)
