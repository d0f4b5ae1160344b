"""The data loop against a live daemon (issue 14): samples and archives build one working
set, jobs train content-addressed snapshots of it taken when they start, splits never move,
the dataset route counts and warns, warm start, and hostile input on every new route."""
import hashlib
import io
import os
import socket
import struct
import zlib

import pytest
from api_calls import TOKEN, add_samples, call, multipart, wait_for, wait_for_job, zip_of
from PIL import Image

pytest.importorskip("fastapi")

from device_agent.store.samples import split_for  # noqa: E402

JOB = {"backbone": "resnet18", "epochs": 1, "batch_size": 4, "resolution": 32}
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def image(rgb, index, size=24):
    """A PNG of ``rgb`` whose first row carries a stripe of ``index`` pixels: distinct bytes
    (and dHashes) per index."""
    picture = Image.new("RGB", (size, size), rgb)
    for x in range(index % size + 1):
        picture.putpixel((x, index // size % size), (255, 255, 255))
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


def colour_set(count, classes=COLOURS):
    return {label: [image(rgb, i) for i in range(count)] for label, rgb in classes.items()}


def dataset(base, domain):
    status, stats = call(base, "GET", "/v1/domains/%s/dataset" % domain)
    assert status == 200, stats
    return stats


def upload_archive(base, domain, files, relabel=False):
    body, content_type = multipart([("file", ("set.zip", zip_of(files)))])
    return call(base, "POST", "/v1/domains/%s/datasets%s" % (domain, "?relabel=true" if relabel
                                                              else ""),
                body, content_type=content_type)


def test_samples_one_by_one_and_an_archive_give_the_same_snapshot(server):
    base, _ = server
    images = colour_set(5)
    for label, blobs in images.items():
        for blob in blobs:
            status, added = add_samples(base, "onebyone", [blob], [label])
            assert status == 201 and added["added"] == 1, added
    status, summary = upload_archive(base, "byarchive", {
        "%s/%d.png" % (label, i): blob for label, blobs in images.items()
        for i, blob in enumerate(blobs)})
    assert status == 201 and (summary["added"], summary["duplicates"]) == (15, 0), summary
    one, other = dataset(base, "onebyone"), dataset(base, "byarchive")
    lines = sorted("%s\t%s\t%s\n" % (split_for(hashlib.sha256(b).hexdigest()), label,
                                     hashlib.sha256(b).hexdigest())
                   for label, blobs in images.items() for b in blobs)
    expected = hashlib.sha256("".join(lines).encode()).hexdigest()  # computed by hand
    assert one["snapshot_id"] == other["snapshot_id"] == expected
    assert one["classes"] == other["classes"] and one["total"] == 15
    assert one["sources"] == {"upload": 15} and other["sources"] == {"archive": 15}
    status, again = upload_archive(base, "onebyone", {"red/x.png": images["red"][0],
                                                      "blue/y.png": images["blue"][0]})
    assert status == 201 and (again["added"], again["duplicates"]) == (0, 2)
    assert dataset(base, "onebyone")["snapshot_id"] == expected  # nothing new: the same set


def test_a_split_never_moves(server):
    base, _ = server
    first = [image((90, 90, 90), i) for i in range(40)]
    status, added = add_samples(base, "steady", first, ["grey"])
    assert status == 201 and set(added["splits"]) == {"train", "val"}, added
    placed = dict(zip(added["ids"], added["splits"]))
    assert placed == {h: split_for(h) for h in placed}
    more = [image((10, 200, 10), i) for i in range(40)]
    assert add_samples(base, "steady", more, ["green"])[0] == 201
    status, again = add_samples(base, "steady", first[:10], ["grey"])
    assert status == 201 and again["duplicates"] == 10
    assert dict(zip(again["ids"], again["splits"])) == {h: placed[h] for h in again["ids"]}
    moved = add_samples(base, "steady", first[:1], ["green"], relabel=True)[1]
    assert moved["relabeled"] == 1 and moved["splits"] == [placed[moved["ids"][0]]]
    # an archive with an explicit val/ keeps its split for new images, not for known ones
    known_train = next(b for b, h in zip(first[1:], added["ids"][1:]) if placed[h] == "train")
    new = [image((200, 10, 10), i) for i in range(6)]
    files = {"train/grey/%d.png" % i: b for i, b in enumerate(new[:3])}
    files.update({"val/grey/%d.png" % i: b for i, b in enumerate(new[3:])})
    files["val/grey/known.png"] = known_train
    files["train/green/a.png"] = more[0]
    status, summary = upload_archive(base, "steady", files)
    assert status == 201 and summary["layout"] == "train/val", summary
    splits = call(base, "POST", "/v1/domains/steady/samples", *_form(new + [known_train]))[1]
    assert splits["splits"] == ["train"] * 3 + ["val"] * 3 + ["train"]


def _form(images):
    from api_calls import form

    body, content_type = form([("file", ("%d.png" % i, b)) for i, b in enumerate(images)],
                              [("label", "grey")])
    return body, TOKEN, content_type


def _manifest(data_dir, domain, snapshot):
    path = os.path.join(data_dir, "domains", domain, "snapshots", snapshot, "snapshot.tsv")
    with open(path) as handle:
        return handle.read().splitlines()


def test_a_job_trains_the_snapshot_taken_when_it_starts(server):
    """A long job trains what the working set was when it started, whatever is added while
    it runs; a job queued behind it trains the set as it is when IT starts."""
    base, data_dir = server
    for label, blobs in colour_set(8).items():
        assert add_samples(base, "moving", blobs, [label])[0] == 201
    before = dataset(base, "moving")["snapshot_id"]
    long_job = call(base, "POST", "/v1/domains/moving/jobs", dict(JOB, epochs=40))[1]["job_id"]
    behind = call(base, "POST", "/v1/domains/moving/jobs", JOB)[1]["job_id"]
    running = wait_for(lambda: call(base, "GET", "/v1/jobs/" + long_job)[1],
                       lambda j: j["state"] == "running" and j["snapshot_id"], timeout=120)
    assert running["snapshot_id"] == before
    late = [image((200, 200, 0), i) for i in range(5)]
    assert add_samples(base, "moving", late, ["red"])[0] == 201  # while it trains
    assert call(base, "GET", "/v1/jobs/" + long_job)[1]["state"] == "running"
    queued = call(base, "GET", "/v1/jobs/" + behind)[1]
    assert queued["state"] == "queued" and queued["snapshot_id"] is None  # not at enqueue
    assert call(base, "POST", "/v1/jobs/%s/cancel" % long_job)[0] == 200
    done = wait_for_job(base, behind)
    assert done["state"] == "succeeded", done
    after = dataset(base, "moving")["snapshot_id"]
    assert done["snapshot_id"] == after not in (before, None)
    assert call(base, "GET", "/v1/jobs/" + long_job)[1]["snapshot_id"] == before
    assert len(_manifest(data_dir, "moving", before)) == 24
    assert len(_manifest(data_dir, "moving", after)) == 29
    report_images = call(base, "GET", "/v1/domains/moving")[1]
    assert report_images["versions"][-1]["snapshot_id"] == after
    assert report_images["versions"][-1]["job_id"] == behind


def test_dataset_counts_and_warnings_on_a_crafted_set(server):
    base, _ = server
    many = [image((120, 60, 30), i) for i in range(30)]
    few = [image((30, 60, 120), i) for i in range(3)]
    assert add_samples(base, "crafted", many, ["many"])[0] == 201
    assert add_samples(base, "crafted", few, ["few"])[0] == 201
    stats = dataset(base, "crafted")
    counts = {c["label"]: c for c in stats["classes"]}
    for label, blobs in (("many", many), ("few", few)):
        splits = [split_for(hashlib.sha256(b).hexdigest()) for b in blobs]
        assert (counts[label]["train"], counts[label]["val"]) == (splits.count("train"),
                                                                  splits.count("val"))
    kinds = {w["kind"]: w for w in stats["warnings"]}
    assert kinds["too_few_images"]["classes"] == ["few"]
    assert kinds["imbalance"]["classes"] == ["many", "few"]
    # the stripes differ in a few pixels of one row: the dHashes of train and val images of
    # a class are within a few bits of each other
    assert kinds["near_duplicates"]["pairs"] and stats["near_duplicates_checked"] > 0
    assert stats["thresholds"]["min_images_per_class"] == 20
    assert call(base, "GET", "/v1/domains/nosuch/dataset")[0] == 404


def test_warm_start_from_the_same_classes_and_fresh_with_new_ones(server):
    base, _ = server
    for label, blobs in colour_set(6).items():
        assert add_samples(base, "warm", blobs, [label])[0] == 201
    first = call(base, "POST", "/v1/domains/warm/jobs", dict(JOB, warm_start=True))[1]
    first = wait_for_job(base, first["job_id"])
    assert first["state"] == "succeeded", first
    again = call(base, "POST", "/v1/domains/warm/jobs", dict(JOB, warm_start=True))[1]
    again = wait_for_job(base, again["job_id"])
    assert again["state"] == "succeeded", again
    yellow = [image((220, 220, 30), i) for i in range(6)]
    assert add_samples(base, "warm", yellow, ["yellow"])[0] == 201
    grown = call(base, "POST", "/v1/domains/warm/jobs", dict(JOB, warm_start=True))[1]
    grown = wait_for_job(base, grown["job_id"])
    assert grown["state"] == "succeeded", grown
    notes = [(job["warm_started"], job["warm_start_note"]) for job in (first, again, grown)]
    assert [used for used, _ in notes] == [False, True, False]
    assert "no active adapter" in notes[0][1]
    assert "same 3 classes" in notes[1][1]
    assert "differ" in notes[2][1] and "yellow" in notes[2][1]
    plain = wait_for_job(base, call(base, "POST", "/v1/domains/warm/jobs", JOB)[1]["job_id"])
    assert plain["warm_started"] is None  # not asked: nothing said


# --- hostile input -----------------------------------------------------------------------

def pixel_bomb(width=30000, height=30000):
    """A tiny PNG whose header declares ``width`` x ``height`` pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("label", ["", ".", "..", "a/b", "../../etc", "a\\b", ".hidden",
                                   " padded", "x" * 256, "\u00e9" * 128, "rtl\u202eevil",
                                   "zero\u200bwidth", "line\nbreak", "nul\x00byte"])
def test_bad_labels_are_refused_and_nothing_is_stored(server, label):
    base, data_dir = server
    status, problem = add_samples(base, "hostile-labels", [image((1, 2, 3), 0)], [label])
    assert 400 <= status < 500 and problem["code"] in ("invalid_input", "invalid_request"), \
        problem
    assert call(base, "GET", "/v1/domains/hostile-labels")[0] == 404
    assert not os.path.exists(os.path.join(data_dir, "domains", "hostile-labels"))


@pytest.mark.parametrize("blob,status,code", [
    (b"just text", 400, "invalid_input"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, 400, "invalid_input"),
    (pixel_bomb(), 413, "image_too_large"),
])
def test_non_images_and_pixel_bombs_are_refused(server, blob, status, code):
    base, data_dir = server
    answer = add_samples(base, "hostile-images", [image((5, 5, 5), 1), blob], ["ok"])
    assert answer[0] == status and answer[1]["code"] == code, answer
    assert call(base, "GET", "/v1/domains/hostile-images")[0] == 404
    assert not os.path.exists(os.path.join(data_dir, "domains", "hostile-images"))


def test_malformed_requests_are_refused(server):
    base, _ = server
    two = [image((1, 1, 1), 0), image((2, 2, 2), 0)]
    assert add_samples(base, "malformed", two, ["a", "b", "c"])[0] == 400
    assert add_samples(base, "malformed", two, [])[0] == 422  # label is required
    assert add_samples(base, "../etc", two, ["a"])[0] in (400, 404)
    assert add_samples(base, "UPPER", two, ["a"])[0] == 400
    big = [image((3, 3, 3), 0) + b"\0" * (1 << 20)]  # over the 1 MB upload limit
    status, problem = add_samples(base, "malformed", big, ["a"])
    assert status == 413 and problem["code"] == "payload_too_large"
    assert call(base, "GET", "/v1/domains/malformed")[0] == 404
    assert add_samples(base, "malformed", two, ["a"])[0] == 201
    status, problem = add_samples(base, "malformed", two[:1], ["b"])
    assert status == 409 and "relabel" in problem["detail"], problem
    status, problem = upload_archive(base, "malformed", {"b/x.png": two[0], "c/y.png": two[1]})
    assert status == 409, problem  # an archive follows the same rule
    assert {c["label"] for c in dataset(base, "malformed")["classes"]} == {"a"}


def test_the_token_is_checked_before_anything_is_read(server):
    base, data_dir = server
    status, problem = add_samples(base, "tokenless", [image((1, 1, 1), 0)], ["a"], token=None)
    assert status == 401 and problem["code"] == "unauthorized"
    assert call(base, "GET", "/v1/domains/warm/dataset", token=None)[0] == 401
    assert call(base, "GET", "/v1/domains/warm/dataset", token="wrong")[0] == 401
    host, port = base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:  # 50 MB declared,
        sock.sendall(b"POST /v1/domains/tokenless/samples HTTP/1.1\r\nHost: x\r\n"  # none sent
                     b"Content-Type: multipart/form-data; boundary=x\r\n"
                     b"Content-Length: 52428800\r\n\r\n")
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 401")
    assert call(base, "GET", "/v1/domains/tokenless")[0] == 404


def test_deleting_a_domain_removes_its_samples_and_snapshots(server):
    base, data_dir = server
    for label, blobs in colour_set(3).items():
        assert add_samples(base, "doomed", blobs, [label])[0] == 201
    job = call(base, "POST", "/v1/domains/doomed/jobs", JOB)[1]
    assert wait_for_job(base, job["job_id"])["state"] == "succeeded"
    assert os.listdir(os.path.join(data_dir, "domains", "doomed", "snapshots"))
    assert call(base, "DELETE", "/v1/domains/doomed")[0] == 204
    assert not os.path.exists(os.path.join(data_dir, "domains", "doomed"))
    assert add_samples(base, "doomed", colour_set(1)["red"], ["red"])[1]["added"] == 1
