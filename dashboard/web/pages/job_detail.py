"""One job (/jobs/{lib}/{app}/{job_id}): its attempts drawn to scale, errors, arguments and ids."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ...store import queries
from .render import render

__all__ = ["job_detail", "timeline"]

FINAL_STATES = ("succeeded", "failed", "cancelled", "lost")


def _pct(t: float, t0: float, span: float) -> float:
    return round(max(0.0, min(100.0, (t - t0) * 100.0 / span)), 3)


def timeline(job: dict[str, Any], now: float) -> dict[str, Any]:
    """Lanes (one per attempt) of segments on one time scale: waiting in the queue, running, outcome."""
    attempts = job.get("attempts") or []
    times = [t for a in attempts for t in (a["enqueued_at"], a["started_at"], a["finished_at"]) if t is not None]
    times += [t for t in (job.get("created_at"), job.get("enqueued_at")) if t is not None]
    if not times:
        return {"lanes": [], "ticks": [], "span": 0.0}
    t0 = min(times)
    running = job.get("state") not in FINAL_STATES
    t1 = max(times + ([now] if running else []))
    span = max(t1 - t0, 0.001)
    lanes = []
    previous_end = None
    for a in attempts:
        segs = []
        queued_from = a["enqueued_at"] if a["enqueued_at"] is not None else previous_end
        if previous_end is not None and queued_from is not None and queued_from > previous_end:
            segs.append({"kind": "retry-wait", "start": previous_end, "end": queued_from, "label": "waiting to retry"})
        start = a["started_at"]
        if queued_from is not None:
            wait_end = start if start is not None else (now if running else queued_from)
            segs.append({"kind": "wait", "start": queued_from, "end": wait_end, "label": "queued"})
        if start is not None:
            end = a["finished_at"] if a["finished_at"] is not None else (now if running else start)
            segs.append({"kind": a["outcome"], "start": start, "end": end, "label": a["outcome"]})
        for s in segs:
            s["left"] = _pct(s["start"], t0, span)
            s["width"] = max(0.4, round(_pct(s["end"], t0, span) - s["left"], 3))
            s["ms"] = (s["end"] - s["start"]) * 1000
        lanes.append({"attempt": a, "segments": segs})
        previous_end = a["finished_at"] or previous_end
    ticks = [{"left": f * 100, "offset_ms": span * f * 1000} for f in (0, 0.25, 0.5, 0.75, 1.0)]
    return {"lanes": lanes, "ticks": ticks, "t0": t0, "t1": t1, "span": span, "running": running}


async def job_detail(request: Request) -> Response:
    """GET /jobs/{lib}/{app}/{job_id}: the whole story of one job; live while it runs."""
    p = request.path_params
    async with request.app.state.engine.connect() as conn:
        job = await queries.get_job(conn, p["lib"], p["app"], p["job_id"])
    if job is None:
        return render(request, "pages/error.html", {
            "page": "jobs", "title": "Job not found",
            "message": f"No job {p['job_id']!r} for {p['lib']}/{p['app']}: it may not have been seen yet, or was pruned.",
        }, status_code=404)
    now = time.time()
    context = {
        "page": "jobs",
        "job": job,
        "timeline": timeline(job, now),
        "live_job": {"lib": job["lib"], "app": job["app"], "job_id": job["job_id"]},
        "now": now,
    }
    return render(request, "pages/job_detail.html", context, blocks={"job-main": "main"})
