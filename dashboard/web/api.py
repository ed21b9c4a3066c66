"""The JSON API (DESIGN.md): stable shapes that users' scripts and alerting rely on."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..store import queries
from . import serialize
from .params import BadRequest, decode_cursor, encode_cursor, job_filters, parse_limit
from .status import read_status

__all__ = ["routes"]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def api_jobs(request: Request) -> JSONResponse:
    """GET /api/jobs: filtered, newest first, keyset-paged."""
    try:
        filters = job_filters(request.query_params)
        limit = parse_limit(request.query_params.get("limit"))
        before = decode_cursor(request.query_params.get("cursor"))
    except BadRequest as exc:
        return _error(400, str(exc))
    async with request.app.state.engine.connect() as conn:
        rows, next_id = await queries.list_jobs(conn, filters, limit, before)
    return JSONResponse({"items": [serialize.job_summary(r) for r in rows], "next_cursor": encode_cursor(next_id)})


async def api_job(request: Request) -> JSONResponse:
    """GET /api/jobs/{lib}/{app}/{job_id}: the job with attempts and events."""
    p = request.path_params
    async with request.app.state.engine.connect() as conn:
        job = await queries.get_job(conn, p["lib"], p["app"], p["job_id"])
    if job is None:
        return _error(404, f"no job {p['job_id']!r} for {p['lib']}/{p['app']}")
    return JSONResponse(serialize.job_detail(job))


async def api_workers(request: Request) -> JSONResponse:
    """GET /api/workers: every worker with its state (online, offline, lost)."""
    settings = request.app.state.settings
    async with request.app.state.engine.connect() as conn:
        rows = await queries.list_workers(
            conn, time.time(), settings.lost_after_s,
            lib=request.query_params.get("lib") or None, app=request.query_params.get("app") or None,
        )
    return JSONResponse({"items": [serialize.worker(r) for r in rows]})


async def api_status(request: Request) -> JSONResponse:
    """GET /api/status: ingest lag, events ingested, quarantined."""
    return JSONResponse(await read_status(request.app))


async def healthz(request: Request) -> JSONResponse:
    """GET /healthz: the store answers (and Redis, reported but not required for 200)."""
    body: dict[str, Any] = {"ok": True}
    try:
        async with request.app.state.engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
        body["database"] = "ok"
    except Exception as exc:
        body.update(ok=False, database=f"{type(exc).__name__}: {exc}")
    try:
        await request.app.state.redis.ping()
        body["redis"] = "ok"
    except Exception as exc:
        body["redis"] = f"{type(exc).__name__}: {exc}"
    return JSONResponse(body, status_code=200 if body["ok"] else 503)


routes = [
    Route("/api/jobs", api_jobs, name="api_jobs"),
    Route("/api/jobs/{lib}/{app}/{job_id:path}", api_job, name="api_job"),
    Route("/api/workers", api_workers, name="api_workers"),
    Route("/api/status", api_status, name="api_status"),
    Route("/healthz", healthz, name="healthz"),
]
