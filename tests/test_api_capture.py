"""The capture router against a live daemon: frames of a video this test writes (known solid
colours, one per frame) stored as samples with their label at the working size; the preview;
every hostile source, label, count and interval refused with nothing stored; the token; and
a daemon without OpenCV saying so."""
import glob
import os
import shutil
import time
import urllib.error
import urllib.request

import live_daemon
import pytest
from api_calls import TOKEN, call, fetch, wait_for

from device_agent.store.db import Store

pytest.importorskip("fastapi")
try:
    import cv2
    import numpy as np
except ImportError:
    cv2 = None
needs_cv2 = pytest.mark.skipif(cv2 is None, reason="OpenCV is not installed (pip install "
                                                   "opencv-python-headless)")

FPS = 10
FRAME = (80, 60)  # width, height: wider than tall, so the stored square is a centre crop
WORKING_SIZE = 224  # no adapter yet: the default backbone's input size
# a distinct colour per frame (BGR), far enough apart that JPEG cannot confuse two
COLOURS = [(20 + 11 * i, 230 - 9 * i, (60 + 37 * i) % 256) for i in range(20)]
HOSTILE_SOURCES = [
    "/etc/passwd", "../../etc/passwd", "videos/../../etc/passwd", "file:///etc/passwd",
    "http://127.0.0.1:1/x.mp4", "rtsp://x;rm -rf /", "rtsp://a ! filesrc location=/etc/passwd",
    "csi://0 ! filesrc location=/etc/passwd", "/dev/video0; ls", "/dev/sda",
    "concat:walk.avi|walk.avi", "walk%03d.avi", "escape.avi", "",
]
BAD_LABELS = ["", ".", "..", "a/b", "../x", ".hidden", " cat", "cat ", "a\u202eb", "a\x00b",
              "x" * 300]


def write_video(path, colours, size=FRAME):
    """An MJPG .avi of solid ``colours`` (BGR), one frame each, at FPS."""
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), FPS, size)
    assert writer.isOpened()
    for colour in colours:
        writer.write(np.full((size[1], size[0], 3), colour, np.uint8))
    writer.release()


def capture(base, domain, **body):
    return call(base, "POST", "/v1/domains/%s/capture" % domain, body)


def finished(base, domain):
    progress = wait_for(lambda: call(base, "GET", "/v1/domains/%s/capture" % domain)[1],
                        lambda p: p["state"] != "running", timeout=60)
    assert progress["state"] != "running", progress
    return progress


def stored_images(data_dir, domain):
    """The domain's sample images on disk, decoded: {path: (size, mean BGR colour)}."""
    found = {}
    for path in glob.glob(os.path.join(data_dir, "domains", domain, "samples", "**", "*"),
                          recursive=True):
        if os.path.isfile(path):
            image = cv2.imread(path)
            found[path] = (image.shape[1::-1], tuple(image.reshape(-1, 3).mean(0)))
    return found


def near(colour, expected, tolerance=6):
    return all(abs(a - b) <= tolerance for a, b in zip(colour, expected))


