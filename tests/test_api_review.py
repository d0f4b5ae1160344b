"""The review queue of doubtful predictions against a live daemon: opt-in settings within the
daemon's caps, predictions under the threshold queued with their top-3, the queue within its
count and byte bounds (the oldest dropped, their files too), discarding, hostile ids and
bodies, the token; and the store's bounds on their own."""
import hashlib
import io
import os
import socket
import urllib.request

import pytest
from api_calls import call, fetch, multipart, png, train, wait_for, wait_for_job, zip_of
from PIL import Image
from review_calls import kept_when_idle, noise_png, predict, queue, settle, working_set

pytest.importorskip("fastapi")

DOMAIN = "colours"


def put_settings(base, **settings):
    return call(base, "PUT", "/v1/domains/%s/review/settings" % DOMAIN, settings)


def review_files(data_dir):
    directory = os.path.join(data_dir, "domains", DOMAIN, "review")
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


@pytest.fixture(scope="module")
def trained(server, tmp_path_factory):
    """The server with a trained 3-class domain (random backbone: doubtful predictions)."""
    base, data_dir = server
    folder = tmp_path_factory.mktemp("colours")
    for label, rgb in enumerate(((220, 30, 30), (30, 200, 40), (30, 40, 220))):
        os.makedirs(str(folder / str(label)))
        for i in range(6):
            Image.new("RGB", (24, 24), tuple(max(0, c - 8 * i) for c in rgb)).save(
                str(folder / str(label) / ("%d.png" % i)))
    record = train(base, DOMAIN, str(folder))
    assert record["state"] == "succeeded", record
    return base, data_dir


def test_review_is_off_by_default_and_settings_stay_within_the_caps(trained):
    base, data_dir = trained
    status, settings = call(base, "GET", "/v1/domains/%s/review/settings" % DOMAIN)
    assert status == 200
    assert settings == {"enabled": False, "threshold": 0.5, "max_items": 200,
                        "max_bytes": 50 << 20, "cap_items": 1000, "cap_bytes": 256 << 20}
    predict(base, [noise_png(1)], DOMAIN)  # off: nothing is kept
    assert queue(base, DOMAIN)["count"] == 0 and review_files(data_dir) == []
    for bad in ({"threshold": 0}, {"threshold": 1.5}, {"threshold": "high"},
                {"enabled": "yes"}, {"enabled": 1}, {"max_items": 0}, {"max_bytes": -1},
                {"max_items": 1001}, {"max_bytes": (256 << 20) + 1}, {"colour": "red"}):
        status, problem = put_settings(base, **bad)
        assert status in (400, 422) and problem["status"] == status, (bad, problem)
    assert call(base, "GET", "/v1/domains/%s/review/settings" % DOMAIN)[1] == settings
    assert call(base, "GET", "/v1/domains/ghost/review/settings")[0] == 404
    assert call(base, "PUT", "/v1/domains/ghost/review/settings", {"enabled": True})[0] == 404
    status, changed = put_settings(base, threshold=0.25)  # a field left out keeps its value
    assert status == 200 and changed == dict(settings, threshold=0.25)
    assert queue(base, DOMAIN)["settings"] == changed


def test_doubtful_predictions_are_queued_with_their_top3(trained):
    base, data_dir = trained
    assert put_settings(base, enabled=True, threshold=0.01)[0] == 200
    predict(base, [noise_png(2)], DOMAIN)  # every top probability of 3 classes is over 1/3
    assert put_settings(base, threshold=1.0)[0] == 200
    images = [noise_png(seed) for seed in (10, 11, 12, 13)]
    answer = predict(base, images, DOMAIN, top_k=1)
    assert [len(top) for top in answer["predictions"]] == [1, 1, 1, 1]  # as asked
    page = settle(base, 4, DOMAIN)  # only these four: the one under 0.01 was not kept
    assert page["count"] == 4 and [i["id"] for i in page["items"]] == sorted(
        (i["id"] for i in page["items"]), reverse=True)  # newest first
    for item, blob, top in zip(reversed(page["items"]), images, answer["predictions"]):
        assert item["version"] == 1 and len(item["predictions"]) == 3
        assert item["predictions"][0]["class"] == top[0]["class"]
        assert abs(item["predictions"][0]["probability"] - top[0]["probability"]) < 1e-6
        probabilities = [p["probability"] for p in item["predictions"]]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) > 0.99
        status, media_type, data = fetch(base, item["image"])
        assert status == 200 and media_type == "image/png"
        assert data == blob and item["bytes"] == len(blob)  # a small PNG is kept as received
    assert page["bytes"] == sum(len(blob) for blob in images)
    assert len(review_files(data_dir)) == 4


