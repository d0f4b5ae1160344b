"""Property-based fuzzing of the live daemon from its own OpenAPI schema (Schemathesis),
bounded: every operation gets a fixed number of generated requests, with a valid token.
No response may be a 5xx, and every response must match the schema: a documented status
code, the documented content type, a body that validates."""
import os
import subprocess
import sys
import time

import pytest
from test_api import call, free_port

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import checks  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "fuzz-token"
EXAMPLES = int(os.environ.get("DEVICE_AGENT_FUZZ_EXAMPLES", "30"))
CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("fuzz"))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "device_agent", "serve", "--data-dir", data_dir, "--port",
         str(port), "--token", TOKEN, "--worker-device", "cpu", "--worker-weights", "random"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, DEVICE_AGENT_MAX_UPLOAD_MB="2",
                           DEVICE_AGENT_TELEMETRY_INTERVAL_S="0.2"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, universal_newlines=True)
    base = "http://127.0.0.1:%d" % port
    deadline = time.time() + 120
    while True:
        try:
            if call(base, "GET", "/readyz", token=None)[0] == 200:
                break
        except OSError:
            pass
        assert time.time() < deadline, "the daemon did not become ready"
        time.sleep(0.3)
    yield base
    proc.terminate()
    _, stderr = proc.communicate(timeout=60)
    assert "Traceback" not in stderr, stderr[-3000:]  # no unhandled error in the server


def _operations(base):
    schema = schemathesis.openapi.from_url(base + "/openapi.json")
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path != "/v1/telemetry/stream":  # never ends by design (own tests)
            yield operation


def test_no_server_errors_and_responses_match_the_schema(fuzz_base):
    tried = []
    for operation in _operations(fuzz_base):
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            case.call_and_validate(base_url=fuzz_base,
                                   headers={"Authorization": "Bearer " + TOKEN},
                                   checks=CHECKS, timeout=60)

        fuzz()  # raises with the failing request on the first violation
        tried.append("%s %s" % (operation.method.upper(), operation.path))
    assert len(tried) >= 17, tried  # every operation of the schema was fuzzed
