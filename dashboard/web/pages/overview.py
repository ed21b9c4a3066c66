"""The overview page (/) and its JSON twin (/api/stats): counts, throughput, failures, latency, per app."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ...store import page_queries
from ..params import BadRequest, iso, parse_time
from .charts import rate_chart, throughput_chart
from .render import render

__all__ = ["overview", "api_stats"]


def _rollup_cache(request: Request) -> page_queries.SettledCache:
    """This app's cache of settled rollup sums, made on first use (shared by the page and /api/stats)."""
    cache = getattr(request.app.state, "rollup_cache", None)
    if cache is None:
        cache = page_queries.SettledCache()
        request.app.state.rollup_cache = cache
    return cache


async def _stats(request: Request) -> dict[str, Any]:
    params = request.query_params
    since = parse_time("since", params.get("since"))
    until = parse_time("until", params.get("until"))
    window = page_queries.window_for(params.get("window"), since=since, until=until)
    lib = (params.get("lib") or "").strip() or None
    app = (params.get("app") or "").strip() or None
    async with request.app.state.engine.connect() as conn:
        stats = await page_queries.overview(conn, window, lib=lib, app=app, now=time.time(),
                                            lost_after_s=request.app.state.settings.lost_after_s,
                                            cache=_rollup_cache(request))
    stats["lib"], stats["app"] = lib, app
    return stats


async def overview(request: Request) -> Response:
    """GET /: the state of everything over one window, each number a link into the jobs list."""
    try:
        stats = await _stats(request)
    except BadRequest as exc:
        return render(request, "pages/error.html", {"page": "overview", "message": str(exc)}, status_code=400)
    window = stats["window"]
    context = {
        "page": "overview",
        "stats": stats,
        "window": window,
        "windows": list(page_queries.WINDOWS),
        "throughput": throughput_chart(stats["bins"], window.bin_s),
        "rate": rate_chart(stats["bins"]),
        "filters": {"lib": stats["lib"], "app": stats["app"], "window": window.name},
        "range": window.name if window.name in page_queries.WINDOWS else "",
        "live_topics": "jobs,workers",
    }
    return render(request, "pages/overview.html", context, blocks={"overview": "overview"})


def _stats_json(stats: dict[str, Any]) -> dict[str, Any]:
    window = stats["window"]

    def dur(d: dict[str, Any]) -> dict[str, Any]:
        return {"n": d["n"], "p50_ms": d["p50_ms"], "p95_ms": d["p95_ms"], "mean_ms": d["mean_ms"], "max_ms": d["max_ms"]}

    def task(t: dict[str, Any]) -> dict[str, Any]:
        return {k: t[k] for k in ("lib", "app", "task", "attempts", "failures", "failed", "retried", "failure_rate",
                                  "p50_ms", "p95_ms", "mean_ms")}

    return {
        "since": iso(window.since), "until": iso(window.until), "window": window.name, "bin_s": window.bin_s,
        "lib": stats["lib"], "app": stats["app"],
        "counts": stats["counts"],
        "attempts": stats["attempts"],
        "failure_rate": stats["failure_rate"],
        "duration_ms": dur(stats["duration"]),
        "queue_wait_ms": dur(stats["wait"]),
        "throughput": [{"t": iso(b["t"]), "total": b["total"], "succeeded": b["succeeded"], "failed": b["failed"],
                        "retried": b["retried"], "cancelled": b["cancelled"], "lost": b["lost"],
                        "failure_rate": b["failure_rate"]} for b in stats["bins"]],
        "libs": stats["libs"],
        "apps": [{k: v for k, v in a.items()} for a in stats["apps"]],
        "slowest_tasks": [task(t) for t in stats["slowest"]],
        "failing_tasks": [task(t) for t in stats["failing"]],
        "workers_online": stats["workers_online"],
        "workers_lost": stats["workers_lost"],
        "dlq_size": stats["dlq"],
        "unhealthy_schedules": [{"lib": s["lib"], "app": s["app"], "name": s["name"], "health": s["health"],
                                 "last_fired_at": iso(s["last_fired_at"])} for s in stats["unhealthy_schedules"]],
    }


async def api_stats(request: Request) -> Response:
    """GET /api/stats?since=&until=&lib=&app=&window=: the overview's numbers as JSON."""
    try:
        stats = await _stats(request)
    except BadRequest as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse(_stats_json(stats))
