"""The API token: generated once into the data dir (mode 0600), compared in constant time,
and checked from the request head alone, before any body byte is read."""
import hmac
import os
import secrets
from typing import Callable, Optional

from fastapi import Header, Request

from device_agent import atomic
from device_agent.api.problems import send_problem
from device_agent.errors import Unauthorized

UNAUTHORIZED = "missing or wrong API token (Authorization: Bearer <token>)"


def load_token(given: Optional[str], path: str) -> str:
    if given:
        return given
    if not os.path.exists(path):
        atomic.write_bytes(path, secrets.token_urlsafe(32).encode(), mode=0o600)
    with open(path) as handle:
        return handle.read().strip()


def token_matches(authorization: Optional[bytes], expected: str) -> bool:
    given = authorization or b""
    return given.startswith(b"Bearer ") and hmac.compare_digest(given[7:], expected.encode())


def require_token(request: Request, authorization: Optional[str] = Header(
        None, description="Bearer <token>; the token is in DATA_DIR/token")) -> None:
    """The route-level check (it also documents the header in the OpenAPI schema)."""
    if not token_matches((authorization or "").encode(), request.app.state.token):
        raise Unauthorized(UNAUTHORIZED)


class TokenGate(object):
    """Pure ASGI: a request to a guarded path without the right token is answered 401 from
    its head; the app, the body limit and the form parser never see it, and the connection
    is closed so its body is never read."""

    def __init__(self, app, token: Callable[[], str],
                 guarded: Callable[[str], bool]) -> None:
        self.app = app
        self.token = token
        self.guarded = guarded

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and self.guarded(scope["path"]):
            authorization = dict(scope.get("headers") or []).get(b"authorization")
            if not token_matches(authorization, self.token()):
                await send_problem(send, 401, Unauthorized.code, UNAUTHORIZED,
                                   [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)
