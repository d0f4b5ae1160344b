"""The domains router: upload, train, status, predict, adapter export and import; refused
imports; unknown and malformed domain names."""
import io
import zipfile

import pytest
from api_calls import call, download, multipart, png, wait_for, wait_for_job, zip_of, zipped

pytest.importorskip("fastapi")


def test_upload_train_status_predict(server, small_folder):
    base, _ = server
    body, content_type = multipart([("file", ("colours.zip", zipped(small_folder)))])
    status, summary = call(base, "POST", "/v1/domains/colours/datasets", body,
                           content_type=content_type)
    assert status == 201, summary
    assert summary["classes"] == ["blue", "green", "red"]
    status, job = call(base, "POST", "/v1/domains/colours/jobs",
                       {"backbone": "resnet18", "epochs": 2, "batch_size": 4, "resolution": 32})
    assert status == 202, job
    record = wait_for_job(base, job["job_id"])
    assert record["state"] == "succeeded", record
    assert record["progress"]["fraction"] == 1.0 and record["progress"]["eta_s"] == 0.0
    assert [h["epoch"] for h in record["history"]] == [0, 1]
    assert 0 <= record["val_top1"] <= 1 and record["adapter_bytes"] > 0
    memory, latency = record["memory"], record["latency"]
    assert memory["batch_size"] == 4 and memory["saved_activation_mb"] > 0
    assert memory["step_peak_rss_mb"] > 50 and memory["worker_peak_rss_mb"] > 50
    assert latency["step_ms_p50"] > 0 and latency["step_ms_p95"] >= latency["step_ms_p50"]
    assert latency["images_per_sec"] > 0
    status, domain = call(base, "GET", "/v1/domains/colours")
    assert domain["active_version"] == 1 and domain["method"] == "da2"
    assert domain["classes"] == ["blue", "green", "red"]
    assert domain["adapter_bytes"] > 0 and len(domain["versions"]) == 1
    assert domain["last_job"]["id"] == job["job_id"]
    assert domain["last_job"]["latency"]["step_ms_p50"] > 0
    telemetry = wait_for(lambda: call(base, "GET", "/v1/jobs/" + job["job_id"])[1]["telemetry"],
                         lambda t: t["samples"] > 0)
    assert telemetry["peak_ram_mb"] > 1000 and telemetry["worker_peak_rss_mb"] > 50
    assert telemetry["energy_j"] > 0 and telemetry["peak_power_mw"] >= telemetry["avg_power_mw"]
    assert telemetry["max_temp_c"] >= 40 and telemetry["duration_s"] > 0
    body, content_type_images = multipart([("file", ("a.png", png((220, 30, 30)))),
                                           ("file", ("b.png", png((30, 40, 220))))])
    status, result = call(base, "POST", "/v1/domains/colours/predict?top_k=2", body,
                          content_type=content_type_images)
    assert status == 200, result
    assert len(result["predictions"]) == 2 and len(result["predictions"][0]) == 2
    archive = download(base, "/v1/domains/colours/adapter")
    assert sorted(zipfile.ZipFile(io.BytesIO(archive)).namelist()) == [
        "adapter_config.json", "adapter_model.safetensors"]
    upload, content_type = multipart([("file", ("adapter.zip", archive))])
    status, copy = call(base, "PUT", "/v1/domains/colours-copy/adapter", upload,
                        content_type=content_type)
    assert status == 201, copy
    assert copy["active_version"] == 1 and copy["method"] == "da2"
    status, again = call(base, "POST", "/v1/domains/colours-copy/predict?top_k=2", body,
                         content_type=content_type_images)
    assert status == 200 and again["predictions"] == result["predictions"]


@pytest.mark.parametrize("archive,code", [
    (b"garbage", "invalid_input"),
    (zip_of({"adapter_config.json": b"{}"}), "invalid_input"),
    (zip_of({"adapter_config.json": b"{}", "adapter_model.safetensors": b"", "x.pkl": b""}),
     "invalid_input"),
    (zip_of({"adapter_config.json": b"{not json", "adapter_model.safetensors": b"\x00" * 8}),
     "bad_artifact"),
])
def test_a_bad_adapter_import_is_refused_and_creates_nothing(server, archive, code):
    base, _ = server
    upload, content_type = multipart([("file", ("a.zip", archive))])
    status, problem = call(base, "PUT", "/v1/domains/imported/adapter", upload,
                           content_type=content_type)
    assert 400 <= status < 500 and problem["code"] == code, problem
    assert call(base, "GET", "/v1/domains/imported")[0] == 404


def test_unknown_domains_and_path_characters(server):
    base, _ = server
    assert call(base, "GET", "/v1/domains/ghost")[0] == 404
    assert call(base, "POST", "/v1/domains/..%2Fetc/jobs", {})[0] in (400, 404)


MALFORMED_NAMES = ["Cats", "-x", "x" * 64, ".hidden", "caf%C3%A9", "a%20b", "cats%0A", "..",
                   "a%2Fb"]


@pytest.mark.parametrize("name", MALFORMED_NAMES)
def test_a_malformed_domain_name_is_400_on_every_domain_route(server, name):
    """The domain path type: every /v1/domains/{domain} route refuses a name the store could
    never hold with the store's own 400 problem, before it reads or writes anything."""
    base, _ = server
    form, form_type = multipart([("file", ("a.png", png((1, 2, 3))))])
    routes = [("GET", "", None, None), ("DELETE", "", None, None),
              ("POST", "/activate", {"version": 1}, None), ("POST", "/jobs", {}, None),
              ("POST", "/predict", form, form_type), ("GET", "/adapter", None, None),
              ("PUT", "/adapter", form, form_type), ("POST", "/datasets", form, form_type)]
    before = call(base, "GET", "/v1/domains")[1]
    for method, suffix, body, content_type in routes:
        path = "/v1/domains/%s%s" % (name, suffix)
        status, problem = call(base, method, path, body,
                               content_type=content_type or "application/json")
        if name in ("..", "a%2Fb"):  # the URL names another route, or none: never a domain
            assert status in (400, 404, 405), (method, path, status, problem)
            continue
        assert status == 400, (method, path, status, problem)
        assert problem["code"] == "invalid_input" and "domain names are" in problem["detail"]
    assert call(base, "GET", "/v1/domains")[1] == before
