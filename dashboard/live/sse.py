"""GET /live?topics=jobs,workers[&lib=&app=&job_id=]: the page's one SSE connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from .hub import TOPICS, hub_for, job_topic

__all__ = ["live"]


async def live(request: Request) -> Response:
    """Stream named events (``jobs``, ``workers``, ``status``, ``job`` …); htmx re-fetches on each."""
    params = request.query_params
    topics = {t for t in (params.get("topics") or "").split(",") if t in TOPICS}
    if params.get("job_id") and params.get("lib") and params.get("app"):
        topics.add(job_topic(params["lib"], params["app"], params["job_id"]))
    if not topics:
        return PlainTextResponse(f"topics: name one or more of {', '.join(TOPICS)}", status_code=400)
    hub = hub_for(request.app)
    sub = hub.subscribe(topics)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        try:
            # Say hello once the subscription is up, so nothing published after the hello is missed.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(hub.ready.wait(), timeout=5.0)
            yield ServerSentEvent(event="hello", data="live", retry=3000)
            while True:
                name = await sub.next()
                yield ServerSentEvent(event=name, data=name)
        finally:
            await hub.unsubscribe(sub)

    return EventSourceResponse(stream(), ping=15, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
