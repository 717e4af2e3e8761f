"""Who may talk to the server.

Loopback bind (the default): no token, but requests must name a loopback ``Host`` (so a
web page cannot reach the server through DNS rebinding). Any other bind: every request
carries the access token, as ``Authorization: Bearer``, ``X-Frametuner-Token``, the
``frametuner_token`` cookie, or ``?token=`` (which then sets the cookie for the browser).
State-changing requests from another origin (``Origin: null`` included) are refused in both modes.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from .settings import is_loopback

TOKEN_COOKIE = "frametuner_token"
TOKEN_HEADER = "x-frametuner-token"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")

PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def generate_token() -> str:
    return secrets.token_urlsafe(24)


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")]
    return host_header.rsplit(":", 1)[0]


def supplied_token(request: Request) -> tuple[str | None, bool]:
    """(token, came from the query string)."""
    authorization = request.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip(), False
    for candidate in (request.headers.get(TOKEN_HEADER), request.cookies.get(TOKEN_COOKIE)):
        if candidate:
            return candidate, False
    query = request.query_params.get("token")
    return (query, True) if query else (None, False)


def same_origin(request: Request) -> bool:
    """Whether a state-changing request may come from where it says it comes from.

    No ``Origin`` (scripts, curl) is fine; ``Origin: null`` (sandboxed iframes, ``file:``
    pages, some redirects) and any other origin than the server's own are not, nor a
    browser's ``Sec-Fetch-Site`` saying the request crosses sites.
    """
    origin = request.headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin)
        if origin == "null" or parts.scheme not in ("http", "https") or parts.netloc != request.headers.get("host"):
            return False
    return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


def _refuse(request: Request, status: int, message: str) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"detail": message}, status_code=status)
    return PlainTextResponse(message, status_code=status)


async def guard(request: Request, call_next) -> Response:
    token = request.app.state.settings.token
    if request.method not in SAFE_METHODS and not same_origin(request):
        return _refuse(request, 403, "cross-origin request refused")
    from_query = False
    if token:
        given, from_query = supplied_token(request)
        if not given or not secrets.compare_digest(given.encode(), token.encode()):
            return _refuse(
                request, 401, "access token required: open the URL that `frametuner server` printed (it ends in ?token=...)"
            )
    elif not is_loopback(_host_name(request.headers.get("host", ""))):
        return _refuse(request, 403, "this server answers only to localhost / 127.0.0.1 (bind another host with a token)")
    response = await call_next(request)
    if from_query:
        response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Content-Security-Policy", PAGE_POLICY)
    return response
