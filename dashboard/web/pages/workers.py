"""The workers page (/workers): every worker's state and load, a swimlane of what ran where, lost work."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import Response

from ...store import page_queries, queries
from .render import is_htmx, ms, path_for, render

__all__ = ["worker_list", "worker_lanes", "lanes"]

#: Swimlane spans offered: name → seconds.
SPANS: dict[str, int] = {"5m": 300, "15m": 900, "1h": 3600}
#: At most this many lanes are drawn (online and lost workers first).
MAX_LANES = 60


#: Which outcome colours a bar that stands for several jobs: the one a reader should see first.
WORST: dict[str, int] = {"lost": 6, "failed": 5, "retrying": 4, "running": 3, "cancelled": 2, "queued": 1,
                         "succeeded": 0}


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%H:%M:%S")


def _bar(state: str, n: int, href: str, title: str, start: float, end: float, since: float, span: float,
         min_width: float) -> dict[str, Any]:
    width = min(100.0, max(min_width, (min(end, since + span) - max(start, since)) * 100 / span))
    left = min((max(start, since) - since) * 100 / span, 100.0 - width)
    return {"state": state, "n": n, "href": href, "title": title, "left": left,
            "cls": f"bar o-{state} many" if n > 1 else f"bar o-{state}",
            "style": f"left:{left:.3f}%;width:{max(width, 0.0):.3f}%"}


def lanes(request: Request, workers: list[dict[str, Any]], runs: dict[str, dict[str, list[dict[str, Any]]]],
          since: float, until: float, columns: int = page_queries.LANE_COLUMNS) -> list[dict[str, Any]]:
    """Bars per worker for the swimlane timeline, with link, title and position already formatted.

    Succeeded jobs come as runs (one bar for jobs started in touching columns; a click lists them);
    every other job is its own bar drawn on top, unless several start in the same column, which then
    share one bar coloured by the worst of them. Strings are built here: several times cheaper than
    calling template macros per bar.
    """
    span = max(1.0, until - since)
    min_width = 100.0 / columns
    # One route lookup per page, not per bar: the job-detail path up to its {lib}/{app}/{job_id} part.
    job_prefix = path_for(request, "job_detail", lib="l", app="a", job_id="j").removesuffix("l/a/j")
    list_path = path_for(request, "job_list")
    quoted: dict[tuple[str, str], str] = {}

    def job_href(j: dict[str, Any]) -> str:
        lib_app = (j["lib"], j["app"])
        prefix = quoted.get(lib_app)
        if prefix is None:
            prefix = quoted[lib_app] = f"{job_prefix}{quote(j['lib'], safe='')}/{quote(j['app'], safe='')}/"
        return prefix + quote(j["job_id"], safe="/")

    out = []
    for w in workers:
        name = w["worker"]
        lane = runs.get(name) or {"runs": [], "jobs": []}
        bars = []
        # Runs start when jobs started; the list filters by when jobs were first seen (queued), hence the minute.
        by_worker = f"{list_path}?worker={quote(name, safe='')}"

        for r in lane["runs"]:
            t0, t1 = r["t0"], r["t1"]
            job = r["job"]
            if job is not None:
                href = job_href(job)
                title = f"{job['task']} · {job['job_id']} · succeeded · {ms(job['duration_ms'])}"
            else:
                href = f"{by_worker}&since={int(t0) - 60}&until={int(t1) + 1}&state=succeeded"
                task = f" · {r['task']}" if r["task"] else ""
                title = f"{r['n']:,} succeeded{task} · {_clock(t0)}–{_clock(t1)} UTC"
            bars.append(_bar("succeeded", r["n"], href, title, t0, t1, since, span, min_width))
        groups: list[list[dict[str, Any]]] = []
        last_col = None
        for j in lane["jobs"]:
            col = int((max(j["started_at"], since) - since) * columns / span)
            if groups and col == last_col:
                groups[-1].append(j)
            else:
                groups.append([j])
            last_col = col
        for group in groups:
            first = group[0]
            end = max((j["finished_at"] if j["finished_at"] is not None else until) for j in group)
            if len(group) == 1:
                state = first["state"]
                took = "" if first["duration_ms"] is None else f" · {ms(first['duration_ms'])}"
                href = job_href(first)
                title = f"{first['task']} · {first['job_id']} · {state}{took}"
            else:
                state = max((j["state"] for j in group), key=lambda s: WORST.get(s, 0))
                counts: dict[str, int] = {}
                for j in group:
                    counts[j["state"]] = counts.get(j["state"], 0) + 1
                parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: -WORST.get(kv[0], 0)))
                href = f"{by_worker}&since={int(first['started_at']) - 60}&until={int(end) + 1}"
                title = f"{len(group)} jobs: {parts} · {_clock(first['started_at'])} UTC"
            bars.append(_bar(state, len(group), href, title, first["started_at"], end, since, span, min_width))
        out.append({"worker": w, "bars": bars, "jobs": sum(b["n"] for b in bars)})
    return out


def _lane_cache(request: Request) -> page_queries.SettledCache:
    """This app's cache of settled jobs for the swimlanes, made on first use."""
    cache = getattr(request.app.state, "lane_cache", None)
    if cache is None:
        cache = page_queries.SettledCache(ttl_s=60.0, max_entries=8)
        request.app.state.lane_cache = cache
    return cache


