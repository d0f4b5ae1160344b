"""Request bodies over the upload limit are refused as they stream in, before they are
buffered whole: a declared Content-Length over the limit at once, a chunked body as soon as
its bytes pass the limit (pure ASGI, so it sees the bytes before any form parsing)."""
import json
from typing import Callable

PROBLEM = "application/problem+json"


class BodyLimit(object):
    def __init__(self, app, limit_bytes: Callable[[], int]) -> None:
        self.app = app
        self.limit_bytes = limit_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_bytes()
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
    body = json.dumps({"type": "about:blank", "title": "payload too large", "status": 413,
                       "code": "payload_too_large",
                       "detail": "request body of %s%d bytes is over the %d-byte limit"
                                 % ("at least " if size > 0 else "", size, limit)}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", PROBLEM.encode()),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
