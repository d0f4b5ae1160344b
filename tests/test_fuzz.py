"""Property-based fuzzing of the live daemon from its own OpenAPI schema (Schemathesis),
bounded: every operation gets a fixed number of generated requests, with a valid token.
No response may be a 5xx, and every response must match the schema: a documented status
code, the documented content type, a body that validates."""
import os

import live_daemon
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import checks  # noqa: E402

TOKEN = "fuzz-token"
EXAMPLES = int(os.environ.get("DEVICE_AGENT_FUZZ_EXAMPLES", "30"))
CHECKS = [checks.not_a_server_error, checks.status_code_conformance,
          checks.content_type_conformance, checks.response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory):
    log = tmp_path_factory.mktemp("fuzz-log") / "server.log"
    with open(str(log), "w") as stderr:
        proc, base = live_daemon.start(str(tmp_path_factory.mktemp("fuzz")), TOKEN,
                                       stderr=stderr, DEVICE_AGENT_MAX_UPLOAD_MB="2",
                                       DEVICE_AGENT_TELEMETRY_INTERVAL_S="0.2")
        yield base
        live_daemon.stop(proc)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]  # nothing unhandled


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
