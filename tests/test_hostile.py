"""Hostile input against the live daemon: every case of tests/hostile_corpus.py, then bad
API requests. A refused case gets a 4xx with a useful problem body and leaves no trace: no
domain, no dataset, no upload or temp file, nothing outside the data dir, other domains
unchanged. Odd-but-valid input is accepted."""
import os
import uuid

import live_daemon
import pytest
from api_calls import call, multipart, zipped
from hostile_corpus import ESCAPE_NAME, corpus

pytest.importorskip("fastapi")  # a live daemon: not on the torch-only 3.6 stage

TOKEN = "hostile-token"
CASES = list(corpus())


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    sandbox = tmp_path_factory.mktemp("hostile")  # the data dir's parent: must stay clean
    data_dir = str(sandbox / "data")
    proc, base = live_daemon.start(data_dir, TOKEN, DEVICE_AGENT_MAX_FILES="1500",
                                   DEVICE_AGENT_MAX_UPLOAD_MB="8",
                                   DEVICE_AGENT_MAX_EXTRACTED_MB="32")
    yield base, data_dir, str(sandbox)
    live_daemon.stop(proc)


@pytest.fixture(scope="module")
def bystander(daemon, tmp_path_factory):
    """A domain that must never change, whatever is uploaded beside it."""
    from PIL import Image

    base, _, _ = daemon
    folder = tmp_path_factory.mktemp("bystander")
    for name, rgb in (("red", (200, 0, 0)), ("blue", (0, 0, 200))):
        os.makedirs(str(folder / name))
        for i in range(4):
            Image.new("RGB", (16, 16), rgb).save(str(folder / name / ("%d.png" % i)))
    body, content_type = multipart([("file", ("b.zip", zipped(str(folder))))])
    assert call(base, "POST", "/v1/domains/bystander/datasets", body, TOKEN,
                content_type)[0] == 201
    return call(base, "GET", "/v1/domains/bystander", token=TOKEN)[1]


def _traces(data_dir, sandbox):
    files = []
    for directory, _, names in os.walk(sandbox):
        for name in names:
            path = os.path.join(directory, name)
            if name == ESCAPE_NAME or name.startswith((".tmp-", "tmp")) or \
                    os.sep + "uploads" + os.sep in path:
                files.append(path)
    return files


@pytest.mark.parametrize("name,payload,filename,expected", CASES,
                         ids=[case[0] for case in CASES])
def test_hostile_uploads(daemon, bystander, name, payload, filename, expected):
    base, data_dir, sandbox = daemon
    domain = "case-" + uuid.uuid4().hex[:8]
    body, content_type = multipart([("file", (filename, payload))])
    status, result = call(base, "POST", "/v1/domains/%s/datasets" % domain, body, TOKEN,
                          content_type)
    if expected == "refused":
        assert 400 <= status < 500, (name, status, result)
        assert result["code"] in ("invalid_input", "payload_too_large") and len(
            result["detail"]) > 10, result
        assert call(base, "GET", "/v1/domains/" + domain, token=TOKEN)[0] == 404
        assert not os.path.exists(os.path.join(data_dir, "datasets", domain))
    else:
        assert status == 201, (name, status, result)
        rejected = [r["file"] for r in result["rejected"]]
        if expected.startswith("rejected:"):
            assert rejected == [expected.split(":", 1)[1]], result["rejected"]
        else:
            assert rejected == [], result["rejected"]
        assert len(result["classes"]) >= 2
        assert call(base, "DELETE", "/v1/domains/" + domain, token=TOKEN)[0] == 204
    assert _traces(data_dir, sandbox) == []
    assert call(base, "GET", "/v1/domains/bystander", token=TOKEN)[1] == bystander


BAD_JOBS = [
    (b"{not json", 422), (b"[]", 422), (b'{"epochs": "five"}', 422), (b'{"epochs": -1}', 422),
    (b'{"epochs": 1000000000}', 422), (b'{"lr": 1e9}', 422), (b'{"lr": -0.1}', 422),
    (b'{"batch_size": 0}', 422), (b'{"batch_size": "huge"}', 422), (b'{"resolution": 5}', 422),
    (b'{"resolution": 100000}', 422), (b'{"memory_limit_mb": 1}', 422),
    (b'{"backbone": "vgg19"}', 422), (b'{"backbone": "../../etc/passwd"}', 422),
    (b'{"method": "magic"}', 422), (b'{"seed": 99999999999999999999999}', 422),
    (b'{"extra": 1}', 422), (b'{"epochs": null}', 422), (b'{"lr": NaN}', 422),
]


@pytest.mark.parametrize("body,status", BAD_JOBS, ids=[b.decode() for b, _ in BAD_JOBS])
def test_bad_job_requests(daemon, bystander, body, status):
    base, _, _ = daemon
    code, problem = call(base, "POST", "/v1/domains/bystander/jobs", body, TOKEN,
                         "application/json")
    assert code == status and problem["code"] == "invalid_request" and problem["detail"]
    assert call(base, "GET", "/v1/jobs", token=TOKEN)[1] == []  # nothing was queued


@pytest.mark.parametrize("domain", ["..", "a..b", "UPPER", "with%20space", "semi;colon",
                                    "x" * 64, "x" * 300, "%2e%2e", "dot.dot", "-leading"])
def test_bad_domain_names(daemon, domain):
    base, data_dir, _ = daemon
    body, content_type = multipart([("file", ("a.zip", b"PK"))])
    status, problem = call(base, "POST", "/v1/domains/%s/datasets" % domain, body, TOKEN,
                           content_type)
    assert status in (400, 404, 405), (domain, status)
    assert sorted(os.listdir(os.path.join(data_dir, "datasets"))) == ["bystander"]
