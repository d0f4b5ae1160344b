"""The API as a whole, against the system router and the app's route table: the token on
every /v1 route, the generated token file, the OpenAPI schema's field docs, and an API
process that never imports torch."""
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from api_calls import ROOT, TOKEN, call
from live_daemon import free_port

pytest.importorskip("fastapi")

BAD_AUTHORIZATIONS = [None, "", "Bearer", "Bearer ", "Bearer wrong", "Bearer " + TOKEN + "x",
                      "Bearer " + TOKEN[:-1], "Bearer  " + TOKEN, TOKEN, "Token " + TOKEN,
                      "Basic dXNlcjpwYXNz", "Bearer " + TOKEN.upper(), "Bearer " + "A" * 5000]


def _raw_status(base, method, path, authorization):
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    request = urllib.request.Request(base + path, data=b"{}" if method != "GET" else None,
                                     method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def test_every_v1_route_refuses_missing_and_wrong_tokens(server):
    """The auth matrix, generated from the app's own route table (new routes are covered)."""
    from device_agent.api.app import create_app
    from device_agent.api.settings import Settings

    base, data_dir = server
    app = create_app(Settings(data_dir=data_dir, token="unused"))
    routes = [(method.upper(), path) for path, operations in app.openapi()["paths"].items()
              if path.startswith("/v1") or path == "/metrics" for method in operations]
    assert len(routes) >= 15 and ("GET", "/metrics") in routes
    for method, path in routes:
        concrete = path.replace("{domain}", "colours").replace("{job_id}", "nope")
        for authorization in BAD_AUTHORIZATIONS:
            status, body = _raw_status(base, method, concrete, authorization)
            assert status == 401, (method, path, authorization, status)
            assert body["code"] == "unauthorized" and body["detail"]
    assert call(base, "GET", "/healthz", token=None)[0] == 200
    assert _raw_status(base, "GET", "/v1/domains", "Bearer " + TOKEN)[0] == 200


def test_a_generated_token_file_is_private(tmp_path):
    from device_agent.api.app import create_app
    from device_agent.api.settings import Settings

    app = create_app(Settings(data_dir=str(tmp_path), token=None))
    path = tmp_path / "token"
    assert (path.stat().st_mode & 0o777) == 0o600
    assert len(app.state.token) >= 32 and path.read_text().strip() == app.state.token
    again = create_app(Settings(data_dir=str(tmp_path), token=None))
    assert again.state.token == app.state.token  # kept across restarts


def test_the_openapi_schema_documents_every_field(tmp_path):
    from device_agent.api.app import create_app
    from device_agent.api.settings import Settings

    schema = create_app(Settings(data_dir=str(tmp_path), token="unused")).openapi()
    models = schema["components"]["schemas"]
    for name in ("JobRequest", "Job", "JobProgress", "JobMemory", "JobLatency", "EpochMetrics",
                 "DomainStatus", "VersionInfo", "DatasetSummary", "PredictResponse", "Health"):
        undocumented = [field for field, spec in models[name]["properties"].items()
                        if not spec.get("description")]
        assert undocumented == [], (name, undocumented)


def test_the_api_process_never_imports_torch(tmp_path):
    code = """
import sys, threading, time, urllib.request, uvicorn
from device_agent.api.app import create_app
from device_agent.api.settings import Settings
app = create_app(Settings(data_dir=sys.argv[1], token="t", worker_weights="random",
                          worker_device="cpu", port=int(sys.argv[2])))
server = uvicorn.Server(uvicorn.Config(app, port=int(sys.argv[2]), log_level="warning"))
thread = threading.Thread(target=server.run); thread.start()
for _ in range(600):
    try:
        if urllib.request.urlopen("http://127.0.0.1:%s/readyz" % sys.argv[2]).status == 200:
            break
    except Exception:
        time.sleep(0.2)
request = urllib.request.Request("http://127.0.0.1:%s/v1/domains" % sys.argv[2],
                                 headers={"Authorization": "Bearer t"})
assert urllib.request.urlopen(request).status == 200
print("torch" in sys.modules)
server.should_exit = True; thread.join()
"""
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(free_port())],
                         stdout=subprocess.PIPE, universal_newlines=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_the_probes_never_wait_for_the_thread_pool():
    """/healthz and /readyz and every dependency they take are ``async``: FastAPI runs a plain
    ``def`` in its thread pool, which blocking routes (a predict waiting on the worker) can
    fill, and a probe must still be answered then."""
    import inspect

    from device_agent.api.routers import system

    def calls(dependant):
        yield dependant.call
        for dependency in dependant.dependencies:
            yield from calls(dependency)

    probes = {route.path: list(calls(route.dependant)) for route in system.router.routes}
    assert sorted(probes) == ["/healthz", "/readyz"]
    for path, functions in probes.items():
        assert len(functions) >= 3, path  # the route and the dependencies it takes
        sync = [f.__name__ for f in functions if not inspect.iscoroutinefunction(f)]
        assert sync == [], path
