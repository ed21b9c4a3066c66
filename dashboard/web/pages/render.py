"""Rendering for the HTML pages: one Jinja environment per app, whole pages or one block for htmx.

An htmx request (``HX-Request``) for a page's URL gets only the block its target names, rendered
from the same template (jinja2-fragments), so each piece of markup exists once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from jinja2_fragments import render_block
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.types import Receive, Scope, Send

from ...resources import templates_dir

__all__ = ["PageResponse", "render", "environment", "is_htmx", "ms", "path_for"]


class PageResponse(HTMLResponse):
    """An HTML response that remembers its template, block and context (tests read them)."""

    def __init__(self, content: str, template: str, context: dict[str, Any], block: str | None,
                 status_code: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self.template = template
        self.context = context
        self.block = block
        super().__init__(content, status_code, headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if "http.response.debug" in scope.get("extensions", {}):
            await send({"type": "http.response.debug", "info": {"template": self.template, "context": self.context}})
        await super().__call__(scope, receive, send)


def _ms(value: float | None) -> str:
    """A duration in ms, short and readable: 850 µs, 12 ms, 1.4 s, 3 m 12 s, 2 h 5 m."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    v = float(value)
    if v < 1:
        return f"{v * 1000:.0f} µs"
    if v < 10:
        return f"{v:.1f} ms"
    if v < 1000:
        return f"{v:.0f} ms"
    s = v / 1000
    if s < 10:
        return f"{s:.2f} s"
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(s), 60)
    if m < 60:
        return f"{m} m {s} s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h} h {m} m"
    return f"{h // 24} d {h % 24} h"


def ms(value: float | None) -> str:
    """A duration in ms as the pages write it (the ``ms`` template filter)."""
    return _ms(value)


def _num(value: float | int | None) -> str:
    if value is None:
        return "—"
    v = float(value)
    if abs(v) >= 10_000_000:
        return f"{v / 1e6:.1f}M"
    if abs(v) >= 1_000_000:
        return f"{v / 1e6:.2f}M"
    if abs(v) >= 100_000:
        return f"{v / 1e3:.0f}k"
    if v == int(v):
        return f"{int(v):,}"
    return f"{v:,.1f}"


def _pct(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "—"
    return f"{value * 100:.{digits}f}%"


def _bytes(value: int | None) -> str:
    if value is None:
        return "—"
    v = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return str(value)


def _utc(ts: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, timezone.utc).strftime(fmt)


def _iso(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _pretty_json(value: str | None) -> str:
    """Indent a JSON preview for reading; anything that is not JSON is shown as it came."""
    if not value:
        return ""
    try:
        return json.dumps(json.loads(value), indent=2, ensure_ascii=False, sort_keys=False)
    except (ValueError, TypeError):
        return value


def _routes_by_name(app: Starlette) -> dict[str, Any]:
    """Named routes of the app, so a page with hundreds of links does not walk the route list per link."""
    table = getattr(app.state, "routes_by_name", None)
    if table is None:
        table = {getattr(r, "name", None): r for r in app.routes if getattr(r, "name", None)}
        app.state.routes_by_name = table
    return table


def path_for(request: Request, name: str, /, **path_params: Any) -> str:
    """A route's path under the app's root path, its parameters percent-encoded (job ids hold anything)."""
    quoted = {k: quote(str(v), safe="/" if k in ("job_id", "path") else "") for k, v in path_params.items()}
    route = _routes_by_name(request.app).get(name)
    path = route.url_path_for(name, **quoted) if route is not None else request.app.url_path_for(name, **quoted)
    return request.scope.get("root_path", "") + str(path)


@jinja2.pass_context
def _url(context: Mapping[str, Any], name: str, /, **path_params: Any) -> str:
    """A route's path (not an absolute URL), so the app works under a prefix and behind proxies."""
    request: Request = context["request"]
    query = path_params.pop("_query", None)
    url = path_for(request, name, **path_params)
    if query:
        items = [(k, v) for k, v in (query.items() if isinstance(query, Mapping) else query) if v not in (None, "")]
        if items:
            url += "?" + urlencode(items)
    return url


@jinja2.pass_context
def _has_route(context: Mapping[str, Any], name: str) -> bool:
    request: Request = context["request"]
    try:
        request.app.url_path_for(name)
    except Exception:
        return False
    return True


def environment(app: Starlette) -> jinja2.Environment:
    """This app's Jinja environment (autoescape on, the page helpers as filters), made on first use."""
    env = getattr(app.state, "jinja_env", None)
    if env is None:
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates_dir())),
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters.update(ms=_ms, num=_num, pct=_pct, bytes=_bytes, utc=_utc, iso=_iso, pretty_json=_pretty_json)
        env.globals.update(url=_url, has_route=_has_route)
        app.state.jinja_env = env
    return env


def is_htmx(request: Request) -> bool:
    """True for an htmx request that wants a fragment (a history restore wants the whole page)."""
    return request.headers.get("hx-request") == "true" and request.headers.get("hx-history-restore-request") != "true"


def render(request: Request, template: str, context: dict[str, Any], *, block: str | None = None,
           blocks: Mapping[str, str] | None = None, status_code: int = 200) -> PageResponse:
    """The block ``block`` if given; for htmx, the block the request's ``HX-Target`` names; else the whole page."""
    env = environment(request.app)
    context = {"request": request, **context}
    chosen = block
    if chosen is None and is_htmx(request):
        chosen = (blocks or {}).get(request.headers.get("hx-target") or "")
    if chosen:
        content = render_block(env, template, chosen, context)
    else:
        content = env.get_template(template).render(context)
    headers = {"Vary": "HX-Request", "Cache-Control": "no-cache"}
    return PageResponse(content, template, context, chosen, status_code, headers)
