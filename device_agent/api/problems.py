"""RFC 7807 problem+json bodies carrying the agent's stable error ``code``."""
import json
from typing import List, Tuple

from fastapi.responses import JSONResponse

PROBLEM = "application/problem+json"


def problem_body(status: int, code: str, detail: object) -> dict:
    return {"type": "about:blank", "title": code.replace("_", " "), "status": status,
            "code": code, "detail": detail}


def problem(status: int, code: str, detail: object) -> JSONResponse:
    return JSONResponse(problem_body(status, code, detail), status_code=status,
                        media_type=PROBLEM)


async def send_problem(send, status: int, code: str, detail: str,
                       headers: List[Tuple[bytes, bytes]] = ()) -> None:
    """Answer from pure ASGI middleware, before the app (and before any body byte is read);
    the connection is closed after it, so an unread body is never parsed."""
    body = json.dumps(problem_body(status, code, detail)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", PROBLEM.encode()),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")] + list(headers)})
    await send({"type": "http.response.body", "body": body})
