"""Optional bearer-token check for the worker's HTTP pages (``[web] token``).

With a token configured, every path but ``/health`` and ``/`` answers 401 (JSON
body, ``WWW-Authenticate: Bearer``) unless the request carries
``Authorization: Bearer <token>``: ``/metrics``, ``/api/*``, ``/wallboard``, and
whatever else the server would answer (a page added later, a view Faust brings
along), since the check is a middleware in front of every route, not a decorator
each page must remember. ``/health`` stays open for liveness probes; ``/`` only
says ``{"status": "OK"}``.

A browser cannot add a header to a page it navigates to, so the wallboard also
accepts ``/wallboard?token=<token>`` once: the answer is a redirect to
``/wallboard`` setting an HttpOnly, SameSite=Strict cookie, which the page's own
``fetch("/api/wallboard")`` then sends back. The token leaves the address bar
(and the TV's history) at once.

Every comparison is constant-time (``hmac.compare_digest``) and no token,
right or wrong, is ever logged.
"""

from __future__ import annotations

import functools
import hmac
from typing import Any, Awaitable, Callable

COOKIE = "ccpulse_token"
REALM = "ccpulse"
PUBLIC_PATHS = frozenset({"/health", "/"})
# Pages that log in through ``?token=`` themselves (login_redirect checks the token).
LOGIN_PATHS = frozenset({"/wallboard"})

Handler = Callable[[Any, Any], Awaitable[Any]]


def _matches(candidate: str | None, token: str) -> bool:
    if not candidate:
        return False
    return hmac.compare_digest(candidate.encode("utf-8", "surrogateescape"), token.encode("utf-8"))


def presented_token(request: Any) -> tuple[str | None, str | None]:
    """(bearer token from the Authorization header, token from the cookie); None when absent."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    bearer = value.strip() if scheme.lower() == "bearer" else None
    cookie = request.cookies.get(COOKIE) if hasattr(request, "cookies") else None
    return bearer, cookie


def authorized(request: Any, token: str) -> bool:
    """True without a configured token, else when the header or the wallboard cookie matches."""
    if not token:
        return True
    bearer, cookie = presented_token(request)
    # Evaluate both so the time taken does not depend on which one was sent.
    by_header = _matches(bearer, token)
    by_cookie = _matches(cookie, token)
    return by_header or by_cookie


def refusal(request: Any) -> tuple[dict[str, str], dict[str, str]]:
    """The body and headers of a 401 for ``request``."""
    bearer, cookie = presented_token(request)
    presented = bearer is not None or cookie is not None
    error = "invalid_token" if presented else "missing_token"
    challenge = f'Bearer realm="{REALM}"' + (', error="invalid_token"' if presented else "")
    body = {"error": error,
            "detail": "this endpoint needs 'Authorization: Bearer <token>' ([web] token / CCPULSE_WEB_TOKEN)"}
    return body, {"WWW-Authenticate": challenge, "Cache-Control": "no-store"}


def unauthorized(web: Any, request: Any) -> Any:
    body, headers = refusal(request)
    return web.json(body, status=401, headers=headers)


def middleware(token: str) -> Callable[[Any, Any], Awaitable[Any]]:
    """An aiohttp middleware refusing every path but PUBLIC_PATHS without the token."""
    from aiohttp import web as aiohttp_web

    @aiohttp_web.middleware
    async def check(request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        if (not token or request.path in PUBLIC_PATHS or authorized(request, token)
                or (request.path in LOGIN_PATHS and "token" in request.query)):
            return await handler(request)
        body, headers = refusal(request)
        return aiohttp_web.json_response(body, status=401, headers=headers)
    return check


def guarded(token: str) -> Callable[[Handler], Handler]:
    """Wrap a Faust page handler ``(web, request)`` with the token check (a no-op without a token)."""
    def decorate(handler: Handler) -> Handler:
        if not token:
            return handler

        @functools.wraps(handler)
        async def check(web: Any, request: Any) -> Any:
            if not authorized(request, token):
                return unauthorized(web, request)
            return await handler(web, request)
        return check
    return decorate


def login_redirect(web: Any, request: Any, token: str, path: str) -> Any | None:
    """For ``path?token=...``: a 303 to ``path`` that stores the token in a cookie; None otherwise.

    A wrong token gets the usual 401, so guessing through the URL is no easier than through the header.
    """
    if not token or "token" not in request.query:
        return None
    if not _matches(request.query.get("token"), token):
        return unauthorized(web, request)
    secure = "; Secure" if request.secure else ""
    cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}"
    return web.bytes(b"", status=303, headers={"Location": path, "Set-Cookie": cookie,
                                               "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
