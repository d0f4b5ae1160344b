"""RFC 7807 problem+json bodies carrying the agent's stable error ``code``."""
from fastapi.responses import JSONResponse


def problem(status: int, code: str, detail: object) -> JSONResponse:
    return JSONResponse({"type": "about:blank", "title": code.replace("_", " "), "status": status,
                         "code": code, "detail": detail}, status_code=status,
                        media_type="application/problem+json")
