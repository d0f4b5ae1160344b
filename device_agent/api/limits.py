"""Request bodies are capped as they stream in, before they are buffered whole: a declared
Content-Length over the cap at once, a chunked body as soon as its bytes pass it (pure ASGI,
so it sees the bytes before any form parsing). Uploads (multipart) may reach the upload limit;
every other body (JSON) is small. Multipart files spool inside the data dir, never the
system temp dir (a tmpfs on many boards, outside the data dir's quota and cleanup)."""
import contextvars
import os
import tempfile
from typing import Callable, Optional

import starlette.formparsers

from device_agent.api.problems import send_problem

SPOOL_DIR = contextvars.ContextVar("SPOOL_DIR", default=None)  # type: contextvars.ContextVar


class DataDirSpool(tempfile.SpooledTemporaryFile):
    """Starlette's multipart spool file, put in the serving app's spool dir."""

    def __init__(self, *args, **kwargs) -> None:
        if kwargs.get("dir") is None:
            kwargs["dir"] = SPOOL_DIR.get()
        super().__init__(*args, **kwargs)


# Starlette names the class at module level in every version we support (0.44 on Python 3.8
# and newer): one assignment reroutes every multipart spool of this process.
starlette.formparsers.SpooledTemporaryFile = DataDirSpool  # type: ignore[misc]


def is_upload(scope) -> bool:
    content_type = dict(scope.get("headers") or []).get(b"content-type", b"")
    return content_type.split(b";")[0].strip().lower() == b"multipart/form-data"


class BodyLimit(object):
    def __init__(self, app, limit_bytes: Callable[[object], int],
                 spool_dir: Optional[str] = None) -> None:
        self.app = app
        self.limit_bytes = limit_bytes  # called with the scope: uploads and JSON differ
        self.spool_dir = spool_dir

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.spool_dir is not None:
            os.makedirs(self.spool_dir, mode=0o700, exist_ok=True)
            SPOOL_DIR.set(self.spool_dir)
        limit = self.limit_bytes(scope)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _refuse(send, int(declared), limit)
            return
        state = {"received": 0, "refused": False, "started": False}

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["refused"] = True
                    return {"type": "http.disconnect"}  # the app stops reading here
            return message

        async def guarded_send(message) -> None:
            if state["refused"]:  # whatever the app answers, the answer is 413
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await _refuse(send, state["received"], limit)
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:  # the app's reaction to the cut-off body (ClientDisconnect, 400)
            if not state["refused"]:
                raise
        if state["refused"] and not state["started"]:
            await _refuse(send, state["received"], limit)


async def _refuse(send, size: int, limit: int) -> None:
    await send_problem(send, 413, "payload_too_large",
                       "request body of %s%d bytes is over the %d-byte limit"
                       % ("at least " if size > 0 else "", size, limit))
