"""HTTP request latency per route template, into the metrics histogram (pure ASGI, so
streaming responses pass through untouched). Every label is drawn from a bounded set: a
known method or "other", a route template of the app or "other", a status code; made-up
methods or paths cannot grow ``/metrics``."""
import time
from typing import Set

MAX_ROUTE_LABELS = 100
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
OTHER = "other"


class RequestTiming(object):
    def __init__(self, app, histogram_for) -> None:
        self.app = app
        self.histogram_for = histogram_for  # called per request: the app's Metrics may change
        self.routes_seen: Set[str] = set()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def timed_send(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            histogram = self.histogram_for(scope)
            if histogram is not None:
                method = scope["method"] if scope["method"] in KNOWN_METHODS else OTHER
                histogram.labels(method, self._bounded(_route(scope)), str(status[0])).observe(
                    time.perf_counter() - started)

    def _bounded(self, route: str) -> str:
        """A safety net whatever the Starlette version puts in the scope: past
        MAX_ROUTE_LABELS distinct templates (the app has about 30), the rest are "other"."""
        if route not in self.routes_seen:
            if len(self.routes_seen) >= MAX_ROUTE_LABELS:
                return OTHER
            self.routes_seen.add(route)
        return route


def _route(scope) -> str:
    """The route's template (``/v1/jobs/{job_id}``), never the raw path: one label per
    route, whatever the clients send. Rebuilt from the path parameters, which every
    Starlette version leaves in the scope once a route matched; a path under a mount (the
    docs' assets) counts as the mount, which Starlette records as the root path."""
    if "endpoint" not in scope:
        return "unmatched"
    if scope.get("root_path"):  # served at the root: only a mount sets it
        return str(scope["root_path"])
    values = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    return "/".join("{%s}" % values[part] if part in values else part
                    for part in scope["path"].split("/"))
