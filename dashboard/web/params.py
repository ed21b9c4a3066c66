"""Query-string parsing for the API and pages: times, cursors, limits, with clear errors."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import datetime, timezone

from ..store.queries import JOB_STATES, JobFilters
from ..store.search import parse_query

__all__ = ["BadRequest", "parse_time", "iso", "encode_cursor", "decode_cursor", "parse_limit", "job_filters"]


class BadRequest(ValueError):
    """A query parameter that cannot be understood; the message says which and why."""


def parse_time(name: str, value: str | None) -> float | None:
    """An ISO 8601 time (naive means UTC) or unix seconds, as unix seconds."""
    if value is None or value.strip() == "":
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name}: {value!r} is not an ISO 8601 time or unix seconds") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def iso(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC with milliseconds, e.g. ``2026-11-24T21:49:08.123Z``."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_cursor(row_id: int | None) -> str | None:
    """An opaque cursor for the row after which the next page starts."""
    if row_id is None:
        return None
    return base64.urlsafe_b64encode(f"j{row_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("j"):
            raise ValueError
        return int(raw[1:])
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("cursor: not a cursor this server issued (use next_cursor as given)") from None


def parse_limit(value: str | None, default: int = 50, maximum: int = 500) -> int:
    if value is None or value == "":
        return default
    try:
        limit = int(value)
    except ValueError:
        raise BadRequest(f"limit: {value!r} is not a whole number") from None
    if not 1 <= limit <= maximum:
        raise BadRequest(f"limit: must be between 1 and {maximum}")
    return limit


def _states(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    states = tuple(s.strip() for s in value.split(",") if s.strip())
    unknown = [s for s in states if s not in JOB_STATES]
    if unknown:
        raise BadRequest(f"state: unknown {', '.join(unknown)} (one of {', '.join(JOB_STATES)})")
    return states


def job_filters(params: Mapping[str, str]) -> JobFilters:
    """Filters from query parameters; ``q`` qualifiers fill the ones the parameters leave empty."""
    parsed = parse_query(params.get("q"))
    f = parsed.filters

    def pick(name: str) -> str | None:
        return (params.get(name) or "").strip() or f.get(name)

    return JobFilters(
        lib=pick("lib"),
        app=pick("app"),
        task=pick("task"),
        queue=pick("queue"),
        states=_states(pick("state")),
        worker=pick("worker"),
        exc=pick("exc"),
        args=pick("args"),
        job_id=pick("job_id"),
        correlation_id=pick("correlation_id"),
        text=parsed.text,
        since=parse_time("since", params.get("since")),
        until=parse_time("until", params.get("until")),
    )