@pytest.fixture(scope="module")
def videos(server):
    """The data dir's videos/: walk.avi (20 frames), long.avi (1000 frames) and a link that
    points at a real video outside it."""
    base, data_dir = server
    folder = os.path.join(data_dir, "videos")
    assert os.path.isdir(folder)  # the daemon makes it
    if cv2 is not None:
        write_video(os.path.join(folder, "walk.avi"), COLOURS)
        write_video(os.path.join(folder, "long.avi"),
                    [(i % 256, (i * 7) % 256, (i // 256) * 40) for i in range(1000)], (32, 24))
        outside = os.path.join(data_dir, "outside.avi")
        shutil.copy(os.path.join(folder, "walk.avi"), outside)
        os.symlink(outside, os.path.join(folder, "escape.avi"))
    return base, data_dir


@needs_cv2
def test_a_capture_stores_the_asked_count_with_its_label(videos):
    base, data_dir = videos
    status, started = capture(base, "walk", source="walk.avi", label="red", count=6, interval=0)
    assert status == 202, started
    assert (started["domain"], started["label"], started["count"]) == ("walk", "red", 6)
    assert started["size"] == WORKING_SIZE
    progress = finished(base, "walk")
    assert progress["state"] == "succeeded", progress
    assert (progress["grabbed"], progress["stored"], progress["failed"]) == (6, 6, 0)
    images = stored_images(data_dir, "walk")
    assert len(images) == 6
    assert {size for size, _ in images.values()} == {(WORKING_SIZE, WORKING_SIZE)}
    colours = [colour for _, colour in images.values()]
    for expected in COLOURS[:6]:  # interval 0: the first six frames, one sample each
        assert sum(near(c, expected) for c in colours) == 1, (expected, colours)
    assert working_set_labels(data_dir, "walk") == [("red", "capture")] * 6
    status, dataset = call(base, "GET", "/v1/domains/walk/dataset")
    assert status == 200, dataset
    assert [(c["label"], c["total"]) for c in dataset["classes"]] == [("red", 6)]
    assert dataset["total"] == 6 and dataset["sources"]["capture"] == 6


def working_set_labels(data_dir, domain):
    """(label, source) of each sample of the domain's working set, read from its store."""
    store = Store(os.path.join(data_dir, "agent.db"))
    try:
        return [(row["label"], row["source"]) for row in store.working_set(domain)]
    finally:
        store.close()


@needs_cv2
def test_a_file_is_timed_by_its_frame_rate(videos):
    """interval 0.3 s of a 10 fps video: frames 0, 3, 6 and 9, read as fast as they decode."""
    base, data_dir = videos
    status, started = capture(base, "timed", source="walk.avi", label="blue", count=4,
                              interval=0.3)
    assert status == 202, started
    assert finished(base, "timed")["stored"] == 4
    colours = [colour for _, colour in stored_images(data_dir, "timed").values()]
    for expected in (COLOURS[0], COLOURS[3], COLOURS[6], COLOURS[9]):
        assert sum(near(c, expected) for c in colours) == 1, (expected, colours)


@needs_cv2
def test_a_video_that_ends_early_fails_saying_so_and_keeps_its_frames(videos):
    base, data_dir = videos
    assert capture(base, "short", source="walk.avi", label="x", count=25, interval=0)[0] == 202
    progress = finished(base, "short")
    assert progress["state"] == "failed"
    assert "ended after 20 of 25" in progress["error"], progress
    assert progress["stored"] == 20 and len(stored_images(data_dir, "short")) == 20


@needs_cv2
def test_one_capture_per_domain_and_a_stop(videos):
    base, _ = videos
    status, started = capture(base, "busy", source="long.avi", label="x", count=1000,
                              interval=0)
    assert status == 202, started
    status, refused = capture(base, "busy", source="walk.avi", label="y", count=1, interval=0)
    assert status == 409 and refused["code"] == "conflict", refused
    status, stopped = call(base, "DELETE", "/v1/domains/busy/capture")
    assert status == 200 and stopped["state"] == "stopped", stopped
    assert stopped["stored"] < 1000
    assert call(base, "GET", "/v1/domains/busy/capture")[1]["state"] == "stopped"


@needs_cv2
def test_deleting_the_domain_ends_its_capture(videos):
    base, _ = videos
    assert capture(base, "gone", source="long.avi", label="x", count=1000, interval=0)[0] == 202
    wait_for(lambda: call(base, "GET", "/v1/domains/gone/capture")[1],
             lambda p: p["stored"] > 0, timeout=30)
    assert call(base, "DELETE", "/v1/domains/gone")[0] == 204
    assert call(base, "GET", "/v1/domains/gone/capture")[0] == 404
    time.sleep(0.5)  # a frame of a capture still running would create the domain again
    assert call(base, "GET", "/v1/domains/gone")[0] == 404


@needs_cv2
def test_the_preview_is_a_decodable_jpeg(videos):
    base, _ = videos
    status, kind, body = fetch(base, "/v1/domains/aim/capture/preview?source=walk.avi")
    assert (status, kind) == (200, "image/jpeg")
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (WORKING_SIZE, WORKING_SIZE, 3)
    assert near(tuple(image.reshape(-1, 3).mean(0)), COLOURS[0])
    status, kind, body = fetch(base, "/v1/domains/aim/capture/preview")
    assert status == 404 and kind == "application/problem+json"  # no capture, no source
    assert capture(base, "aim", source="walk.avi", label="x", count=3, interval=0)[0] == 202
    finished(base, "aim")
    status, kind, body = fetch(base, "/v1/domains/aim/capture/preview")
    assert (status, kind) == (200, "image/jpeg")  # the last capture's last frame
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert near(tuple(image.reshape(-1, 3).mean(0)), COLOURS[2])


@needs_cv2
@pytest.mark.parametrize("source", HOSTILE_SOURCES)
def test_a_hostile_source_is_refused_and_nothing_is_stored(videos, source):
    base, data_dir = videos
    status, refused = capture(base, "hostile", source=source, label="x", count=1, interval=0)
    assert 400 <= status < 500 and refused["code"] in ("invalid_input", "invalid_request"), \
        refused
    status, kind, _ = fetch(base, "/v1/domains/hostile/capture/preview?source="
                            + urllib.request.quote(source, safe=""))
    assert 400 <= status < 500 and kind == "application/problem+json"
    assert call(base, "GET", "/v1/domains/hostile/capture")[0] == 404  # no session began
    assert stored_images(data_dir, "hostile") == {}
    assert working_set_labels(data_dir, "hostile") == []


@needs_cv2
@pytest.mark.parametrize("fields", [
    {"label": label} for label in BAD_LABELS] + [
    {"count": 0}, {"count": -1}, {"count": 10 ** 9}, {"count": "many"}, {"count": 2.5},
    {"interval": -1}, {"interval": 1e9}, {"count": 1000, "interval": 3600},
    {"interval": "soon"}, {"source": None}, {"source": "walk.avi", "extra": 1},
])
def test_bad_labels_counts_and_intervals_are_refused(videos, fields):
    base, data_dir = videos
    body = dict({"source": "walk.avi", "label": "x", "count": 1, "interval": 0}, **fields)
    status, refused = capture(base, "strict", **body)
    assert 400 <= status < 500, refused
    assert call(base, "GET", "/v1/domains/strict/capture")[0] == 404
    assert stored_images(data_dir, "strict") == {}


@pytest.mark.skipif(os.path.exists("/dev/video63"), reason="this machine has a /dev/video63")
def test_the_refusals_name_the_allowed_cameras_and_a_missing_one(server):
    """/dev/videoN survives the error bodies' path hiding; a missing camera is a 404 with
    no session begun."""
    base, _ = server
    status, refused = capture(base, "cams", source="/dev/sda", label="x", count=1)
    assert status == 400 and "/dev/video0../dev/video63" in refused["detail"], refused
    status, refused = capture(base, "cams", source="/dev/video63", label="x", count=1)
    assert status == 404 and "no camera at /dev/video63" in refused["detail"], refused
    assert call(base, "GET", "/v1/domains/cams/capture")[0] == 404


def test_a_non_finite_interval_is_refused(server):
    base, _ = server
    body = b'{"source": "walk.avi", "label": "x", "count": 1, "interval": NaN}'
    status, refused = call(base, "POST", "/v1/domains/nan/capture", body)
    assert 400 <= status < 500, refused


def test_every_capture_route_needs_the_token(server):
    base, _ = server
    for method in ("POST", "GET", "DELETE"):
        assert call(base, method, "/v1/domains/d/capture", token=None)[0] == 401
        assert call(base, method, "/v1/domains/d/capture", token="wrong")[0] == 401
    assert fetch(base, "/v1/domains/d/capture/preview?source=walk.avi", token="")[0] == 401


@pytest.fixture(scope="module")
def no_opencv(tmp_path_factory):
    """A daemon whose ``import cv2`` fails (a cv2 module on its path that raises
    ImportError), with a file in its videos/ folder: (base, data dir)."""
    shim = str(tmp_path_factory.mktemp("no_cv2"))
    with open(os.path.join(shim, "cv2.py"), "w") as handle:
        handle.write("raise ImportError('simulated: no OpenCV on this machine')\n")
    data_dir = str(tmp_path_factory.mktemp("data"))
    os.makedirs(os.path.join(data_dir, "videos"))
    with open(os.path.join(data_dir, "videos", "clip.avi"), "wb") as handle:
        handle.write(b"\0" * 64)
    proc, base = live_daemon.start(data_dir, TOKEN,
                                   PYTHONPATH=os.pathsep.join([shim, live_daemon.ROOT]))
    yield base, data_dir
    live_daemon.stop(proc)


def test_without_opencv_the_routes_say_how_to_install_it(no_opencv):
    base, data_dir = no_opencv
    status, refused = capture(base, "d", source="clip.avi", label="x", count=1, interval=0)
    assert status == 501 and refused["code"] == "capture_unavailable", refused
    assert "OpenCV is not installed" in refused["detail"]
    assert "python3-opencv" in refused["detail"]
    assert "opencv-python-headless" in refused["detail"]
    status, kind, body = fetch(base, "/v1/domains/d/capture/preview?source=clip.avi")
    assert (status, kind) == (501, "application/problem+json") and b"OpenCV" in body
    # the allowlist still answers first: a hostile source is bad input, OpenCV or not
    assert capture(base, "d", source="/etc/passwd", label="x", count=1, interval=0)[0] == 400
    assert call(base, "GET", "/v1/domains/d/capture")[0] == 404
    assert call(base, "GET", "/healthz")[0] == 200  # the daemon is up


def test_error_bodies_keep_camera_names_and_urls_but_hide_paths():
    from device_agent.api.app import hide_paths

    assert hide_paths("could not open rtsp://cam.local:554/live/main (no answer)") == \
        "could not open rtsp://cam.local:554/live/main (no answer)"
    assert hide_paths("no camera at /dev/video3") == "no camera at /dev/video3"
    assert hide_paths("cannot read /var/lib/device-agent/videos/a.avi") == \
        "cannot read a.avi"
