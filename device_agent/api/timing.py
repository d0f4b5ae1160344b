"""HTTP request latency per route template, into the metrics histogram (pure ASGI, so
streaming responses pass through untouched)."""
import time


class RequestTiming(object):
    def __init__(self, app, histogram_for) -> None:
        self.app = app
        self.histogram_for = histogram_for  # called per request: the app's Metrics may change

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
                histogram.labels(scope["method"], _route(scope), str(status[0])).observe(
                    time.perf_counter() - started)


def _route(scope) -> str:
    """The route's template (``/v1/jobs/{job_id}``), never the raw path: one label per
    route, whatever the clients send. Rebuilt from the path parameters, which every
    Starlette version leaves in the scope once a route matched."""
    if "endpoint" not in scope:
        return "unmatched"
    values = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    return "/".join("{%s}" % values[part] if part in values else part
                    for part in scope["path"].split("/"))
