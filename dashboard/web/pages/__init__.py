"""The HTML pages (one module per page type) and their routes; each page has a JSON twin under /api/."""

from __future__ import annotations

from starlette.routing import Route

from ...live.sse import live
from .job_detail import job_detail
from .jobs import job_list
from .overview import api_stats, overview
from .status import status
from .workers import worker_lanes, worker_list

__all__ = ["routes"]

routes = [
    Route("/", overview, name="overview"),
    Route("/jobs", job_list, name="job_list"),
    Route("/jobs/{lib}/{app}/{job_id:path}", job_detail, name="job_detail"),
    Route("/workers", worker_list, name="worker_list"),
    Route("/workers/lanes", worker_lanes, name="worker_lanes"),
    Route("/status", status, name="status"),
    Route("/api/stats", api_stats, name="api_stats"),
    Route("/live", live, name="live"),
]
