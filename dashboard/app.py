"""Builds the Starlette app: wiring and lifespan only (routes live in dashboard/web)."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from .config import Settings
from .resources import static_dir
from .security import SecurityHeaders, TokenAuth
from .store.db import create_engine, migrate
from .web import api

__all__ = ["create_app"]


def _page_routes() -> list[BaseRoute]:
    """The HTML pages, when that part is installed (dashboard.web.pages)."""
    if importlib.util.find_spec("dashboard.web.pages") is None:
        return []
    from .web.pages import routes

    return list(routes)


def create_app(settings: Settings, *, run_migrations: bool = True) -> Starlette:
    """A new app for ``settings``; its lifespan opens the store and Redis and closes them."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        import redis.asyncio as aioredis

        engine = create_engine(settings.database_url)
        if run_migrations:
            await migrate(engine)
        app.state.engine = engine
        app.state.redis = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
        try:
            yield
        finally:
            await app.state.redis.aclose() if hasattr(app.state.redis, "aclose") else await app.state.redis.close()
            await engine.dispose()

    middleware = [Middleware(SecurityHeaders)]
    if settings.auth_token:
        middleware.append(Middleware(TokenAuth, token=settings.auth_token))
    routes: list[BaseRoute] = [
        *api.routes,
        *_page_routes(),
        Mount("/static", app=StaticFiles(directory=static_dir()), name="static"),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.settings = settings
    return app
