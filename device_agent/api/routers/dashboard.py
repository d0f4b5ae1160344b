"""``GET /dashboard``: one self-contained page (no CDN, no chart library: a small SVG
plotter of its own). The page holds no data; it asks for the token once, keeps it in the
browser's session storage, and reads the token-protected /v1 API."""
import os

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter(tags=["dashboard"])
STATIC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static")


@router.get("/dashboard", response_class=FileResponse, summary="the live dashboard page",
            responses={200: {"content": {"text/html": {}}}})
def dashboard() -> FileResponse:
    return FileResponse(os.path.join(STATIC, "dashboard.html"), media_type="text/html",
                        headers={"Cache-Control": "no-store",
                                 "Content-Security-Policy": "default-src 'self'; "
                                 "style-src 'self' 'unsafe-inline'; img-src 'self' data:"})


@router.get("/dashboard.js", response_class=FileResponse, include_in_schema=False)
def dashboard_script() -> FileResponse:
    return FileResponse(os.path.join(STATIC, "dashboard.js"),
                        media_type="application/javascript",
                        headers={"Cache-Control": "no-store"})
