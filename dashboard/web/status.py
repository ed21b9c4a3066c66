"""Ingest health: how far behind the stream the store is, and what was quarantined."""

from __future__ import annotations

import time
from typing import Any

from starlette.applications import Starlette

from collectors.constants import CONSUMER_GROUP

from ..store import queries
from .params import iso


def _id_ms(entry_id: Any) -> int | None:
    if entry_id is None:
        return None
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    head = text.split("-", 1)[0]
    return int(head) if head.isdigit() else None


async def stream_lag(redis: Any, stream: str, now: float) -> dict[str, Any]:
    """Stream length, entries not yet read by the group, entries read but unacked, and their ages."""
    out: dict[str, Any] = {"name": stream, "length": None, "pending": None, "undelivered": None,
                           "oldest_pending_age_s": None, "lag_s": None, "consumers": None, "error": None}
    try:
        out["length"] = await redis.xlen(stream)
        groups = await redis.xinfo_groups(stream) if out["length"] or await redis.exists(stream) else []
        group = next((g for g in groups if (g.get("name") or g.get(b"name")) in (CONSUMER_GROUP, CONSUMER_GROUP.encode())), None)
        if group is None:
            out["undelivered"] = out["length"]
            return out
        out["consumers"] = group.get("consumers")
        out["pending"] = group.get("pending")
        out["undelivered"] = group.get("lag")
        last = group.get("last-delivered-id")
        nxt = await redis.xrange(stream, min=f"({_as_str(last)}", count=1) if last else []
        oldest_undelivered = _id_ms(nxt[0][0]) if nxt else None
        oldest_pending = None
        if out["pending"]:
            summary = await redis.xpending(stream, CONSUMER_GROUP)
            oldest_pending = _id_ms(summary.get("min"))
            out["oldest_pending_age_s"] = round(max(0.0, now - oldest_pending / 1000), 3) if oldest_pending else None
        # Lag: the age of the oldest event not yet committed (undelivered, or delivered but unacked).
        candidates = [x for x in (oldest_undelivered, oldest_pending) if x]
        out["lag_s"] = round(max(0.0, now - min(candidates) / 1000), 3) if candidates else 0.0
    except Exception as exc:  # Redis down: the page still renders, saying so
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def _as_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def read_status(app: Starlette, quarantine_limit: int = 20) -> dict[str, Any]:
    """Everything /api/status reports."""
    now = time.time()
    async with app.state.engine.connect() as conn:
        counters = await queries.ingest_counters(conn)
        recent = await queries.recent_quarantine(conn, quarantine_limit)
    stream = await stream_lag(app.state.redis, app.state.settings.stream, now)
    return {
        "events_ingested": counters.get("events_ingested", 0),
        "quarantined": counters.get("quarantined", 0),
        "duplicates": counters.get("duplicates", 0),
        "stream": stream,
        "lag_s": stream["lag_s"],
        "pending": stream["pending"],
        "stream_length": stream["length"],
        "quarantine": [
            {"stream_id": q["stream_id"], "received_at": iso(q["received_at"]), "reason": q["reason"],
             "raw": (q["raw"] or "")[:2000], "raw_bytes": q["raw_bytes"]}
            for q in recent
        ],
        "now": iso(now),
    }