async def _page(request: Request, with_lanes: bool) -> Response:
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
    target = request.headers.get("hx-target") if is_htmx(request) else None
    with_lanes = with_lanes and target in (None, "lanes")
    lanes_only = target == "lanes"
    async with request.app.state.engine.connect() as conn:
        rows = await queries.list_workers(conn, now, settings.lost_after_s, lib=lib, app=app)
        if only:
            rows = [w for w in rows if w["worker"] == only]
        order = {"online": 0, "lost": 1, "offline": 2}
        rows.sort(key=lambda w: (order.get(w["state"], 3), w["lib"], w["app"], w["worker"]))
        shown = [w for w in rows if w["state"] != "offline" or (w.get("stopped_at") or 0) >= since][:MAX_LANES]
        runs = await page_queries.swimlanes(conn, [w["worker"] for w in shown], since, until, now=now,
                                            cache=_lane_cache(request)) if with_lanes else None
        lost = [w for w in rows if w["state"] == "lost"]
        lost_jobs = [] if lanes_only else await page_queries.lost_worker_jobs(conn, [w["worker"] for w in lost])
    counts = {s: sum(1 for w in rows if w["state"] == s) for s in ("online", "lost", "offline")}
    query = {k: v for k, v in (("lib", lib), ("app", app), ("worker", only), ("span", span_name)) if v}
    context = {
        "page": "workers",
        "workers": rows,
        "counts": counts,
        "shown": shown,
        "lanes": lanes(request, shown, runs, since, until) if runs is not None else None,
        "lanes_url": path_for(request, "worker_lanes") + "?" + urlencode(query),
        "lost": lost,
        "lost_jobs": lost_jobs,
        "span": span_name,
        "spans": list(SPANS),
        "since": since,
        "until": until,
        "params": query,
        "lost_after_s": settings.lost_after_s,
        "now": now,
        "live_topics": "workers,jobs",
    }
    return render(request, "pages/workers.html", context, blocks={"workers-main": "main", "lanes": "lanes"})


async def worker_list(request: Request) -> Response:
    """GET /workers: the table and lost workers' jobs; the swimlanes come from /workers/lanes.

    The timeline is the page's one expensive part, so htmx loads (and refreshes) it on its own;
    without JavaScript a link opens /workers/lanes, the same page with the timeline drawn in.
    """
    return await _page(request, with_lanes=False)


async def worker_lanes(request: Request) -> Response:
    """GET /workers/lanes: the swimlanes of what ran where over ``span`` (the whole page, timeline included)."""
    return await _page(request, with_lanes=True)
