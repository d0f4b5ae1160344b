"""Frames through OpenCV: open an allowed source, shape a frame to the domain's working
size, encode it as JPEG. OpenCV is imported here, lazily, so the daemon runs without it and
only the capture routes say it is missing.
"""
import re
from typing import Any, List

from device_agent.capture.sources import Source
from device_agent.errors import CaptureUnavailable, InvalidInput

OPENCV_MISSING = ("OpenCV is not installed: on JetPack it ships with the system "
                  "(python3-opencv); elsewhere pip install opencv-python-headless")
NO_GSTREAMER = ("csi:// cameras are read through GStreamer, and this OpenCV is built without "
                "it (JetPack's python3-opencv has it; the opencv-python wheels from PyPI do "
                "not): use the system's python3-opencv")
JPEG_QUALITY = 90
OPEN_TIMEOUT_MS = 10000  # an RTSP camera that does not answer: FFmpeg's default waits ~30 s
READ_TIMEOUT_MS = 10000


def load_cv2() -> Any:
    """The cv2 module, or CaptureUnavailable (501) saying how to install it."""
    try:
        import cv2
    except ImportError as exc:
        raise CaptureUnavailable(OPENCV_MISSING) from exc
    return cv2


def has_gstreamer(cv2: Any) -> bool:
    return re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()) is not None


def open_capture(source: Source) -> Any:
    """An opened cv2.VideoCapture of ``source``; InvalidInput when it cannot be opened."""
    cv2 = load_cv2()
    if source.backend == "GSTREAMER" and not has_gstreamer(cv2):
        raise CaptureUnavailable(NO_GSTREAMER)
    backend = getattr(cv2, "CAP_" + source.backend)
    capture = _video_capture(cv2, source, backend)
    if not capture.isOpened():
        capture.release()
        raise InvalidInput("could not open %s (%s)" % (source.shown, _why_not_opened(source)))
    if source.live:
        # a camera queues a few frames; a capture every N seconds wants the newest one
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    return capture


def _video_capture(cv2: Any, source: Source, backend: int) -> Any:
    """The capture, with open/read timeouts where this OpenCV takes them (4.5.2+; JetPack
    4's 4.1 does not, and then FFmpeg's own timeouts apply)."""
    timeouts = _timeouts(cv2) if source.kind == "rtsp" else []
    if timeouts:
        try:
            return cv2.VideoCapture(source.target, backend, timeouts)
        except TypeError:
            pass
    return cv2.VideoCapture(source.target, backend)


def _timeouts(cv2: Any) -> List[int]:
    if not hasattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):
        return []
    return [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS]


def _why_not_opened(source: Source) -> str:
    if source.kind == "v4l2":
        return "no such camera, it is busy, or the daemon's user is not in the video group"
    if source.kind == "csi":
        return "no camera on that port, or nvargus-daemon is not running"
    if source.kind == "rtsp":
        return "the camera does not answer, or refuses the URL or its credentials"
    return "not a video this OpenCV can read"


def fps_of(capture: Any) -> float:
    """The source's frame rate (a file's timing), or 0.0 when it does not say."""
    cv2 = load_cv2()
    fps = capture.get(cv2.CAP_PROP_FPS)
    return float(fps) if fps == fps and 0 < fps < 10000 else 0.0  # NaN != NaN


def to_working_size(frame: Any, size: int) -> Any:
    """The frame's centred square, resized to ``size`` x ``size``: training's and
    prediction's crops are centred squares too, so nothing the model would see is lost to a
    squeeze of the aspect ratio."""
    cv2 = load_cv2()
    if frame is None or getattr(frame, "ndim", 0) not in (2, 3) or 0 in frame.shape[:2]:
        raise InvalidInput("the source gave an empty or malformed frame")
    height, width = frame.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = frame[top:top + side, left:left + side]
    shrink = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR  # AREA: no aliasing
    return cv2.resize(square, (size, size), interpolation=shrink)


def encode_jpeg(frame: Any) -> bytes:
    cv2 = load_cv2()
    ok, buffer = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise InvalidInput("the frame could not be encoded as JPEG")
    return buffer.tobytes()


def snapshot(source: Source, size: int, settle_frames: int = 5) -> bytes:
    """One frame of ``source`` at the working size, as JPEG. A camera's first frames are
    often dark while its auto-exposure settles, so a live source is read ``settle_frames``
    times and the last one kept; a video gives its first frame."""
    capture = open_capture(source)
    try:
        grabbed = False
        for _ in range(settle_frames if source.live else 1):
            grabbed = capture.grab() or grabbed
        ok, frame = capture.retrieve() if grabbed else (False, None)
        if not ok:
            raise InvalidInput("%s gave no frame" % source.shown)
        return encode_jpeg(to_working_size(frame, size))
    finally:
        capture.release()
