"""The status page (/status): ingest lag, events per second, what was quarantined and why."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ...live.hub import hub_for
from ..status import read_status
from .render import render

__all__ = ["status"]


def _rate(request: Request, ingested: int) -> float | None:
    """Events/s from the counter's growth between status reads (kept per process, last 60 s)."""
    samples: deque[tuple[float, int]] | None = getattr(request.app.state, "ingest_samples", None)
    if samples is None:
        samples = deque(maxlen=120)
        request.app.state.ingest_samples = samples
    now = time.monotonic()
    samples.append((now, ingested))
    while samples and now - samples[0][0] > 60:
        samples.popleft()
    first = samples[0]
    if now - first[0] < 1.0:
        return None
    return max(0.0, (ingested - first[1]) / (now - first[0]))


async def status(request: Request) -> Response:
    """GET /status: is ingest keeping up, and what did it refuse?"""
    data: dict[str, Any] = await read_status(request.app, quarantine_limit=50)
    hub_rate = hub_for(request.app).events_per_second()
    sampled = _rate(request, int(data.get("events_ingested") or 0))
    context = {
        "page": "status",
        "status": data,
        "events_per_s": hub_rate if hub_rate is not None else sampled,
        "settings": request.app.state.settings,
        "live_topics": "status",
    }
    return render(request, "pages/status.html", context, blocks={"status-main": "main"})
