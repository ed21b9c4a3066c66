"""The workers page (/workers): every worker's state and load, a swimlane of what ran where, lost work."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ...store import page_queries, queries
from .render import ms, path_for, render

__all__ = ["worker_list", "lanes"]

#: Swimlane spans offered: name → seconds.
SPANS: dict[str, int] = {"5m": 300, "15m": 900, "1h": 3600}
#: At most this many lanes are drawn (online and lost workers first).
MAX_LANES = 60


def lanes(request: Request, workers: list[dict[str, Any]], runs: dict[str, list[dict[str, Any]]], since: float,
          until: float) -> list[dict[str, Any]]:
    """Bars per worker for the swimlane timeline, with link, title and position already formatted.

    A lane can hold hundreds of bars; building their strings here is several times cheaper than
    calling template macros per bar.
    """
    span = max(1.0, until - since)
    out = []
    for w in workers:
        bars = []
        for j in runs.get(w["worker"], []):
            start = max(j["started_at"], since)
            end = min(j["finished_at"] if j["finished_at"] is not None else until, until)
            href = path_for(request, "job_detail", lib=j["lib"], app=j["app"], job_id=j["job_id"])
            took = "" if j["duration_ms"] is None else f" · {ms(j['duration_ms'])}"
            bars.append({
                "state": j["state"], "href": href, "title": f"{j['task']} · {j['job_id']} · {j['state']}{took}",
                "style": f"left:{(start - since) * 100 / span:.3f}%;width:{max(0.2, (end - start) * 100 / span):.3f}%",
                "left": (start - since) * 100 / span,
            })
        out.append({"worker": w, "bars": bars})
    return out


async def worker_list(request: Request) -> Response:
    """GET /workers: the table, the swimlanes over ``span`` (5m, 15m, 1h) and lost workers' jobs."""
    params = request.query_params
    settings = request.app.state.settings
    now = time.time()
    span_name = params.get("span") or "15m"
    if span_name not in SPANS:
        span_name = "15m"
    lib = (params.get("lib") or "").strip() or None
    app = (params.get("app") or "").strip() or None
    only = (params.get("worker") or "").strip() or None
    since, until = now - SPANS[span_name], now
    async with request.app.state.engine.connect() as conn:
        rows = await queries.list_workers(conn, now, settings.lost_after_s, lib=lib, app=app)
        if only:
            rows = [w for w in rows if w["worker"] == only]
        order = {"online": 0, "lost": 1, "offline": 2}
        rows.sort(key=lambda w: (order.get(w["state"], 3), w["lib"], w["app"], w["worker"]))
        shown = [w for w in rows if w["state"] != "offline" or (w.get("stopped_at") or 0) >= since][:MAX_LANES]
        runs = await page_queries.swimlanes(conn, [w["worker"] for w in shown], since, until)
        lost = [w for w in rows if w["state"] == "lost"]
        lost_jobs = await page_queries.lost_worker_jobs(conn, [w["worker"] for w in lost])
    counts = {s: sum(1 for w in rows if w["state"] == s) for s in ("online", "lost", "offline")}
    context = {
        "page": "workers",
        "workers": rows,
        "counts": counts,
        "lanes": lanes(request, shown, runs, since, until),
        "lost": lost,
        "lost_jobs": lost_jobs,
        "span": span_name,
        "spans": list(SPANS),
        "since": since,
        "until": until,
        "params": {k: v for k, v in (("lib", lib), ("app", app), ("worker", only), ("span", span_name)) if v},
        "lost_after_s": settings.lost_after_s,
        "now": now,
        "live_topics": "workers,jobs",
    }
    return render(request, "pages/workers.html", context, blocks={"workers-main": "main"})
