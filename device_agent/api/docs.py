"""The API's documentation pages, served offline, and the headers every response carries.

FastAPI's own ``/docs`` and ``/redoc`` load Swagger UI and ReDoc from a CDN: on a board with
no uplink they are blank pages, and elsewhere they run a third party's scripts in the
dashboard's origin. Here both pages load their scripts from the ``fastapi-offline`` wheel
(its ``static/`` folder; none of its code is imported), and a content security policy keeps
them from loading anything that is not the daemon's own. Without that wheel the pages say so
and point to ``/openapi.json``.
"""
import importlib.util
import os
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders

ASSETS_URL = "/docs-assets"
ASSETS_PACKAGE = "fastapi_offline"
# Swagger UI starts from an inline script and both UIs style inline; ReDoc draws its logos as
# data: images and may search in a blob: worker. Nothing may come from another origin.
DOCS_POLICY = ("default-src 'self'; script-src 'self' 'unsafe-inline'; "
               "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
               "worker-src 'self' blob:")


def assets_dir() -> Optional[str]:
    """The folder of Swagger UI's and ReDoc's files inside the installed wheel, or None."""
    spec = importlib.util.find_spec(ASSETS_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        static = os.path.join(folder, "static")
        if all(os.path.isfile(os.path.join(static, name)) for name in
               ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js")):
            return static
    return None


def add_docs(app: FastAPI) -> None:
    """``/docs`` and ``/redoc`` on ``app`` (made with ``docs_url=None, redoc_url=None``)."""
    folder = assets_dir()
    if folder is not None:
        app.mount(ASSETS_URL, StaticFiles(directory=folder), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        if folder is None:
            return _without_assets(request, "Swagger UI")
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(openapi_url=root + app.openapi_url,
                                   title=app.title + " - Swagger UI",
                                   swagger_js_url=root + ASSETS_URL + "/swagger-ui-bundle.js",
                                   swagger_css_url=root + ASSETS_URL + "/swagger-ui.css",
                                   swagger_favicon_url=root + ASSETS_URL + "/favicon.png")
        page.headers["Content-Security-Policy"] = DOCS_POLICY
        return page

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        if folder is None:
            return _without_assets(request, "ReDoc")
        root = request.scope.get("root_path", "")
        page = get_redoc_html(openapi_url=root + app.openapi_url, title=app.title + " - ReDoc",
                              redoc_js_url=root + ASSETS_URL + "/redoc.standalone.js",
                              redoc_favicon_url=root + ASSETS_URL + "/favicon.png",
                              with_google_fonts=False)
        page.headers["Content-Security-Policy"] = DOCS_POLICY
        return page


def _without_assets(request: Request, name: str) -> HTMLResponse:
    schema = request.scope.get("root_path", "") + "/openapi.json"
    return HTMLResponse(
        "<!doctype html><title>device-agent API</title><p>%s is not installed with this "
        "daemon (it comes with the <code>fastapi-offline</code> package). The API's schema is "
        "at <a href=\"%s\">%s</a>.</p>" % (name, schema, schema), status_code=404,
        headers={"Content-Security-Policy": "default-src 'none'"})


class SecurityHeaders(object):
    """No page of the daemon may be framed by another site (the dashboard keeps the token in
    its session storage: a framing page could make a user click in it), and no response is
    run as another type than the one it declares. Pure ASGI: streaming passes through."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", []))
                headers = MutableHeaders(scope=message)
                headers["X-Frame-Options"] = "DENY"
                headers["X-Content-Type-Options"] = "nosniff"
                policy = headers.get("Content-Security-Policy")
                headers["Content-Security-Policy"] = (
                    policy + "; " if policy else "") + "frame-ancestors 'none'"
            await send(message)

        await self.app(scope, receive, send_with_headers)
