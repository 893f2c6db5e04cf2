"""API key authentication for every route except the health probe.

A client sends its key as `Authorization: Bearer KEY` or `X-API-Key: KEY`. A browser cannot
add headers to the playground's own requests, so opening a playground page with
`?api_key=KEY` sets the key in an HttpOnly, same-site cookie that the page's later requests
carry, and redirects to the page without the query. Keys are compared in constant time and
never logged.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response

logger = logging.getLogger(__name__)

API_KEY_COOKIE = "chainserve_api_key"


class APIKeyMiddleware:
    """ASGI middleware that rejects requests without a valid API key with 401."""

    def __init__(self, app: ASGIApp, *, keys: Iterable[str], open_paths: Iterable[str]) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys if key]
        if not self.keys:
            raise ValueError("APIKeyMiddleware needs at least one non-empty key")
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            # A CORS preflight carries no credentials, and the CORS middleware responds to it.
            await self.app(scope, receive, send)
            return

        request = Request(scope)
        key, from_query = self._key_of(request)
        if key is None or not self._is_valid(key):
            reason = "missing" if key is None else "invalid"
            logger.warning("rejected %s %s: API key %s", scope["method"], scope["path"], reason)
            response = error_response(
                request,
                401,
                "unauthorized",
                f"the API key is {reason}; send it as 'Authorization: Bearer KEY' or "
                "'X-API-Key: KEY', or open a playground with ?api_key=KEY",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return

        if from_query:
            # Redirect to the same page without the query: the key leaves the address bar,
            # and the playground derives its API address from the page's URL, which a query
            # string would break.
            redirect = RedirectResponse(request.url.path, status_code=303)
            await redirect(scope, receive, _with_cookie(send, key))
            return

        await self.app(scope, receive, send)

    def _key_of(self, request: Request) -> tuple[str | None, bool]:
        authorization = request.headers.get("authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip(), False

        header_key = request.headers.get("x-api-key")
        if header_key:
            return header_key.strip(), False

        cookie_key = request.cookies.get(API_KEY_COOKIE)
        if cookie_key:
            return cookie_key, False

        if "/playground" in request.url.path:
            query_key = parse_qs(request.url.query).get("api_key")
            if query_key:
                return query_key[0], True

        return None, False

    def _is_valid(self, key: str) -> bool:
        candidate = key.encode()
        # Compare with every key, without stopping early, so timing reveals nothing.
        matches = [hmac.compare_digest(candidate, valid) for valid in self.keys]
        return any(matches)


def _with_cookie(send: Send, key: str) -> Send:
    cookie: SimpleCookie = SimpleCookie()
    cookie[API_KEY_COOKIE] = key
    cookie[API_KEY_COOKIE]["path"] = "/"
    cookie[API_KEY_COOKIE]["httponly"] = True
    cookie[API_KEY_COOKIE]["samesite"] = "Strict"
    header = cookie.output(header="").strip().encode("latin-1")

    async def send_with_cookie(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", []), (b"set-cookie", header)]
            message = {**message, "headers": headers}
        await send(message)

    return send_with_cookie
