"""Capture sessions (device_agent.capture.sessions) on fake cameras: a thread that fails says
why, a stop stops, a camera is sampled by the clock, undecodable frames are counted, and the
limits on sessions hold. OpenCV shapes and encodes the frames (skipped without it)."""
import threading
import time

import pytest

from device_agent.capture import sessions
from device_agent.capture.sources import Source
from device_agent.errors import Conflict, InvalidInput, UnknownName
from device_agent.store.samples import AddedSamples

cv2 = pytest.importorskip("cv2")
np = pytest.importorskip("numpy")

CAMERA = Source("v4l2", 0, "V4L2", "/dev/video0")
OTHER_CAMERA = Source("v4l2", 1, "V4L2", "/dev/video1")


class FakeCamera(object):
    """Frames every ``period_s`` forever (a live camera), or ``frames`` of them (a file);
    ``broken``: indices whose frame cannot be decoded."""

    def __init__(self, period_s=0.005, frames=None, broken=()):
        self.period_s, self.frames, self.broken = period_s, frames, set(broken)
        self.index = -1
        self.released = threading.Event()

    def grab(self):
        if self.frames is not None and self.index + 1 >= self.frames:
            return False
        time.sleep(self.period_s)
        self.index += 1
        return True

    def retrieve(self):
        if self.index in self.broken:
            return False, None
        return True, np.full((48, 64, 3), self.index % 256, np.uint8)

    def get(self, prop):
        return 10.0

    def release(self):
        self.released.set()


class Recorder(object):
    """A store_frame that records when each frame came (or fails, when told to)."""

    def __init__(self, error=None):
        self.error, self.times, self.frames = error, [], []

    def __call__(self, domain, label, jpeg):
        if self.error:
            raise self.error
        self.times.append(time.monotonic())
        self.frames.append(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))
        return AddedSamples(added=1, duplicates=0, ids=["x"])


@pytest.fixture
def camera(monkeypatch):
    cameras = []

    def open_capture(source, make=lambda: FakeCamera()):
        cameras.append(make())
        return cameras[-1]

    monkeypatch.setattr(sessions.frames, "open_capture", open_capture)
    return cameras


def _until(condition, timeout_s):
    """Polls ``condition`` until it holds or ``timeout_s`` pass; the caller asserts after."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def run(recorder, source=CAMERA, count=3, interval=0.0, size=32):
    session = sessions.Session("d", sessions.CaptureRequest(source, "lbl", count, interval),
                               size, recorder)
    session.start()
    session._thread.join(10)
    assert not session._thread.is_alive()
    return session.progress()


def test_a_store_error_fails_the_session_saying_why(camera):
    progress = run(Recorder(error=RuntimeError("disk on fire")))
    assert progress.state == "failed" and "disk on fire" in progress.error
    assert progress.finished_at is not None and camera[0].released.is_set()


def test_a_refused_frame_is_counted_and_the_capture_goes_on(camera):
    recorder = Recorder(error=InvalidInput("image refused"))
    progress = run(recorder, count=2)
    assert (progress.state, progress.grabbed, progress.failed, progress.stored) == (
        "succeeded", 2, 2, 0)


def test_a_camera_is_sampled_by_the_clock(camera):
    recorder = Recorder()
    progress = run(recorder, count=3, interval=0.1)
    assert (progress.state, progress.stored) == ("succeeded", 3)
    gaps = [b - a for a, b in zip(recorder.times, recorder.times[1:])]
    assert all(gap >= 0.095 for gap in gaps), gaps
    assert all(frame.shape == (32, 32, 3) for frame in recorder.frames)


def test_undecodable_frames_are_counted_as_failed(monkeypatch):
    made = FakeCamera(frames=5, broken={1, 2})
    monkeypatch.setattr(sessions.frames, "open_capture", lambda source: made)
    video = Source("file", "/x.avi", "FFMPEG", "x.avi")
    recorder = Recorder()
    progress = run(recorder, source=video, count=3)
    assert (progress.state, progress.grabbed, progress.failed) == ("succeeded", 3, 2)
    assert [int(f.mean()) for f in recorder.frames] == [0, 3, 4]  # frames 1, 2 skipped


def test_a_stop_stops_a_running_capture(camera):
    session = sessions.Session("d", sessions.CaptureRequest(CAMERA, "lbl", 1000, 1.0), 32,
                               Recorder())
    session.start()
    _until(lambda: session.progress().stored >= 1, 10)  # the first frame, however loaded
    assert session.running
    session.stop()
    progress = session.progress()
    assert progress.state == "stopped" and progress.stored == 1 and not session.running
    assert camera[0].released.is_set()


def test_the_limits_on_sessions(camera):
    captures = sessions.Captures(Recorder(), "/nonexistent", max_running=2)
    slow = sessions.CaptureRequest(CAMERA, "lbl", 1000, 1.0)
    captures.start("a", slow, 32)
    with pytest.raises(Conflict, match="already capturing"):
        captures.start("a", slow._replace(source=OTHER_CAMERA), 32)
    with pytest.raises(Conflict, match="in use"):
        captures.start("b", slow, 32)
    captures.start("b", slow._replace(source=OTHER_CAMERA), 32)
    with pytest.raises(Conflict, match="the most at once"):
        captures.start("c", slow._replace(source=Source("csi", "p", "GSTREAMER", "csi://0")),
                       32)
    with pytest.raises(UnknownName):
        captures.get("c")
    _until(lambda: captures.get("a").preview() is not None, 5)
    assert captures.preview("a", None, 32)[:2] == b"\xff\xd8"  # the running one's JPEG
    captures.stop_all()
    assert [s.progress().state for s in captures.sessions()] == ["stopped", "stopped"]
    video = Source("file", "/v.avi", "FFMPEG", "v.avi")
    captures.start("a", slow._replace(source=video), 32)
    captures.start("b", slow._replace(source=video), 32)  # a file is not a busy camera
    captures.stop_all()
    captures.start("a", slow._replace(count=1), 32)  # a finished domain may start again
