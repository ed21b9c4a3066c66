"""Turn store rows into the JSON API's shapes (times as ISO 8601 UTC)."""

from __future__ import annotations

from typing import Any

from .params import iso

JOB_FIELDS = ("lib", "app", "job_id", "task", "queue", "state", "attempt", "max_attempts", "enqueued_at",
              "started_at", "finished_at", "duration_ms", "worker", "exc_type", "exc_message", "args")
DETAIL_FIELDS = ("eta", "cpu_ms", "retry_in_s", "reason", "result", "payload_bytes", "correlation_id",
                 "trace_id", "created_at", "updated_at")
TIME_FIELDS = {"enqueued_at", "started_at", "finished_at", "eta", "created_at", "updated_at", "ts",
               "last_seen_at", "stopped_at", "last_fired_at", "received_at"}


def _out(row: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {k: (iso(row.get(k)) if k in TIME_FIELDS else row.get(k)) for k in names}


def job_summary(row: dict[str, Any]) -> dict[str, Any]:
    """A job as the list endpoint gives it."""
    return _out(row, JOB_FIELDS)


def job_detail(row: dict[str, Any]) -> dict[str, Any]:
    """A job with its attempts and timeline events."""
    out = _out(row, JOB_FIELDS + DETAIL_FIELDS)
    out["has_payload"] = bool(row.get("payload"))
    out["attempts"] = [
        {**{k: (iso(v) if k in ("enqueued_at", "started_at", "finished_at") else v) for k, v in a.items()}}
        for a in row.get("attempts", [])
    ]
    out["events"] = [
        {
            "type": ev["type"], "ts": iso(ev["ts"]), "attempt": ev.get("attempt"), "worker": ev.get("worker"),
            "duration_ms": ev.get("duration_ms"), "exc_type": ev.get("exc_type"),
            "exc_message": ev.get("exc_message"), "traceback": ev.get("traceback"),
            "retry_in_s": ev.get("retry_in_s"), "final": ev.get("final"), "reason": ev.get("reason"),
            **{k: v for k, v in (ev.get("extra") or {}).items() if k not in ("payload",)},
        }
        for ev in row.get("events", [])
    ]
    return out


WORKER_FIELDS = ("lib", "app", "worker", "host", "pid", "state", "started_at", "last_seen_at", "concurrency",
                 "inflight", "loop_lag_ms", "processed", "failed", "rss_bytes", "dropped", "queues", "stopped_at")


def worker(row: dict[str, Any]) -> dict[str, Any]:
    """A worker as /api/workers gives it."""
    return _out(row, WORKER_FIELDS)
