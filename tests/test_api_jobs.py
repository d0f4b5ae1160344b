"""The jobs router: batch "auto", a memory limit below what the worker holds, bad job
requests, and the command line's push and status against a live daemon."""
import json

import pytest
from api_calls import TOKEN, call, cli, multipart, wait_for_job, zipped
from live_daemon import free_port

pytest.importorskip("fastapi")


def test_batch_auto_and_an_impossible_memory_limit(server, small_folder):
    base, _ = server
    body, content_type = multipart([("file", ("colours.zip", zipped(small_folder)))])
    assert call(base, "POST", "/v1/domains/sized/datasets", body,
                content_type=content_type)[0] == 201
    params = {"backbone": "resnet18", "epochs": 1, "resolution": 32}
    status, job = call(base, "POST", "/v1/domains/sized/jobs", dict(params, batch_size="auto"))
    record = wait_for_job(base, job["job_id"])
    assert record["state"] == "succeeded", record
    assert record["params"]["batch_size"] == "auto"
    assert record["memory"]["batch_size"] >= 2 and record["memory"]["estimated_peak_mb"] > 0
    # 64 MB is below what the worker itself holds: refused before the first step.
    status, job = call(base, "POST", "/v1/domains/sized/jobs", dict(params, memory_limit_mb=64))
    record = wait_for_job(base, job["job_id"])
    assert record["state"] == "failed" and "memory_limit_mb" in record["error"], record
    assert call(base, "GET", "/readyz", token=None)[0] == 200  # the worker lives on
    status, domain = call(base, "GET", "/v1/domains/sized")
    assert domain["active_version"] == 1  # the good version stays active


@pytest.mark.parametrize("body,code", [
    ({"epochs": 0}, 422), ({"method": "magic"}, 422), ({"backbone": "vgg"}, 422),
    ({"epochs": "many"}, 422), ({"lr": -1}, 422), ({"unknown": 1}, 422)])
def test_bad_job_requests_are_422(server, body, code):
    base, _ = server
    status, problem = call(base, "POST", "/v1/domains/colours/jobs", body)
    assert status == code and problem["code"] == "invalid_request"


def test_push_and_status_from_the_command_line(server, small_folder):
    base, _ = server
    pushed = cli("push", small_folder, "--domain", "pushed", "--server", base, "--token", TOKEN,
                 "--backbone", "resnet18", "--epochs", "1", "--resolution", "32",
                 "--batch-size", "auto", "--json")
    assert pushed.returncode == 0, pushed.stderr
    job = json.loads(pushed.stdout.strip().splitlines()[-1])
    assert job["state"] == "succeeded" and job["domain"] == "pushed"
    assert "uploaded pushed: 3 classes" in pushed.stdout
    status = cli("status", "pushed", "--server", base, "--token", TOKEN, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["active_version"] == 1
    table = cli("status", "--server", base, "--token", TOKEN)
    assert table.returncode == 0 and "pushed" in table.stdout and "ready" in table.stdout
    refused = cli("status", "--server", base, "--token", "wrong")
    assert refused.returncode == 1 and "401" in refused.stderr
    bad_name = cli("push", small_folder, "--domain", "Bad/Name", "--server", base, "--token",
                   TOKEN)  # refused by the client with the server's own rule, nothing sent
    assert bad_name.returncode == 2 and "'Bad/Name' is not a domain name" in bad_name.stderr
    wrong_token = cli("push", small_folder, "--domain", "pushed2", "--server", base,
                      "--token", "wrong")
    assert wrong_token.returncode == 1 and "HTTP 401" in wrong_token.stderr
    unreachable = cli("status", "--server", "http://127.0.0.1:%d" % free_port(), "--token", "t")
    assert unreachable.returncode == 5 and "cannot reach" in unreachable.stderr


def test_a_job_trains_the_dataset_it_names(server, small_folder):
    """dataset_id (what an upload returned) picks the data; without it, the working set
    (issue 14: dataset_id null, the snapshot fixed when the job starts). Another domain's
    dataset, or none at all, is a 404, and nothing is queued."""
    base, _ = server
    body, content_type = multipart([("file", ("colours.zip", zipped(small_folder)))])
    first = call(base, "POST", "/v1/domains/picked/datasets", body,
                 content_type=content_type)[1]["dataset_id"]
    again = call(base, "POST", "/v1/domains/picked/datasets", body, content_type=content_type)
    assert again[0] == 201 and (again[1]["added"], again[1]["duplicates"]) == (0, 18)
    other = call(base, "POST", "/v1/domains/elsewhere/datasets", body,
                 content_type=content_type)[1]["dataset_id"]
    params = {"backbone": "resnet18", "epochs": 1, "resolution": 32}
    named = call(base, "POST", "/v1/domains/picked/jobs?dataset_id=%d" % first, params)[1]
    default = call(base, "POST", "/v1/domains/picked/jobs", params)[1]
    for job_id, dataset_id in ((named["job_id"], first), (default["job_id"], None)):
        assert call(base, "GET", "/v1/jobs/" + job_id)[1]["dataset_id"] == dataset_id
        call(base, "POST", "/v1/jobs/%s/cancel" % job_id)
    queued = len(call(base, "GET", "/v1/jobs?domain=picked")[1])
    for dataset_id in (other, 999999):
        status, problem = call(base, "POST", "/v1/domains/picked/jobs?dataset_id=%d"
                               % dataset_id, params)
        assert status == 404 and problem["code"] == "unknown_name", problem
    assert len(call(base, "GET", "/v1/jobs?domain=picked")[1]) == queued