def test_the_queue_stays_within_its_count_and_byte_bounds(trained):
    base, data_dir = trained
    for item in queue(base, DOMAIN, query="?limit=200")["items"]:  # start empty
        assert call(base, "POST", "/v1/domains/%s/review/%d" % (DOMAIN, item["id"]),
                    {"discard": True})[0] == 200
    kept = kept_when_idle(base, DOMAIN)
    assert put_settings(base, enabled=True, threshold=1.0, max_items=3)[0] == 200
    images = [noise_png(seed) for seed in range(100, 107)]
    predict(base, images, DOMAIN)
    page = settle(base, kept + 7, DOMAIN)
    assert page["count"] == 3 and len(page["items"]) == 3
    assert [fetch(base, i["image"])[2] for i in page["items"]] == images[:-4:-1]  # newest 3
    assert page["counters"]["dropped_oldest"] >= 4
    assert len(review_files(data_dir)) == 3  # the dropped items' files went with them
    size = len(images[0])
    assert all(abs(len(blob) - size) < size // 10 for blob in images)
    assert put_settings(base, max_items=100, max_bytes=int(2.5 * size))[0] == 200
    more = [noise_png(seed) for seed in range(200, 205)]
    predict(base, more, DOMAIN)
    page = settle(base, kept + 12, DOMAIN)
    assert page["count"] == 2 and page["bytes"] <= int(2.5 * size)
    assert [fetch(base, i["image"])[2] for i in page["items"]] == more[:-3:-1]
    assert len(review_files(data_dir)) == 2
    assert put_settings(base, max_bytes=50 << 20)[0] == 200


def test_pages_and_discard(trained):
    base, data_dir = trained
    assert put_settings(base, enabled=True, threshold=1.0, max_items=100)[0] == 200
    before = kept_when_idle(base, DOMAIN)
    predict(base, [noise_png(seed) for seed in range(300, 305)], DOMAIN)
    page = settle(base, before + 5, DOMAIN)
    first = queue(base, DOMAIN, query="?limit=3")
    assert len(first["items"]) == 3 and first["next_before"] == first["items"][-1]["id"]
    rest = queue(base, DOMAIN, query="?limit=200&before=%d" % first["next_before"])
    assert [i["id"] for i in first["items"] + rest["items"]] == [i["id"] for i in page["items"]]
    assert rest["next_before"] is None
    victim = page["items"][1]
    status, outcome = call(base, "POST", "/v1/domains/%s/review/%d" % (DOMAIN, victim["id"]),
                           {"discard": True})
    assert status == 200 and outcome["action"] == "discarded" and outcome["id"] == victim["id"]
    after = queue(base, DOMAIN)
    assert after["count"] == page["count"] - 1
    assert victim["id"] not in [i["id"] for i in after["items"]]
    assert fetch(base, victim["image"])[0] == 404
    assert len(review_files(data_dir)) == after["count"]
    status, problem = call(base, "POST", "/v1/domains/%s/review/%d" % (DOMAIN, victim["id"]),
                           {"discard": True})
    assert status == 404 and problem["code"] == "unknown_name"


def test_a_label_moves_the_image_into_the_samples(trained):
    base, data_dir = trained
    assert put_settings(base, enabled=True, threshold=1.0, max_items=100)[0] == 200
    kept = kept_when_idle(base, DOMAIN)
    images = [noise_png(seed) for seed in (600, 601, 602)]
    predict(base, images, DOMAIN)
    page = settle(base, kept + 3, DOMAIN)
    newest = page["items"][0]
    before = working_set(data_dir, DOMAIN)
    prefix = "/v1/domains/%s/review/" % DOMAIN
    status, outcome = call(base, "POST", prefix + str(newest["id"]), {"label": "1"})
    assert status == 200, outcome
    digest = hashlib.sha256(images[2]).hexdigest()
    assert outcome == {"id": newest["id"], "action": "labelled", "label": "1",
                       "sample_ids": [digest], "duplicates": 0}
    assert working_set(data_dir, DOMAIN) == dict(before, **{digest: ("1", "review")})
    after = queue(base, DOMAIN)
    assert newest["id"] not in [i["id"] for i in after["items"]]
    assert after["count"] == page["count"] - 1 and len(review_files(data_dir)) == after["count"]
    assert fetch(base, newest["image"])[0] == 404
    assert call(base, "POST", prefix + str(newest["id"]), {"label": "1"})[0] == 404


def test_labelled_images_reach_the_next_jobs_snapshot(trained):
    base, data_dir = trained
    kept = kept_when_idle(base, DOMAIN)
    images = [noise_png(seed) for seed in (650, 651)]
    predict(base, images, DOMAIN)
    items = settle(base, kept + 2, DOMAIN)["items"][:2]
    prefix = "/v1/domains/%s/review/" % DOMAIN
    lines = set()
    for item, label in zip(items, ("0", "2")):
        status, outcome = call(base, "POST", prefix + str(item["id"]), {"label": label})
        assert status == 200, outcome
        lines.add((label, outcome["sample_ids"][0]))
    reviewed = [h for h, (_, source) in working_set(data_dir, DOMAIN).items()
                if source == "review"]
    status, dataset = call(base, "GET", "/v1/domains/%s/dataset" % DOMAIN)
    assert status == 200 and dataset["sources"]["review"] == len(reviewed) >= 3
    status, created = call(base, "POST", "/v1/domains/%s/jobs" % DOMAIN,
                           {"backbone": "resnet18", "epochs": 1, "batch_size": 4,
                            "resolution": 32})
    assert status == 202, created
    job = wait_for_job(base, created["job_id"])
    assert job["state"] == "succeeded" and job["snapshot_id"] == dataset["snapshot_id"]
    manifest = os.path.join(data_dir, "domains", DOMAIN, "snapshots", job["snapshot_id"],
                            "snapshot.tsv")
    with open(manifest) as handle:
        trained_lines = {tuple(line.split("\t")[1:]) for line in handle.read().splitlines()}
    assert lines <= trained_lines  # (label, hash) of each labelled image
    assert set(reviewed) <= {content_hash for _, content_hash in trained_lines}


def test_a_new_class_and_refused_labels(trained):
    base, data_dir = trained
    prefix = "/v1/domains/%s/review/" % DOMAIN
    kept = kept_when_idle(base, DOMAIN)
    images = [noise_png(seed) for seed in (700, 701)]
    predict(base, images, DOMAIN)
    newest, older = settle(base, kept + 2, DOMAIN)["items"][:2]
    status, outcome = call(base, "POST", prefix + str(newest["id"]), {"label": "purple"})
    assert status == 200 and outcome["action"] == "labelled", outcome
    assert outcome["sample_ids"] == [hashlib.sha256(images[1]).hexdigest()]
    assert working_set(data_dir, DOMAIN)[outcome["sample_ids"][0]] == ("purple", "review")
    # labels the ImageFolder rules refuse: 400, the item stays queued, nothing added
    samples = working_set(data_dir, DOMAIN)
    for label in ("..", ".hidden", "a/b", "a\\b", "x\n", " ", "con\x00"):
        status, problem = call(base, "POST", prefix + str(older["id"]), {"label": label})
        assert status == 400 and problem["code"] == "invalid_input", (label, problem)
    assert queue(base, DOMAIN)["items"][0] == older and working_set(data_dir, DOMAIN) == samples
    assert fetch(base, older["image"])[2] == images[0]
    # an image the working set holds under another label (0/0.png of the trained archive):
    # 409 and the item stays queued; under its own label it is a duplicate, stored once
    predict(base, [png((220, 30, 30))], DOMAIN)
    item = settle(base, kept + 3, DOMAIN)["items"][0]
    status, problem = call(base, "POST", prefix + str(item["id"]), {"label": "1"})
    assert status == 409 and problem["code"] == "conflict", problem
    assert queue(base, DOMAIN)["items"][0] == item
    status, outcome = call(base, "POST", prefix + str(item["id"]), {"label": "0"})
    assert status == 200 and outcome["duplicates"] == 1, outcome
    assert working_set(data_dir, DOMAIN)[outcome["sample_ids"][0]] == ("0", "archive")


def test_hostile_ids_and_bodies_change_nothing(trained):
    base, data_dir = trained
    assert put_settings(base, enabled=True, threshold=1.0)[0] == 200
    count = kept_when_idle(base, DOMAIN)
    predict(base, [noise_png(400)], DOMAIN)
    page = settle(base, count + 1, DOMAIN)
    item = page["items"][0]
    archive = zip_of({"%s/%d.png" % (label, i): png((i, 9 * i, blue))
                      for label, blue in (("a", 0), ("b", 200)) for i in range(3)})
    other_body, other_type = multipart([("file", ("o.zip", archive))])
    assert call(base, "POST", "/v1/domains/other/datasets", other_body,
                content_type=other_type)[0] == 201
    prefix = "/v1/domains/%s/review/" % DOMAIN
    for suffix in ("abc", "0", "-1", "1.5", "%d" % 2 ** 63, "..%2F..%2Ftoken", "..%2Ftoken",
                   "%2Fetc%2Fpasswd", "1%00"):
        for method, path, body in (("GET", prefix + suffix + "/image", None),
                                   ("POST", prefix + suffix, {"discard": True})):
            status, problem = call(base, method, path, body)
            assert 400 <= status < 500 and problem["status"] == status, (path, problem)
    # another domain's id is unknown there (the domain exists or not)
    for domain in ("other", "ghost"):
        path = "/v1/domains/%s/review/%d" % (domain, item["id"])
        assert fetch(base, path + "/image")[0] == 404
        assert call(base, "POST", path, {"discard": True})[0] == 404
    for body in ({}, {"label": "0", "discard": True}, {"discard": False}, {"label": ""},
                 {"label": "x" * 256}, {"label": 3}, {"label": None, "discard": None},
                 {"label": "0", "extra": 1}, b"[1, 2]"):
        status, problem = call(base, "POST", prefix + str(item["id"]), body)
        assert status in (400, 422) and problem["status"] == status, (body, problem)
    status, problem = call(base, "POST", prefix + str(item["id"]), b"{not json")
    assert status in (400, 422), problem
    for query in ("?limit=0", "?limit=201", "?before=0", "?limit=x"):
        assert call(base, "GET", "/v1/domains/%s/review%s" % (DOMAIN, query))[0] == 422
    after = queue(base, DOMAIN)
    assert after["count"] == page["count"] and after["items"] == page["items"]
    assert fetch(base, item["image"])[0] == 200


def test_every_review_route_needs_the_token(trained):
    base, _ = trained
    prefix = "/v1/domains/%s/review" % DOMAIN
    page = queue(base, DOMAIN)
    routes = [("GET", prefix, None), ("GET", prefix + "/settings", None),
              ("PUT", prefix + "/settings", {"enabled": False}),
              ("GET", prefix + "/1/image", None), ("POST", prefix + "/1", {"discard": True})]
    for method, path, body in routes:
        for token in (None, "wrong"):
            status, problem = call(base, method, path, body, token=token)
            assert status == 401 and problem["code"] == "unauthorized", (method, path)
    # refused from the head alone: the 8 MB this head declares are never sent
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST %s/1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: %d\r\n\r\n{" % (prefix.encode(), 8 << 20))
        assert sock.recv(4096).startswith(b"HTTP/1.1 401")
    assert queue(base, DOMAIN) == dict(page, counters=queue(base, DOMAIN)["counters"])
    assert call(base, "GET", prefix + "/settings")[1]["enabled"] is True


def test_a_failure_to_keep_never_fails_the_prediction(trained):
    base, data_dir = trained
    assert put_settings(base, enabled=True, threshold=1.0)[0] == 200
    directory = os.path.join(data_dir, "domains", DOMAIN, "review")
    failed = queue(base, DOMAIN)["counters"]["failed"]
    os.makedirs(directory, exist_ok=True)
    aside = directory + ".aside"
    os.rename(directory, aside)
    with open(directory, "w") as handle:  # a file where the directory was: writes fail
        handle.write("in the way")
    try:
        answer = predict(base, [noise_png(500), noise_png(501)], DOMAIN)
        assert len(answer["predictions"]) == 2
        page = wait_for(lambda: queue(base, DOMAIN),
                        lambda p: p["counters"]["failed"] >= failed + 2)
        assert page["counters"]["failed"] == failed + 2
    finally:
        os.unlink(directory)
        os.rename(aside, directory)
    assert len(review_files(data_dir)) == queue(base, DOMAIN)["count"]


def test_the_store_drops_the_oldest_items_over_either_bound(tmp_path):
    from device_agent.store.db import Store
    from device_agent.store.review import NewReviewItem

    store = Store(str(tmp_path / "agent.db"))
    store.ensure_domain("d")
    top = [("a", 0.4), ("b", 0.35), ("c", 0.25)]
    dropped = []
    for index in range(6):
        item = NewReviewItem(1, top, "f%d" % index, "image/png", 100 + index)
        dropped += store.add_review_item("d", item, max_items=4, max_bytes=10 ** 6)[1]
    assert dropped == ["f0", "f1"] and store.review_totals("d") == (4, 102 + 103 + 104 + 105)
    item = NewReviewItem(1, top, "big", "image/png", 250)
    assert store.add_review_item("d", item, max_items=4, max_bytes=460)[1] == ["f2", "f3"]
    assert [i.file for i in store.review_items("d", 10)] == ["big", "f5", "f4"]
    assert store.review_totals("d") == (3, 250 + 105 + 104)
    assert store.review_items("d", 10)[0].top == top
    # a small old item never outlives a bigger newer one: the oldest go first, in order
    store.add_review_item("d", NewReviewItem(1, top, "small", "image/png", 10), 10, 10 ** 6)
    store.add_review_item("d", NewReviewItem(1, top, "large", "image/png", 300), 10, 10 ** 6)
    assert store.add_review_item("d", NewReviewItem(1, top, "new", "image/png", 100), 10,
                                 350)[1] == ["f4", "f5", "big", "small", "large"]
    assert store.review_totals("d") == (1, 100)
    store.delete_domain("d")  # the queue goes with its domain
    store.ensure_domain("d")
    assert store.review_totals("d") == (0, 0) and store.review_items("d", 10) == []
    store.close()


def _keeper(tmp_path):
    from device_agent.api.review_keeper import ReviewCaps, ReviewKeeper
    from device_agent.store.db import Store
    from device_agent.store.layout import DataPaths

    store = Store(str(tmp_path / "agent.db"))
    store.ensure_domain("d")
    store.set_review_settings("d", store.review_settings("d")._replace(enabled=True))
    return ReviewKeeper(store, DataPaths(str(tmp_path)), ReviewCaps(1000, 256 << 20))


def test_offers_are_bounded_while_the_keeper_is_behind_and_never_raise(tmp_path):
    from device_agent.api.review_keeper import PENDING_BYTES

    keeper = _keeper(tmp_path)  # its thread not started: nothing is written meanwhile
    blob = b"\0" * (1 << 20)  # offer() filters and queues; it decodes nothing
    doubtful = [[{"class": "a", "probability": 0.45}, {"class": "b", "probability": 0.3},
                 {"class": "c", "probability": 0.25}]]  # under the default threshold 0.5
    sure = [[{"class": "a", "probability": 0.9}, {"class": "b", "probability": 0.1}]]
    assert keeper.offer("d", 1, [blob], sure) == 0
    queued = sum(keeper.offer("d", 1, [blob], doubtful) for _ in range(40))
    assert queued == PENDING_BYTES >> 20
    assert keeper.counters("d")["skipped_busy"] == 40 - queued
    keeper.store.close()  # a store that fails: the offer says 0, counts it, raises nothing
    assert keeper.offer("d", 1, [blob], doubtful) == 0
    assert keeper.counters("d")["failed"] == 1


def test_kept_images_are_as_received_when_small_and_re_encoded_when_not():
    from device_agent.api.review_keeper import MAX_SIDE, normalized

    def encoded(size, kind, mode="RGB"):
        buffer = io.BytesIO()
        Image.new(mode, size, 120).save(buffer, kind)
        return buffer.getvalue()

    small = encoded((40, 30), "PNG")
    assert normalized(small) == (small, "image/png", ".png")
    photo = encoded((64, 48), "JPEG")
    assert normalized(photo) == (photo, "image/jpeg", ".jpg")
    for blob in (encoded((3000, 1500), "PNG"), encoded((50, 50), "GIF", "P"),
                 encoded((50, 50), "BMP"), encoded((2000, 2000), "JPEG")):
        data, media_type, extension = normalized(blob)
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG" and max(image.size) <= MAX_SIDE
            assert (media_type, extension) == ("image/jpeg", ".jpg")
    with Image.open(io.BytesIO(normalized(encoded((3000, 1500), "PNG"))[0])) as image:
        assert image.size == (MAX_SIDE, MAX_SIDE // 2)  # the aspect ratio kept


def test_the_review_page_is_served_offline_with_its_own_policy(server):
    base, _ = server
    status, media_type, html = fetch(base, "/review", token=None)  # the page holds no data
    assert status == 200 and media_type.startswith("text/html")
    status, media_type, script = fetch(base, "/review.js", token=None)
    assert status == 200 and media_type.startswith("application/javascript")
    for text in (html.decode(), script.decode()):
        assert "http://" not in text and "https://" not in text  # no CDN
    assert '<script src="/review.js">' in html.decode()
    with urllib.request.urlopen(base + "/review", timeout=30) as response:
        headers = response.headers
    policy = headers["Content-Security-Policy"]
    assert policy.startswith("default-src 'self'") and "img-src 'self' data: blob:" in policy
    assert policy.endswith("frame-ancestors 'none'") and headers["X-Frame-Options"] == "DENY"
    status, _, dashboard = fetch(base, "/dashboard", token=None)
    assert b'href="/review"' in dashboard  # the dashboard links to it


def test_a_page_never_counts_an_item_it_does_not_show(tmp_path, monkeypatch):
    """The keeper may finish an item while the queue is read: the page's ``kept`` counter
    must not run ahead of its items (the tests above wait on it, and so would a client)."""
    from device_agent.api.review_keeper import ReviewCaps, ReviewKeeper
    from device_agent.api.routers.review import get_queue
    from device_agent.store.db import Store
    from device_agent.store.layout import DataPaths
    from device_agent.store.review import ReviewSettings

    store = Store(str(tmp_path / "agent.db"))
    store.ensure_domain("d")
    store.set_review_settings("d", ReviewSettings(enabled=True, threshold=1.0))
    keeper = ReviewKeeper(store, DataPaths(str(tmp_path)), ReviewCaps(1000, 256 << 20))
    read_items = store.review_items

    def items_then_the_keeper_finishes(*args):
        items = read_items(*args)
        keeper._keep_one("d", 1, noise_png(1), [("a", 0.6), ("b", 0.4)])  # just after
        return items

    monkeypatch.setattr(store, "review_items", items_then_the_keeper_finishes)
    for shown in range(3):
        page = get_queue("d", store, keeper, limit=50, before=None)
        assert len(page["items"]) == shown and page["counters"]["kept"] <= shown, page
