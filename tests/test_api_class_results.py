"""Per-class results against a live daemon: a job's confusion matrix and per-class figures
in the job and domain views, the active versions' per-class recall on /metrics (and none of a
deleted domain), and class names an attacker picks (quotes, braces, markup) that must come
back exactly as they went in."""
import io
import json
import os
import urllib.request
import zipfile

import pytest
from api_calls import TOKEN, call, download, multipart, train, zip_of

pytest.importorskip("fastapi")  # a live daemon: not on the torch-only 3.6 stage
parser = pytest.importorskip("prometheus_client.parser")

# As the archive rules allow them: no "/", "\", NUL, control or bidi characters.
HOSTILE = ['a"quote', "{brace}", '<img src=x onerror="alert(1)">', "x=\"1\",y='2'", "}{"]


def _folder(root, names, per_class=6):
    from PIL import Image

    for index, name in enumerate(names):
        os.makedirs(os.path.join(root, name))
        for i in range(per_class):
            colour = ((70 * index + 9 * i) % 256, (40 * index) % 256, (200 - 30 * index) % 256)
            Image.new("RGB", (24, 24), colour).save(os.path.join(root, name, "%d.png" % i))
    return root


def _metrics(base):
    request = urllib.request.Request(base + "/metrics",
                                     headers={"Authorization": "Bearer " + TOKEN})
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    samples = {}
    for family in parser.text_string_to_metric_families(text):  # the exposition must parse
        for sample in family.samples:
            if sample.name in ("device_agent_class_recall", "device_agent_class_precision"):
                key = (sample.name, sample.labels["domain"], sample.labels["class"])
                samples[key] = sample.value
    return samples


def _check_consistent(results, val_images, val_top1):
    matrix, classes = results["matrix"], results["classes"]
    assert len(matrix) == len(classes) and all(len(row) == len(classes) for row in matrix)
    assert results["total"] == sum(map(sum, matrix)) == val_images
    assert results["correct"] == sum(matrix[i][i] for i in range(len(classes)))
    assert results["correct"] / results["total"] == pytest.approx(val_top1, abs=1e-12)
    for index, figures in enumerate(results["per_class"]):
        assert figures["name"] == classes[index]
        assert figures["support"] == sum(matrix[index])
        column = sum(row[index] for row in matrix)
        assert figures["predicted"] == column
        if figures["support"]:
            assert figures["recall"] == pytest.approx(matrix[index][index] / figures["support"])
        else:  # a class the split left without val images has no recall
            assert figures["recall"] is None
        if column:
            assert figures["precision"] == pytest.approx(matrix[index][index] / column)
        else:
            assert figures["precision"] is None
    off = sorted(((matrix[t][p], t, p) for t in range(len(classes))
                  for p in range(len(classes)) if t != p and matrix[t][p]),
                 key=lambda c: (-c[0], c[1], c[2]))
    assert [(p["true"], p["predicted"], p["count"]) for p in results["most_confused"]] == \
        [(classes[t], classes[p], count) for count, t, p in off[:10]]


def _val_counts(base, domain):
    """Class -> val images of the working set (its split rule places them: issue 14)."""
    status, stats = call(base, "GET", "/v1/domains/%s/dataset" % domain)
    assert status == 200
    return {c["label"]: c["val"] for c in stats["classes"]}


def test_a_job_reports_its_matrix_through_the_api_and_metrics(server, small_folder):
    base, _ = server
    job = train(base, "colours", small_folder, epochs=2)
    assert job["state"] == "succeeded"
    results = job["class_results"]
    assert results["classes"] == ["blue", "green", "red"]
    val = _val_counts(base, "colours")
    _check_consistent(results, sum(val.values()), job["val_top1"])
    assert [f["support"] for f in results["per_class"]] == [val[c] for c in results["classes"]]
    status, domain = call(base, "GET", "/v1/domains/colours")
    assert status == 200 and domain["class_results"] == results  # the active version's
    assert domain["last_job"]["class_results"] == results
    scraped = _metrics(base)
    for figures in results["per_class"]:
        key = ("device_agent_class_recall", "colours", figures["name"])
        if figures["recall"] is None:  # no val image of it: no recall to export
            assert key not in scraped
        else:
            assert scraped[key] == pytest.approx(figures["recall"])


