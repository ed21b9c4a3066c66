"""The jobs list (/jobs): filters in the URL, search qualifiers, keyset pages, live rows at the top."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response

from ...store import queries
from ...store.queries import JOB_STATES, LIST_COLUMNS, JobFilters
from ...store.tables import jobs, rollup_hour
from ..params import BadRequest, decode_cursor, encode_cursor, iso, job_filters, parse_limit
from .render import render

__all__ = ["job_list", "RANGES", "FILTER_KEYS"]

#: The time-range menu: name → seconds back from now.
RANGES: dict[str, int] = {"15m": 900, "1h": 3600, "24h": 86400, "7d": 604800}
#: Query parameters that make up a list's filters (kept in every link and in the URL).
FILTER_KEYS: tuple[str, ...] = ("lib", "app", "task", "queue", "state", "worker", "range", "since", "until",
                                "q", "correlation_id")
#: A live refresh re-reads rows of the page whose state changed, when the page's id span is this small.
MAX_REFRESH_SPAN = 20_000


def _filter_params(request: Request) -> dict[str, str]:
    params = request.query_params
    return {k: params[k].strip() for k in FILTER_KEYS if params.get(k, "").strip()}


def _filters(request: Request, now: float) -> JobFilters:
    params = dict(request.query_params)
    rng = params.get("range")
    if rng and not params.get("since"):
        if rng not in RANGES:
            raise BadRequest(f"range: one of {', '.join(RANGES)}")
        params["since"] = str(now - RANGES[rng])
    return job_filters(params)


def _api_query(params: dict[str, str], filters: JobFilters, cursor: str | None) -> dict[str, str]:
    """The JSON twin's query: the same filters, with a relative range turned into ``since``."""
    out = {k: v for k, v in params.items() if k != "range"}
    if "range" in params and filters.since is not None and "since" not in params:
        out["since"] = iso(filters.since) or ""
    if cursor:
        out["cursor"] = cursor
    return out


#: The filter menus' values are read at most this often per process (seconds).
OPTIONS_TTL_S = 60.0


async def _cached_options(request: Request, conn: AsyncConnection, now: float) -> dict[str, list[str]]:
    """The filter menus' values, re-read once a minute (a new task shows up in the menu within a minute)."""
    cached = getattr(request.app.state, "job_filter_options", None)
    if cached is None or now - cached[0] > OPTIONS_TTL_S:
        cached = (now, await _options(conn, now))
        request.app.state.job_filter_options = cached
    return cached[1]


async def _options(conn: AsyncConnection, now: float) -> dict[str, list[str]]:
    """Libraries, apps and tasks seen in the last week (from the hour rollup, not the jobs table)."""
    stmt = select(rollup_hour.c.lib, rollup_hour.c.app, rollup_hour.c.task).where(
        rollup_hour.c.outcome == "wait", rollup_hour.c.hour >= int(now - 7 * 86400) // 3600 * 3600).distinct()
    libs: set[str] = set()
    apps: set[str] = set()
    tasks: set[str] = set()
    for lib, app, task in await conn.execute(stmt):
        libs.add(lib)
        apps.add(app)
        tasks.add(task)
    return {"libs": sorted(libs), "apps": sorted(apps), "tasks": sorted(tasks)[:500]}


async def _changed_rows(conn: AsyncConnection, filters: JobFilters, low: int, high: int,
                        changed_since: float) -> list[dict[str, Any]]:
    """Rows of the page on screen (ids low..high) that changed since the last refresh."""
    if high - low > MAX_REFRESH_SPAN or high < low:
        return []
    conds = [*filters.conditions(), jobs.c.id >= low, jobs.c.id <= high, jobs.c.updated_at >= changed_since]
    stmt = select(*LIST_COLUMNS).where(and_(*conds)).order_by(jobs.c.id.desc()).limit(100)
    return [dict(r._mapping) for r in await conn.execute(stmt)]


async def _live_rows(request: Request, filters: JobFilters, limit: int, now: float) -> Response:
    """The rows newer than ``after`` (prepended by htmx) and updates to rows already shown."""
    params = request.query_params
    try:
        after = int(params.get("after") or 0)
        low = int(params.get("low") or after)
        changed_since = float(params.get("changed") or now)
    except ValueError:
        raise BadRequest("after, low, changed: numbers from the page's live marker") from None
    async with request.app.state.engine.connect() as conn:
        conds = [*filters.conditions(), jobs.c.id > after]
        stmt = select(*LIST_COLUMNS).where(and_(*conds)).order_by(jobs.c.id.desc()).limit(limit + 1)
        fresh = [dict(r._mapping) for r in await conn.execute(stmt)]
        changed = await _changed_rows(conn, filters, low, after, changed_since - 2.0)
    more = len(fresh) > limit
    fresh = fresh[:limit]
    context = {
        "page": "jobs", "fresh": fresh, "changed": changed, "more": more,
        "live": {"after": fresh[0]["id"] if fresh else after, "low": low, "changed": now},
        "params": _filter_params(request), "limit": limit,
    }
    return render(request, "pages/jobs.html", context, block="live_rows")


async def job_list(request: Request) -> Response:
    """GET /jobs: newest first; ``cursor`` pages back, ``after`` (htmx) returns only newer rows."""
    now = time.time()
    try:
        filters = _filters(request, now)
        limit = parse_limit(request.query_params.get("limit"))
        before = decode_cursor(request.query_params.get("cursor"))
        if request.query_params.get("after") is not None:
            return await _live_rows(request, filters, limit, now)
    except BadRequest as exc:
        return render(request, "pages/error.html", {"page": "jobs", "message": str(exc)}, status_code=400)
    async with request.app.state.engine.connect() as conn:
        rows, next_id = await queries.list_jobs(conn, filters, limit, before)
        options = await _cached_options(request, conn, now)
    params = _filter_params(request)
    context = {
        "page": "jobs",
        "rows": rows,
        "params": params,
        "filters": filters,
        "options": options,
        "states": JOB_STATES,
        "ranges": list(RANGES),
        "limit": limit,
        "cursor": request.query_params.get("cursor"),
        "next_cursor": encode_cursor(next_id),
        # Live rows only on the first page: a reader paging back is reading history.
        "live": {"after": rows[0]["id"] if rows else 0, "low": rows[-1]["id"] if rows else 0, "changed": now}
        if before is None else None,
        "live_topics": "jobs",
        "api_query": _api_query(params, filters, request.query_params.get("cursor")),
    }
    return render(request, "pages/jobs.html", context, blocks={"job-results": "results"})
