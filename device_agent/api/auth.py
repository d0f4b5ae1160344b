"""The API token: generated once into the data dir (mode 0600), compared in constant time."""
import hmac
import os
import secrets
from typing import Optional

from fastapi import Header, Request

from device_agent.errors import Unauthorized
from device_agent.store import atomic


def load_token(given: Optional[str], path: str) -> str:
    if given:
        return given
    if not os.path.exists(path):
        atomic.write_bytes(path, secrets.token_urlsafe(32).encode(), mode=0o600)
    with open(path) as handle:
        return handle.read().strip()


def require_token(request: Request, authorization: Optional[str] = Header(
        None, description="Bearer <token>; the token is in DATA_DIR/token")) -> None:
    expected = request.app.state.token.encode()
    given = (authorization or "").encode()
    if not given.startswith(b"Bearer ") or not hmac.compare_digest(given[7:], expected):
        raise Unauthorized("missing or wrong API token (Authorization: Bearer <token>)")