def test_hostile_class_names_come_back_intact_and_a_deleted_domain_leaves_metrics(
        server, tmp_path, small_folder):
    base, _ = server
    folder = _folder(str(tmp_path / "hostile"), HOSTILE, per_class=16)  # val for each class
    job = train(base, "hostile", folder, epochs=1)
    assert job["state"] == "succeeded", job
    results = job["class_results"]
    assert results["classes"] == sorted(HOSTILE)
    _check_consistent(results, sum(_val_counts(base, "hostile").values()), job["val_top1"])
    assert train(base, "kept", small_folder)["state"] == "succeeded"
    scraped = _metrics(base)
    exported = {name for (metric, domain, name) in scraped
                if metric == "device_agent_class_recall" and domain == "hostile"}
    assert all(f["recall"] is not None for f in results["per_class"])
    assert exported == set(HOSTILE)  # parsed back to exactly the names uploaded
    assert call(base, "DELETE", "/v1/domains/hostile")[0] == 204
    scraped = _metrics(base)
    assert not [key for key in scraped if key[1] == "hostile"]
    assert ("device_agent_class_recall", "kept", "red") in scraped


def test_per_class_series_are_capped_lowest_recall_first():
    from prometheus_client import CollectorRegistry, generate_latest

    from device_agent.api.metrics import MAX_CLASSES_EXPORTED, _ClassCollector

    classes = ["c%02d" % i for i in range(60)]
    # class i: 60 images, i + 1 of them right (recall (i+1)/60), the rest taken for class i+1
    cells = [[i, i, i + 1] for i in range(60)] + [[i, i + 1, 59 - i] for i in range(59)]

    class Store(object):
        def active_summaries(self):
            return {"many": {"classes": classes, "val_confusion": cells}}

    registry = CollectorRegistry()
    registry.register(_ClassCollector(Store()))
    text = generate_latest(registry).decode()
    recall = {s.labels["class"]: s.value
              for family in parser.text_string_to_metric_families(text)
              for s in family.samples if s.name == "device_agent_class_recall"}
    assert sorted(recall) == classes[:MAX_CLASSES_EXPORTED] and MAX_CLASSES_EXPORTED == 50
    assert recall["c00"] == pytest.approx(1 / 60) and recall["c49"] == pytest.approx(50 / 60)
    assert 'device_agent_domain_classes{domain="many"} 60.0' in text


def test_an_imported_adapters_summary_is_read_not_trusted(server, small_folder):
    """An imported adapter's metrics are the uploader's: a malformed matrix or report field
    shows no per-class results and breaks neither the domain view nor /metrics; a well-formed
    one is shown as the adapter's claim (like its val_top1)."""
    base, _ = server
    if call(base, "GET", "/v1/domains/colours")[0] != 200:  # run on its own
        assert train(base, "colours", small_folder, val_fraction=0.5)["state"] == "succeeded"
    exported = zipfile.ZipFile(io.BytesIO(download(base, "/v1/domains/colours/adapter")))
    files = {name: exported.read(name) for name in exported.namelist()}
    config = json.loads(files["adapter_config.json"])
    assert "val_confusion" not in config["metrics"]  # the job's report keeps it, not the file
    for domain, metrics, shown in (
            ("forged", {"cpu": "not an object", "history": 5, "classes": 7,
                        "val_confusion": [[0, 0, "x"]]}, None),
            ("claimed", {"val_confusion": [[0, 0, 2], [1, 1, 1], [2, 1, 1]]},
             [[2, 0, 0], [0, 1, 0], [0, 1, 0]])):
        config["metrics"].update(metrics)
        files["adapter_config.json"] = json.dumps(config).encode()
        body, content_type = multipart([("file", ("a.zip", zip_of(files)))])
        status, imported = call(base, "PUT", "/v1/domains/%s/adapter" % domain, body,
                                content_type=content_type)
        assert status == 201, imported
        status, view = call(base, "GET", "/v1/domains/" + domain)
        assert status == 200
        assert (view["class_results"] or {}).get("matrix") == shown
        scraped = _metrics(base)
        assert bool([k for k in scraped if k[1] == domain]) == (shown is not None)
