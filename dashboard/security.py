"""Safe defaults: security headers on every response, and a token check when one is configured.

Both are pure ASGI middleware that only touch response headers, so SSE streams pass untouched.
"""

from __future__ import annotations

import hmac
from http.cookies import SimpleCookie

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
    ),
)

#: Paths reachable without the token: liveness probes and the login-free static files.
PUBLIC_PREFIXES = ("/healthz", "/static/")


class SecurityHeaders:
    """Adds the security headers to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class TokenAuth:
    """Requires ``Authorization: Bearer <token>`` (or the ``flowerbed_token`` cookie) when a token is set."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    def _allowed(self, scope: Scope) -> bool:
        path = scope.get("path", "")
        if path.startswith(PUBLIC_PREFIXES):
            return True
        headers: dict[bytes, bytes] = dict(scope.get("headers", []))
        auth = headers.get(b"authorization", b"")
        if auth.lower().startswith(b"bearer ") and hmac.compare_digest(auth[7:].strip(), self.token):
            return True
        cookie = headers.get(b"cookie")
        if cookie:
            jar = SimpleCookie()
            jar.load(cookie.decode("latin-1"))
            morsel = jar.get("flowerbed_token")
            if morsel is not None and hmac.compare_digest(morsel.value.encode(), self.token):
                return True
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        body = b'{"error": "authentication required: send Authorization: Bearer <token>"}'
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
