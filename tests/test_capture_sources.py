"""The capture sources' allowlist (device_agent.capture.sources), and the bounds of a
capture request, without a daemon or OpenCV: what passes, what it turns into, and that
every hostile source is refused before anything is opened."""
import os

import pytest

from device_agent.capture import sessions
from device_agent.capture.sources import CSI_PIPELINE, parse_source
from device_agent.errors import InvalidInput, UnknownName

HOSTILE = [
    "", " ", "/etc/passwd", "../../etc/passwd", "videos/../../etc/passwd", "a/../../x.avi",
    "file:///etc/passwd", "FILE:/etc/passwd", "http://example.com/x.mp4",
    "https://example.com/x.mp4", "concat:a.avi|b.avi", "subfile,,start,0,end,0,,:a.avi",
    "rtsp://x;rm -rf /", "rtsp://a ! filesrc location=/etc/passwd", "rtsp://a!b/c",
    "rtsp://a/b c", "rtsp://a/'x'", "rtsp://a/\"x\"", "rtsp://a/$(id)", "rtsp://a/`id`",
    "rtsp://a/b&c", "rtsp://a/b|c", "rtsp://host:0/x", "rtsp://host:99999/x", "rtsp://",
    "rtsp://-host/x", "rtsps://host/x", "rtmp://host/x",
    "csi://0 ! filesrc location=/etc/passwd", "csi://0!", "csi://a", "csi://-1", "csi://16",
    "csi://00", "csi://0;ls",
    "/dev/video0; ls", "/dev/video0 ", "/dev/sda", "/dev/video", "/dev/video64",
    "/dev/video01", "/dev/../etc/passwd", "/dev/video0/../sda",
    "/abs/clip.avi", "\\\\server\\clip.avi", ".hidden.avi", "./clip.avi", "clip.avi\n",
    "clip%03d.avi", "clip.txt", "clip", "dir//clip.avi", "dir/.x/clip.avi", "a" * 600,
    "clip\u00e9.avi", "clip\x00.avi", "v4l2:///dev/video0",
]


@pytest.fixture
def videos(tmp_path):
    folder = tmp_path / "videos"
    (folder / "walk").mkdir(parents=True)
    (folder / "clip.avi").write_bytes(b"not really a video")
    (folder / "walk" / "day_1.MP4").write_bytes(b"")
    return str(folder)


@pytest.mark.parametrize("text", HOSTILE)
def test_a_hostile_source_is_refused(text, videos):
    with pytest.raises(InvalidInput):
        parse_source(text, videos)


def test_a_v4l2_camera_is_opened_by_its_index_not_its_text(videos):
    source = parse_source("/dev/video2", videos)
    assert (source.kind, source.target, source.backend, source.live) == ("v4l2", 2, "V4L2",
                                                                          True)


def test_a_csi_camera_becomes_the_pipeline_of_its_integer_alone(videos):
    source = parse_source("csi://1", videos)
    assert source.target == CSI_PIPELINE % 1
    assert source.target.startswith("nvarguscamerasrc sensor-id=1 ! ")
    assert source.backend == "GSTREAMER" and source.shown == "csi://1"


def test_an_rtsp_url_goes_to_ffmpeg_as_given_with_its_password_hidden(videos):
    url = "rtsp://admin:s3cr.et@192.168.1.20:554/Streaming/Channels/101?transport=tcp"
    source = parse_source(url, videos)
    assert (source.kind, source.target, source.backend) == ("rtsp", url, "FFMPEG")
    assert source.shown == "rtsp://admin:***@192.168.1.20:554/Streaming/Channels/101" \
                           "?transport=tcp"
    assert parse_source("rtsp://cam.local/live", videos).shown == "rtsp://cam.local/live"


def test_a_video_file_resolves_inside_videos(videos):
    source = parse_source("walk/day_1.MP4", videos)
    assert source.kind == "file" and not source.live
    assert source.target == os.path.join(os.path.realpath(videos), "walk", "day_1.MP4")
    assert source.shown == "walk/day_1.MP4"


def test_a_missing_video_is_not_found(videos):
    with pytest.raises(UnknownName):
        parse_source("nothere.avi", videos)


def test_a_symlink_out_of_videos_is_refused_and_one_inside_passes(videos, tmp_path):
    outside = tmp_path / "secret.avi"
    outside.write_bytes(b"x")
    os.symlink(str(outside), os.path.join(videos, "escape.avi"))
    os.symlink("/etc", os.path.join(videos, "etc"))
    os.symlink("clip.avi", os.path.join(videos, "alias.avi"))
    for text in ("escape.avi", "etc/passwd.avi"):
        with pytest.raises(InvalidInput, match="outside"):
            parse_source(text, videos)
    assert parse_source("alias.avi", videos).target == os.path.join(
        os.path.realpath(videos), "clip.avi")


def test_a_directory_named_like_a_video_is_not_a_video(videos):
    os.mkdir(os.path.join(videos, "folder.avi"))
    with pytest.raises(UnknownName):
        parse_source("folder.avi", videos)


@pytest.mark.parametrize("count, interval", [(0, 1), (-1, 1), (1001, 0), (1, -0.1),
                                             (1, 3600.5), (1000, 3600)])
def test_capture_bounds(count, interval):
    with pytest.raises(InvalidInput):
        sessions.check_request(count, interval)


def test_capture_bounds_pass_a_sensible_request():
    sessions.check_request(1000, 21.6)  # exactly the 6 h span
    sessions.check_request(1, 0)


class FakeStore(object):
    def __init__(self, summary):
        self.summary = summary

    def active_adapter(self, domain):
        if self.summary == "no domain":
            raise UnknownName("no domain %r" % domain)
        return None if self.summary is None else {"summary": self.summary}


@pytest.mark.parametrize("summary, size", [
    ({"resolution": 96, "backbone": "resnet18"}, 96),   # what the adapter was trained at
    ({"backbone": "resnet18"}, 224),                    # an imported one without it
    ({"resolution": 10 ** 6}, 224),                     # out of the contract's bounds
    ({"backbone": "gone_from_manifest"}, 224),
    (None, 224), ("no domain", 224),                    # the default backbone's input size
])
def test_working_size(summary, size):
    assert sessions.working_size(FakeStore(summary), "d") == size


@pytest.mark.skipif(os.path.exists("/dev/video63"), reason="this machine has a /dev/video63")
def test_a_camera_that_is_not_there_is_not_found_before_it_is_opened(videos):
    from device_agent.capture.sources import check_present

    with pytest.raises(UnknownName, match="no camera at /dev/video63"):
        check_present(parse_source("/dev/video63", videos))
    check_present(parse_source("csi://0", videos))  # known only to Argus: its open says
